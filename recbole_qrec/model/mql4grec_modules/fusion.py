"""The ensemble of MQL4GRec's per-language rankings (``beam_fusion``).

* ``official`` (the official ``ensemble.py``): a beam's score is its sequence log-probability divided by the
  length of the official decoder output, ``L`` codes and EOS (transformers' default length normalisation; a trained
  model gives EOS after the last code a log-probability of about 0, so this is the official score); an item in
  one beam keeps that beam's score, an item in both scores ``(s_text + s_image) / 2 + 1``.
* ``floor_sum``: the sum, over the beams, of the item's sequence log-probability there; an item missing from a
  beam gets that beam's lowest score (the beam's floor, an upper bound of what the item would have scored there).

Either way an item in no beam scores ``-inf``, and with one language the ranking is that beam's.
:func:`fuse_scores` gives the fused score of an item found by every beam, which sampled evaluation
(``predict``) and exact ranking (``eval_mode: exact``, every item scored in every language) use.
"""

from __future__ import annotations

from collections.abc import Sequence

import torch
from torch import Tensor

from recbole_qrec.errors import checked_choice
from recbole_qrec.generation import beam_score_matrix

Beam = tuple[Tensor, Tensor]  # items, scores [B, beam_size]; empty slot: item -1, -inf
FUSIONS = ("official", "floor_sum")


def checked_fusion(value: object) -> str:
    return checked_choice("beam_fusion", value, FUSIONS, "official: the official code's ensemble, floor_sum: the "
                          "sum of the beams' log-probabilities")


def fuse_beams(beams: Sequence[Beam], n_items: int, levels: Sequence[int], rule: str) -> Tensor:
    """Fused scores ``[B, n_items]`` of the languages' beams, whose IDs have ``levels`` code levels."""
    if rule == "official":
        return official_fusion(beams, n_items, levels)
    return floor_sum_fusion(beams, n_items)


def fuse_scores(scores: Sequence[Tensor], levels: Sequence[int], rule: str) -> Tensor:
    """The fused score of items whose sequence log-probabilities ``scores`` (each ``[B]`` or ``[B, n_items]``) put them
    in every beam; ``-inf`` where they are ``-inf``."""
    if rule == "official":
        normalised = torch.stack([score / (length + 1) for score, length in zip(scores, levels)])
        return normalised.mean(0) + (len(scores) > 1)
    return torch.stack(list(scores)).sum(0)


def official_fusion(beams: Sequence[Beam], n_items: int, levels: Sequence[int]) -> Tensor:
    total = beams[0][1].new_zeros(len(beams[0][1]), n_items)
    found = torch.zeros_like(total)
    for (items, scores), length in zip(beams, levels):
        matrix = beam_score_matrix(items, scores / (length + 1), n_items)
        in_beam = torch.isfinite(matrix)
        total += torch.where(in_beam, matrix, 0.0)
        found += in_beam
    return torch.where(found > 0, total / found.clamp_min(1) + (found > 1), float("-inf"))


def floor_sum_fusion(beams: Sequence[Beam], n_items: int) -> Tensor:
    fused = beams[0][1].new_zeros(len(beams[0][1]), n_items)
    listed = torch.zeros_like(fused, dtype=torch.bool)
    for items, scores in beams:
        matrix = beam_score_matrix(items, scores, n_items)
        in_beam = torch.isfinite(matrix)
        floor = scores.masked_fill(~torch.isfinite(scores), float("inf")).amin(1, keepdim=True)
        fused += torch.where(in_beam, matrix, floor)
        listed |= in_beam
    return fused.masked_fill(~listed, float("-inf"))
