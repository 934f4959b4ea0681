"""Full-ranking evaluation loaders: :class:`TensorFullSortEvalDataLoader`, RecBole's ``FullSortEvalDataLoader`` with
its data held on the device (``data_path_mode: gpu``), and :func:`user_sample`, the fixed users a run validates on
(``valid_sample_users``)."""

from __future__ import annotations

import math
from collections.abc import Iterator, Sequence

import torch
from recbole.config import Config
from recbole.data.dataloader import AbstractDataLoader, FullSortEvalDataLoader
from recbole.data.dataset import Dataset
from recbole.data.interaction import Interaction
from recbole.sampler.sampler import AbstractSampler

from recbole_qrec.data.dataloader import DeviceRows
from recbole_qrec.data.transform import device_transform

EvalBatch = tuple[Interaction, tuple[torch.Tensor, torch.Tensor] | None, torch.Tensor, torch.Tensor]


class RaggedItems:
    """One item list per row (e.g. a user's history), held on ``device`` as one flat tensor."""

    def __init__(self, lists: Sequence[torch.Tensor], device: torch.device):
        lengths = torch.tensor([len(items) for items in lists], dtype=torch.int64)
        self.offsets = [0, *lengths.cumsum(0).tolist()]  # on the host: slicing needs no device sync
        self.items = torch.cat([torch.zeros(0, dtype=torch.int64), *lists]).to(device)
        self.lengths = lengths.to(device)

    def batch(self, start: int, end: int) -> tuple[torch.Tensor, torch.Tensor]:
        """``(row - start, item)`` of every item of rows ``start .. end - 1`` (RecBole's ``(history_u, history_i)``)."""
        count = self.offsets[end] - self.offsets[start]
        rows = torch.arange(end - start, device=self.items.device)
        return (torch.repeat_interleave(rows, self.lengths[start:end], output_size=count),
                self.items[self.offsets[start]:self.offsets[end]])


class TensorFullSortEvalDataLoader(FullSortEvalDataLoader):
    """RecBole's :class:`FullSortEvalDataLoader` (same constructor, same batches, scored by RecBole's trainer and
    metrics) whose data live on ``config["device"]``: a sequential model's evaluated rows (joined with the user and
    item features, through the dataset transform), or a general model's users with the items of their history
    (masked from the ranking) and their positive items. Batches are consecutive rows, ``eval_batch_size`` at a
    time (a general model's: ``eval_batch_size // n_items`` users), as RecBole's."""

    def __init__(self, config: Config, dataset: Dataset, sampler: AbstractSampler | None, shuffle: bool = False):
        super().__init__(config, dataset, sampler, shuffle=shuffle)
        self.transform = device_transform(config)
        device = torch.device(config["device"])
        if self.is_sequential:
            self.rows = DeviceRows(dataset.inter_feat, device, dataset)
        else:
            users = self.uid_list.tolist()
            self.rows = DeviceRows(self.user_df, device)
            self.history = RaggedItems(self.uid2history_item[users], device)
            self.positive = RaggedItems(self.uid2positive_item[users], device)

    def __len__(self) -> int:
        return math.ceil(self.sample_size / self.step)

    def __iter__(self) -> Iterator[EvalBatch]:
        for start in range(0, self.sample_size, self.step):
            end = min(start + self.step, self.sample_size)
            if self.is_sequential:
                interaction = self.transform(self._dataset, self.rows[start:end])
                positive_u = torch.arange(end - start, device=interaction[self.iid_field].device)
                yield interaction, None, positive_u, interaction[self.iid_field]
            else:
                yield self.rows[start:end], self.history.batch(start, end), *self.positive.batch(start, end)


def user_sample(loader: AbstractDataLoader, users: int, seed: int) -> AbstractDataLoader:
    """Evaluation loader ``loader`` restricted to ``users`` of its users, drawn with ``seed`` (the same users for the
    same seed), as a loader of its class; ``loader`` itself when it has no more users than that."""
    dataset = loader._dataset
    user_ids = dataset.inter_feat[dataset.uid_field]
    distinct = user_ids.unique()
    if users >= len(distinct):
        return loader
    chosen = distinct[torch.randperm(len(distinct), generator=torch.Generator().manual_seed(seed))[:users]]
    return type(loader)(loader.config, dataset.copy(dataset.inter_feat[torch.isin(user_ids, chosen)]), loader._sampler,
                        shuffle=False)
