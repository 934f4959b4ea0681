"""A wall-clock budget for fine-tuning (``train_time_limit``): training stops at the first epoch boundary after the
budget is spent, as early stopping would, and the best checkpoint so far is the run's model."""

from __future__ import annotations

import math
from time import monotonic
from typing import Any

import torch.distributed as dist
from recbole.config import Config
from recbole.utils import set_color

from recbole_qrec.distributed import broadcast_from_main


class TrainTimeLimitReached(Exception):
    """Raised at an epoch boundary once ``train_time_limit`` is spent; :meth:`TimeLimitMixin.fit` ends there."""


class TimeLimitMixin:
    """Mixed in before a RecBole trainer: with ``train_time_limit`` seconds, counted from the start of ``fit``
    (a pretraining phase included), no fine-tuning epoch starts once that time has passed, this fit has trained an
    epoch and a validation has given a best checkpoint (a resumed run's included); the run then ends as after early
    stopping. ``stopped_by_time_limit`` says whether it did. In a distributed run rank 0's clock decides for every
    rank."""

    def __init__(self, config: Config, *args: Any, **kwargs: Any) -> None:
        super().__init__(config, *args, **kwargs)
        self.deadline: float | None = None
        self.stopped_by_time_limit = False
        self.epochs_this_fit = 0

    def fit(self, train_data: Any, *args: Any, **kwargs: Any) -> tuple[float, dict | None]:
        limit = self.config["train_time_limit"]
        self.deadline = None if limit is None else monotonic() + limit
        self.stopped_by_time_limit = False
        self.epochs_this_fit = 0
        try:
            return super().fit(train_data, *args, **kwargs)
        except TrainTimeLimitReached:
            self.logger.info(set_color(f"train_time_limit of {limit} s reached", "yellow")
                             + f": training stops, best validation score {self.best_valid_score:.4f}")
            return self.best_valid_score, self.best_valid_result

    def time_is_up(self) -> bool:
        """The budget is spent, this fit trained an epoch and a best checkpoint exists (rank 0's answer in a
        distributed run)."""
        up = (self.deadline is not None and monotonic() >= self.deadline and self.epochs_this_fit > 0
              and math.isfinite(self.best_valid_score))
        if not self.config["single_spec"] and dist.is_initialized():
            up = broadcast_from_main(up)
        return up

    def _train_epoch(self, train_data: Any, epoch_idx: int, *args: Any, **kwargs: Any) -> Any:
        if self.deadline is not None and self.time_is_up():
            self.stopped_by_time_limit = True
            raise TrainTimeLimitReached
        loss = super()._train_epoch(train_data, epoch_idx, *args, **kwargs)
        self.epochs_this_fit += 1
        return loss
