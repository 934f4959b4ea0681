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
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

from recbole.config import Config

from recbole_qrec.errors import ConfigError

# Settings a source domain takes from the target's config (everything else comes from properties/).
INHERITED_KEYS = (
    "MAX_ITEM_LIST_LENGTH", "train_batch_size", "seed", "reproducibility", "checkpoint_dir",
    "use_gpu", "gpu_id", "show_progress", "state", "allow_data_mismatch",
)


def pretrain_dataset_names(config: Config) -> list[str]:
    """The validated ``pretrain_datasets`` (an empty list when unset)."""
    names = config["pretrain_datasets"] or []
    if isinstance(names, str) or not all(isinstance(name, str) for name in names):
        raise ConfigError(f"pretrain_datasets must be a list of dataset names, got {names!r} — write e.g. [Arts, Games]")
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
