"""TIGER (Rajput et al., NeurIPS 2023): generative retrieval of the next item's semantic ID.

A T5 encoder-decoder (no pretrained weights) reads the user's history as code tokens, item by item
and level by level, and writes the ``L`` code tokens of the next item. Token ids come from
:class:`~recbole_qrec.generation.SemanticIdVocab` (0 padding and decoder start, 1 EOS, then one block
of ``K`` ids per level), followed by ``user_buckets`` user tokens: as in the paper, the encoder input starts with
the user's token, the user ID hashed into one of ``user_buckets`` buckets (CRC-32 of RecBole's user token, so a
user keeps the bucket across runs and splits; 0 buckets: no user token).

Semantic IDs (``sid_source``), a code table read by the dataset
(:class:`~recbole_qrec.data.dataset.TIGERDataset`): ``file``, ``<dataset>.sid`` written by ``python -m
recbole_qrec.tokenize``; or a content-code field of ``<dataset>.item`` (``text_codes``, ``image_codes``, as
``dataset_prep.convert`` writes them) with TIGER's extra level, each item's index among the items sharing its
tuple (:func:`recbole_qrec.data.sid.item_code_table`), which makes the codes unique; ``code_levels`` keeps the first
levels of the content codes before that level (``3``: the paper's 3 + 1 layout from 4-level codes). ``K`` is the
largest code + 1. The code table is a buffer, so a saved state dict carries it.

Ranking: :meth:`TIGER.full_sort_predict` runs the constrained beam search
(:func:`recbole_qrec.generation.constrained_beam_search`), which only generates existing items, and
returns each beam item's sequence log-probability and ``-inf`` for every other item. RecBole ranks by
score, so its top-k is the beam order (exact for every ``k <= beam_size``; equal scores, which would
be ordered arbitrarily, do not occur in practice). :meth:`TIGER.predict` (sampled evaluation) gives
any item the same score by teacher forcing. Cold start (the paper's rule, ``unseen_item_share`` > 0): items that
were never a training target, whose codes the decoder never learned to write, follow the beam item that shares
their first ``unseen_prefix_levels`` codes, up to ``unseen_item_share`` of ``beam_size`` of them per user
(:func:`recbole_qrec.generation.admit_unseen_items`). With ``eval_mode: exact`` it ranks every item by that score
instead (:func:`recbole_qrec.generation.exact_score_matrix`): the ranking a beam as wide as the catalogue would
give, at the cost of decoding every item's code tokens for every user.
"""

from __future__ import annotations

import zlib
from collections.abc import Mapping, Sequence

import torch
from recbole.config import Config
from recbole.data.interaction import Interaction
from recbole.model.abstract_recommender import SequentialRecommender
from torch import Tensor
from transformers import T5ForConditionalGeneration

from recbole_qrec.data.dataset import SemanticIdDataset
from recbole_qrec.data.sid import SID_FILE, item_code_table
from recbole_qrec.errors import ConfigError
from recbole_qrec.generation import (PrefixIndex, SemanticIdVocab, admit_unseen_items, beam_score_matrix, code_groups,
                                    constrained_beam_search, exact_score_matrix)
from recbole_qrec.model.layers import (batch_histories, check_t5_settings, checked_full_length_inputs,
                                       checked_length_bucket_rows, checked_ranking, code_tokens, length_bucketed_loss,
                                       t5_config, teacher_forced_log_prob)


class TIGER(SequentialRecommender):
    """Encoder-decoder over semantic-ID tokens; ranks all items by constrained beam search or exactly."""

    check_settings = staticmethod(check_t5_settings)

    def __init__(self, config: Config, dataset: SemanticIdDataset) -> None:
        super().__init__(config, dataset)
        self.eval_mode, self.beam_size = checked_ranking(config, dataset)
        self.length_bucket_rows = checked_length_bucket_rows(config["length_bucket_rows"])
        self.full_length_inputs = checked_full_length_inputs(config["full_length_inputs"], config["device"])
        levels = checked_code_levels(config, dataset.code_tables)
        codes = item_code_table(config, dataset.code_tables, levels=levels)
        self.register_buffer("item_codes", codes)
        self.unseen_slots, prefix_levels = checked_unseen_items(config, codes.shape[1])
        self.register_buffer("prefix_groups", code_groups(codes[:, :prefix_levels]), persistent=False)
        seen = torch.zeros(len(codes), dtype=torch.bool)
        seen[dataset.inter_feat[dataset.iid_field]] = True  # training targets: the IDs the decoder learns to write
        seen[0] = True
        self.register_buffer("unseen_items", (~seen).nonzero().squeeze(1), persistent=False)
        self.vocab = SemanticIdVocab(levels=codes.shape[1], codebook_size=int(codes.max()) + 1)
        self.index = PrefixIndex(codes[1:], self.vocab.codebook_size, item_ids=torch.arange(1, len(codes)))
        self.user_buckets = checked_user_buckets(config["user_buckets"])
        users = dataset.field2id_token[dataset.uid_field]
        self.register_buffer("user_tokens", self.vocab.size + user_buckets(users, self.user_buckets), persistent=False)
        self.t5 = T5ForConditionalGeneration(t5_config(config, self.vocab, extra_tokens=self.user_buckets))

    def item_tokens(self, items: Tensor) -> Tensor:
        """Item ids ``[...]`` -> code token ids ``[..., L]`` (padding items -> padding tokens)."""
        return code_tokens(self.item_codes, items, self.vocab)

    def encoder_inputs(self, interaction: Interaction) -> tuple[Tensor, Tensor]:
        """The user token and the right-padded history tokens ``[B, 1 + S' * L]`` (no user token with 0
        ``user_buckets``), and their attention mask; ``S'`` the longest history of the batch, or
        ``MAX_ITEM_LIST_LENGTH`` with ``full_length_inputs``."""
        history = batch_histories(interaction[self.ITEM_SEQ], interaction[self.ITEM_SEQ_LEN], self.full_length_inputs)
        tokens = self.item_tokens(history).flatten(1)
        if self.user_buckets:
            tokens = torch.cat([self.user_tokens[interaction[self.USER_ID]].unsqueeze(1), tokens], dim=1)
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
        """``[B, n_items]``: the ``beam_size`` beam items' sequence log-probabilities (plus up to ``unseen_item_share``
        of ``beam_size`` unseen items that share a beam item's prefix, just below it), ``-inf`` elsewhere; with
        ``eval_mode: exact`` every item's (``-inf`` for the padding item 0)."""
        tokens, mask = self.encoder_inputs(interaction)
        if self.eval_mode == "exact":
            items = torch.arange(1, self.n_items, device=tokens.device)
            return exact_score_matrix(self.t5, tokens, mask, self.item_tokens(items), items, self.n_items)
        items, scores = constrained_beam_search(self.t5, tokens, mask, self.prefix_index(), self.vocab, self.beam_size)
        return admit_unseen_items(beam_score_matrix(items, scores, self.n_items), items, scores, self.prefix_groups,
                                  self.unseen_items, self.unseen_slots)

    def prefix_index(self) -> PrefixIndex:
        """The prefix index of the item codes, on the model's device."""
        return self.index.to(self.item_codes.device)



def user_buckets(users: Sequence[str], buckets: int) -> Tensor:
    """``LongTensor[len(users)]``: each user token's bucket, its CRC-32 modulo ``buckets`` (zeros for 0 buckets)."""
    return torch.tensor([zlib.crc32(str(user).encode()) % buckets if buckets else 0 for user in users])


def checked_user_buckets(value: object) -> int:
    if isinstance(value, bool) or not isinstance(value, int) or value < 0:
        raise ConfigError(f"user_buckets must be an int >= 0, got {value!r} — set the number of hashed user tokens "
                          "(the paper: 2000; 0: no user token)")
    return value


def checked_unseen_items(config: Config, levels: int) -> tuple[int, int]:
    """``(slots, prefix levels)`` of TIGER's cold-start rule: ``unseen_item_share`` of ``beam_size`` (rounded down)
    and ``unseen_prefix_levels`` (~: every level but the last; its type and minimum checked by VALUE_RULES), or a
    ConfigError when it is deeper than the codes."""
    prefix = config["unseen_prefix_levels"]
    prefix = levels - 1 if prefix is None else prefix
    if prefix > levels:
        raise ConfigError(f"unseen_prefix_levels must be ~ or an int in 1..{levels} (the item codes' levels), got "
                          f"{config['unseen_prefix_levels']!r} — e.g. --unseen_prefix_levels={max(1, levels - 1)}")
    return int(config["unseen_item_share"] * config["beam_size"]), prefix


def checked_code_levels(config: Config, code_tables: Mapping[str, Tensor]) -> int | None:
    """``code_levels`` if it is ~ or a level count of the content codes ``sid_source`` names, else a ConfigError."""
    value, source = config["code_levels"], config["sid_source"]
    if value is None:
        return None
    if source == SID_FILE:
        raise ConfigError(f"code_levels is {value!r} but sid_source is '{SID_FILE}', whose levels the tokenizer sets — "
                          "unset code_levels, or run `python -m recbole_qrec.tokenize --set levels=N`")
    available = code_tables[source].shape[1] if source in code_tables else None
    if isinstance(value, bool) or not isinstance(value, int) or not 1 <= value <= (available or value):
        raise ConfigError(f"code_levels must be ~ or an int in 1..{available} (the levels of {source}), got {value!r} "
                          "— e.g. --code_levels=3 for the paper's 3 levels + the disambiguation level")
    return value
