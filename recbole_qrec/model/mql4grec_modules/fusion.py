"""The ensemble of MQL4GRec's per-language rankings.

Rule: an item's fused score is the sum, over the languages' beams, of its sequence log-probability in
that beam; an item missing from a beam gets that beam's lowest score (the beam's floor, an upper
bound of what the item would have scored there); an item in no beam scores ``-inf``. With one
language this is that beam's scores. For an item found by every beam the fused score is the sum of
its teacher-forced log-probabilities, which is what sampled evaluation (``predict``) uses.
"""

from __future__ import annotations

from collections.abc import Sequence

import torch
from torch import Tensor

from recbole_qrec.generation import beam_score_matrix


def fuse_beams(beams: Sequence[tuple[Tensor, Tensor]], n_items: int) -> Tensor:
    """Fused scores ``[B, n_items]`` of ``(items, scores)`` beams ``[B, beam_size]`` (empty slot: item -1, ``-inf``)."""
    fused = beams[0][1].new_zeros(len(beams[0][1]), n_items)
    listed = torch.zeros_like(fused, dtype=torch.bool)
    for items, scores in beams:
        matrix = beam_score_matrix(items, scores, n_items)
        in_beam = torch.isfinite(matrix)
        floor = scores.masked_fill(~torch.isfinite(scores), float("inf")).amin(1, keepdim=True)
        fused += torch.where(in_beam, matrix, floor)
        listed |= in_beam
    return fused.masked_fill(~listed, float("-inf"))
