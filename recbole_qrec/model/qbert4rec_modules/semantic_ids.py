"""Stages 1-2 of Q-Bert4Rec: item features -> fused embeddings -> unique semantic IDs, cached on disk.

Cross-domain (``pretrain_datasets``): the stages run once over the union of the target's and the
sources' items. Their features are aligned by modality (:func:`~.item_features.load_source_features`)
and stacked, target first; one injection module and one RQ-VAE see every item, collisions are
re-ranked over the union (no two items of any domains share a code tuple), and the codes are split
back into one table per domain, each with its padding row 0.

The codes depend only on the item features and the stage-1/2 settings, so they are computed once
and stored in ``<checkpoint_dir>/QBert4Rec-<domains>-<key>.sid.pt`` (``<domains>``: the target, then
``+<source>`` per source; tensors only, written atomically, read with
``torch.load(weights_only=True)``); ``<key>`` hashes those settings, the seed, every domain's item
tokens and the feature values (modalities included). Later constructions with the same key reuse
the file. Both stages run inside a forked RNG, so the global RNG state (and with it the stage-3
initialisation) is the same whether the codes were computed or read.
"""

from __future__ import annotations

import hashlib
import json
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from logging import getLogger
from pathlib import Path

import torch
from recbole.config import Config
from recbole.data.dataset import Dataset
from torch import Tensor

from recbole_qrec.data.cross_domain import SourceDomain
from recbole_qrec.data.sid import with_padding_row
from recbole_qrec.errors import ConfigError
from recbole_qrec.fileio import atomic_path
from recbole_qrec.model.qbert4rec_modules.injection import CrossModalInjection, depth_histogram
from recbole_qrec.model.qbert4rec_modules.injection_training import fuse_items, train_injection
from recbole_qrec.model.qbert4rec_modules.item_features import (
    ItemFeatures,
    concat_features,
    load_item_features,
    load_source_features,
)
from recbole_qrec.quantization import TokenizerConfig, fit_tokenizer

FUSIONS = ("dynamic", "static")
# Settings the codes depend on (besides the feature values themselves, hashed separately).
CACHE_KEYS = (
    "injection_dim", "injection_layers", "injection_heads", "injection_temperature", "gate_threshold", "fusion",
    "consistency_weight", "injection_epochs", "injection_batch_size", "injection_learning_rate",
    "sid_levels", "sid_codebook_size", "sid_code_dim", "sid_epochs", "seed",
)


@dataclass
class SemanticIds:
    """The target's ``codes`` ``[n_items, L]`` (row 0, RecBole's padding item, is all zeros) and stage-1
    ``depths`` ``[n_items]`` (0 for padding), each pretraining source's ``source_codes`` (same layout,
    by source name), and whether they were read from the cache."""

    codes: Tensor
    depths: Tensor
    source_codes: dict[str, Tensor]
    from_cache: bool


def build_injection(config: Config, features: ItemFeatures) -> CrossModalInjection:
    """The stage-1 module for ``features``, configured by the ``injection_*`` keys and ``fusion``."""
    if config["fusion"] not in FUSIONS:
        raise ConfigError(f"fusion must be one of {', '.join(FUSIONS)}, got {config['fusion']!r}.")
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
    )


def tokenizer_config(config: Config) -> TokenizerConfig:
    """Stage-2 RQ-VAE settings (collisions always re-ranked, as in the paper)."""
    return TokenizerConfig(
        levels=config["sid_levels"],
        codebook_size=config["sid_codebook_size"],
        code_dim=config["sid_code_dim"],
        epochs=config["sid_epochs"],
        seed=config["seed"],
        collision_strategy="rerank",
    )


def cache_path(config: Config, datasets: Mapping[str, Dataset], features: ItemFeatures) -> Path:
    """Where the semantic IDs for these settings, domains (``name -> dataset``, target first), their items
    and features are cached."""
    key = {name: config[name] for name in CACHE_KEYS}
    key["items"] = {name: list(dataset.field2id_token[dataset.iid_field]) for name, dataset in datasets.items()}
    key["features"] = features.digest()
    digest = hashlib.sha256(json.dumps(key, sort_keys=True).encode()).hexdigest()[:12]
    return Path(config["checkpoint_dir"]) / f"QBert4Rec-{'+'.join(datasets)}-{digest}.sid.pt"


def compute_semantic_ids(config: Config, features: ItemFeatures) -> tuple[Tensor, Tensor]:
    """Stage 1 (train the injection module, fuse every item) and stage 2 (fit the tokenizer): codes
    ``[n, L]`` and depths ``[n]`` of the feature rows (no padding row)."""
    logger = getLogger()
    device = torch.device(config["device"])
    with torch.random.fork_rng(devices=[device] if device.type == "cuda" else []):
        torch.manual_seed(config["seed"])
        module = build_injection(config, features).to(device)
        generator = torch.Generator(device=device).manual_seed(config["seed"])
        on_device = features.to(device)
        losses = train_injection(module, on_device, config["injection_epochs"], config["injection_batch_size"],
                                 config["injection_learning_rate"], generator)
        fused, depths = fuse_items(module, on_device, config["injection_batch_size"])
        logger.info(f"QBert4Rec stage 1: injection loss {losses[0]:.4f} -> {losses[-1]:.4f} over {len(losses)} epochs")
        tokenized = fit_tokenizer(fused, tokenizer_config(config), device)
    report = tokenized.report
    logger.info(
        f"QBert4Rec stage 2: reconstruction loss {report['reconstruction_loss']:.4f}, collision rate "
        f"{report['collision_rate_before']:.4f} -> {report['collision_rate_after']:.4f}"
    )
    return torch.from_numpy(tokenized.codes), depths.cpu()


def split_by_domain(rows: Tensor, features: Mapping[str, ItemFeatures]) -> dict[str, Tensor]:
    """Per-row values of the union of ``features`` split back into one table per domain, each with its padding row."""
    sizes = [len(part.present) for part in features.values()]
    return dict(zip(features, map(with_padding_row, rows.split(sizes))))


def domain_features(config: Config, dataset: Dataset, sources: Sequence[SourceDomain]) -> dict[str, ItemFeatures]:
    """Features of the target and of every source (aligned with the target's), by domain name, target first."""
    target = load_item_features(config, dataset)
    features = {config["dataset"]: target}
    for source in sources:
        features[source.name] = load_source_features(source.config, source.dataset, target)
        if not features[source.name].present.any():
            getLogger().warning(f"pretraining source {source.name} has no {target.modalities} features: the semantic "
                                "IDs of its items come from their learnable ID vectors alone")
    return features


def semantic_ids(config: Config, dataset: Dataset, sources: Sequence[SourceDomain] = ()) -> SemanticIds:
    """The semantic IDs of the items of ``dataset`` and of the ``sources``: one tokenizer over the union of their
    items (codes unique across all domains), read from the cache or computed and cached."""
    features = domain_features(config, dataset, sources)
    union = concat_features(list(features.values()))
    datasets = {config["dataset"]: dataset, **{source.name: source.dataset for source in sources}}
    path = cache_path(config, datasets, union)
    if path.is_file():
        stored, from_cache = torch.load(path, weights_only=True), True
    else:
        codes, depths = compute_semantic_ids(config, union)
        stored = {"codes": split_by_domain(codes, features), "depths": split_by_domain(depths, features)}
        with atomic_path(path) as tmp:
            torch.save(stored, tmp)
        from_cache = False
    target = config["dataset"]
    result = SemanticIds(stored["codes"][target], stored["depths"][target],
                         {source.name: stored["codes"][source.name] for source in sources}, from_cache)
    histogram = depth_histogram(result.depths[1:], config["injection_layers"])
    getLogger().info(f"QBert4Rec semantic IDs {'read from' if from_cache else 'written to'} {path}; "
                     f"{target} items per injection depth 0..{config['injection_layers']}: {histogram}")
    return result
