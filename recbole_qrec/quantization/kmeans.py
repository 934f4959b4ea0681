"""Batched k-means (k-means++ seeding, Lloyd iterations) in torch.

Written in torch rather than calling scikit-learn's ``KMeans`` so that codebook initialisation
runs on the training device (no host copy of the residuals, GPU speed for large batches) and is
reproducible from a ``torch.Generator``; the data it sees (one batch of residuals) is small
enough that a fixed number of Lloyd iterations converges in practice.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import Tensor


def nearest(x: Tensor, centroids: Tensor) -> Tensor:
    """Index of the nearest centroid for each row: argmin of ``|c|^2 - 2 x.c`` (one fused addmm)."""
    return torch.addmm(centroids.pow(2).sum(1), x, centroids.T, alpha=-2).argmin(1)


def kmeans_plus_plus(x: Tensor, k: int, generator: torch.Generator | None = None) -> Tensor:
    """k-means++ seeding: each new centre is drawn with probability proportional to D(x)^2.

    With fewer distinct points than ``k`` the remaining draws are uniform (duplicates result).
    """
    first = torch.randint(len(x), (1,), generator=generator, device=x.device)
    centroids = x[first]
    closest = (x - centroids).pow(2).sum(1)
    for _ in range(k - 1):
        pick = torch.multinomial(closest + 1e-12, 1, generator=generator)
        centroids = torch.cat([centroids, x[pick]])
        closest = torch.minimum(closest, (x - x[pick]).pow(2).sum(1))
    return centroids


def kmeans(x: Tensor, k: int, iters: int = 25, generator: torch.Generator | None = None) -> tuple[Tensor, Tensor]:
    """Cluster the rows of ``x`` into ``k`` groups; returns ``(centroids (k, d), labels (n,))``.

    An empty cluster keeps its previous centroid. Cluster sums use a one-hot matmul, which unlike
    ``index_add_`` (atomic adds on GPU) gives the same result on every run.
    """
    x = x.detach().float()
    centroids = kmeans_plus_plus(x, k, generator)
    for _ in range(iters):
        one_hot = F.one_hot(nearest(x, centroids), k).to(x.dtype)
        counts = one_hot.sum(0)[:, None]
        centroids = torch.where(counts > 0, one_hot.T @ x / counts.clamp_min(1), centroids)
    return centroids, nearest(x, centroids)
