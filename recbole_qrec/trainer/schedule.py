"""Learning-rate schedules (``lr_scheduler``, ``warmup_steps``) for every trainer, stepped once per optimizer step.

The schedules are transformers' (``transformers.get_scheduler``): the warm-up + decay rules the semantic-ID
papers train with (TIGER: inverse square root; MQL4GRec's official code: cosine with warm-up), so they are not
written again here. A phase (pretraining or fine-tuning) gets its own schedule over its own steps; a resumed
run continues the schedule at the step it stopped at. RecBole's own ``weight_decay`` and ``clip_grad_norm``
keys cover the rest of the optimizer settings.
"""

from __future__ import annotations

import warnings
from typing import Any

from recbole.config import Config
from torch.optim import Optimizer
from torch.optim.lr_scheduler import LambdaLR

from recbole_qrec.errors import checked_choice

# transformers.SchedulerType values that need nothing but warm-up and training steps.
LR_SCHEDULERS = ("constant", "linear", "cosine", "inverse_sqrt", "polynomial")


def check_lr_schedule(config: Config) -> None:
    """``lr_scheduler`` must name a schedule of :data:`LR_SCHEDULERS` (``warmup_steps`` is a count, checked with the
    other numeric keys by :data:`recbole_qrec.config.VALUE_RULES`)."""
    checked_choice("lr_scheduler", config["lr_scheduler"], LR_SCHEDULERS,
                   "e.g. --lr_scheduler=cosine --warmup_steps=1000")


def attach_lr_schedule(optimizer: Optimizer, config: Config, base_lr: float, total_steps: int,
                       done_steps: int = 0) -> LambdaLR | None:
    """Schedule ``optimizer``'s learning rate from ``base_lr`` over ``total_steps`` optimizer steps, of which
    ``done_steps`` already ran (a resumed run); None for a constant rate without warm-up (nothing to do)."""
    name, warmup = config["lr_scheduler"], config["warmup_steps"]
    if name == "constant" and not warmup:
        return None
    from transformers import get_scheduler  # the import is slow; only runs that schedule pay for it

    for group in optimizer.param_groups:  # a resumed optimizer holds the scheduled rate of its last step
        group["lr"] = group["initial_lr"] = base_lr
    scheduler_name = "constant_with_warmup" if name == "constant" else name
    scheduler = get_scheduler(scheduler_name, optimizer, num_warmup_steps=warmup,
                              num_training_steps=max(total_steps, 1))
    with warnings.catch_warnings():  # torch warns of scheduler steps before any optimizer step
        warnings.simplefilter("ignore", UserWarning)
        for _ in range(done_steps):
            scheduler.step()
    optimizer.register_step_post_hook(lambda *_: scheduler.step())
    return scheduler


class LRScheduleMixin:
    """Mixed in before a RecBole trainer: fine-tuning follows ``lr_scheduler`` over ``epochs`` epochs."""

    def fit(self, train_data: Any, *args: Any, **kwargs: Any) -> Any:
        steps_per_epoch = len(train_data)
        attach_lr_schedule(self.optimizer, self.config, self.config["learning_rate"],
                           self.config["epochs"] * steps_per_epoch, self.start_epoch * steps_per_epoch)
        return super().fit(train_data, *args, **kwargs)
