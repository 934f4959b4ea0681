"""Source domains for cross-domain pretraining (``pretrain_datasets``).

A model pretrained on source domains and fine-tuned on the target (QBert4Rec, MQL4GRec) names the
sources in ``pretrain_datasets: [Arts, Games]``. Each source is built as its own RecBole dataset,
with the same model, harness protocol and data location as the target (its own
``properties/dataset/<source>.yaml`` supplies its item content fields), and contributes the
training split of its leave-one-out division: pretraining never sees a source user's last two
items, exactly as fine-tuning never sees the target's. Item ids are per domain; models share
knowledge across domains through semantic-ID tokens, not item ids.
"""

from __future__ import annotations

from dataclasses import dataclass
from logging import getLogger
from pathlib import Path

from recbole.config import Config
from recbole.data import create_dataset, data_preparation
from recbole.data.dataloader import AbstractDataLoader
from recbole.data.dataset import Dataset

from recbole_qrec.data.atomic_files import ensure_atomic_files
from recbole_qrec.errors import ConfigError

# Settings a source domain takes from the target's config (everything else comes from properties/).
INHERITED_KEYS = (
    "MAX_ITEM_LIST_LENGTH", "train_batch_size", "seed", "reproducibility", "checkpoint_dir",
    "use_gpu", "gpu_id", "show_progress", "state",
)


@dataclass
class SourceDomain:
    """A pretraining source: its name, RecBole config and dataset, and its training data loader."""

    name: str
    config: Config
    dataset: Dataset
    train_data: AbstractDataLoader


def pretrain_dataset_names(config: Config) -> list[str]:
    """The validated ``pretrain_datasets`` (an empty list when unset)."""
    names = config["pretrain_datasets"] or []
    if isinstance(names, str) or not all(isinstance(name, str) for name in names):
        raise ConfigError(f"pretrain_datasets must be a list of dataset names, e.g. [Arts, Games]; got {names!r}.")
    if config["dataset"] in names:
        raise ConfigError(
            f"pretrain_datasets {names} contains the target dataset {config['dataset']}: sources must be other "
            "domains (the target's own training data is used for fine-tuning)."
        )
    if len(set(names)) != len(names):
        raise ConfigError(f"pretrain_datasets {names} names a dataset twice.")
    if names and not config["pretrain_epochs"]:
        raise ConfigError(f"pretrain_datasets is {names} but pretrain_epochs is {config['pretrain_epochs']}: set "
                          "pretrain_epochs > 0 to pretrain on them, or unset pretrain_datasets.")
    return list(names)


def source_config(config: Config, name: str) -> Config:
    """The config of source domain ``name``: the target's model and harness, the source's dataset defaults."""
    from recbole_qrec.config import build_config  # deferred: recbole_qrec.config imports the model registry

    overrides = {key: config[key] for key in INHERITED_KEYS if key in config.final_config_dict}
    overrides["data_path"] = str(Path(config["data_path"]).parent)
    return build_config(config["model"], name, config_dict=overrides)


def load_source_domains(config: Config) -> list[SourceDomain]:
    """Build every domain of ``pretrain_datasets`` (converted to atomic files first when needed)."""
    domains = []
    for name in pretrain_dataset_names(config):
        domain_config = source_config(config, name)
        ensure_atomic_files(domain_config)
        dataset = create_dataset(domain_config)
        train_data, _, _ = data_preparation(domain_config, dataset)
        train_dataset = train_data._dataset
        getLogger().info(f"pretraining source {name}: {dataset.user_num - 1} users, {dataset.item_num - 1} items, "
                         f"{len(train_dataset)} training sequences")
        domains.append(SourceDomain(name, domain_config, train_dataset, train_data))
    return domains
