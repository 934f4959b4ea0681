"""QBert4Rec's stages 1-2 as a tokenize stage: item features -> fused embeddings -> unique semantic IDs,
written to ``<dataset>.QBert4Rec.sid`` for the model's dataset to read (``sid_producer: QBert4Rec``; the
tokenizer's ``<dataset>.sid`` in the same folder is left alone).

Stage 1 trains the cross-modal injection module
(:class:`~recbole_qrec.model.qbert4rec_modules.injection.CrossModalInjection`) on every item and fuses
each item's features into its ID vector; stage 2 fits the RQ-VAE on the fused embeddings
(:func:`recbole_qrec.quantization.fit_tokenizer`, collisions re-ranked).

Cross-domain (``pretrain_datasets``): the stages run once over the union of the target's and the
sources' items. Their features are aligned by modality
(:func:`~recbole_qrec.data.item_features.load_source_features`) and stacked, target first; one injection
module and one RQ-VAE see every item, collisions are re-ranked over the union (no two items of any
domains share a code tuple), and each domain's codes go to its own ``<domain>.QBert4Rec.sid``.

Beside every ``.sid`` the stage writes ``<domain>.QBert4Rec.sid.json``: its ``key`` (a hash of the stage settings,
the data fingerprint and the code version), the settings, the ``data_fingerprint`` (item tokens of every
domain and the feature values), the ``code_version`` (a hash of the source of the modules the codes
depend on), the domains, the collision, utilisation and perplexity figures, the stage-1 losses and, per domain
(``domains``), the injection-depth histogram, the mean fused-embedding norm and the utilisation and perplexity of
its codes. :func:`ensure_semantic_ids` reruns the stage only when a domain's file is missing or its key differs.
Both stages leave the caller's RNG state as it was (stage 1 runs inside a forked RNG, the RQ-VAE draws from its own
generator), so it is the same whether the codes were computed or reused.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from logging import getLogger
from pathlib import Path
from typing import Any

import torch
import torch.nn.functional as F
from recbole.config import Config
from torch import Tensor

from recbole_qrec import stage_cache
from recbole_qrec.data import item_features
from recbole_qrec.data.item_features import ItemFeatures, concat_features
from recbole_qrec.data.sid import sid_metadata_path, write_sid_file
from recbole_qrec.fileio import write_json_atomic
from recbole_qrec.model.qbert4rec_modules import (contrastive, cross_attention_block, halting, injection,
                                                  injection_training)
from recbole_qrec.model.qbert4rec_modules.injection import CrossModalInjection, depth_histogram
from recbole_qrec.model.qbert4rec_modules.injection_settings import check_injection_settings
from recbole_qrec.model.qbert4rec_modules.injection_training import InjectionCurve, fuse_items, train_injection
from recbole_qrec.quantization import TokenizerConfig, TokenizerResult, fit_tokenizer
from recbole_qrec.quantization.metrics import level_usage
from recbole_qrec.stage_cache import StageInputs, stage_inputs, stage_seed

STAGE = "QBert4Rec"
# Settings the codes depend on (besides the stage's seed and the items and feature values, in the data fingerprint).
STAGE_KEYS = (
    "modalities", "injection_dim", "injection_layers", "injection_heads", "injection_temperature", "gate_threshold",
    "fusion", "consistency_weight", "depth_weight", "depth_target", "depth_weight_step", "gate_objective",
    "halting_kl_weight", "injection_projection", "injection_epochs",
    "injection_batch_size", "injection_learning_rate",
    "sid_levels", "sid_codebook_size", "sid_code_dim", "sid_epochs", "sid_l2_normalize",
)
# Modules whose source the codes depend on: their hash is the stage's code version.
STAGE_MODULES = (contrastive, cross_attention_block, halting, injection, injection_training, item_features)


def build_injection(config: Config, features: ItemFeatures) -> CrossModalInjection:
    """The stage-1 module for ``features``, configured by the ``injection_*`` keys and ``fusion``."""
    check_injection_settings(config)
    return CrossModalInjection(
        n_items=len(features.present),
        modality_dims=[matrix.shape[1] for matrix in features.matrices],
        dim=config["injection_dim"],
        layers=config["injection_layers"],
        heads=config["injection_heads"],
        temperature=config["injection_temperature"],
        gate_threshold=config["gate_threshold"],
        dynamic=config["fusion"] == "dynamic",
        consistency_weight=config["consistency_weight"],
        depth_weight=config["depth_weight"],
        depth_target=config["depth_target"],
        depth_weight_step=config["depth_weight_step"],
        fixed_projection=config["injection_projection"] == "fixed",
        gate_objective=config["gate_objective"],
        halting_kl_weight=config["halting_kl_weight"],
    )


def tokenizer_config(config: Config) -> TokenizerConfig:
    """Stage-2 RQ-VAE settings (collisions always re-ranked, as in the paper)."""
    return TokenizerConfig(levels=config["sid_levels"], codebook_size=config["sid_codebook_size"],
                           code_dim=config["sid_code_dim"], epochs=config["sid_epochs"], seed=stage_seed(config),
                           collision_strategy="rerank")


def stage_identity(config: Config, inputs: StageInputs) -> dict[str, Any]:
    """What the codes depend on (:data:`STAGE_KEYS`, the data, the stage's and the quantizer's source), and its key."""
    files = [Path(__file__), *(Path(module.__file__) for module in STAGE_MODULES)]
    return stage_cache.stage_identity(config, inputs, STAGE_KEYS, files)


def inject(config: Config, union: ItemFeatures) -> tuple[Tensor, Tensor, InjectionCurve]:
    """Stage 1 over ``union``'s items, seeded by the stage seed: their fused embeddings ``[n, d]`` and depths ``[n]``
    (on the CPU) and the loss and training depths per epoch."""
    device = torch.device(config["device"])
    with torch.random.fork_rng(devices=[device] if device.type == "cuda" else []):
        torch.manual_seed(stage_seed(config))
        module = build_injection(config, union).to(device)
        generator = torch.Generator(device=device).manual_seed(stage_seed(config))
        on_device = union.to(device)
        curve = train_injection(module, on_device, config["injection_epochs"], config["injection_batch_size"],
                                config["injection_learning_rate"], generator)
        fused, depths = fuse_items(module, on_device, config["injection_batch_size"])
    return fused.cpu(), depths.cpu(), curve


def quantize(config: Config, fused: Tensor) -> TokenizerResult:
    """Stage 2: the RQ-VAE (seeded by the stage seed) on the fused embeddings, L2-normalised first with
    ``sid_l2_normalize``; unique codes."""
    device = torch.device(config["device"])
    vectors = F.normalize(fused, dim=1) if config["sid_l2_normalize"] else fused
    return fit_tokenizer(vectors.to(device), tokenizer_config(config), device)


def domain_figures(config: Config, item_tokens: Mapping[str, Sequence[str]], fused: Tensor, codes: Tensor,
                   depths: Tensor) -> dict[str, dict[str, Any]]:
    """Per domain of ``item_tokens`` (the union's rows, in order): its items' injection-depth histogram, mean
    fused-embedding norm, and per-level utilisation and perplexity of its codes (the RQ-VAE's input scale is shared
    by all domains: a domain of shorter embeddings gets fewer distinct codes)."""
    sizes = [len(tokens) for tokens in item_tokens.values()]
    figures = {}
    for name, rows, domain_codes, domain_depths in zip(item_tokens, fused.split(sizes), codes.split(sizes),
                                                       depths.split(sizes)):
        utilisation, perplexity = level_usage(domain_codes[:, : config["sid_levels"]].numpy(),
                                              config["sid_codebook_size"])
        figures[name] = {"depth_histogram": depth_histogram(domain_depths, config["injection_layers"]),
                         "fused_norm": float(rows.norm(dim=1).mean()), "utilisation": utilisation,
                         "perplexity": perplexity}
    return figures


def run_stage(config: Config, inputs: StageInputs, identity: Mapping[str, Any]) -> dict[str, Any]:
    """Stages 1-2 over the union of the domains' items; writes every domain's ``.sid`` and metadata."""
    logger = getLogger()
    fused, depths, curve = inject(config, concat_features(list(inputs.features.values())))
    losses = curve.losses
    logger.info(f"QBert4Rec stage 1: injection loss {losses[0]:.4f} -> {losses[-1]:.4f} over {len(losses)} epochs; "
                f"items per depth 0..{config['injection_layers']}: "
                f"{depth_histogram(depths, config['injection_layers'])} (median {int(depths.median())})")
    tokenized = quantize(config, fused)
    report = tokenized.report
    logger.info(f"QBert4Rec stage 2: reconstruction loss {report['reconstruction_loss']:.4f}, collision rate "
                f"{report['collision_rate_before']:.4f} -> {report['collision_rate_after']:.4f}")
    codes = torch.from_numpy(tokenized.codes)
    sizes = {domain: len(tokens) for domain, tokens in inputs.item_tokens.items()}
    domains = domain_figures(config, inputs.item_tokens, fused, codes, depths)
    metadata = {**identity, "items": sizes,
                **{name: report[name] for name in stage_cache.TOKENIZER_FIGURES},
                "injection_loss": {"first": losses[0], "last": losses[-1], "epochs": len(losses)},
                "injection_depths_per_epoch": curve.depths,
                "domains": domains}
    for (domain, tokens), domain_codes in zip(inputs.item_tokens.items(), codes.split(list(sizes.values()))):
        write_sid_file(inputs.sid_file(domain), tokens, domain_codes.tolist())
        write_json_atomic(sid_metadata_path(inputs.sid_file(domain)), metadata)
    return metadata


def tokenize(config: Config, source_configs: Sequence[Config] = ()) -> dict[str, Any]:
    """Run the stage (whatever the state of its output); the metadata it wrote."""
    inputs = stage_inputs(STAGE, config, source_configs)
    return stage_cache.run_and_keep(config, inputs, stage_identity(config, inputs), run_stage)


def ensure_semantic_ids(config: Config, source_configs: Sequence[Config] = ()) -> bool:
    """Run the stage when a domain's ``.sid`` is missing or stale; True if it ran."""
    inputs = stage_inputs(STAGE, config, source_configs)
    return stage_cache.ensure(config, inputs, stage_identity(config, inputs), run_stage)
