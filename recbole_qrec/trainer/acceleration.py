"""Mixed precision (``autocast_dtype``) and ``torch.compile`` (``compile_model``) for every trainer's training steps
and evaluation; both off by default."""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

import torch
from recbole.config import Config
from torch import nn

from recbole_qrec.errors import ConfigError

AUTOCAST_DTYPES = {"bfloat16": torch.bfloat16}
# The model methods RecBole's trainers (and the pretraining trainer) call; those a model has are compiled.
COMPILED_METHODS = ("calculate_loss", "pretrain_loss", "full_sort_predict", "predict")


def check_acceleration(config: Config) -> None:
    """``autocast_dtype`` must be None or one of :data:`AUTOCAST_DTYPES`."""
    dtype = config["autocast_dtype"]
    if dtype is not None and dtype not in AUTOCAST_DTYPES:
        raise ConfigError(f"autocast_dtype must be ~ (float32) or one of {', '.join(AUTOCAST_DTYPES)}, got {dtype!r} "
                          "— e.g. --autocast_dtype=bfloat16")


class AccelerationMixin:
    """Mixed in before a RecBole trainer. With ``autocast_dtype`` every loss of a training step and every evaluation
    run under ``torch.autocast`` with that dtype (weights, gradients and optimizer state stay float32; bfloat16 needs
    no gradient scaling). With ``compile_model`` the model's :data:`COMPILED_METHODS` are replaced, on the model
    object, by their ``torch.compile`` versions: its parameters and state dict (checkpoints) are unchanged."""

    def __init__(self, config: Config, model: nn.Module) -> None:
        check_acceleration(config)
        super().__init__(config, model)
        self.autocast_dtype = AUTOCAST_DTYPES.get(config["autocast_dtype"])
        if config["compile_model"]:
            for name in COMPILED_METHODS:
                if hasattr(model, name):
                    setattr(model, name, torch.compile(getattr(model, name)))

    def autocast(self) -> torch.autocast:
        """The ``torch.autocast`` context of ``autocast_dtype`` on the trainer's device (disabled when None)."""
        return torch.autocast(torch.device(self.device).type, dtype=self.autocast_dtype,
                              enabled=self.autocast_dtype is not None)

    def _train_epoch(self, train_data: Any, epoch_idx: int, loss_func: Callable | None = None,
                     show_progress: bool = False) -> Any:
        loss_func = loss_func or self.model.calculate_loss

        def autocast_loss(interaction: Any) -> Any:
            with self.autocast():
                return loss_func(interaction)

        return super()._train_epoch(train_data, epoch_idx, loss_func=autocast_loss, show_progress=show_progress)

    def evaluate(self, *args: Any, **kwargs: Any) -> Any:
        with self.autocast():
            return super().evaluate(*args, **kwargs)
