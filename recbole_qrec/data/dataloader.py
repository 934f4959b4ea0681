"""``TensorTrainDataLoader``: RecBole's training loader with the training split held on the device
(``data_path_mode: gpu``). Batches are drawn by index from device tensors instead of being collated on the CPU."""

from __future__ import annotations

import math
from collections.abc import Iterator

import numpy as np
import torch
from recbole.config import Config
from recbole.data.dataloader import TrainDataLoader
from recbole.data.dataset import Dataset
from recbole.data.interaction import Interaction
from recbole.sampler.sampler import AbstractSampler

from recbole_qrec.errors import ConfigError

DATA_PATH_MODES = ("recbole", "gpu")


def check_data_path_mode(config: Config) -> str:
    """``data_path_mode`` of ``config``, after checking it is one of :data:`DATA_PATH_MODES`."""
    mode = config["data_path_mode"]
    if mode not in DATA_PATH_MODES:
        raise ConfigError(f"data_path_mode must be one of {', '.join(DATA_PATH_MODES)}, got {mode!r} — "
                          "e.g. --data_path_mode=recbole")
    return mode


def check_gpu_data_path(config: Config) -> None:
    """Raise unless the training of ``config``'s run needs nothing the device-resident loader leaves out."""
    refuse = "— set data_path_mode: recbole"
    if config["train_neg_sample_args"]["distribution"] != "none":
        raise ConfigError(f"data_path_mode gpu trains without negative sampling, but train_neg_sample_args samples "
                          f"{config['train_neg_sample_args']['distribution']} negatives {refuse}")
    if config["transform"] is not None:
        raise ConfigError(f"{config['model']} trains on RecBole's dataset transform {config['transform']!r}, which "
                          f"data_path_mode gpu does not apply {refuse}")
    if not config["single_spec"]:
        raise ConfigError(f"data_path_mode gpu trains on one process, but this run is distributed {refuse}")


def _fields_on(features: Interaction | None, device: torch.device) -> dict[str, torch.Tensor]:
    """The columns of ``features`` moved to ``device`` (none without features)."""
    return {} if features is None else {name: value.to(device) for name, value in features.interaction.items()}


class TensorTrainDataLoader(TrainDataLoader):
    """RecBole's :class:`TrainDataLoader` (same constructor, same batch fields: the training rows of ``inter_feat``
    joined with the user and item features) whose data live on ``config["device"]``. Epoch ``e`` (counted from 0
    by this loader) visits the rows in a permutation drawn from a generator seeded with ``(seed, e)``, in batches
    of ``train_batch_size``, the last one smaller; without ``shuffle`` in row order."""

    def __init__(self, config: Config, dataset: Dataset, sampler: AbstractSampler | None, shuffle: bool = False):
        check_gpu_data_path(config)
        super().__init__(config, dataset, sampler, shuffle=shuffle)
        device = torch.device(config["device"])
        self._inter = _fields_on(dataset.inter_feat, device)
        self._user = _fields_on(dataset.user_feat, device) if dataset.uid_field in self._inter else {}
        self._item = _fields_on(dataset.item_feat, device) if dataset.iid_field in self._inter else {}
        self._device = device
        self.epoch = 0

    def __len__(self) -> int:
        return math.ceil(self.sample_size / self.step)

    def order(self, epoch: int) -> torch.Tensor:
        """The row order of ``epoch``: a seeded permutation (the same for the same seed and epoch), or row order."""
        if not self.shuffle:
            return torch.arange(self.sample_size, device=self._device)
        seed = np.random.SeedSequence([self.config["seed"], epoch]).generate_state(1, np.uint64)[0]
        generator = torch.Generator().manual_seed(int(seed))
        return torch.randperm(self.sample_size, generator=generator).to(self._device)

    def batch(self, index: torch.Tensor) -> Interaction:
        """The rows ``index`` of the training split, with their users' and items' features (RecBole's ``join``)."""
        fields = {name: value[index] for name, value in self._inter.items()}
        if self._user:
            users = fields[self._dataset.uid_field]
            fields.update({name: value[users] for name, value in self._user.items()})
        if self._item:
            items = fields[self._dataset.iid_field]
            fields.update({name: value[items] for name, value in self._item.items()})
        return Interaction(fields)

    def __iter__(self) -> Iterator[Interaction]:
        order = self.order(self.epoch)
        self.epoch += 1
        for start in range(0, self.sample_size, self.step):
            yield self.batch(order[start:start + self.step])
