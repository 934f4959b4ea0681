"""MME-SID's tokenize stage: the MM-RQ-VAE over the target's item features, written to ``<dataset>.MMESID.sid`` and
``<dataset>.MMESID.sid.npz`` (codebooks and per-modality latents) for the model to read (``sid_producer: MMESID``).

One residual quantizer per modality (:mod:`recbole_qrec.quantization`, ``quantizers: per_modality``) with the paper's
MMD reconstruction loss and InfoNCE between the modalities' quantized vectors (with two or more modalities), an extra
level making every code tuple unique. The features are QBert4Rec's (:mod:`recbole_qrec.data.item_features`):
``text_feature_file`` / ``image_feature_file``, else the one-hot of the dataset's content codes; ``modalities``
selects them. For a trained ID model's item embeddings as a further modality, run the tokenizer by hand
(``python -m recbole_qrec.tokenize ... --checkpoint``) and set ``sid_producer: ~``. The codes are cached under a key
of the settings, the data and the code version (:mod:`recbole_qrec.stage_cache`).
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from logging import getLogger
from pathlib import Path
from typing import Any

import torch
from recbole.config import Config

from recbole_qrec import stage_cache
from recbole_qrec.data import item_features
from recbole_qrec.data.sid import sid_embeddings_path, sid_metadata_path, write_per_modality_embeddings, write_sid_file
from recbole_qrec.fileio import write_json_atomic
from recbole_qrec.quantization import TokenizerConfig, fit_tokenizer
from recbole_qrec.stage_cache import StageInputs, stage_inputs, stage_seed

STAGE = "MMESID"
# Settings the codes depend on (besides the stage's seed and the items and feature values, in the data fingerprint).
STAGE_KEYS = ("modalities", "sid_levels", "sid_codebook_size", "sid_code_dim", "sid_hidden_dims", "sid_epochs",
              "sid_batch_size", "sid_reconstruction_weight", "sid_contrastive_weight")


def tokenizer_config(config: Config, modalities: int) -> TokenizerConfig:
    """The MM-RQ-VAE's settings: the ``sid_*`` keys, per-modality quantizers, MMD reconstruction, contrastive
    alignment between two or more modalities, collisions resolved by an extra level."""
    return TokenizerConfig(
        levels=config["sid_levels"], codebook_size=config["sid_codebook_size"], code_dim=config["sid_code_dim"],
        hidden_dims=tuple(config["sid_hidden_dims"]), epochs=config["sid_epochs"], batch_size=config["sid_batch_size"],
        seed=stage_seed(config), quantizers="per_modality", collision_strategy="append_level", reconstruction="mmd",
        reconstruction_weight=config["sid_reconstruction_weight"],
        alignment="contrastive" if modalities > 1 else "none", contrastive_weight=config["sid_contrastive_weight"])


def stage_identity(config: Config, inputs: StageInputs) -> dict[str, Any]:
    """What the codes depend on (:data:`STAGE_KEYS`, the data, the stage's and the quantizer's source), and its key."""
    return stage_cache.stage_identity(config, inputs, STAGE_KEYS, [Path(__file__), Path(item_features.__file__)])


def run_stage(config: Config, inputs: StageInputs, identity: Mapping[str, Any]) -> dict[str, Any]:
    """The MM-RQ-VAE over the target's items; writes its ``.sid``, ``.sid.npz`` and metadata."""
    domain = config["dataset"]
    features, tokens = inputs.features[domain], inputs.item_tokens[domain]
    device = torch.device(config["device"])
    with torch.random.fork_rng(devices=[device] if device.type == "cuda" else []):
        result = fit_tokenizer(features.matrices, tokenizer_config(config, len(features.matrices)), device)
    sid_file = inputs.sid_file(domain)
    write_sid_file(sid_file, tokens, result.codes.tolist())
    write_per_modality_embeddings(sid_embeddings_path(sid_file), tokens, result.codebooks(), result.latents,
                                  len(features.matrices))
    sources = item_features.domain_content_sources(config, domain, target=True)
    metadata = {**identity, "modalities": features.modalities,
                "content_sources": [sources[modality] for modality in features.modalities],
                **{name: result.report[name] for name in stage_cache.TOKENIZER_FIGURES}}
    write_json_atomic(sid_metadata_path(sid_file), metadata)
    getLogger().info(f"MMESID stage: MM-RQ-VAE over {features.modalities}, reconstruction loss "
                     f"{metadata['reconstruction_loss']:.4f}, collision rate {metadata['collision_rate_before']:.4f} -> "
                     f"{metadata['collision_rate_after']:.4f}")
    return metadata


def tokenize(config: Config, source_configs: Sequence[Config] = ()) -> dict[str, Any]:
    """Run the stage (whatever the state of its output); the metadata it wrote. MMESID has no pretraining sources."""
    inputs = stage_inputs(STAGE, config)
    return stage_cache.run_and_keep(config, inputs, stage_identity(config, inputs), run_stage)


def ensure_semantic_ids(config: Config, source_configs: Sequence[Config] = ()) -> bool:
    """Run the stage when the target's ``.sid`` is missing or stale; True if it ran."""
    inputs = stage_inputs(STAGE, config)
    return stage_cache.ensure(config, inputs, stage_identity(config, inputs), run_stage)
