"""Multi-mask pretraining: which semantic-ID tokens of a sequence are hidden behind [MASK].

Token sequences are left-aligned: the real tokens of row ``b`` are positions ``0 .. n_b - 1``
(``n_b`` = items x levels), padding follows and is never masked. Strategies:

* ``mlm``: every real token independently with probability ``prob``;
* ``span``: one contiguous run of ``max(1, round(prob * n_b))`` tokens at a uniform start;
* ``tail``: exactly the last item's ``levels`` tokens;
* ``multi``: ``regions`` disjoint, non-adjacent runs of ``max(1, round(prob * n_b / regions))``
  tokens each (on sequences too short to separate them, the runs may touch or be cut at the end).
"""

from __future__ import annotations

from collections.abc import Sequence

import torch
from torch import Tensor

from recbole_qrec.errors import ConfigError

MASK_STRATEGIES = ("mlm", "span", "tail", "multi")


def checked_strategies(strategies: str | Sequence[str], prob: float, regions: int) -> list[str]:
    """``mask_strategy`` as a list, checked with ``mask_prob`` and ``mask_regions``."""
    names = [strategies] if isinstance(strategies, str) else list(strategies)
    unknown = [name for name in names if name not in MASK_STRATEGIES]
    if unknown or not names:
        raise ConfigError(f"mask_strategy {names} is not a list of known strategies — list one or more "
                          f"of {', '.join(MASK_STRATEGIES)}")
    if not 0 < prob < 1 or regions < 1:
        raise ConfigError(f"mask_prob {prob} or mask_regions {regions} is out of range — set mask_prob in (0, 1) "
                          "and mask_regions >= 1")
    return names


class MultiMask:
    """Draws one strategy of ``strategies`` per sequence and returns the boolean mask of its tokens."""

    def __init__(self, strategies: str | Sequence[str], prob: float, levels: int, regions: int) -> None:
        self.strategies = checked_strategies(strategies, prob, regions)
        self.prob, self.levels, self.regions = prob, levels, regions

    def __call__(self, real: Tensor) -> Tensor:
        """``real``: ``[B, T]`` bool, True for non-padding tokens; returns the ``[B, T]`` mask."""
        masks = torch.stack([getattr(self, name)(real) for name in self.strategies])
        choice = torch.randint(len(self.strategies), (len(real),), device=real.device)
        return masks[choice, torch.arange(len(real), device=real.device)]

    def mlm(self, real: Tensor) -> Tensor:
        return real & (torch.rand(real.shape, device=real.device) < self.prob)

    def span(self, real: Tensor) -> Tensor:
        lengths = real.sum(1)
        span = (self.prob * lengths).round().long().clamp(min=1)
        start = (torch.rand(len(real), device=real.device) * (lengths - span + 1)).long()
        return runs_mask(start.unsqueeze(1), span.unsqueeze(1), real)

    def tail(self, real: Tensor) -> Tensor:
        lengths = real.sum(1, keepdim=True)
        return runs_mask(lengths - self.levels, torch.full_like(lengths, self.levels), real)

    def multi(self, real: Tensor) -> Tensor:
        lengths = real.sum(1, keepdim=True)
        span = (self.prob * lengths / self.regions).round().long().clamp(min=1)
        slack = (lengths - self.regions * (span + 1) + 1).clamp(min=0)  # free tokens once runs and gaps are placed
        offsets = (torch.rand(len(real), self.regions, device=real.device) * (slack + 1)).long().sort(1).values
        starts = offsets + torch.arange(self.regions, device=real.device) * (span + 1)
        return runs_mask(starts, span.expand_as(starts), real)


def runs_mask(starts: Tensor, lengths: Tensor, real: Tensor) -> Tensor:
    """``[B, T]`` mask of the runs ``[starts, starts + lengths)`` (``[B, R]`` each), restricted to ``real``."""
    positions = torch.arange(real.shape[1], device=real.device).view(1, 1, -1)
    inside = (positions >= starts.unsqueeze(2)) & (positions < (starts + lengths).unsqueeze(2))
    return inside.any(1) & real
