"""Quality measures of a semantic-ID assignment."""

from __future__ import annotations

from collections.abc import Sequence

import numpy as np

from recbole_qrec.quantization.collisions import shared_mask


def collision_rate(codes: np.ndarray) -> float:
    """Fraction of items whose full code tuple is shared with at least one other item."""
    return float(shared_mask(codes).mean())


def level_usage(codes: np.ndarray, codebook_size: int) -> tuple[list[float], list[float]]:
    """Per level: ``(utilisation, perplexity)``.

    Utilisation is the fraction of the ``codebook_size`` codes used by at least one item;
    perplexity is ``exp(entropy)`` of the code frequencies (``codebook_size`` when all are equally used).
    """
    utilisation, perplexity = [], []
    for column in np.asarray(codes).T:
        counts = np.bincount(column, minlength=codebook_size)
        p = counts[counts > 0] / len(column)
        utilisation.append(float((counts > 0).sum() / codebook_size))
        perplexity.append(float(np.exp(-(p * np.log(p)).sum())))
    return utilisation, perplexity


def sequence_code_lift(sequences: Sequence[np.ndarray], codes: np.ndarray, depth: int) -> float:
    """How much more often two consecutive, different items of ``sequences`` (arrays of row indices into ``codes``)
    share their first ``depth`` codes than two different items drawn independently from the sequences' occurrences:
    1 when the codes say nothing of what follows what (nan without such a pair, or when no two items share a
    prefix)."""
    groups = np.unique(np.asarray(codes)[:, :depth], axis=0, return_inverse=True)[1].ravel()
    rows = [np.asarray(sequence, dtype=np.int64) for sequence in sequences if len(sequence)]
    firsts = np.concatenate([row[:-1] for row in rows]) if rows else np.zeros(0, np.int64)
    seconds = np.concatenate([row[1:] for row in rows]) if rows else np.zeros(0, np.int64)
    different = firsts != seconds
    if not different.any():
        return float("nan")
    observed = np.mean(groups[firsts[different]] == groups[seconds[different]])
    occurrences = np.concatenate(rows)
    item_share = np.bincount(occurrences) / len(occurrences)
    group_share = np.bincount(groups[occurrences]) / len(occurrences)
    self_pairs = (item_share ** 2).sum()
    chance = ((group_share ** 2).sum() - self_pairs) / (1 - self_pairs)
    return float(observed / chance) if chance > 0 else float("nan")
