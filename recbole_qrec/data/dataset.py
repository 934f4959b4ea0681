"""RecBole datasets that carry the semantic-ID code tables their model reads (RecBole-GNN's pattern: structures
derived from data belong to the dataset, not to files the model opens).

:class:`SemanticIdDataset` is RecBole's ``SequentialDataset`` plus ``code_tables``: ``field ->
LongTensor[n_items, L]`` in internal item-id order (row 0, the padding item, all zeros), read once when the
dataset is built, from a content-code field of ``<dataset>.item`` or, as field ``sid``, the code file of config
``sid_producer`` (:func:`~recbole_qrec.data.sid.sid_path`: the tokenizer's ``<dataset>.sid`` by default).
``sources`` holds the pretraining source domains' datasets (same class, their own configs), so a model finds
their code tables on the target's dataset (:meth:`SemanticIdDataset.source_code_tables`).
Splits made by ``build()`` are shallow copies and share both.

:class:`QRecSequentialDataset`, their base, is RecBole's ``SequentialDataset`` under the cold-start protocol when
``cold_start_share`` is set (:mod:`recbole_qrec.data.cold_start`); ``cold_items`` marks the cold items.

:func:`recbole_qrec.data.create_dataset` picks ``<Model>Dataset`` from this module when it exists (else
:class:`QRecSequentialDataset` where RecBole would build a plain ``SequentialDataset`` or under cold start, else
RecBole's dataset).
"""

from __future__ import annotations

import json
from collections.abc import Mapping
from pathlib import Path

import numpy as np
import torch
from recbole.config import Config
from recbole.data.dataset import SequentialDataset
from recbole.data.interaction import Interaction
from torch import Tensor

from recbole_qrec.data.cold_start import hold_out_cold_items, log_held_out
from recbole_qrec.data.sid import (SID_FIELD, SID_FILE, load_code_table, load_sid_embeddings, sid_embeddings_path,
                                   sid_metadata_path, sid_path, source_field)
from recbole_qrec.errors import ConfigError


class QRecSequentialDataset(SequentialDataset):
    """RecBole's ``SequentialDataset``, its augmentation by array indexing; with ``cold_start_share``, the
    interactions of the cold-start protocol (:func:`~recbole_qrec.data.cold_start.hold_out_cold_items`) and
    ``dropped_users``. ``cold_items``: ``BoolTensor[n_items]``, True for a cold item (none without
    ``cold_start_share``)."""

    def __init__(self, config: Config) -> None:
        self.cold_tokens: list[str] = []
        self.dropped_users = 0
        super().__init__(config)
        self.cold_items = torch.zeros(self.item_num, dtype=torch.bool)
        self.cold_items[torch.as_tensor(self.token2id(self.iid_field, self.cold_tokens), dtype=torch.long)] = True

    def _data_filtering(self) -> None:
        super()._data_filtering()
        share = self.config["cold_start_share"]
        if share is not None:
            if self.item_feat is None:
                raise ConfigError(f"cold_start_share needs {self.dataset_name}.item under {self.dataset_path}, the "
                                  "catalogue that keeps the ids and content of cold items — write it with "
                                  "python -m dataset_prep.convert (or tokenize), or unset cold_start_share")
            held_out = hold_out_cold_items(self.inter_feat, self.uid_field, self.iid_field, self.time_field, share)
            log_held_out(held_out, share)
            self.inter_feat, self.cold_tokens, self.dropped_users = (held_out.inter, held_out.cold_items,
                                                                     held_out.dropped_users)
            self._reset_index()

    def data_augmentation(self) -> None:
        """RecBole's augmentation: a row per interaction after each user's first (time order), its target, with the
        up to ``MAX_ITEM_LIST_LENGTH`` interactions before it as ``<field>_list`` and their count as
        ``item_length``. The same rows in the same order as ``SequentialDataset.data_augmentation``, built by array
        indexing instead of its Python loop per row."""
        self.logger.debug("data_augmentation")
        self._aug_presets()
        self._check_field("uid_field", "time_field")
        self.sort(by=[self.uid_field, self.time_field], ascending=True)
        users = self.inter_feat[self.uid_field].numpy()
        rows = np.arange(len(users))
        user_start = np.maximum.accumulate(np.where(np.r_[True, users[1:] != users[:-1]], rows, 0))
        targets = np.flatnonzero(rows > user_start)
        lengths = np.minimum(targets - user_start[targets], self.max_item_list_len)
        slots = np.arange(self.max_item_list_len)
        filled = torch.from_numpy(slots < lengths[:, None])  # [rows, MAX_ITEM_LIST_LENGTH]
        sources = torch.from_numpy((targets - lengths)[:, None] + slots)[filled]
        lists = {self.item_list_length_field: torch.from_numpy(lengths.astype(np.int64))}
        for field in self.inter_feat:
            if field != self.uid_field:
                values = self.inter_feat[field]
                history = values.new_zeros((len(targets), self.max_item_list_len, *values.shape[1:]))
                history[filled] = values[sources]
                lists[getattr(self, f"{field}_list_field")] = history
        augmented = self.inter_feat[torch.from_numpy(targets)]
        augmented.update(Interaction(lists))
        self.inter_feat = augmented


class SemanticIdDataset(QRecSequentialDataset):
    """A sequential dataset with the code tables named by the config keys in ``sid_source_keys``; ``sid_report``:
    the metadata beside the code file of field ``sid`` (``<file>.sid.json``: the tokenizer's report or the model
    stage's key, collisions and content sources; empty without one), read with the codes, since a later stage run
    may rewrite both."""

    sid_source_keys: tuple[str, ...] = ()

    def __init__(self, config: Config, sources: Mapping[str, SemanticIdDataset] | None = None) -> None:
        super().__init__(config)
        self.sources = dict(sources or {})
        self.code_tables = {field: self.read_code_table(field) for field in self.code_fields()}
        metadata = sid_metadata_path(self.sid_file())
        read = SID_FIELD in self.code_tables and metadata.is_file()
        self.sid_report = json.loads(metadata.read_text(encoding="utf-8")) if read else {}

    def code_fields(self) -> list[str]:
        """The fields the model reads that this dataset has: ``sid`` for ``file``, content-code fields it declares.

        A field the dataset lacks is left out; the model then says which setting to change.
        """
        names = [self.config[key] for key in self.sid_source_keys if self.config[key] is not None]
        content = self.config["item_content_fields"] or []
        return [source_field(name) for name in names if name == SID_FILE or name in content]

    def read_code_table(self, field: str) -> Tensor:
        """``LongTensor[n_items, L]`` of ``field``, padding row 0 all zeros."""
        path = self.sid_file() if field == SID_FIELD else Path(self.dataset_path) / f"{self.dataset_name}.item"
        return load_code_table(self, path, field, pad_code=0)

    def sid_file(self) -> Path:
        """The code file of ``sid_producer`` for this dataset (field ``sid``)."""
        return sid_path(self.dataset_path, self.dataset_name, self.config["sid_producer"])

    def source_code_tables(self) -> dict[str, dict[str, Tensor]]:
        """``source name -> field -> codes`` of the pretraining sources, in ``pretrain_datasets`` order."""
        return {name: source.code_tables for name, source in self.sources.items()}


class TIGERDataset(SemanticIdDataset):
    """TIGER's codes: ``sid_source``."""

    sid_source_keys = ("sid_source",)


class MQL4GRecDataset(SemanticIdDataset):
    """MQL4GRec's two languages: ``text_sid_source`` and ``image_sid_source``."""

    sid_source_keys = ("text_sid_source", "image_sid_source")


class MACRecDataset(MQL4GRecDataset):
    """MACRec's two languages, as MQL4GRec's."""


class MMESIDDataset(SemanticIdDataset):
    """MMESID's codes: always field ``sid`` (the code file of ``sid_producer``: ``<dataset>.MMESID.sid`` of its stage,
    or the per-modality tokenizer's ``<dataset>.sid``), and beside it the ``.sid.npz``: ``sid_codebooks``
    ``[M, L, K, d]`` and ``sid_latents`` ``[n_items, M, d]`` (internal item order)."""

    def __init__(self, config: Config, sources: Mapping[str, SemanticIdDataset] | None = None) -> None:
        super().__init__(config, sources)
        self.sid_codebooks, self.sid_latents = load_sid_embeddings(self, sid_embeddings_path(self.sid_file()))

    def code_fields(self) -> list[str]:
        return [SID_FIELD]


class QBert4RecDataset(SemanticIdDataset):
    """QBert4Rec's codes: always field ``sid``, by default ``<dataset>.QBert4Rec.sid``, written by its tokenize stage
    (stages 1-2), whose ``sid_report`` also holds the injection depths."""

    def code_fields(self) -> list[str]:
        return [SID_FIELD]
