"""RQ-VAE (Lee et al., CVPR 2022; as used for semantic IDs by TIGER, Rajput et al., NeurIPS 2023).

One MLP encoder branch per modality maps features to a ``code_dim`` latent; the branch latents
are fused (mean, or concat -> linear) and residual-quantized; one MLP decoder per modality
reconstructs that modality's features from the quantized latent.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import NamedTuple

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from recbole_qrec.errors import ConfigError
from recbole_qrec.quantization.alignment import gaussian_mmd, info_nce
from recbole_qrec.quantization.config import TokenizerConfig
from recbole_qrec.quantization.multimodal import PerModalityQuantizer, per_modality_alignment
from recbole_qrec.quantization.quantizer import ResidualQuantizer


class RQVAEOutput(NamedTuple):
    """``reconstructions``: one tensor per modality; ``codes`` ``(B, L)``; ``residuals`` ``(B, L, d)``
    (detached); ``losses``: named terms and their weighted sum ``"total"``."""

    reconstructions: tuple[Tensor, ...]
    codes: Tensor
    residuals: Tensor
    losses: dict[str, Tensor]


def mlp(dims: Sequence[int]) -> nn.Sequential:
    """Linear layers ``dims[0] -> ... -> dims[-1]`` with ReLU between them (none after the last).

    Xavier-normal weights and zero biases (as the LC-Rec/MQL4GRec RQ-VAE): PyTorch's default init
    shrinks the latent scale layer by layer, and k-means codebooks fitted to such small latents
    are left behind as soon as the encoder starts to move, collapsing codebook utilisation.
    """
    layers: list[nn.Module] = []
    for index, (width_in, width_out) in enumerate(zip(dims[:-1], dims[1:])):
        if index:
            layers.append(nn.ReLU())
        linear = nn.Linear(width_in, width_out)
        nn.init.xavier_normal_(linear.weight)
        nn.init.zeros_(linear.bias)
        layers.append(linear)
    return nn.Sequential(*layers)


class RQVAE(nn.Module):
    """Residual-quantized autoencoder; all sizes and loss weights come from a :class:`TokenizerConfig`.

    Loss terms (each a mean over batch and dimensions): ``reconstruction`` = sum over modalities of
    MSE; ``codebook`` = sum_l |sg[r_l] - e_l|^2; ``commitment`` = sum_l |r_l - sg[e_l]|^2 (weighted
    by ``beta``); gradients reach the encoder through the straight-through estimator.

    Alignment (exactly two modalities, say text and image; computed on the first ``align_sample``
    rows of the batch, in fp32):

    * ``contrastive`` (MACRec, arXiv:2511.15122): each branch latent is residual-quantized with the
      shared codebooks; at every level l, symmetric InfoNCE (temperature ``temperature``) between
      the text and image residuals r_l of the same item, where other items with the same
      pseudo-label -- the item's level-l code of the fused latent, i.e. its cluster among that
      level's k-means-initialised centroids -- are not negatives; averaged over levels, weight
      ``contrastive_weight`` (0.1). Plus ``recon_align``: symmetric InfoNCE between the two
      branches' quantized vectors (MACRec's alignment of the decoder inputs), weight
      ``recon_align_weight`` (0.001). MACRec's code keeps one RQ per modality and contrasts
      within a modality using the other modality's 512-cluster labels; here one shared RQ yields
      one code tuple per item, so the contrast is cross-modal and the labels are the level's codes.
    * ``mmd``: Gaussian-kernel MMD^2 (Gretton et al., JMLR 2012; biased estimate, median-heuristic
      bandwidth) between the text and image branch latents, weight ``mmd_weight``
      (:func:`~recbole_qrec.quantization.alignment.gaussian_mmd`). No semantic-ID paper fixes this
      term's form; it is the standard distribution-matching regulariser, offered as an alternative.

    ``quantizers: per_modality`` (MME-SID's MM-RQ-VAE, any number of modalities): the branch latents are not fused;
    each is quantized by its own residual quantizer
    (:class:`~recbole_qrec.quantization.multimodal.PerModalityQuantizer`) and decoded by its own decoder, and the
    alignment terms pair every two modalities (:func:`~recbole_qrec.quantization.multimodal.per_modality_alignment`).
    ``reconstruction: mmd`` replaces each modality's MSE by the Gaussian MMD^2 between features and reconstructions.
    """

    def __init__(self, in_dims: int | Sequence[int], config: TokenizerConfig | None = None) -> None:
        super().__init__()
        self.config = config = config or TokenizerConfig()
        dims = [in_dims] if isinstance(in_dims, int) else list(in_dims)
        self.per_modality = config.quantizers == "per_modality"
        if config.alignment != "none" and (len(dims) < 2 if self.per_modality else len(dims) != 2):
            needed = "at least 2 (quantizers=per_modality)" if self.per_modality else "exactly 2"
            raise ConfigError(f"alignment={config.alignment!r} needs {needed} feature matrices, got {len(dims)} — "
                              "give a text and an image matrix, or set alignment: none")
        hidden = list(config.hidden_dims)
        self.encoders = nn.ModuleList(mlp([dim, *hidden, config.code_dim]) for dim in dims)
        self.decoders = nn.ModuleList(mlp([config.code_dim, *reversed(hidden), dim]) for dim in dims)
        fuse_linear = config.fusion == "concat" and len(dims) > 1 and not self.per_modality
        self.fusion = nn.Linear(len(dims) * config.code_dim, config.code_dim) if fuse_linear else None
        sizes = (config.levels, config.codebook_size, config.code_dim, config.dead_code_threshold)
        self.quantizer = PerModalityQuantizer(len(dims), *sizes) if self.per_modality else ResidualQuantizer(*sizes)

    @property
    def latent_dim(self) -> int:
        """Width of :meth:`encode`'s latent: ``code_dim``, ``M * code_dim`` for per-modality quantizers."""
        return self.config.code_dim * (len(self.encoders) if self.per_modality else 1)

    def encode(self, *features: Tensor) -> tuple[Tensor, list[Tensor]]:
        """``(fused latent (B, d), per-modality branch latents)``; per-modality quantizers: the branch latents
        side by side ``(B, M * d)``."""
        if len(features) != len(self.encoders):
            raise ValueError(f"expected {len(self.encoders)} feature matrices, got {len(features)}")
        branches = [encoder(x) for encoder, x in zip(self.encoders, features)]
        if self.per_modality:
            return torch.cat(branches, 1), branches
        if self.fusion is not None:
            return self.fusion(torch.cat(branches, 1)), branches
        return torch.stack(branches).mean(0), branches

    def forward(self, *features: Tensor) -> RQVAEOutput:
        latent, branches = self.encode(*features)
        quantized = self.quantizer(latent)
        decoder_inputs = (self.quantizer.split(quantized.quantized) if self.per_modality
                          else [quantized.quantized] * len(self.decoders))
        reconstructions = tuple(decoder(part) for decoder, part in zip(self.decoders, decoder_inputs))
        distance = gaussian_mmd if self.config.reconstruction == "mmd" else F.mse_loss
        losses = {
            "reconstruction": sum(distance(r.float(), x.float()) for r, x in zip(reconstructions, features)),
            "codebook": quantized.codebook_loss,
            "commitment": quantized.commitment_loss,
            **self.alignment_losses(branches, quantized.codes, decoder_inputs),
        }
        weights = self.loss_weights()
        losses["total"] = sum(weights[name] * value for name, value in losses.items())
        return RQVAEOutput(reconstructions, quantized.codes, quantized.residuals, losses)

    def loss_weights(self) -> dict[str, float]:
        """The weight of each loss term in ``"total"``."""
        c = self.config
        return {"reconstruction": c.reconstruction_weight, "codebook": 1.0, "commitment": c.beta,
                "contrastive": c.contrastive_weight, "recon_align": c.recon_align_weight, "mmd": c.mmd_weight}

    def alignment_losses(self, branches: list[Tensor], codes: Tensor, quantized: Sequence[Tensor]) -> dict[str, Tensor]:
        """The configured cross-modal terms (empty for ``alignment: none``); ``quantized``: each decoder's input."""
        if self.config.alignment == "none":
            return {}
        n = self.config.align_sample
        with torch.autocast(branches[0].device.type, enabled=False):
            if self.per_modality:
                return per_modality_alignment(self.config.alignment, tuple(part[:n] for part in quantized),
                                              [branch[:n] for branch in branches], self.config.temperature)
            text, image = (branch[:n] for branch in branches)
            if self.config.alignment == "mmd":
                return {"mmd": gaussian_mmd(text, image)}
            return self.contrastive_losses(text, image, codes[:n])

    def contrastive_losses(self, text: Tensor, image: Tensor, pseudo_labels: Tensor) -> dict[str, Tensor]:
        """MACRec-style per-level cross-modal InfoNCE and the quantized-vector alignment term."""
        tau = self.config.temperature
        (r_text, _, q_text), (r_image, _, q_image) = (
            self.quantizer.quantize_with_codes(branch, self.quantizer.assign(branch)[0]) for branch in (text, image)
        )
        per_level = [info_nce(r_text[:, level], r_image[:, level], tau, pseudo_labels[:, level])
                     for level in range(self.quantizer.levels)]
        return {"contrastive": torch.stack(per_level).mean(), "recon_align": info_nce(q_text, q_image, tau)}
