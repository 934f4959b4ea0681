"""Building blocks shared by the generative models (TIGER, MQL4GRec): a randomly initialised T5 over
semantic-ID tokens, its training loss and sequence scores, and the checks of their settings.

As RecBole's ``recbole/model/layers.py`` is to BERT4Rec and SASRec: models import these, never each other.
"""

from __future__ import annotations

import torch
from recbole.config import Config
from recbole.data.dataset import Dataset
from torch import Tensor
from transformers import T5Config, T5ForConditionalGeneration
from transformers.activations import ACT2FN

from recbole_qrec.errors import ConfigError
from recbole_qrec.generation import SemanticIdVocab, additive_padding_mask, checked_eval_mode


def t5_config(config: Config, vocab: SemanticIdVocab, extra_tokens: int = 0) -> T5Config:
    """A randomly initialised T5 over ``vocab`` and ``extra_tokens`` ids after it, with the model's hyper-parameters."""
    return T5Config(
        vocab_size=vocab.size + extra_tokens,
        d_model=config["d_model"],
        d_kv=config["d_kv"],
        d_ff=config["d_ff"],
        num_layers=config["num_layers"],
        num_decoder_layers=config["num_decoder_layers"],
        num_heads=config["num_heads"],
        dropout_rate=config["dropout_rate"],
        feed_forward_proj=config["feed_forward_proj"],
        pad_token_id=vocab.pad_id,
        eos_token_id=vocab.eos_id,
        decoder_start_token_id=vocab.decoder_start_id,
    )


def check_t5_settings(config: Config) -> None:
    """A T5 model's ``check_settings`` (:func:`recbole_qrec.config.check_model_settings`): ``feed_forward_proj`` is a
    transformers activation, alone or as ``gated-<activation>`` (T5Config checks only the form; an unknown name failed
    while the model was built, with exit status 1)."""
    value = config["feed_forward_proj"]
    parts = value.split("-") if isinstance(value, str) else []
    if not parts or len(parts) > 2 or (len(parts) == 2 and parts[0] != "gated") or parts[-1] not in ACT2FN:
        raise ConfigError(f"feed_forward_proj must be an activation of transformers' ACT2FN (relu, gelu, silu, ...) or "
                          f"gated-<activation>, got {value!r} — e.g. --feed_forward_proj=relu or gated-gelu (T5 v1.1)")


def batch_histories(histories: Tensor, lengths: Tensor, full_length: bool) -> Tensor:
    """Left-aligned item histories ``[B, S]`` cut to the batch's longest (``lengths`` ``[B]``), or all ``S`` items with
    ``full_length`` (the ``full_length_inputs`` key): one shape for every batch, which CUDA graphs need, and no wait
    for the device to read the longest length; the padding is masked either way."""
    return histories if full_length else histories[:, : int(lengths.max())]


def checked_full_length_inputs(value: object, device: torch.device | str) -> bool:
    """``full_length_inputs``: a bool as set, ``None`` (auto) True on a CUDA ``device`` only (on a CPU the padding
    is compute and there is nothing to wait for); anything else a :class:`ConfigError` saying what to set."""
    if value is None:
        return torch.device(device).type == "cuda"
    if not isinstance(value, bool):
        raise ConfigError(f"full_length_inputs must be ~, True or False, got {value!r} — True pads every history to "
                          "MAX_ITEM_LIST_LENGTH, False to the batch's longest, ~ the first on a CUDA device")
    return value


def code_tokens(codes: Tensor, items: Tensor, vocab: SemanticIdVocab) -> Tensor:
    """Item ids ``[...]`` -> token ids ``[..., L]`` of their rows of ``codes`` (padding items -> padding tokens)."""
    tokens = vocab.encode(codes[items])
    return tokens.masked_fill((items == 0).unsqueeze(-1), vocab.pad_id)


def teacher_forced_log_prob(t5: T5ForConditionalGeneration, tokens: Tensor, mask: Tensor, labels: Tensor) -> Tensor:
    """Sequence log-probability ``[B]`` of ``labels`` ``[B, L]`` given the encoder input: a beam search's score."""
    logits = t5(input_ids=tokens, attention_mask=additive_padding_mask(mask),
                decoder_input_ids=decoder_inputs(t5, labels)).logits
    return logits.float().log_softmax(-1).gather(2, labels.unsqueeze(-1)).sum((1, 2))


def decoder_inputs(t5: T5ForConditionalGeneration, labels: Tensor) -> Tensor:
    """T5's teacher-forcing decoder inputs for ``labels`` ``[B, L]``, as its ``_shift_right`` builds them (the start
    token, then the labels but the last, label padding -100 as the pad token), from tensor operations alone:
    transformers writes the start token by assigning a Python number, which puts a host tensor constant into a
    compiled training step, and the cudagraphs backend then runs that step without CUDA graphs."""
    start = labels.new_full((len(labels), 1), t5.config.decoder_start_token_id)
    shifted = torch.cat([start, labels[:, :-1]], dim=1)
    return shifted.masked_fill(shifted == -100, t5.config.pad_token_id)


def t5_loss(t5: T5ForConditionalGeneration, tokens: Tensor, mask: Tensor, labels: Tensor) -> Tensor:
    """T5's mean token cross-entropy of ``labels`` given the encoder input, without the decoder's key/value cache
    (training reads it nowhere)."""
    return t5(input_ids=tokens, attention_mask=additive_padding_mask(mask),
              decoder_input_ids=decoder_inputs(t5, labels), labels=labels, use_cache=False).loss


def length_bucketed_loss(t5: T5ForConditionalGeneration, tokens: Tensor, mask: Tensor, labels: Tensor,
                         part_rows: int) -> Tensor:
    """T5's mean token cross-entropy of a batch, run in parts of at least ``part_rows`` rows of similar input length.

    The rows are sorted by input length and split into ``len(rows) // part_rows`` equal parts (one call when
    ``part_rows`` is 0 or exceeds half the batch), each cut to its own longest input. Inputs are right-padded
    and padding is masked, so this drops only padding: the loss equals one call on the whole batch (every row
    has the same number of label tokens, so the parts' means weighted by their row counts give the batch
    mean), with less encoder work on short histories but one T5 call per part.
    """
    parts = len(tokens) // part_rows if part_rows else 1
    if parts > 1:
        sorted_lengths, order = mask.sum(1).sort()
        if bool(sorted_lengths[0] < sorted_lengths[-1]):
            widths = torch.stack([part[-1] for part in sorted_lengths.tensor_split(parts)]).tolist()
            losses = [t5_loss(t5, tokens[rows, :width], mask[rows, :width], labels[rows]) * len(rows)
                      for rows, width in zip(order.tensor_split(parts), widths)]
            return torch.stack(losses).sum() / len(tokens)
    return t5_loss(t5, tokens, mask, labels)


def checked_ranking(config: Config, dataset: Dataset | None = None) -> tuple[str, int]:
    """A generative model's ``(eval_mode, beam_size)``, checked: in beam mode the beam must cover the largest cut-off,
    else ``-inf`` items would fill the top-k in arbitrary order, and (given the ``dataset``) must not exceed its items:
    every slot past them holds no item but still costs a decoder row per user and level."""
    eval_mode, beam_size, topk = checked_eval_mode(config["eval_mode"]), config["beam_size"], config["topk"]
    if eval_mode != "beam":
        return eval_mode, beam_size
    if beam_size < max(topk):
        raise ConfigError(f"beam_size ({beam_size}) is smaller than the largest topk ({max(topk)}): items outside the "
                          f"beam all score -inf — set beam_size to at least {max(topk)}")
    items = dataset.item_num - 1 if dataset is not None else None  # item_num counts RecBole's padding item 0
    if items is not None and beam_size > items:
        raise ConfigError(f"beam_size {beam_size} exceeds the {items:,} items of {config['dataset']} — set beam_size "
                          f"<= {items} (--beam_size={items} ranks the whole catalogue), or --eval_mode=exact")
    return eval_mode, beam_size


def checked_length_bucket_rows(value: object) -> int:
    """``length_bucket_rows`` if it is an int >= 0, else a :class:`ConfigError` saying what to set."""
    if isinstance(value, bool) or not isinstance(value, int) or value < 0:
        raise ConfigError(f"length_bucket_rows must be an int >= 0, got {value!r} — set the rows per T5 call of a "
                          "training batch split by history length (0: one call per batch)")
    return value
