"""Make sure RecBole's atomic files exist before ``create_dataset`` reads them."""

from __future__ import annotations

from logging import getLogger
from pathlib import Path

from recbole.config import Config

from dataset_prep.convert import convert
from dataset_prep.stats import format_stats
from recbole_qrec.errors import ConfigError


def ensure_atomic_files(config: Config) -> Path:
    """Return ``<data_path>/<dataset>.inter``, converting the processed dataset first if it is missing.

    The processed copy is looked up by :func:`dataset_prep.locate.find_processed_dataset`
    (``$QREC_DATA_DIR``, then ``../shared/data/amazon``); when none exists the
    :class:`~recbole_qrec.errors.DatasetNotFoundError` names the command that creates it.
    """
    data_dir = Path(config["data_path"])
    dataset = config["dataset"]
    inter_file = data_dir / f"{dataset}.inter"
    if not inter_file.is_file():
        stats = convert(dataset, out=data_dir.parent)
        getLogger().info(f"Converted the processed dataset into {data_dir}:\n{format_stats(dataset, stats)}")
    return inter_file


def check_item_features(config: Config) -> None:
    """Fail early when a model's ``selected_features`` are not item content fields of the dataset."""
    wanted = config["selected_features"] or []
    available = config["item_content_fields"]
    if available is None:
        return
    missing = [field for field in wanted if field not in available]
    if missing:
        raise ConfigError(
            f"{config['model']} reads item features {missing} (selected_features), but dataset "
            f"{config['dataset']} has {available or 'no item content features'} (item_content_fields in "
            f"properties/dataset/{config['dataset']}.yaml). Choose a dataset with content codes, or set "
            f"--selected_features to one of {available}."
        )
