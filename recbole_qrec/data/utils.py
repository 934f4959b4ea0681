"""``create_dataset`` and ``data_preparation`` that try recbole-qrec's dataset classes first, then RecBole's
(RecBole-GNN's ``recbole_gnn/utils.py`` pattern), and also build the pretraining source domains."""

from __future__ import annotations

from collections.abc import Sequence
from logging import getLogger

import recbole.data.dataset as recbole_datasets
from recbole.config import Config
from recbole.data import create_dataset as create_recbole_dataset
from recbole.data import data_preparation as recbole_data_preparation
from recbole.data.dataloader import AbstractDataLoader, FullSortEvalDataLoader
from recbole.data.dataset import Dataset
from recbole.utils import ModelType

import recbole_qrec.data.dataset as qrec_datasets
from recbole_qrec.data.dataloader import TensorTrainDataLoader, resolve_data_path_mode
from recbole_qrec.data.dataset import QRecSequentialDataset, SemanticIdDataset
from recbole_qrec.data.eval_dataloader import TensorFullSortEvalDataLoader, user_sample
from recbole_qrec.errors import ConfigError


def builds_plain_sequential_dataset(config: Config) -> bool:
    """Whether RecBole's ``create_dataset`` would build a plain ``SequentialDataset`` afresh: a sequential model
    without a dataset class of its own, and no saved dataset to load or write (``save_dataset``,
    ``dataset_save_path``)."""
    return (config["MODEL_TYPE"] == ModelType.SEQUENTIAL and not hasattr(recbole_datasets, f"{config['model']}Dataset")
            and not config["save_dataset"] and not config["dataset_save_path"])


def create_dataset(config: Config, source_configs: Sequence[Config] = ()) -> Dataset:
    """``<Model>Dataset`` of :mod:`recbole_qrec.data.dataset` when it exists (with the pretraining sources built
    from ``source_configs``, one per ``pretrain_datasets`` entry), else :class:`QRecSequentialDataset` where RecBole
    would build a plain ``SequentialDataset`` (the same data, augmented without a Python loop per row) or under the
    cold-start protocol (``cold_start_share``), else RecBole's dataset for the model."""
    dataset_class = getattr(qrec_datasets, f"{config['model']}Dataset", None)
    if dataset_class is None:
        if source_configs:
            raise ConfigError(f"{config['model']} does not pretrain on other domains — unset pretrain_datasets")
        if config["cold_start_share"] is not None or builds_plain_sequential_dataset(config):
            return QRecSequentialDataset(config)
        return create_recbole_dataset(config)
    sources = {source["dataset"]: dataset_class(source) for source in source_configs}
    return dataset_class(config, sources)


def on_device(loader: AbstractDataLoader) -> TensorTrainDataLoader:
    """Training loader ``loader`` as a :class:`TensorTrainDataLoader` (same config, data, sampler and shuffling)."""
    return TensorTrainDataLoader(loader.config, loader._dataset, loader._sampler, shuffle=loader.shuffle)


def data_preparation(config: Config, dataset: Dataset) -> tuple[AbstractDataLoader, AbstractDataLoader,
                                                                  AbstractDataLoader, dict[str, AbstractDataLoader]]:
    """RecBole's train/valid/test loaders of ``dataset``, and the training loader of each pretraining source
    (``source name -> loader``; empty without sources), to pass to the trainer's ``fit(pretrain_data=...)``.
    With ``valid_sample_users`` the validation loader holds that many users (fixed by ``seed``); the test loader
    always holds all. When the run's ``data_path_mode`` is gpu every training loader (the sources' too) is a
    :class:`TensorTrainDataLoader` and every full-ranking loader a :class:`TensorFullSortEvalDataLoader`."""
    gpu = resolve_data_path_mode(config) == "gpu"
    valid_users = config["valid_sample_users"]  # checked by build_config (VALUE_RULES)
    train_data, valid_data, test_data = recbole_data_preparation(config, dataset)
    if valid_users:
        all_users, valid_data = len(valid_data._dataset), user_sample(valid_data, valid_users, config["seed"])
        if len(valid_data._dataset) < all_users:
            getLogger().info(f"validating on {len(valid_data._dataset)} of {all_users} users (valid_sample_users; the "
                             "test ranks all users)")
    if gpu:
        train_data = on_device(train_data)
        valid_data, test_data = (TensorFullSortEvalDataLoader(config, loader._dataset, loader._sampler)
                                 if isinstance(loader, FullSortEvalDataLoader) else loader
                                 for loader in (valid_data, test_data))
    sources = dataset.sources if isinstance(dataset, SemanticIdDataset) else {}
    pretrain_data = {}
    for name, source in sources.items():
        source_train = recbole_data_preparation(source.config, source)[0]
        pretrain_data[name] = on_device(source_train) if gpu else source_train
        getLogger().info(f"pretraining source {name}: {source.user_num - 1} users, {source.item_num - 1} items, "
                         f"{len(pretrain_data[name]._dataset)} training sequences")
    return train_data, valid_data, test_data, pretrain_data
