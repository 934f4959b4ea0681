"""Training on several processes with ``DistributedDataParallel``: one process per GPU (NCCL), or per CPU
worker (gloo) where there is no GPU.

A run is distributed when it is started by ``torchrun --nproc_per_node=N run_recbole_qrec.py ...`` or by
``--nproc=N`` on the entry point (:func:`launch`, which gives each process torchrun's environment); each process
runs :func:`recbole_qrec.quick_start.run_recbole_qrec`. :func:`init_distributed` reads that environment into
RecBole's keys (``local_rank``, ``world_size``, ``nproc``, ``offset``, ``single_spec``; RecBole's own
``Config._init_device`` hardcodes NCCL). RecBole then shards each epoch of the training loaders
(``DistributedSampler``, ``train_batch_size`` split over the processes: the same global batch) and its trainer
averages the gradients; :class:`DistributedTrainerMixin` completes that for every trainer:

- DDP wraps CPU models too (RecBole passes ``device_ids``, which only a CUDA module accepts);
- evaluation is exact: each process ranks its own contiguous block of users, with no padding (RecBole's
  ``DistributedSampler`` repeats users to fill the last shard, and its ``_map_reduce`` weights each process's
  rounded metrics by its number of batches), and the per-user results of all processes are gathered before
  the metrics are computed, so every user counts exactly once, as in a single process;
- only rank 0 writes checkpoints, the log and TensorBoard files and the result record, and the other processes
  read back the checkpoint rank 0 wrote.

The models stay unwrapped (``trainer.model``): losses, ``pretrain_loss`` and ``full_sort_predict`` (the beam
searches of TIGER and MQL4GRec) are called on the module itself, as RecBole's trainer does.
"""

from __future__ import annotations

import copy
import os
import socket
import sys
import tempfile
from collections.abc import Callable, Iterator, MutableMapping
from contextlib import contextmanager
from functools import cache
from pathlib import Path
from typing import Any

import numpy as np
import torch
import torch.distributed as dist
from recbole.config import Config
from recbole.data.dataloader import AbstractDataLoader
from recbole.trainer import Trainer
from torch import nn
from torch.nn.parallel import DistributedDataParallel
from torch.utils.data.distributed import DistributedSampler
from torch.utils.tensorboard import SummaryWriter

from recbole_qrec.errors import ConfigError, Terminated, interrupted_status
from recbole_qrec.evaluator import TopkCollector

# torchrun's environment (https://pytorch.org/docs/stable/elastic/run.html), which launch() sets as well.
LAUNCH_ENV = ("RANK", "LOCAL_RANK", "WORLD_SIZE", "LOCAL_WORLD_SIZE", "MASTER_ADDR", "MASTER_PORT")
# The collected results that hold one row per evaluated user (recbole.evaluator.Collector.get_data_struct).
PER_USER_RESULTS = ("rec.topk", "rec.meanrank", "rec.score", "rec.items", "data.label")


def launched_world_size() -> int:
    """Processes of the run this process belongs to (``WORLD_SIZE`` set by torchrun or :func:`launch`; 1 without)."""
    value = os.environ.get("WORLD_SIZE", "1")
    if not value.isdigit() or int(value) < 1:
        raise ConfigError(f"WORLD_SIZE={value!r} in the environment is not a process count — start the run with "
                          "torchrun or --nproc=N, or unset WORLD_SIZE")
    return int(value)


def init_distributed(settings: MutableMapping[str, Any]) -> bool:
    """Join the process group of a distributed run (NCCL on CUDA, gloo on the CPU; once per process) and set
    RecBole's keys in ``settings`` (a config's ``final_config_dict``): device
    ``cuda:<local rank>`` (``gpu_id`` empty or no GPU: the CPU), and on ranks other than 0 RecBole's quiet settings.
    False, with nothing changed, for a single-process run."""
    world_size = launched_world_size()
    if world_size == 1:
        return False
    gpu_id = settings["gpu_id"]  # as RecBole's Config._init_device reads it
    settings["gpu_id"] = ",".join(map(str, gpu_id)) if isinstance(gpu_id, tuple) else str(gpu_id)
    rank, local_rank = int(os.environ["RANK"]), int(os.environ["LOCAL_RANK"])
    on_gpu = bool(settings["gpu_id"]) and torch.cuda.is_available()
    device = torch.device("cuda", local_rank) if on_gpu else torch.device("cpu")
    if on_gpu:
        torch.cuda.set_device(device)
    if not dist.is_initialized():  # a pretraining source's config joins the group its target's config started
        dist.init_process_group("nccl" if on_gpu else "gloo", rank=rank, world_size=world_size)
    settings.update(single_spec=False, local_rank=local_rank, world_size=world_size, device=device,
                    nproc=int(os.environ.get("LOCAL_WORLD_SIZE", world_size)), offset=rank - local_rank)
    if rank != 0:
        settings.update(state="error", show_progress=False, verbose=False)
    return True


def is_main_process(config: Config) -> bool:
    """True in a single-process run and on rank 0 of a distributed one: the process that writes files."""
    return config["single_spec"] or dist.get_rank() == 0


@contextmanager
def main_process_first(config: Config) -> Iterator[None]:
    """Run the block on rank 0 first and on the other ranks after it (e.g. a stage that writes a file the others
    then find up to date); in a single process just run it."""
    if not is_main_process(config):
        dist.barrier()
    yield
    if not config["single_spec"] and is_main_process(config):
        dist.barrier()


def end_distributed(config: Config) -> None:
    """Leave the process group at the end of a distributed run."""
    if not config["single_spec"] and dist.is_initialized():
        dist.destroy_process_group()


def free_port() -> int:
    """A TCP port no process listens on now, for the rendezvous of :func:`launch`."""
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        return probe.getsockname()[1]


def launch(nproc: int, function: Callable[..., Any], *args: Any) -> None:
    """Run ``function(*args)`` in ``nproc`` new processes of one distributed run on this machine, each with
    torchrun's environment (rank ``i`` of ``nproc``); returns when all have finished. A process that exits with
    a status ends this one with that status (after the others are stopped); an exception is raised again here.
    Interrupted, it waits for the processes to end as interrupted runs do (rank 0 says so) and exits with 130;
    SIGTERM (or SIGHUP), which reaches this process alone, is passed on to them, and the exit status is then 143
    (129)."""
    if nproc < 1:
        raise ConfigError(f"--nproc must be at least 1, got {nproc} — e.g. --nproc=2 for two processes")
    if "WORLD_SIZE" in os.environ:
        raise ConfigError("--nproc is given inside a distributed run (WORLD_SIZE is set, e.g. by torchrun) — "
                          "start the processes with torchrun or with --nproc, not both")
    port = os.environ.get("MASTER_PORT") or str(free_port())
    environment = {"WORLD_SIZE": str(nproc), "LOCAL_WORLD_SIZE": str(nproc),
                   "MASTER_ADDR": os.environ.get("MASTER_ADDR", "127.0.0.1"), "MASTER_PORT": port}
    context = torch.multiprocessing.spawn(run_as_rank, args=(environment, function, args), nprocs=nproc, join=False)
    try:
        while not context.join():
            pass
    except torch.multiprocessing.ProcessExitedException as err:  # the process has reported why
        sys.exit(err.exit_code if err.exit_code > 0 else 1)
    except KeyboardInterrupt as interrupt:
        for process in context.processes:
            if isinstance(interrupt, Terminated) and process.is_alive():
                os.kill(process.pid, interrupt.signum)
        for process in context.processes:
            process.join()
        sys.exit(interrupted_status(interrupt))


def run_as_rank(rank: int, environment: dict[str, str], function: Callable[..., Any], args: tuple) -> None:
    """In a process started by :func:`launch`: set torchrun's variables for ``rank``, then run ``function``."""
    os.environ.update(environment, RANK=str(rank), LOCAL_RANK=str(rank))
    function(*args)


def broadcast_from_main(value: Any) -> Any:
    """Rank 0's ``value`` on every rank (picklable objects)."""
    holder = [value]
    dist.broadcast_object_list(holder, src=0)
    return holder[0]


def user_block(users: np.ndarray, rank: int, world_size: int) -> np.ndarray:
    """Which rows of an evaluation split (user ids ``users``, one or more rows each) rank ``rank`` evaluates: those
    of its contiguous block of the sorted distinct users, blocks differing in size by at most one user."""
    distinct = np.unique(users)
    bounds = np.linspace(0, len(distinct), world_size + 1).round().astype(int)
    return np.isin(users, distinct[bounds[rank]:bounds[rank + 1]])


def single_process_config(config: Config, **settings: Any) -> Config:
    """A copy of ``config`` for a loader that reads all it is given (no ``DistributedSampler``), with ``settings``."""
    view = copy.copy(config)
    view.final_config_dict = {**config.final_config_dict, "single_spec": True, **settings}
    return view


def evaluation_shard(loader: AbstractDataLoader) -> AbstractDataLoader:
    """The part of evaluation loader ``loader`` this rank evaluates: its block of users (:func:`user_block`), every
    row once, in batches of ``eval_batch_size`` split over the processes as RecBole splits them."""
    config, dataset = loader.config, loader._dataset
    rows = user_block(dataset.inter_feat[dataset.uid_field].numpy(), dist.get_rank(), dist.get_world_size())
    batch_size = max(1, config["eval_batch_size"] // config["world_size"])
    return type(loader)(single_process_config(config, eval_batch_size=batch_size),
                        dataset.copy(dataset.inter_feat[torch.from_numpy(rows)]), loader._sampler, shuffle=False)


class GatheringCollector(TopkCollector):
    """The evaluation collector (:class:`~recbole_qrec.evaluator.TopkCollector`) whose collected per-user results
    are those of all ranks, in rank order; ``users`` counts the users of the last evaluation."""

    def get_data_struct(self):
        struct = super().get_data_struct()
        mine = {key: struct[key] for key in PER_USER_RESULTS if key in struct}
        gathered: list[dict[str, torch.Tensor]] = [{} for _ in range(dist.get_world_size())]
        dist.all_gather_object(gathered, mine)
        for key in {key for part in gathered for key in part}:
            struct[key] = torch.cat([part[key] for part in gathered if key in part])
        self.users = max((len(struct[key]) for key in PER_USER_RESULTS if key in struct), default=0)
        return struct


def discard_tensorboard(writer: SummaryWriter) -> SummaryWriter:
    """Close ``writer`` (RecBole's, on a rank other than 0), remove what this process wrote with it, and return
    a writer into a temporary folder that goes away with the process."""
    writer.close()
    folder = Path(writer.get_logdir())
    for events in folder.glob(f"events.out.tfevents.*.{os.getpid()}.*"):
        events.unlink()
    try:
        folder.rmdir()
    except OSError:  # another process writes there too
        pass
    scratch = tempfile.TemporaryDirectory(prefix="tensorboard-")
    discarded = SummaryWriter(scratch.name)
    discarded.scratch = scratch  # the folder lives as long as the writer
    return discarded


class DistributedTrainerMixin:
    """Mixed in before a (safe-checkpointing) RecBole trainer of a distributed run: see the module docstring."""

    def __init__(self, config: Config, model: nn.Module) -> None:
        model = nn.SyncBatchNorm.convert_sync_batchnorm(model)
        config["single_spec"] = True  # RecBole would wrap the model with device_ids, which a CPU module refuses
        try:
            super().__init__(config, model)
        finally:
            config["single_spec"] = False
        device = torch.device(config["device"])
        self.distributed_model = DistributedDataParallel(self.model, device_ids=[device] if device.type == "cuda" else None)
        self.saved_model_file = broadcast_from_main(self.saved_model_file)  # named after each process's clock
        self.eval_collector = GatheringCollector(config)
        self.evaluation_shards: dict[AbstractDataLoader, AbstractDataLoader] = {}
        if not is_main_process(config):
            self.tensorboard = discard_tensorboard(self.tensorboard)

    def _train_epoch(self, train_data: AbstractDataLoader, epoch_idx: int, *args: Any, **kwargs: Any) -> Any:
        if isinstance(train_data.sampler, DistributedSampler):  # shuffle with the run's seed, not torch's 0
            train_data.sampler.seed = self.config["seed"]
        return super()._train_epoch(train_data, epoch_idx, *args, **kwargs)

    def evaluate(self, eval_data: AbstractDataLoader, load_best_model: bool = True, model_file: str | None = None,
                 show_progress: bool = False) -> dict[str, float] | None:
        if not eval_data:
            return super().evaluate(eval_data, load_best_model, model_file, show_progress)
        if load_best_model:
            dist.barrier()  # rank 0 has written the checkpoint the others read
        if eval_data not in self.evaluation_shards:
            self.evaluation_shards[eval_data] = evaluation_shard(eval_data)
        result = super().evaluate(self.evaluation_shards[eval_data], load_best_model, model_file, show_progress)
        self.logger.info(f"evaluated {self.eval_collector.users} users on {self.config['world_size']} processes")
        return result

    def _map_reduce(self, result: dict[str, float], num_sample: int) -> dict[str, float]:
        return result  # computed from the users of all ranks (GatheringCollector)


@cache
def with_distribution(trainer_class: type[Trainer]) -> type[Trainer]:
    """``trainer_class`` with :class:`DistributedTrainerMixin` in front."""
    return type(trainer_class.__name__, (DistributedTrainerMixin, trainer_class), {"__doc__": trainer_class.__doc__})


def trainer_for(trainer_class: type[Trainer], config: Config) -> type[Trainer]:
    """``trainer_class`` as it runs in ``config``'s run: itself in one process, distributed in several."""
    return trainer_class if config["single_spec"] else with_distribution(trainer_class)
