"""Symmetric InfoNCE between two views of the same items, restricted to items that have both views."""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import Tensor


def item_info_nce(first: Tensor, second: Tensor, rows: Tensor, temperature: float) -> Tensor:
    """Each item's share ``[n]`` of the in-batch InfoNCE over the items where ``rows`` is True (``[n]`` bool): its two
    cross-entropy terms (as anchor in either view), scaled so that the mean over all ``n`` items is the InfoNCE over
    the remaining ones; 0 for the others, and for every item when fewer than two remain.

    The similarities of the other items are set to the dtype's lowest value rather than indexed away (a boolean
    index would wait for the device every step): each remaining item is compared with exactly the remaining ones.
    """
    logits = F.normalize(first, dim=-1) @ F.normalize(second, dim=-1).T / temperature
    logits = logits.masked_fill(~(rows.unsqueeze(1) & rows.unsqueeze(0)), torch.finfo(logits.dtype).min)
    targets = torch.arange(len(logits), device=logits.device)
    per_item = F.cross_entropy(logits, targets, reduction="none") + F.cross_entropy(logits.T, targets, reduction="none")
    return per_item * rows * (len(rows) / (2 * rows.sum().clamp(min=1)))


def masked_info_nce(first: Tensor, second: Tensor, rows: Tensor, temperature: float) -> Tensor:
    """In-batch InfoNCE over the items where ``rows`` is True (``[n]`` bool); 0 when fewer than two remain."""
    return item_info_nce(first, second, rows, temperature).mean()
