"""Validate item feature matrices (one per modality) and move them to the training device."""

from __future__ import annotations

from collections.abc import Sequence
from typing import Union

import numpy as np
import torch
from torch import Tensor

from recbole_qrec.errors import MalformedDataError

FeatureMatrix = Union[np.ndarray, Tensor]
Features = Union[FeatureMatrix, Sequence[FeatureMatrix]]

_CHECK_ROWS = 65536  # rows checked for NaN/inf at a time (bounds the temporary mask's memory)


def prepare_features(features: Features, device: torch.device) -> list[Tensor]:
    """One floating ``(n_items, dim)`` tensor per modality on ``device`` (float64 becomes float32).

    Raises :class:`~recbole_qrec.errors.MalformedDataError` (a ``ValueError``) for a matrix that is
    not 2-D or is empty, for NaN/inf values (naming how many rows and the first bad row) and for
    modalities whose row counts differ.
    """
    matrices = [features] if isinstance(features, (np.ndarray, Tensor)) else list(features)
    if not matrices:
        raise MalformedDataError("no feature matrix given — pass one matrix per modality")
    tensors = [_as_tensor(matrix, device, index) for index, matrix in enumerate(matrices)]
    rows = [len(t) for t in tensors]
    if len(set(rows)) > 1:
        raise MalformedDataError(f"feature matrices have different row counts {rows} — every modality needs one row per item")
    for index, tensor in enumerate(tensors):
        _check_finite(tensor, index)
    return tensors


def _as_tensor(matrix: FeatureMatrix, device: torch.device, index: int) -> Tensor:
    tensor = torch.as_tensor(matrix).detach()
    if tensor.ndim != 2 or 0 in tensor.shape:
        shape = tuple(tensor.shape)
        raise MalformedDataError(f"feature matrix {index} has shape {shape} — it must be 2-D (items x dims) and non-empty")
    if not tensor.is_floating_point() or tensor.dtype == torch.float64:
        tensor = tensor.float()
    return tensor.to(device)


def _check_finite(tensor: Tensor, index: int) -> None:
    bad_rows = torch.cat([~torch.isfinite(chunk).all(1) for chunk in tensor.split(_CHECK_ROWS)])
    count = int(bad_rows.sum())
    if count:
        first = int(bad_rows.nonzero()[0, 0])
        raise MalformedDataError(
            f"feature matrix {index} has NaN or inf values in {count} row(s), the first is row {first} — "
            "re-create the features (the encoder produced invalid values for these items)"
        )
