"""From beams to RecBole's full-ranking score matrix, and the group evaluation rule for shared semantic IDs."""

from __future__ import annotations

import torch
from torch import Tensor


def beam_score_matrix(items: Tensor, scores: Tensor, n_items: int) -> Tensor:
    """``[B, n_items]`` with ``scores[b, j]`` at column ``items[b, j]`` and ``-inf`` elsewhere.

    Empty beam slots (item -1, score ``-inf``) write ``-inf`` into column 0, the padding item.
    """
    matrix = scores.new_full((len(items), n_items), float("-inf"))
    return matrix.scatter_(1, items.clamp_min(0), scores)


def code_groups(codes: Tensor) -> Tensor:
    """``LongTensor[n]``: for each row of ``codes`` ``[n, L]``, the first row with the same code tuple (its group's
    representative; a row with a unique tuple represents itself)."""
    _, group = codes.unique(dim=0, return_inverse=True)
    rows = torch.arange(len(codes), device=codes.device)
    first = torch.full((int(group.max()) + 1,), len(codes), device=codes.device)
    return first.scatter_reduce_(0, group, rows, reduce="amin")[group]


def credit_target_group(scores: Tensor, targets: Tensor, representatives: Tensor) -> Tensor:
    """The group rule: in each row of ``scores`` ``[B, n_items]`` (a group's score on its representative's column)
    swap the columns of the target and of the target's representative, so the target's group ranks as the target.

    Generated IDs are ranked as before; a generated ID shared by the target counts as a hit, one that is not shared
    by it does not. No-op for a target that represents its own group.
    """
    rows = torch.arange(len(scores), device=scores.device)
    group = representatives[targets]
    credited = scores.clone()
    credited[rows, targets] = scores[rows, group]
    credited[rows, group] = scores[rows, targets]
    return credited
