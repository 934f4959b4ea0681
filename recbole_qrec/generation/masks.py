"""The encoder padding mask as T5 takes it without reading it back from the device."""

from __future__ import annotations

import torch
from torch import Tensor


def additive_padding_mask(mask: Tensor | None) -> Tensor | None:
    """A padding mask ``[B, S]`` (nonzero: token, 0: padding) as the 4D additive mask ``[B, 1, 1, S]`` (0 at tokens,
    the float32 minimum at padding) that T5's attention adds to its scores, the same in its eager and sdpa
    implementations as the mask transformers builds from ``mask``. transformers takes a 4D mask as given; from a 2D one
    it first reads ``mask.all()`` back to see whether it may leave the mask out, a wait for the GPU at every encoder
    and cross-attention call."""
    if mask is None:
        return None
    padding = (mask == 0)[:, None, None, :]
    return torch.zeros(padding.shape, device=mask.device).masked_fill(padding, torch.finfo(torch.float32).min)
