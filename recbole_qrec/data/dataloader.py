"""``TensorTrainDataLoader``: RecBole's training loader with the training split held on the device
(``data_path_mode: gpu``). Batches are drawn by index from device tensors instead of being collated on the CPU, and
the dataset transform runs on them there (:mod:`recbole_qrec.data.transform`)."""

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

from recbole_qrec.data.transform import DEVICE_TRANSFORMS, device_transform
from recbole_qrec.errors import ConfigError, checked_choice

DATA_PATH_MODES = ("auto", "recbole", "gpu")
# Models whose training losses do not change when the trailing padding of their item lists is cut (a batch's lists
# kept as long as its longest history): the cut-off columns are padding that every position ignores, and the models
# that pad histories to full length pad them to the lists they are given. BERT4Rec's masking draws its random numbers
# over the batch's width: the same distribution over the items, other draws.
LENGTH_BUCKET_MODELS = ("SASRec", "GRU4Rec", "BERT4Rec", "FDSA", "QBert4Rec", "TIGER", "MQL4GRec", "MACRec", "MMESID")


def check_data_path_mode(config: Config) -> str:
    """``data_path_mode`` of ``config``, after checking it is one of :data:`DATA_PATH_MODES`."""
    return checked_choice("data_path_mode", config["data_path_mode"], DATA_PATH_MODES, "e.g. --data_path_mode=recbole")


def gpu_data_path_refusal(config: Config) -> str | None:
    """Why the device-resident loader cannot train ``config``'s run (None when it can)."""
    if config["train_neg_sample_args"]["distribution"] != "none":
        return (f"data_path_mode gpu trains without negative sampling, but train_neg_sample_args samples "
                f"{config['train_neg_sample_args']['distribution']} negatives")
    if config["transform"] not in DEVICE_TRANSFORMS:
        applied = ", ".join(name for name in DEVICE_TRANSFORMS if name)
        return (f"{config['model']} trains on RecBole's dataset transform {config['transform']!r}, which "
                f"data_path_mode gpu does not apply (it applies {applied})")
    return None


def check_gpu_data_path(config: Config) -> None:
    """Raise unless the training of ``config``'s run needs nothing the device-resident loader leaves out."""
    refusal = gpu_data_path_refusal(config)
    if refusal:
        raise ConfigError(f"{refusal} — set data_path_mode: recbole")


def resolve_data_path_mode(config: Config) -> str:
    """Check ``data_path_mode`` and settle ``auto`` in ``config``: ``gpu`` on a CUDA device for a run the
    device-resident loader can train, ``recbole`` otherwise. Returns the mode the run uses."""
    mode = check_data_path_mode(config)
    if mode == "auto":
        on_cuda = torch.device(config["device"]).type == "cuda"
        mode = config["data_path_mode"] = "gpu" if on_cuda and gpu_data_path_refusal(config) is None else "recbole"
    elif mode == "gpu":
        check_gpu_data_path(config)
    if length_bucket_widths(config) is not None and mode != "gpu":
        raise ConfigError(f"length_buckets batches the device-resident loader's rows, but this run uses data_path_mode "
                          f"{mode} — set data_path_mode: gpu (it also runs on a CPU) or length_buckets: ~")
    return mode


def length_bucket_widths(config: Config) -> list[int] | None:
    """The item-list width of each length bucket: the bounds of ``length_buckets``, then ``MAX_ITEM_LIST_LENGTH``
    (None when it is ~). Raises :class:`ConfigError` for bounds or a model it does not apply to."""
    bounds = config["length_buckets"]
    if bounds is None:
        return None
    bounds, longest = (bounds if isinstance(bounds, list) else [bounds]), config["MAX_ITEM_LIST_LENGTH"]
    if config["model"] not in LENGTH_BUCKET_MODELS:
        raise ConfigError(f"length_buckets cuts the item lists of {', '.join(LENGTH_BUCKET_MODELS)} only, and "
                          f"{config['model']} reads them at full length — unset length_buckets")
    if bounds != sorted(set(bounds)) or bounds[-1] >= longest:
        raise ConfigError(f"length_buckets must be increasing history lengths below MAX_ITEM_LIST_LENGTH ({longest}), "
                          f"got {bounds} — e.g. --length_buckets=[3,8]")
    return [*bounds, longest]


def seeded_generator(*keys: int) -> torch.Generator:
    """A CPU generator seeded from ``keys`` (e.g. the run's seed and an epoch) through numpy's ``SeedSequence``."""
    seed = np.random.SeedSequence(list(keys)).generate_state(1, np.uint64)[0]
    return torch.Generator().manual_seed(int(seed))


def _fields_on(features: Interaction | None, device: torch.device) -> dict[str, torch.Tensor]:
    """The columns of ``features`` moved to ``device`` (none without features)."""
    return {} if features is None else {name: value.to(device) for name, value in features.interaction.items()}


class DeviceRows:
    """The rows of ``rows`` held on ``device``; indexed, they are joined with the user and item features of
    ``dataset`` (when given) as RecBole's ``Dataset.join`` joins them."""

    def __init__(self, rows: Interaction, device: torch.device, dataset: Dataset | None = None):
        self.rows = _fields_on(rows, device)
        self.length = len(rows)
        joins = [] if dataset is None else [(dataset.uid_field, dataset.user_feat),
                                            (dataset.iid_field, dataset.item_feat)]
        self.joins = [(key, _fields_on(features, device)) for key, features in joins if key in self.rows]

    def __len__(self) -> int:
        return self.length

    def __getitem__(self, index: torch.Tensor | slice) -> Interaction:
        fields = {name: value[index] for name, value in self.rows.items()}
        for key, features in self.joins:
            fields.update({name: value[fields[key]] for name, value in features.items()})
        return Interaction(fields)


def rank_share(order: torch.Tensor, rank: int, world_size: int) -> torch.Tensor:
    """Process ``rank``'s share of ``order`` in a run of ``world_size`` processes: every ``world_size``-th row from
    its ``rank``-th, ``order`` first repeated as torch's ``DistributedSampler`` pads, so that every process gets
    ``ceil(len(order) / world_size)`` rows."""
    if not len(order):
        return order
    rows = math.ceil(len(order) / world_size)
    return order.repeat(math.ceil(rows * world_size / len(order)))[rank:rows * world_size:world_size]


class TensorTrainDataLoader(TrainDataLoader):
    """RecBole's :class:`TrainDataLoader` (same constructor, same batch fields: the training rows of ``inter_feat``
    joined with the user and item features) whose data live on ``config["device"]``. Epoch ``e`` (counted from 0
    by this loader) visits the rows in a permutation drawn from a generator seeded with ``(seed, e)``, in batches
    of ``train_batch_size``, the last one smaller; without ``shuffle`` in row order.

    With ``length_buckets`` a batch holds the rows of one bucket of history lengths, in that permutation's order,
    its item lists (``*_list`` fields) cut to the bucket's width; each bucket's last batch is smaller, and the
    batches of all buckets come in an order drawn with ``(seed, e, 1)``, the same in every process of a distributed
    run (each takes its share of every bucket, so their steps cut to the same width)."""

    def __init__(self, config: Config, dataset: Dataset, sampler: AbstractSampler | None, shuffle: bool = False):
        check_gpu_data_path(config)
        super().__init__(config, dataset, sampler, shuffle=shuffle)
        self.transform = device_transform(config)
        self._device = torch.device(config["device"])
        self.rows = DeviceRows(dataset.inter_feat, self._device, dataset)
        self.epoch = 0
        self.widths = length_bucket_widths(config)
        if self.widths is not None:
            lengths = self.rows.rows[config["ITEM_LIST_LENGTH_FIELD"]]
            self.buckets = torch.bucketize(lengths, torch.tensor(self.widths[:-1], device=lengths.device))
            self.bucket_rows = torch.bincount(self.buckets, minlength=len(self.widths)).tolist()

    def __len__(self) -> int:
        if self.widths is not None:
            return sum(math.ceil(self.process_rows(rows) / self.step) for rows in self.bucket_rows)
        return math.ceil(self.process_rows(self.sample_size) / self.step)

    # Distributed runs (recbole_qrec.distributed; ``step`` is already this process's part of the batch): each process
    # takes every world_size-th row of the epoch's order (of each bucket's part of it), padded with its first rows as
    # torch's DistributedSampler pads, so that every process trains as many batches.
    def process_rows(self, rows: int) -> int:
        """How many of ``rows`` rows this process visits."""
        return rows if self.config["single_spec"] else math.ceil(rows / self.config["world_size"])

    def process_share(self, order: torch.Tensor) -> torch.Tensor:
        """This process's rows of ``order`` (an epoch's :meth:`order`, or a bucket's part of it)."""
        if self.config["single_spec"]:
            return order
        return rank_share(order, torch.distributed.get_rank(), self.config["world_size"])

    def order(self, epoch: int) -> torch.Tensor:
        """The row order of ``epoch``: a seeded permutation (the same for the same seed and epoch), or row order."""
        if not self.shuffle:
            return torch.arange(self.sample_size, device=self._device)
        return torch.randperm(self.sample_size, generator=seeded_generator(self.config["seed"], epoch)).to(self._device)

    def batch(self, index: torch.Tensor, width: int | None = None) -> Interaction:
        """The rows ``index`` of the training split, with their users' and items' features (RecBole's ``join``),
        their item lists cut to ``width`` when given, through the dataset transform
        (:func:`~recbole_qrec.data.transform.device_transform`)."""
        rows = self.rows[index]
        if width is not None:
            longest, suffix = self.config["MAX_ITEM_LIST_LENGTH"], self.config["LIST_SUFFIX"]
            rows = Interaction({name: value[:, :width] if name.endswith(suffix) and value.dim() > 1
                                and value.size(1) == longest else value for name, value in rows.interaction.items()})
        return self.transform(self._dataset, rows)

    def __iter__(self) -> Iterator[Interaction]:
        epoch, order = self.epoch, self.order(self.epoch)
        self.epoch += 1
        if self.widths is None:
            order = self.process_share(order)
            for start in range(0, len(order), self.step):
                yield self.batch(order[start:start + self.step])
            return
        in_bucket = self.buckets[order]
        batches = [(rows[start:start + self.step], width) for bucket, width in enumerate(self.widths)
                   for rows in [self.process_share(order[in_bucket == bucket])]
                   for start in range(0, len(rows), self.step)]
        shuffled = torch.randperm(len(batches), generator=seeded_generator(self.config["seed"], epoch, 1)).tolist()
        for index in shuffled if self.shuffle else range(len(batches)):
            yield self.batch(*batches[index])
