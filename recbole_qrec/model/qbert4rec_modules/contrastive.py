"""Symmetric InfoNCE between two views of the same items, restricted to items that have both views."""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import Tensor


def masked_info_nce(first: Tensor, second: Tensor, rows: Tensor, temperature: float) -> Tensor:
    """In-batch InfoNCE over the items where ``rows`` is True (``[n]`` bool); 0 when fewer than two remain."""
    if int(rows.sum()) < 2:
        return first.new_zeros(())
    logits = F.normalize(first[rows], dim=-1) @ F.normalize(second[rows], dim=-1).T / temperature
    targets = torch.arange(len(logits), device=logits.device)
    return (F.cross_entropy(logits, targets) + F.cross_entropy(logits.T, targets)) / 2
