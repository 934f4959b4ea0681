"""Cross-modal alignment losses for a two-branch (e.g. text + image) RQ-VAE.

* :func:`info_nce` -- the contrastive terms of MACRec (Zhang et al., "Multi-Aspect Cross-modal
  Quantization for Generative Recommendation", AAAI 2026, arXiv:2511.15122).
* :func:`gaussian_mmd` -- the kernel two-sample statistic of Gretton et al. ("A Kernel Two-Sample
  Test", JMLR 2012), used as a distribution-level alignment of the two branches' latents.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import Tensor


def info_nce(a: Tensor, b: Tensor, temperature: float, labels: Tensor | None = None) -> Tensor:
    """Symmetric InfoNCE between paired rows of ``a`` and ``b`` (``a_i`` with ``b_i`` is the positive).

    ``s_ij = cos(a_i, b_j) / temperature``; loss = mean over both directions of
    ``-log(exp(s_ii) / sum_{j in N(i)} exp(s_ij))``. ``N(i)`` is every j, except that with
    ``labels`` given, pairs ``j != i`` with ``labels[j] == labels[i]`` are not used as negatives.
    """
    logits = F.normalize(a.float(), dim=1) @ F.normalize(b.float(), dim=1).T / temperature
    if labels is not None:
        same = labels[:, None] == labels[None, :]
        logits = logits.masked_fill(same & ~torch.eye(len(a), dtype=torch.bool, device=a.device), float("-inf"))
    target = torch.arange(len(a), device=a.device)
    return (F.cross_entropy(logits, target) + F.cross_entropy(logits.T, target)) / 2


def gaussian_mmd(x: Tensor, y: Tensor) -> Tensor:
    """Biased (V-statistic) estimate of MMD^2 between the samples ``x`` and ``y``.

    ``k(u, v) = exp(-|u - v|^2 / h)`` with ``h`` the median squared distance of the pooled sample
    (median heuristic, not back-propagated); ``MMD^2 = mean k(x, x') + mean k(y, y') - 2 mean k(x, y)``,
    which is >= 0 and 0 only when the two samples coincide as distributions.
    """
    pooled = torch.cat([x.float(), y.float()])
    sq = (pooled.pow(2).sum(1, keepdim=True) - 2 * pooled @ pooled.T + pooled.pow(2).sum(1)).clamp_min(0)
    bandwidth = sq.detach().median().clamp_min(1e-12)
    kernel = torch.exp(-sq / bandwidth)
    n = len(x)
    return kernel[:n, :n].mean() + kernel[n:, n:].mean() - 2 * kernel[:n, n:].mean()
