"""Batched beam search over semantic IDs that only generates existing items (TIGER, MQL4GRec).

Scores are plain sums of the per-token log-probabilities (log-softmax over the whole vocabulary),
the sequence is exactly ``L`` code tokens and no end-of-sequence token is generated. This equals
``model.generate(..., num_beams=B, num_return_sequences=B, max_new_tokens=L, length_penalty=0.0,
prefix_allowed_tokens_fn=<trie over the code table>)`` (see :mod:`recbole_qrec.generation.reference`):
its prefix function never allows EOS, so no beam finishes before the length limit, and with
``length_penalty=0`` its ``sequences_scores`` are the same sums. The one difference: when fewer
than ``B`` items exist, ``generate`` pads with duplicates scored about ``-1e9``; here the extra
slots hold item ``-1`` and score ``-inf``.
"""

from __future__ import annotations

import inspect

import torch
from torch import nn
from transformers import DynamicCache, EncoderDecoderCache, PreTrainedModel
from transformers.modeling_outputs import BaseModelOutput

from recbole_qrec.generation.masks import additive_padding_mask
from recbole_qrec.generation.prefix_index import PrefixIndex
from recbole_qrec.generation.vocab import SemanticIdVocab

NEG_INF = float("-inf")


@torch.no_grad()
def constrained_beam_search(
    model: PreTrainedModel,
    encoder_input_ids: torch.Tensor,
    attention_mask: torch.Tensor | None,
    index: PrefixIndex,
    vocab: SemanticIdVocab,
    beam_size: int,
    return_tokens: bool = False,
) -> tuple[torch.Tensor, ...]:
    """Top ``beam_size`` items per user of an encoder-decoder model (e.g. ``T5ForConditionalGeneration``).

    Runs the encoder once and one cached decoder step per level for all users x beams; a beam may
    only extend its prefix with codes that ``index`` allows. Returns ``items`` ``LongTensor[batch,
    beam_size]`` and ``scores`` ``FloatTensor[batch, beam_size]`` (sequence log-probabilities,
    descending); when ``beam_size`` exceeds the number of items, the extra slots hold item -1 and
    score ``-inf``. With ``return_tokens`` also returns the generated token ids ``[batch, beam_size,
    L]`` (pad in empty slots). The model should be in eval mode and ``index`` on the inputs' device.
    """
    check_arguments(index, vocab, beam_size)
    batch, codebook = len(encoder_input_ids), vocab.codebook_size
    device = encoder_input_ids.device
    attention_mask = additive_padding_mask(attention_mask)
    hidden = model.get_encoder()(input_ids=encoder_input_ids, attention_mask=attention_mask).last_hidden_state
    cache = EncoderDecoderCache(DynamicCache(config=model.config), DynamicCache(config=model.config))
    cache_argument = {cache_argument_name(model): cache}  # each decoder call appends to it in place
    scores = torch.zeros(batch, 1, device=device)
    prefixes = torch.zeros(batch, 1, dtype=torch.long, device=device)
    tokens = torch.full((batch, 1, 1), vocab.decoder_start_id, dtype=torch.long, device=device)
    for level in range(index.depth):
        output = model(encoder_outputs=BaseModelOutput(last_hidden_state=hidden), attention_mask=attention_mask,
                       decoder_input_ids=tokens[:, :, -1].reshape(-1, 1), use_cache=True, **cache_argument)
        log_probs = nn.functional.log_softmax(output.logits[:, -1].float(), dim=-1)[:, vocab.level_slice(level)]
        children = index.children(level, prefixes.flatten())
        candidates = torch.where(children >= 0, scores.reshape(-1, 1) + log_probs, NEG_INF).reshape(batch, -1)
        width = scores.shape[1]
        scores, picked = padded_top_k(candidates, beam_size)
        beams = picked // codebook
        prefixes = children.reshape(batch, -1).gather(1, picked).clamp_min(0)
        tokens = torch.cat([gather_beams(tokens, beams), (vocab.level_start(level) + picked % codebook)[..., None]], dim=-1)
        if level + 1 < index.depth:
            hidden, attention_mask = follow_beams(cache, hidden, attention_mask, beams, width)
    found = scores > NEG_INF
    items = torch.where(found, index.leaf_items[prefixes], -1)
    if not return_tokens:
        return items, scores
    return items, scores, torch.where(found[..., None], tokens[..., 1:], vocab.pad_id)


def cache_argument_name(model: PreTrainedModel) -> str:
    """The forward argument that takes the key/value cache: ``cache`` from transformers 5.24 on, ``past_key_values`` before."""
    return "cache" if "cache" in inspect.signature(model.forward).parameters else "past_key_values"


def follow_beams(cache: EncoderDecoderCache, hidden: torch.Tensor, attention_mask: torch.Tensor | None,
                 beams: torch.Tensor, width: int) -> tuple[torch.Tensor, torch.Tensor | None]:
    """Make decoder row ``b * beam_size + j`` hold the state of beam ``beams[b, j]`` (of ``width``) of user ``b``."""
    if width == 1:  # after the first step: copy each user's one row per beam, encoder side included
        repeats = beams.shape[1]
        cache.batch_repeat_interleave(repeats)
        mask = None if attention_mask is None else attention_mask.repeat_interleave(repeats, dim=0)
        return hidden.repeat_interleave(repeats, dim=0), mask
    rows = (torch.arange(len(beams), device=beams.device)[:, None] * width + beams).flatten()
    cache.self_attention_cache.reorder_cache(rows)  # cross-attention states are the same for all beams of a user
    return hidden, attention_mask


def padded_top_k(candidates: torch.Tensor, k: int) -> tuple[torch.Tensor, torch.Tensor]:
    """Row-wise descending top ``k`` of ``[batch, n]``; columns beyond ``n`` get ``-inf`` and index 0."""
    values, picked = candidates.topk(min(k, candidates.shape[1]), dim=1)
    missing = k - values.shape[1]
    if missing > 0:
        values = nn.functional.pad(values, (0, missing), value=NEG_INF)
        picked = nn.functional.pad(picked, (0, missing), value=0)
    return values, picked


def gather_beams(tensor: torch.Tensor, beams: torch.Tensor) -> torch.Tensor:
    """``tensor[b, beams[b, j], ...]`` for a ``[batch, width, n]`` tensor."""
    return tensor.gather(1, beams[..., None].expand(-1, -1, tensor.shape[-1]))


def check_arguments(index: PrefixIndex, vocab: SemanticIdVocab, beam_size: int) -> None:
    if beam_size < 1:
        raise ValueError(f"beam_size must be at least 1; got {beam_size}.")
    if (index.depth, index.codebook_size) != (vocab.levels, vocab.codebook_size):
        raise ValueError(f"index has {index.depth} levels x {index.codebook_size} codes but the vocabulary "
                         f"{vocab.levels} x {vocab.codebook_size}.")
