"""Item modality features for stage 1, one row per RecBole internal item id (padding excluded).

Per modality, the source is either a ``.npy`` matrix named by ``text_feature_file`` /
``image_feature_file`` (row ``r`` = item token ``str(r)``, read with
:func:`dataset_prep.features.load_features`), or, when that key is null and the dataset declares
the field in ``item_content_fields``, the content-code proxy of ``dataset_prep.features``
(:func:`~dataset_prep.features.codes_to_features`: one-hot of the 4 levels x 256) of the codes
(``text_codes`` / ``image_codes``) that ``dataset_prep.convert`` wrote into ``<dataset>.item``.
A modality with neither source is left out; an all-zero row marks an item missing that modality.
"""

from __future__ import annotations

import hashlib
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch
from recbole.config import Config
from recbole.data.dataset import Dataset
from torch import Tensor

from dataset_prep.features import codes_to_features, load_features
from recbole_qrec.data.sid import read_code_column
from recbole_qrec.errors import ConfigError, MalformedDataError

# (config key of a .npy feature file, content-code field of <dataset>.item) per modality.
MODALITY_SOURCES = (("text_feature_file", "text_codes"), ("image_feature_file", "image_codes"))


@dataclass
class ItemFeatures:
    """``matrices``: one float32 ``[n_items - 1, dim_m]`` tensor per available modality (row ``j`` =
    internal item id ``j + 1``); ``present``: ``[n_items - 1, M]`` bool, False for all-zero rows."""

    matrices: list[Tensor]
    present: Tensor

    def digest(self) -> str:
        """SHA-256 of the feature values, so cached semantic IDs follow the features they came from."""
        sha = hashlib.sha256()
        for matrix in self.matrices:
            sha.update(str(tuple(matrix.shape)).encode())
            sha.update(matrix.contiguous().cpu().numpy().tobytes())
        return sha.hexdigest()

    def to(self, device: torch.device) -> ItemFeatures:
        return ItemFeatures([matrix.to(device) for matrix in self.matrices], self.present.to(device))


def load_item_features(config: Config, dataset: Dataset) -> ItemFeatures:
    """Every available modality of ``dataset``'s items; :class:`ConfigError` when there is none."""
    rows = item_rows(dataset)
    content_fields = config["item_content_fields"] or []
    item_file = Path(dataset.dataset_path) / f"{dataset.dataset_name}.item"
    matrices = []
    for file_key, code_field in MODALITY_SOURCES:
        if config[file_key]:
            matrix, source = load_features(config[file_key]), config[file_key]
        elif code_field in content_fields:
            matrix, source = code_proxy(item_file, code_field, min_items=max(rows) + 1), f"{item_file}:{code_field}"
        else:
            continue
        if len(matrix) <= max(rows):
            raise MalformedDataError(f"{source} has {len(matrix)} rows, but item token {max(rows)} needs a row.")
        matrices.append(torch.from_numpy(np.ascontiguousarray(matrix[rows], dtype=np.float32)))
    if not matrices:
        raise ConfigError(
            f"QBert4Rec needs item features, but dataset {config['dataset']} has no content codes "
            f"(item_content_fields: {content_fields}) and text_feature_file / image_feature_file are null: "
            "set one of them to a .npy file with one row per item id."
        )
    present = torch.stack([matrix.abs().sum(1) > 0 for matrix in matrices], 1)
    return ItemFeatures(matrices, present)


def item_rows(dataset: Dataset) -> list[int]:
    """Feature-matrix row of each internal item id ``1..n-1``: its token read as an integer."""
    tokens = dataset.field2id_token[dataset.iid_field][1:]
    try:
        return [int(token) for token in tokens]
    except ValueError as err:
        raise MalformedDataError(f"item tokens must be integers to index feature rows ({err}).") from err


def code_proxy(item_file: Path, field: str, min_items: int) -> np.ndarray:
    """Content-code proxy features of ``field``, rows = item ids ``0..``; items without codes: zero rows."""
    codes = {int(item): row for item, row in read_code_column(item_file, field).items()}
    return codes_to_features(codes, max(min_items, max(codes) + 1)).features
