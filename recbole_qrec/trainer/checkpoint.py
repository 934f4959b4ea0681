"""Checkpoints that load safely under torch >= 2.6, plus per-epoch timing.

RecBole 1.2.1 pickles its whole ``Config`` object into every checkpoint and reloads it with a
bare ``torch.load``; since torch 2.6 defaults to ``weights_only=True`` that reload fails.
Rather than turning arbitrary unpickling back on, :class:`SafeCheckpointMixin` stores the
configuration as plain data (str/int/float/bool/None/list/dict), so the checkpoint holds
tensors and primitives only and loads under ``weights_only=True``, including through
RecBole's own ``Trainer.evaluate(load_best_model=True)`` and ``resume_checkpoint``.
"""

from __future__ import annotations

import time
from functools import cache
from pathlib import Path
from typing import Any

import torch
from torch import nn
from recbole.trainer import Trainer
from recbole.utils import get_trainer as get_recbole_trainer
from recbole.utils import set_color

import recbole_qrec.trainer as qrec_trainers
from recbole_qrec.errors import ConfigError
from recbole_qrec.fileio import atomic_path


def plain_config(value: Any) -> Any:
    """Convert a config value to plain, weights-only-loadable data (unknown objects become ``str``)."""
    if value is None or isinstance(value, (str, int, float, bool)):
        return value
    if isinstance(value, dict):
        return {str(key): plain_config(item) for key, item in value.items()}
    if isinstance(value, (list, tuple, set)):
        return [plain_config(item) for item in value]
    return str(value)


def checkpointable_other_parameter(model: nn.Module) -> dict[str, Any]:
    """``model.other_parameter()`` without registered submodules, whose weights are in the state dict.

    RecBole's FDSA lists its feature-embedding submodule there, which would pickle a module object.
    """
    children = dict(model.named_children())
    return {
        key: value
        for key, value in model.other_parameter().items()
        if not (isinstance(value, nn.Module) and children.get(key) is value)
    }


class SafeCheckpointMixin:
    """Mixed in before a RecBole trainer: safe, atomically written checkpoints and epoch timings."""

    def __init__(self, config, model) -> None:
        super().__init__(config, model)
        self.epoch_seconds: list[float] = []

    def _train_epoch(self, *args: Any, **kwargs: Any) -> Any:
        start = time.perf_counter()
        loss = super()._train_epoch(*args, **kwargs)
        self.epoch_seconds.append(time.perf_counter() - start)
        return loss

    def resume_checkpoint(self, resume_file: str | Path) -> None:
        """RecBole's resume, after checking that ``resume_file`` exists and was written for this model."""
        path = Path(resume_file)
        if not path.is_file():
            raise ConfigError(f"resume_checkpoint '{path}' does not exist: give a checkpoint written by an earlier "
                              f"run of {self.config['model']} (under checkpoint_dir, e.g. saved/).")
        written_for = torch.load(path, map_location="cpu", weights_only=True)["config"]["model"]
        if written_for != self.config["model"]:
            raise ConfigError(f"resume_checkpoint '{path}' was written by {written_for}, not {self.config['model']}: "
                              f"resume with --model={written_for} or give a {self.config['model']} checkpoint.")
        super().resume_checkpoint(str(path))

    def _save_checkpoint(self, epoch: int, verbose: bool = True, **kwargs: Any) -> None:
        if not self.config["single_spec"] and self.config["local_rank"] != 0:
            return
        saved_model_file = kwargs.pop("saved_model_file", self.saved_model_file)
        state = {
            "config": plain_config(self.config.final_config_dict),
            "epoch": epoch,
            "cur_step": self.cur_step,
            "best_valid_score": float(self.best_valid_score),
            "state_dict": self.model.state_dict(),
            "other_parameter": checkpointable_other_parameter(self.model),
            "optimizer": self.optimizer.state_dict(),
        }
        with atomic_path(saved_model_file) as tmp:
            torch.save(state, tmp)
        if verbose:
            self.logger.info(set_color("Saving current", "blue") + f": {saved_model_file}")


@cache
def with_safe_checkpoint(trainer_class: type[Trainer]) -> type[Trainer]:
    """``trainer_class`` with :class:`SafeCheckpointMixin` in front (returned as is if already there)."""
    if issubclass(trainer_class, SafeCheckpointMixin):
        return trainer_class
    return type(trainer_class.__name__, (SafeCheckpointMixin, trainer_class), {"__doc__": trainer_class.__doc__})


def get_trainer(model_type: Any, model_name: str) -> type[Trainer]:
    """``<model_name>Trainer`` from ``recbole_qrec.trainer`` if defined, else RecBole's choice; always safe-checkpointing."""
    own = getattr(qrec_trainers, f"{model_name}Trainer", None)
    return with_safe_checkpoint(own or get_recbole_trainer(model_type, model_name))
