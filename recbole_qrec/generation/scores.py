"""From beams to RecBole's full-ranking score matrix."""

from __future__ import annotations

from torch import Tensor


def beam_score_matrix(items: Tensor, scores: Tensor, n_items: int) -> Tensor:
    """``[B, n_items]`` with ``scores[b, j]`` at column ``items[b, j]`` and ``-inf`` elsewhere.

    Empty beam slots (item -1, score ``-inf``) write ``-inf`` into column 0, the padding item.
    """
    matrix = scores.new_full((len(items), n_items), float("-inf"))
    return matrix.scatter_(1, items.clamp_min(0), scores)
