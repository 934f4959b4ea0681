"""Attention masks as transformers takes them without reading them back from the device: 4D additive masks.

transformers builds its attention mask from a 2D padding mask ``[B, K]`` and first reads ``mask.all()`` (or a sum
of it) back to see whether it may leave the mask out, a wait for the GPU at every call; a 4D mask it takes as given.
"""

from __future__ import annotations

import torch
from torch import Tensor


def additive(blocked: Tensor, dtype: torch.dtype = torch.float32) -> Tensor:
    """0 where ``blocked`` is False, ``dtype``'s minimum where it is True: a mask attention adds to its scores."""
    return torch.zeros(blocked.shape, dtype=dtype, device=blocked.device).masked_fill(blocked, torch.finfo(dtype).min)


def additive_padding_mask(mask: Tensor | None) -> Tensor | None:
    """A padding mask ``[B, S]`` (nonzero: token, 0: padding) as the 4D additive mask ``[B, 1, 1, S]`` (0 at tokens,
    the float32 minimum at padding) that T5's attention adds to its scores, the same in its eager and sdpa
    implementations as the mask transformers builds from ``mask``, at every encoder and cross-attention call."""
    if mask is None:
        return None
    return additive((mask == 0)[:, None, None, :])


def additive_causal_mask(mask: Tensor, queries: int, dtype: torch.dtype) -> Tensor:
    """The 4D additive mask ``[B, 1, queries, K]`` of a decoder-only model whose keys have the padding mask ``mask``
    ``[B, K]`` (cached keys first) and whose queries are the last ``queries`` keys: a query sees the tokens up to its
    own position, 0 there and ``dtype``'s minimum elsewhere, as the causal mask transformers builds from ``mask`` (its
    eager attention adds the same; sdpa takes it as a float mask)."""
    positions = torch.arange(mask.shape[1], device=mask.device)
    later = positions > positions[-queries:, None]  # [queries, K]: the keys after each query
    return additive((mask == 0)[:, None, None, :] | later, dtype)
