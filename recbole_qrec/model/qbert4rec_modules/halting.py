"""Per-item halting distributions over the injection blocks (PonderNet, Banino et al. 2021).

With ``layers`` blocks and a gate after each block but the last, gate ``g_l`` is the probability that an item goes on
from block ``l`` to block ``l + 1``. Its depth ``d`` (blocks applied, 1 .. ``layers``) then has the distribution
``p(d) = (1 - g_{d-1}) * prod_{l < d-1} g_l`` for ``d < layers`` and ``p(layers) = prod_l g_l``. The prior the
distributions are pulled towards is a geometric distribution truncated at ``layers`` (the remainder on the last
block), with the mean depth asked for.
"""

from __future__ import annotations

import torch
from torch import Tensor


def depth_distribution(gates: Tensor) -> Tensor:
    """``gates`` ``[n, layers - 1]`` (probability of going on after each block) -> ``p(depth)`` ``[n, layers]``."""
    ones = torch.ones(len(gates), 1, dtype=gates.dtype, device=gates.device)
    reach = torch.cat([ones, gates.cumprod(1)], 1)  # probability of running block l, l = 0 .. layers - 1
    return reach - torch.cat([reach[:, 1:], torch.zeros_like(ones)], 1)


def truncated_geometric(layers: int, mean_depth: float) -> Tensor:
    """The geometric distribution over depths ``1 .. layers`` (the tail on ``layers``) whose mean is ``mean_depth``,
    found by bisection on its halting probability (the mean falls from ``layers`` to 1 as that rises from 0 to 1)."""
    low, high = 0.0, 1.0
    for _ in range(60):
        halt = (low + high) / 2
        mean = sum((1 - halt) ** depth for depth in range(layers))  # sum over d of P(depth > d)
        low, high = (halt, high) if mean > mean_depth else (low, halt)
    go_on = torch.full((1, layers - 1), 1 - (low + high) / 2, dtype=torch.float64)
    return depth_distribution(go_on)[0].float()


def kl_to_prior(distribution: Tensor, prior: Tensor) -> Tensor:
    """``KL(p_i || prior)`` ``[n]`` per item (``distribution`` ``[n, layers]``)."""
    tiny = torch.finfo(distribution.dtype).tiny
    return (distribution * (distribution.clamp(min=tiny).log() - prior.clamp(min=tiny).log())).sum(1)
