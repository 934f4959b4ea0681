"""Train an RQ-VAE on item features and turn it into unique semantic IDs (:func:`fit_tokenizer`)."""

from __future__ import annotations

import time
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any

import numpy as np
import torch
from torch import Tensor

from recbole_qrec.devices import resolve_device
from recbole_qrec.quantization.collisions import resolve_collisions
from recbole_qrec.quantization.config import TokenizerConfig
from recbole_qrec.quantization.features import Features, prepare_features
from recbole_qrec.quantization.metrics import collision_rate, level_usage
from recbole_qrec.quantization.rqvae import RQVAE


@dataclass
class TokenizerResult:
    """``codes``: ``(n_items, L)`` (``rerank``) or ``(n_items, L + 1)`` (``append_level``) int64, all
    rows unique (``L``: ``M * levels`` for per-modality quantizers); ``report``: losses, collision rates, codebook
    usage and timings; ``model``: the trained RQ-VAE; ``latents``: ``(n_items, d)`` float32, each item's encoder
    latent (``d = M * code_dim`` for per-modality quantizers)."""

    codes: np.ndarray
    report: dict[str, Any]
    model: RQVAE
    latents: np.ndarray

    def codebooks(self) -> np.ndarray:
        """The trained codebooks, ``[levels, K, code_dim]`` (per-modality quantizers: ``M * levels``, modality-major)."""
        return self.model.quantizer.codebooks.detach().float().cpu().numpy()


def build_rqvae(in_dims: Sequence[int], config: TokenizerConfig, device: torch.device) -> RQVAE:
    """An RQ-VAE whose initial weights depend only on ``config.seed`` (the global RNG is left untouched)."""
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(config.seed)
        model = RQVAE(list(in_dims), config)
    return model.to(device)


def autocast(device: torch.device, config: TokenizerConfig) -> torch.autocast:
    """bf16 autocast on CUDA when ``config.mixed_precision``; a no-op context otherwise."""
    enabled = device.type == "cuda" and config.mixed_precision
    return torch.autocast(device.type, dtype=torch.bfloat16, enabled=enabled)


def train_rqvae(model: RQVAE, features: list[Tensor], config: TokenizerConfig) -> list[float]:
    """AdamW training; returns the mean reconstruction loss of each epoch.

    Shuffling, k-means seeding and dead-code re-seeding draw from one generator seeded with
    ``config.seed`` (deterministic on CPU). Codebooks are k-means initialised on the first batch
    when ``config.kmeans_init``. The loop never synchronises with the host: losses are summed on
    the device and read once at the end.
    """
    device = features[0].device
    generator = torch.Generator(device=device).manual_seed(config.seed)
    optimizer = torch.optim.AdamW(model.parameters(), lr=config.lr, weight_decay=config.weight_decay,
                                  fused=device.type == "cuda")
    needs_init = config.kmeans_init
    model.train()
    history = []
    for _ in range(config.epochs):
        epoch_loss = torch.zeros((), device=device)
        batches = torch.randperm(len(features[0]), generator=generator, device=device).split(config.batch_size)
        for rows in batches:
            batch = [matrix[rows].float() for matrix in features]
            if needs_init:
                with torch.no_grad(), autocast(device, config):
                    latent = model.encode(*batch)[0]
                model.quantizer.kmeans_init(latent, config.kmeans_iters, generator)
                needs_init = False
            with autocast(device, config):
                output = model(*batch)
            optimizer.zero_grad(set_to_none=True)
            output.losses["total"].backward()
            optimizer.step()
            model.quantizer.update_usage(output.codes, output.residuals, generator)
            epoch_loss += output.losses["reconstruction"].detach()
        history.append(epoch_loss / len(batches))
    return torch.stack(history).tolist()


@torch.no_grad()
def assign_codes(model: RQVAE, features: list[Tensor], config: TokenizerConfig) -> tuple[np.ndarray, np.ndarray]:
    """Nearest-code assignment of every item in batches: ``(codes (n, L) int64, latents (n, d) float32)``."""
    device = features[0].device
    n = len(features[0])
    codes = torch.empty(n, model.quantizer.levels, dtype=torch.long, device=device)
    latents = torch.empty(n, model.latent_dim, dtype=torch.float32, device=device)
    model.eval()
    for start in range(0, n, config.assign_batch_size):
        rows = slice(start, start + config.assign_batch_size)
        with autocast(device, config):
            latent = model.encode(*(matrix[rows].float() for matrix in features))[0]
        latents[rows] = latent.float()
        codes[rows] = model.quantizer.assign(latent)[0]
    return codes.cpu().numpy(), latents.cpu().numpy()


def fit_tokenizer(features: Features, config: TokenizerConfig | None = None,
                  device: str | torch.device | None = None) -> TokenizerResult:
    """Train an RQ-VAE on ``features`` (one matrix, or one per modality with equal row counts), assign
    every item its codes, and make the code tuples unique with ``config.collision_strategy``.

    Raises ``ValueError`` for NaN/inf features or mismatched row counts, ``RuntimeError`` if any
    collision survived.
    """
    config = config or TokenizerConfig()
    device = resolve_device(device)
    matrices = prepare_features(features, device)
    model = build_rqvae([matrix.shape[1] for matrix in matrices], config, device)
    started = time.perf_counter()
    history = train_rqvae(model, matrices, config)
    trained = time.perf_counter()
    codes, latents = assign_codes(model, matrices, config)
    assigned = time.perf_counter()
    codebooks = model.quantizer.codebooks.detach().float().cpu().numpy()
    resolved = resolve_collisions(codes, latents, codebooks, config.collision_strategy)
    finished = time.perf_counter()
    utilisation, perplexity = level_usage(resolved[:, : model.quantizer.levels], config.codebook_size)
    report = {
        "n_items": len(resolved),
        "levels": resolved.shape[1],
        "collision_strategy": config.collision_strategy,
        "reconstruction_loss": history[-1],
        "reconstruction_loss_per_epoch": history,
        "collision_rate_before": collision_rate(codes),
        "collision_rate_after": collision_rate(resolved),
        "utilisation": utilisation,
        "perplexity": perplexity,
        "seconds_train": trained - started,
        "seconds_assign": assigned - trained,
        "seconds_collisions": finished - assigned,
        "device": str(device),
    }
    return TokenizerResult(resolved, report, model, latents)
