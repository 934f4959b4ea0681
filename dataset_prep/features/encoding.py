"""Shared encoding loop: per-item input loading, batched model calls, zero rows for missing items."""

from __future__ import annotations

from contextlib import nullcontext
from dataclasses import dataclass
from typing import Any, Callable, ContextManager, Sequence

import numpy as np
import torch
from tqdm import tqdm

from recbole_qrec.data.features import EncodedRows
from recbole_qrec.errors import ConfigError

# --dtype choices -> the autocast dtype used on CUDA (CPU always computes in fp32).
DTYPES = {"fp16": torch.float16, "bf16": torch.bfloat16, "fp32": torch.float32}


class UnreadableItemError(Exception):
    """Raised by a loader when an item's input exists but cannot be read (e.g. a corrupt image)."""


@dataclass(frozen=True)
class ItemEncoder:
    """How item ids become feature rows.

    ``load(item)`` returns the model input of one item, or None when the item has none (a missing
    image, an empty text); ``encode(inputs)`` turns at most ``batch_size`` inputs into a
    ``[len(inputs), dim]`` array in one model call.
    """

    dim: int
    batch_size: int
    load: Callable[[int], Any]
    encode: Callable[[list[Any]], np.ndarray]


def encode_items(encoder: ItemEncoder, items: Sequence[int], bar: tqdm | None = None) -> EncodedRows:
    """Encode ``items`` batch by batch; items without input get a zero row and ``present`` False."""
    rows = EncodedRows(np.zeros((len(items), encoder.dim), np.float32), np.zeros(len(items), bool))
    for offset in range(0, len(items), encoder.batch_size):
        batch = items[offset:offset + encoder.batch_size]
        positions, inputs = [], []
        for position, item in enumerate(batch, start=offset):
            try:
                value = encoder.load(item)
            except UnreadableItemError:
                rows.unreadable.append(item)
                continue
            if value is not None:
                positions.append(position)
                inputs.append(value)
        if inputs:
            rows.features[positions] = encoder.encode(inputs)
            rows.present[positions] = True
        if bar is not None:
            bar.update(len(batch))
    return rows


def encode_all(encoder: ItemEncoder, n_items: int, desc: str, progress: bool = False) -> EncodedRows:
    """Encode items ``0..n_items-1`` in memory, with an optional progress bar."""
    with tqdm(total=n_items, desc=desc, unit="item", disable=not progress) as bar:
        return encode_items(encoder, range(n_items), bar)


def compute_dtype(device: torch.device, dtype: str) -> str:
    """The precision actually used: ``dtype`` on CUDA, fp32 on any other device."""
    if dtype not in DTYPES:
        raise ConfigError(f"dtype {dtype!r} is not one of {sorted(DTYPES)} — choose one of them")
    return dtype if device.type == "cuda" else "fp32"


def autocast(device: torch.device, dtype: str) -> ContextManager[Any]:
    """Mixed-precision context for ``dtype`` on CUDA; a no-op for fp32 and on other devices."""
    if device.type != "cuda" or dtype == "fp32":
        return nullcontext()
    return torch.autocast("cuda", dtype=DTYPES[dtype])


def to_numpy(features: torch.Tensor) -> np.ndarray:
    """A model output as a float32 CPU array."""
    return features.detach().float().cpu().numpy()
