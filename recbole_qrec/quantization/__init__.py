"""Semantic-ID quantization: RQ-VAE, k-means, collision handling and the :func:`fit_tokenizer` pipeline.

Pure torch/numpy (no RecBole import). Modules: ``config`` (:class:`TokenizerConfig`), ``kmeans``,
``quantizer`` (residual quantization), ``alignment`` (MACRec InfoNCE, MMD), ``rqvae``
(:class:`RQVAE`), ``features`` (input validation), ``collisions`` (rerank / append_level),
``metrics``, ``tokenizer``. Content-proxy features come from :mod:`dataset_prep.features`.

The quantizer is our own (~100 lines) rather than ``vector-quantize-pytorch`` (installable here,
1.32.0): collision re-ranking needs each level's residuals and codebooks, the spec fixes the
k-means-on-first-batch initialisation, dead-code rule and per-branch quantization with shared
codebooks for the MACRec alignment, and that library would add four dependencies (einops, einx,
loguru, torch-einops-utils) for little of it.
"""

from recbole_qrec.quantization.collisions import (
    append_level,
    assert_unique,
    rerank_collisions,
    resolve_collisions,
    tuple_ids,
)
from recbole_qrec.quantization.config import TokenizerConfig
from recbole_qrec.quantization.kmeans import kmeans
from recbole_qrec.quantization.metrics import collision_rate, level_usage
from recbole_qrec.quantization.quantizer import QuantizerOutput, ResidualQuantizer
from recbole_qrec.quantization.rqvae import RQVAE, RQVAEOutput
from recbole_qrec.quantization.tokenizer import (
    TokenizerResult,
    assign_codes,
    build_rqvae,
    fit_tokenizer,
    train_rqvae,
)

__all__ = [
    "RQVAE",
    "QuantizerOutput",
    "RQVAEOutput",
    "ResidualQuantizer",
    "TokenizerConfig",
    "TokenizerResult",
    "append_level",
    "assert_unique",
    "assign_codes",
    "build_rqvae",
    "collision_rate",
    "fit_tokenizer",
    "kmeans",
    "level_usage",
    "rerank_collisions",
    "resolve_collisions",
    "train_rqvae",
    "tuple_ids",
]
