"""Residual vector quantization: L codebooks of K vectors, k-means initialised, dead codes re-seeded."""

from __future__ import annotations

from typing import NamedTuple

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from recbole_qrec.quantization.kmeans import kmeans, nearest


class QuantizerOutput(NamedTuple):
    """``quantized``: straight-through sum of the chosen codebook vectors ``(B, d)``; ``codes``
    ``(B, L)``; ``residuals``: the (detached) vector each level quantized ``(B, L, d)``;
    ``codebook_loss`` = sum_l |sg[r_l] - e_l|^2, ``commitment_loss`` = sum_l |r_l - sg[e_l]|^2
    (each a mean over batch and dimensions; beta is applied by the caller)."""

    quantized: Tensor
    codes: Tensor
    residuals: Tensor
    codebook_loss: Tensor
    commitment_loss: Tensor


class ResidualQuantizer(nn.Module):
    """``r_0 = z``; level l picks ``c_l = argmin_k |r_l - E_l[k]|`` and passes on ``r_{l+1} = r_l - E_l[c_l]``.

    Distances are always computed in fp32 (autocast off) so codes do not depend on the MLP precision.
    """

    def __init__(self, levels: int, codebook_size: int, code_dim: int, dead_code_threshold: int = 0) -> None:
        super().__init__()
        bound = 1.0 / codebook_size
        self.codebooks = nn.Parameter(torch.empty(levels, codebook_size, code_dim).uniform_(-bound, bound))
        self.dead_code_threshold = dead_code_threshold
        self.register_buffer("step", torch.zeros((), dtype=torch.long))
        self.register_buffer("last_used", torch.zeros(levels, codebook_size, dtype=torch.long))

    @property
    def levels(self) -> int:
        return self.codebooks.shape[0]

    @torch.no_grad()
    def assign(self, z: Tensor) -> tuple[Tensor, Tensor]:
        """Nearest-code assignment level by level: ``(codes (B, L), residuals (B, L, d))``, no gradient."""
        residual = z.detach().float()
        codes, residuals = [], []
        with torch.autocast(z.device.type, enabled=False):
            for book in self.codebooks:
                code = nearest(residual, book)
                codes.append(code)
                residuals.append(residual)
                residual = residual - book[code]
        return torch.stack(codes, 1), torch.stack(residuals, 1)

    def quantize_with_codes(self, z: Tensor, codes: Tensor) -> tuple[Tensor, Tensor, Tensor]:
        """Differentiable ``(r, e, quantized)`` for given codes.

        ``e_l = E_l[c_l]`` and ``r_l = z - sum_{j<l} sg[e_j]`` are ``(B, L, d)``; ``quantized`` is the
        straight-through ``z + sg[sum_l e_l - z]`` ``(B, d)``.
        """
        z = z.float()
        # A one-hot matmul instead of indexing: the backward of indexing accumulates with
        # multi-threaded/atomic adds, which makes training non-deterministic on CPU and GPU.
        one_hot = F.one_hot(codes, self.codebooks.shape[1]).to(self.codebooks.dtype)
        chosen = torch.einsum("blk,lkd->bld", one_hot, self.codebooks)
        earlier = torch.cumsum(chosen.detach(), 1) - chosen.detach()
        return z[:, None, :] - earlier, chosen, z + (chosen.sum(1) - z).detach()

    def forward(self, z: Tensor) -> QuantizerOutput:
        with torch.autocast(z.device.type, enabled=False):
            codes, residuals = self.assign(z)
            r, e, quantized = self.quantize_with_codes(z, codes)
            codebook_loss = (r.detach() - e).pow(2).mean() * self.levels
            commitment_loss = (r - e.detach()).pow(2).mean() * self.levels
        return QuantizerOutput(quantized, codes, residuals, codebook_loss, commitment_loss)

    @torch.no_grad()
    def kmeans_init(self, z: Tensor, iters: int, generator: torch.Generator | None = None) -> None:
        """Set each level's codebook to the k-means centroids of that level's residuals, in level order."""
        residual = z.detach().float()
        with torch.autocast(z.device.type, enabled=False):
            for level in range(self.levels):
                centroids, labels = kmeans(residual, self.codebooks.shape[1], iters, generator)
                self.codebooks[level] = centroids
                residual = residual - centroids[labels]

    @torch.no_grad()
    def update_usage(self, codes: Tensor, residuals: Tensor, generator: torch.Generator | None = None) -> None:
        """Record which codes a training step used; re-seed codes unused for ``dead_code_threshold`` steps.

        A dead code of level l is replaced by a random current residual ``r_l`` of the batch. Runs on
        the device without host synchronisation (masked ``torch.where`` updates).
        """
        self.step += 1
        used = torch.zeros_like(self.last_used, dtype=torch.bool).scatter_(1, codes.T, True)
        self.last_used = torch.where(used, self.step, self.last_used)
        if self.dead_code_threshold == 0:
            return
        dead = self.step - self.last_used >= self.dead_code_threshold
        pick = torch.randint(len(codes), self.last_used.shape, generator=generator, device=codes.device)
        seeds = residuals[pick, torch.arange(self.levels, device=codes.device)[:, None]]
        self.codebooks.copy_(torch.where(dead[..., None], seeds, self.codebooks))
        self.last_used = torch.where(dead, self.step, self.last_used)
