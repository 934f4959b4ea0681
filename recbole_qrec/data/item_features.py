"""Item modality features for QBert4Rec's stage 1, one row per RecBole internal item id (padding excluded).

``modalities`` (e.g. ``[text]``; null, the default: every modality the target dataset has) selects
the modalities stage 1 fuses. Per modality,
the source is either a ``.npy`` matrix named by ``text_feature_file`` / ``image_feature_file``
(row ``r`` = item token ``str(r)``, read with :func:`recbole_qrec.data.features.load_features`), or,
when that key is null and the dataset declares the field in ``item_content_fields``, the
content-code proxy (:func:`code_proxy`, the one-hot of the 4 levels x 256, level ``l`` weighted by
``code_proxy_level_decay ** l``) of the codes (``text_codes`` / ``image_codes``) that ``dataset_prep.convert`` wrote
into ``<dataset>.item``. An all-zero row marks an item missing that modality.

The target dataset must have every selected modality (:func:`load_item_features`). A pretraining
source is aligned with the target (:func:`load_source_features`): the same modalities and widths,
all-zero rows for a modality it lacks; a source with no content at all (Arts) has only missing
rows, so its items are represented by their learnable ID vectors alone.

:func:`run_content_sources` says, for any model's config, which content each domain of the run reads and where
it came from (``text:llama``, ``image:vit``, ``id-embedding:SASRec``, ...; ``missing`` where the dataset lacks it),
for the run's record and log.
"""

from __future__ import annotations

import hashlib
import json
from collections.abc import Sequence
from dataclasses import dataclass
from logging import getLogger
from pathlib import Path
from typing import Any

import numpy as np
import torch
from recbole.config import Config
from recbole.data.dataset import Dataset
from torch import Tensor

from recbole_qrec.data.atomic_files import data_root, read_header
from recbole_qrec.data.cross_domain import pretrain_dataset_names
from recbole_qrec.data.features import (DEFAULT_CODEBOOK_SIZE, DEFAULT_LEVEL_DECAY, UNKNOWN_SOURCE, check_codes,
                                        content_sources, feature_source, load_features, one_hot)
from recbole_qrec.data.sid import SID_FIELD, SID_FILE, read_code_column, sid_metadata_path, sid_path
from recbole_qrec.errors import ConfigError, MalformedDataError

# modality -> (config key of a .npy feature file, content-code field of <dataset>.item).
MODALITY_SOURCES = {"text": ("text_feature_file", "text_codes"), "image": ("image_feature_file", "image_codes")}
# Config keys naming the code fields a model reads: TIGER's codes, MQL4GRec's two languages (``file``: the .sid of
# sid_producer).
CODE_SOURCE_KEYS = ("sid_source", "text_sid_source", "image_sid_source")
MISSING_SOURCE = "missing"


@dataclass
class ItemFeatures:
    """``matrices``: one float32 ``[n, dim_m]`` tensor per modality named in ``modalities`` (row ``j``
    = internal item id ``j + 1``); ``present``: ``[n, M]`` bool, False for all-zero rows."""

    modalities: list[str]
    matrices: list[Tensor]
    present: Tensor

    def digest(self) -> str:
        """SHA-256 of the modality names and feature values, so cached semantic IDs follow their features."""
        sha = hashlib.sha256(" ".join(self.modalities).encode())
        for matrix in self.matrices:
            sha.update(str(tuple(matrix.shape)).encode())
            sha.update(matrix.contiguous().cpu().numpy())  # its buffer, not a bytes copy of it
        return sha.hexdigest()

    def to(self, device: torch.device) -> ItemFeatures:
        return ItemFeatures(self.modalities, [matrix.to(device) for matrix in self.matrices], self.present.to(device))


def from_matrices(modalities: list[str], matrices: list[Tensor]) -> ItemFeatures:
    """Features with ``present`` derived from the non-zero rows."""
    return ItemFeatures(modalities, matrices, torch.stack([(matrix != 0).any(1) for matrix in matrices], 1))


def concat_features(parts: Sequence[ItemFeatures]) -> ItemFeatures:
    """The rows of ``parts`` (aligned: same modalities and widths) one after the other (one part: itself, no copy)."""
    if len(parts) == 1:
        return parts[0]
    matrices = [torch.cat(column) for column in zip(*(part.matrices for part in parts))]
    return ItemFeatures(parts[0].modalities, matrices, torch.cat([part.present for part in parts]))


def selected_modalities(config: Config) -> list[str] | None:
    """The validated ``modalities`` list; None (unset) means every modality the target has."""
    names = config["modalities"]
    if names is None:
        return None
    names = [names] if isinstance(names, str) else list(names)
    known = list(MODALITY_SOURCES)
    if not names or any(name not in known for name in names) or len(set(names)) != len(names):
        raise ConfigError(f"modalities {names} is not a list of known modalities without repeats — list one or more "
                          f"of {known}, e.g. [text, image] (or leave it null: every modality the dataset has)")
    return names


def modality_matrix(config: Config, dataset: Dataset, modality: str) -> Tensor | None:
    """``[n_items - 1, dim]`` features of ``modality`` for ``dataset``'s items, None when it has no source."""
    file_key, code_field = MODALITY_SOURCES[modality]
    rows = item_rows(dataset)
    if config[file_key]:
        matrix = load_features(config[file_key], n_items=max(rows) + 1)[rows]
        if not np.any(matrix):
            raise MalformedDataError(
                f"{file_key} {config[file_key]} holds only zero rows for the {len(rows):,} items of "
                f"{dataset.dataset_name}, and a zero row means 'no {modality} for this item' — give the features made "
                f"for this dataset (python -m dataset_prep.features), or leave {file_key} unset to use the "
                f"{code_field} codes"
            )
    elif code_field in (config["item_content_fields"] or []):
        item_file = Path(dataset.dataset_path) / f"{dataset.dataset_name}.item"
        matrix = code_proxy(item_file, code_field, rows, config["code_proxy_level_decay"])
    else:
        return None
    return torch.from_numpy(np.ascontiguousarray(matrix, dtype=np.float32))


def load_item_features(config: Config, dataset: Dataset) -> ItemFeatures:
    """The target ``dataset``'s features of the selected modalities; :class:`ConfigError` if one is unavailable
    (with ``modalities`` unset: if it has none at all)."""
    requested = selected_modalities(config)
    matrices = {modality: modality_matrix(config, dataset, modality) for modality in requested or MODALITY_SOURCES}
    available = {modality: matrix for modality, matrix in matrices.items() if matrix is not None}
    missing = [modality for modality in matrices if modality not in available]
    if not available or (requested and missing):
        fix = " or remove them from modalities" if requested else ""
        raise ConfigError(
            f"{config['model']} needs {missing} item features (modalities: {requested or 'every available one'}), but dataset "
            f"{config['dataset']} has none (its item_content_fields are {config['item_content_fields'] or []}, "
            f"{' / '.join(MODALITY_SOURCES[m][0] for m in missing)} null) — set the feature file key to a .npy file "
            f"with one row per item id{fix}"
        )
    return from_matrices(list(available), list(available.values()))


def load_source_features(config: Config, dataset: Dataset, target: ItemFeatures) -> ItemFeatures:
    """A pretraining source's features aligned with the ``target``'s: zero rows for a modality it lacks."""
    matrices = []
    for modality, like in zip(target.modalities, target.matrices):
        matrix = modality_matrix(config, dataset, modality)
        if matrix is None:
            matrix = like.new_zeros(dataset.item_num - 1, like.shape[1])
        elif matrix.shape[1] != like.shape[1]:
            raise MalformedDataError(
                f"{modality} features of pretraining source {config['dataset']} have width {matrix.shape[1]}, the "
                f"target's {like.shape[1]} — every domain needs the same {modality} encoder (or the code proxy)"
            )
        matrices.append(matrix)
    return from_matrices(target.modalities, matrices)


def item_rows(dataset: Dataset) -> list[int]:
    """Feature-matrix row of each internal item id ``1..n-1``: its token read as an integer."""
    tokens = dataset.field2id_token[dataset.iid_field][1:]
    try:
        return [int(token) for token in tokens]
    except ValueError as err:
        raise MalformedDataError(f"item tokens must be integer ids to index feature rows ({err}) — number the items "
                                 "0..n-1 as `python -m dataset_prep.convert` does") from err


def code_proxy(item_file: Path, field: str, rows: Sequence[int] | None = None,
               level_decay: float = DEFAULT_LEVEL_DECAY) -> np.ndarray:
    """Content-code proxy features of ``field`` for the item ids ``rows`` in that order (default: ids ``0..`` the
    largest), code level ``l`` weighted by ``level_decay ** l``; items without codes: zero rows. The codes of every
    item are checked; only the rows asked for are built (one matrix: a large catalogue's memory once)."""
    source = f"{item_file}:{field}"
    codes = {int(item): row for item, row in read_code_column(item_file, field).items()}
    rows = range(max(codes, default=-1) + 1) if rows is None else rows
    levels = check_codes(codes, max([*rows, *codes], default=0) + 1, DEFAULT_CODEBOOK_SIZE, source)
    coded = [position for position, item in enumerate(rows) if item in codes]
    code_rows = np.array([codes[rows[position]] for position in coded], dtype=np.int64).reshape(len(coded), levels)
    return one_hot(code_rows, DEFAULT_CODEBOOK_SIZE, rows=len(rows), at=np.array(coded, dtype=np.int64),
                   level_decay=level_decay)


def sid_file_source(folder: Path, dataset: str, producer: str | None) -> str:
    """The content behind ``producer``'s code file (:func:`~recbole_qrec.data.sid.sid_path`): the sources its
    tokenize report records, joined by ``+``."""
    report_path = sid_metadata_path(sid_path(folder, dataset, producer))
    if not report_path.is_file():
        return MISSING_SOURCE
    return report_source(json.loads(report_path.read_text(encoding="utf-8")))


def report_source(report: dict[str, Any]) -> str:
    """The content sources a tokenize report (a ``.sid.json``) records, joined by ``+``."""
    sources = report.get("content_sources")
    return "+".join(sources) if sources else UNKNOWN_SOURCE


def domain_content_sources(config: Config, dataset: str, target: bool) -> dict[str, str]:
    """``field or modality -> source`` of the content ``config``'s model reads from ``dataset``: the code fields of
    :data:`CODE_SOURCE_KEYS` and ``selected_features``, and QBert4Rec's modalities (their feature files on the target,
    else their code fields). A pretraining source reads neither a ``.sid`` file nor the feature files."""
    folder = data_root(config) / dataset
    item_file = folder / f"{dataset}.item"
    present = {name for name, _ in read_header(item_file, config["field_separator"])} if item_file.is_file() else set()
    recorded = content_sources(folder, dataset)

    def field_source(field: str) -> str:
        return recorded.get(field, UNKNOWN_SOURCE) if field in present else MISSING_SOURCE

    fields = [config[key] for key in CODE_SOURCE_KEYS if config[key] is not None] + list(config["selected_features"] or [])
    used = {field: field_source(field) for field in fields if field != SID_FILE}
    if SID_FILE in fields and target:
        used[SID_FIELD] = sid_file_source(folder, dataset, config["sid_producer"])
    if "text_feature_file" in config.final_config_dict:  # QBert4Rec's stage 1 fuses modality features
        for modality in selected_modalities(config) or list(MODALITY_SOURCES):
            file_key, code_field = MODALITY_SOURCES[modality]
            used[modality] = feature_source(config[file_key]) if target and config[file_key] else field_source(code_field)
    return used


def run_content_sources(config: Config, source_names: Sequence[str] | None = None) -> dict[str, dict[str, str]]:
    """``dataset -> {field or modality: source}`` for the target and each pretraining source (``source_names``, as
    a run resolved them; None: resolved here from ``pretrain_datasets``), e.g.
    ``{"Arts": {"text_codes": "id-embedding:SASRec"}}``; ``{}`` per dataset for models that read no content.
    Logs a warning for each content the model can use but a dataset lacks (``missing``)."""
    sources_of_run = pretrain_dataset_names(config) if source_names is None else source_names
    names = [config["dataset"], *sources_of_run]
    sources = {name: domain_content_sources(config, name, target=index == 0) for index, name in enumerate(names)}
    for name, used in sources.items():
        missing = [field for field, source in used.items() if source == MISSING_SOURCE]
        if missing:
            getLogger().warning(f"{config['model']} on {name}: no {', '.join(missing)} in the dataset — it runs "
                                "without that content")
    return sources
