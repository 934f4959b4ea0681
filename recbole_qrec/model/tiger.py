"""TIGER (Rajput et al., NeurIPS 2023): generative retrieval of the next item's semantic ID.

A T5 encoder-decoder (no pretrained weights) reads the user's history as code tokens, item by item
and level by level, and writes the ``L`` code tokens of the next item. Token ids come from
:class:`~recbole_qrec.generation.SemanticIdVocab` (0 padding and decoder start, 1 EOS, then one block
of ``K`` ids per level).

Semantic IDs (``sid_source``): ``file`` reads ``<dataset>.sid`` written by ``python -m
recbole_qrec.tokenize``; a content-code field of ``<dataset>.item`` (``text_codes``, ``image_codes``,
as ``dataset_prep.convert`` writes them) gets TIGER's extra level, each item's index among the items
sharing its tuple (:func:`recbole_qrec.quantization.append_level`), which makes the codes unique.
``K`` is the largest code + 1. The code table is a buffer, so a saved state dict carries it.

Ranking: :meth:`TIGER.full_sort_predict` runs the constrained beam search
(:func:`recbole_qrec.generation.constrained_beam_search`), which only generates existing items, and
returns each beam item's sequence log-probability and ``-inf`` for every other item. RecBole ranks by
score, so its top-k is the beam order (exact for every ``k <= beam_size``; equal scores, which would
be ordered arbitrarily, do not occur in practice). :meth:`TIGER.predict` (sampled evaluation) gives
any item the same score by teacher forcing.
"""

from __future__ import annotations

from pathlib import Path

import torch
from recbole.config import Config
from recbole.data.dataset import Dataset
from recbole.data.interaction import Interaction
from recbole.model.abstract_recommender import SequentialRecommender
from torch import Tensor
from transformers import T5Config, T5ForConditionalGeneration

from recbole_qrec.data.sid import SID_FIELD, load_code_table, sid_path, with_padding_row
from recbole_qrec.errors import ConfigError
from recbole_qrec.generation import PrefixIndex, SemanticIdVocab, constrained_beam_search
from recbole_qrec.quantization import append_level

SID_FILE = "file"


class TIGER(SequentialRecommender):
    """Encoder-decoder over semantic-ID tokens; ranks all items by constrained beam search."""

    def __init__(self, config: Config, dataset: Dataset) -> None:
        super().__init__(config, dataset)
        check_beam_size(config["beam_size"], config["topk"])
        self.beam_size = config["beam_size"]
        self.length_bucket_rows = checked_length_bucket_rows(config["length_bucket_rows"])
        codes = item_code_table(config, dataset)
        self.register_buffer("item_codes", codes)
        self.vocab = SemanticIdVocab(levels=codes.shape[1], codebook_size=int(codes.max()) + 1)
        self.index = PrefixIndex(codes[1:], self.vocab.codebook_size, item_ids=torch.arange(1, len(codes)))
        self.t5 = T5ForConditionalGeneration(t5_config(config, self.vocab))

    def item_tokens(self, items: Tensor) -> Tensor:
        """Item ids ``[...]`` -> code token ids ``[..., L]`` (padding items -> padding tokens)."""
        return code_tokens(self.item_codes, items, self.vocab)

    def encoder_inputs(self, interaction: Interaction) -> tuple[Tensor, Tensor]:
        """Right-padded history tokens ``[B, S' * L]`` and attention mask, ``S'`` the longest history of the batch."""
        history = interaction[self.ITEM_SEQ][:, : int(interaction[self.ITEM_SEQ_LEN].max())]
        tokens = self.item_tokens(history).flatten(1)
        return tokens, (tokens != self.vocab.pad_id).long()

    def calculate_loss(self, interaction: Interaction) -> Tensor:
        """Teacher-forced cross-entropy of the next item's ``L`` tokens (T5 shifts the labels right)."""
        tokens, mask = self.encoder_inputs(interaction)
        labels = self.item_tokens(interaction[self.POS_ITEM_ID])
        return length_bucketed_loss(self.t5, tokens, mask, labels, self.length_bucket_rows)

    def predict(self, interaction: Interaction) -> Tensor:
        """Log-probability of each row's candidate item (``ITEM_ID``): the score the beam search would give it."""
        tokens, mask = self.encoder_inputs(interaction)
        return teacher_forced_log_prob(self.t5, tokens, mask, self.item_tokens(interaction[self.ITEM_ID]))

    def full_sort_predict(self, interaction: Interaction) -> Tensor:
        """``[B, n_items]``: the ``beam_size`` beam items' sequence log-probabilities, ``-inf`` elsewhere."""
        tokens, mask = self.encoder_inputs(interaction)
        items, scores = constrained_beam_search(self.t5, tokens, mask, self.prefix_index(), self.vocab, self.beam_size)
        return beam_score_matrix(items, scores, self.n_items)

    def prefix_index(self) -> PrefixIndex:
        """The prefix index of the item codes, on the model's device."""
        if self.index.leaf_items.device != self.item_codes.device:
            self.index.to(self.item_codes.device)
        return self.index


def check_beam_size(beam_size: int, topk: list[int]) -> None:
    """The beam must cover the largest cut-off, else ``-inf`` items would fill the top-k in arbitrary order."""
    if beam_size < max(topk):
        raise ConfigError(f"beam_size ({beam_size}) must be at least the largest topk ({max(topk)}): items outside "
                          "the beam all score -inf, so a shorter beam cannot rank the whole top-k.")


def checked_length_bucket_rows(value: object) -> int:
    """``length_bucket_rows`` if it is an int >= 0, else a :class:`ConfigError` saying what to set."""
    if isinstance(value, bool) or not isinstance(value, int) or value < 0:
        raise ConfigError(f"length_bucket_rows must be an int >= 0 (rows per T5 call of a training batch split by "
                          f"history length; 0: one call per batch); got {value!r}.")
    return value


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
            losses = [t5(input_ids=tokens[rows, :width], attention_mask=mask[rows, :width], labels=labels[rows]).loss
                      * len(rows) for rows, width in zip(order.tensor_split(parts), widths)]
            return torch.stack(losses).sum() / len(tokens)
    return t5(input_ids=tokens, attention_mask=mask, labels=labels).loss


def item_code_table(config: Config, dataset: Dataset, key: str = "sid_source") -> Tensor:
    """Unique codes ``[n_items, L]`` in internal item order (row 0, the padding item, all zeros) of the
    semantic-ID source that config ``key`` names."""
    source = config[key]
    if source == SID_FILE:
        return load_code_table(dataset, sid_path(dataset), SID_FIELD, pad_code=0)
    content_fields = config["item_content_fields"] or []
    if source not in content_fields:
        raise ConfigError(
            f"{key} must be '{SID_FILE}' (<dataset>.sid from `python -m recbole_qrec.tokenize`) or a content-code "
            f"field of dataset {config['dataset']} (item_content_fields: {content_fields}); got {source!r}."
        )
    return content_code_table(dataset, source)


def content_code_table(dataset: Dataset, field: str) -> Tensor:
    """Codes of content-code ``field`` of ``<dataset>.item`` with TIGER's extra level (unique; row 0 all zeros)."""
    item_file = Path(dataset.dataset_path) / f"{dataset.dataset_name}.item"
    codes = load_code_table(dataset, item_file, field, pad_code=0)
    return with_padding_row(torch.from_numpy(append_level(codes[1:].numpy())))


def code_tokens(codes: Tensor, items: Tensor, vocab: SemanticIdVocab) -> Tensor:
    """Item ids ``[...]`` -> token ids ``[..., L]`` of their rows of ``codes`` (padding items -> padding tokens)."""
    tokens = vocab.encode(codes[items])
    return tokens.masked_fill((items == 0).unsqueeze(-1), vocab.pad_id)


def teacher_forced_log_prob(t5: T5ForConditionalGeneration, tokens: Tensor, mask: Tensor, labels: Tensor) -> Tensor:
    """Sequence log-probability ``[B]`` of ``labels`` ``[B, L]`` given the encoder input: a beam search's score."""
    decoder_input_ids = t5.prepare_decoder_input_ids_from_labels(labels=labels)
    logits = t5(input_ids=tokens, attention_mask=mask, decoder_input_ids=decoder_input_ids).logits
    return logits.float().log_softmax(-1).gather(2, labels.unsqueeze(-1)).sum((1, 2))


def t5_config(config: Config, vocab: SemanticIdVocab) -> T5Config:
    """A randomly initialised T5 over ``vocab`` with the model's hyper-parameters."""
    return T5Config(
        vocab_size=vocab.size,
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


def beam_score_matrix(items: Tensor, scores: Tensor, n_items: int) -> Tensor:
    """``[B, n_items]`` with ``scores[b, j]`` at column ``items[b, j]`` and ``-inf`` elsewhere.

    Empty beam slots (item -1, score ``-inf``) write ``-inf`` into column 0, the padding item.
    """
    matrix = scores.new_full((len(items), n_items), float("-inf"))
    return matrix.scatter_(1, items.clamp_min(0), scores)
