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


def admit_unseen_items(matrix: Tensor, items: Tensor, scores: Tensor, prefix_groups: Tensor, unseen: Tensor,
                       slots: int) -> Tensor:
    """TIGER's cold-start rule on a beam score matrix ``[B, n_items]``: an item of ``unseen`` (ids ``[U]``, never a
    training target) in the prefix group (``prefix_groups`` ``[n_items]``, :func:`code_groups` of the codes' first
    levels) of a beam item (``items`` / ``scores`` ``[B, K]``, item -1 for an empty slot) follows the best such beam
    item, scored just below it; the ``slots`` best of them per row enter the ranking, every other item keeps its
    score."""
    if slots == 0 or len(unseen) == 0:
        return matrix
    matches = ((prefix_groups[unseen][None, :, None] == prefix_groups[items.clamp_min(0)][:, None, :])
               & (items >= 0)[:, None, :])
    followed = torch.where(matches, scores[:, None, :], float("-inf")).amax(2)  # [B, U]
    best, position = followed.topk(min(slots, len(unseen)), dim=1)
    columns = unseen[position]
    below = torch.nextafter(best, torch.full_like(best, float("-inf")))
    admitted = matrix.clone()
    admitted.scatter_(1, columns, torch.maximum(admitted.gather(1, columns), below))
    return admitted
