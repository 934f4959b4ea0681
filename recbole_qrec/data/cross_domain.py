"""Source domains for cross-domain pretraining (``pretrain_datasets``).

A model pretrained on source domains and fine-tuned on the target (QBert4Rec, MQL4GRec) names the
sources in ``pretrain_datasets: [Arts, Games]``. Each source is its own RecBole dataset, with the
same model, harness protocol and data location as the target (its own
``properties/dataset/<source>.yaml`` supplies its item content fields): the caller builds each
source's config with ``recbole_qrec.config.build_config(model, name, config_dict=source_settings(config))``
and passes it to :func:`recbole_qrec.data.create_dataset`. A source contributes the training split of
its leave-one-out division (:func:`recbole_qrec.data.data_preparation`): pretraining never sees a
source user's last two items, exactly as fine-tuning never sees the target's. Item ids are per
domain; models share knowledge across domains through semantic-ID tokens, not item ids.

Default sources: with ``pretrain_datasets: null`` and a ``pretrain_domain_pool`` (QBert4Rec: the three
Amazon domains) that holds the target, the sources are the pool's other domains (:func:`pool_sources`);
a domain that is not under ``data_path`` or has no item content features is left out with a logged
warning, so the default runs on whatever part of the pool is there.
"""

from __future__ import annotations

from logging import getLogger
from pathlib import Path
from typing import Any

import yaml
from recbole.config import Config

from recbole_qrec.data.atomic_files import data_root, detect_item_content_fields
from recbole_qrec.errors import ConfigError
from recbole_qrec.resources import PROPERTIES_DIR

# Settings a source domain takes from the target's config (everything else comes from properties/).
INHERITED_KEYS = (
    "MAX_ITEM_LIST_LENGTH", "train_batch_size", "seed", "reproducibility", "checkpoint_dir",
    "use_gpu", "gpu_id", "show_progress", "state", "allow_data_mismatch", "sid_producer",
    "code_proxy_level_decay",  # every domain's content-code proxy weighted alike: one stage 1 and RQ-VAE see them all
)


def dataset_names(config: Config, key: str) -> list[str]:
    """``key``'s value, checked to be a list of dataset names."""
    names = config[key]
    if not isinstance(names, list) or not all(isinstance(name, str) for name in names):
        raise ConfigError(f"{key} must be a list of dataset names, got {names!r} — write e.g. [Arts, Games]")
    return names


def pretrain_dataset_names(config: Config) -> list[str]:
    """The validated ``pretrain_datasets`` (null: :func:`pool_sources`)."""
    if config["pretrain_datasets"] is None:
        return pool_sources(config)
    names = dataset_names(config, "pretrain_datasets")
    if config["dataset"] in names:
        raise ConfigError(f"pretrain_datasets {names} contains the target dataset {config['dataset']} — list other "
                          "domains only (the target's own training data is used for fine-tuning)")
    if len(set(names)) != len(names):
        raise ConfigError(f"pretrain_datasets {names} names a dataset twice — list each source once")
    if names and not config["pretrain_epochs"]:
        raise ConfigError(f"pretrain_datasets is {names} but pretrain_epochs is {config['pretrain_epochs']} — set "
                          "pretrain_epochs > 0 to pretrain on them, or unset pretrain_datasets")
    return list(names)


def source_settings(config: Config) -> dict[str, Any]:
    """The settings a source domain's config takes from the target's: :data:`INHERITED_KEYS` and the data folder."""
    settings = {key: config[key] for key in INHERITED_KEYS if key in config.final_config_dict}
    settings["data_path"] = str(Path(config["data_path"]).parent)
    return settings


def pool_sources(config: Config) -> list[str]:
    """The other domains of ``pretrain_domain_pool`` that are under ``data_path`` with item content features; none
    when the target is not in the pool or ``pretrain_epochs`` is 0. Each domain left out is logged."""
    pool = [] if config["pretrain_domain_pool"] is None else dataset_names(config, "pretrain_domain_pool")
    target = config["dataset"]
    if target not in pool or not config["pretrain_epochs"]:
        return []
    root, names = data_root(config), []
    for name in [name for name in pool if name != target]:
        folder = root / name
        if not (folder / f"{name}.inter").is_file():
            getLogger().warning(f"pretraining source {name} (pretrain_domain_pool) left out: no {name}.inter under {root}")
        elif not declared_content_fields(folder, name, config["field_separator"]):
            getLogger().warning(f"pretraining source {name} (pretrain_domain_pool) left out: it has no item content "
                                "features (item_content_fields) to give its items semantic IDs")
        else:
            names.append(name)
    return names


def declared_content_fields(folder: Path, name: str, separator: str) -> list[str]:
    """``item_content_fields`` of dataset ``name`` as its config resolves them: its bundled YAML's, else the
    ``.item`` header's content columns."""
    defaults = PROPERTIES_DIR / "dataset" / f"{name}.yaml"
    declared = (yaml.safe_load(defaults.read_text(encoding="utf-8")) or {}) if defaults.is_file() else {}
    if declared.get("item_content_fields") is not None:
        return declared["item_content_fields"]
    item_file = folder / f"{name}.item"
    return detect_item_content_fields(item_file, separator) if item_file.is_file() else []
