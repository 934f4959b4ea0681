"""One residual quantizer per modality (MME-SID's MM-RQ-VAE, Wang et al., arXiv 2509.02017; ``quantizers:
per_modality``) and its cross-modal terms.

:class:`PerModalityQuantizer` has :class:`~recbole_qrec.quantization.quantizer.ResidualQuantizer`'s interface on the
concatenated branch latents ``[B, M * d]``: modality ``m`` owns levels ``m * L .. (m + 1) * L - 1`` of the joint code
tuple ``[B, M * L]`` and its own codebooks, so an item gets one semantic ID per modality, written side by side.
"""

from __future__ import annotations

from itertools import combinations

import torch
from torch import Tensor, nn

from recbole_qrec.quantization.alignment import gaussian_mmd, info_nce
from recbole_qrec.quantization.quantizer import QuantizerOutput, ResidualQuantizer


class PerModalityQuantizer(nn.Module):
    """``modalities`` residual quantizers of ``levels`` x ``codebook_size`` x ``code_dim``, one per latent slice."""

    def __init__(self, modalities: int, levels: int, codebook_size: int, code_dim: int,
                 dead_code_threshold: int = 0) -> None:
        super().__init__()
        self.parts = nn.ModuleList(ResidualQuantizer(levels, codebook_size, code_dim, dead_code_threshold)
                                   for _ in range(modalities))

    @property
    def levels(self) -> int:
        """Levels of the joint code tuple: ``M * L``."""
        return sum(part.levels for part in self.parts)

    @property
    def codebooks(self) -> Tensor:
        """``[M * L, K, d]``: modality ``m``'s level ``l`` at row ``m * L + l``."""
        return torch.cat([part.codebooks for part in self.parts])

    def split(self, z: Tensor) -> tuple[Tensor, ...]:
        """``[B, M * d]`` -> one ``[B, d]`` latent per modality."""
        return z.chunk(len(self.parts), dim=1)

    def split_levels(self, codes: Tensor) -> tuple[Tensor, ...]:
        """``[B, M * L, ...]`` -> one ``[B, L, ...]`` per modality."""
        return codes.chunk(len(self.parts), dim=1)

    @torch.no_grad()
    def assign(self, z: Tensor) -> tuple[Tensor, Tensor]:
        """``(codes [B, M * L], residuals [B, M * L, d])``."""
        codes, residuals = zip(*(part.assign(latent) for part, latent in zip(self.parts, self.split(z))))
        return torch.cat(codes, 1), torch.cat(residuals, 1)

    def forward(self, z: Tensor) -> QuantizerOutput:
        """Each modality quantized by its own quantizer; ``quantized`` ``[B, M * d]``, losses summed over modalities."""
        outputs = [part(latent) for part, latent in zip(self.parts, self.split(z))]
        return QuantizerOutput(torch.cat([out.quantized for out in outputs], 1),
                               torch.cat([out.codes for out in outputs], 1),
                               torch.cat([out.residuals for out in outputs], 1),
                               sum(out.codebook_loss for out in outputs), sum(out.commitment_loss for out in outputs))

    @torch.no_grad()
    def kmeans_init(self, z: Tensor, iters: int, generator: torch.Generator | None = None) -> None:
        for part, latent in zip(self.parts, self.split(z)):
            part.kmeans_init(latent, iters, generator)

    @torch.no_grad()
    def update_usage(self, codes: Tensor, residuals: Tensor, generator: torch.Generator | None = None) -> None:
        for part, part_codes, part_residuals in zip(self.parts, self.split_levels(codes), self.split_levels(residuals)):
            part.update_usage(part_codes, part_residuals, generator)


def per_modality_alignment(alignment: str, quantized: tuple[Tensor, ...], branches: list[Tensor],
                           temperature: float) -> dict[str, Tensor]:
    """MM-RQ-VAE's cross-modal terms over every pair of modalities, summed: ``contrastive`` (the paper's), symmetric
    InfoNCE between the two modalities' quantized vectors of each item; ``mmd``, Gaussian MMD^2 between the two
    branch latents (empty for ``none``)."""
    pairs = list(combinations(range(len(branches)), 2))
    if alignment == "contrastive":
        return {"contrastive": sum(info_nce(quantized[a], quantized[b], temperature) for a, b in pairs)}
    if alignment == "mmd":
        return {"mmd": sum(gaussian_mmd(branches[a], branches[b]) for a, b in pairs)}
    return {}
