"""Quality measures of a semantic-ID assignment."""

from __future__ import annotations

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
