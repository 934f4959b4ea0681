"""Q-Bert4Rec's two training phases: multi-mask pretraining, then fine-tuning with early stopping."""

from __future__ import annotations

from time import time
from typing import Any, Callable

from recbole.data.dataloader import AbstractDataLoader
from recbole.trainer import Trainer
from recbole.utils import set_color


class QBert4RecTrainer(Trainer):
    """RecBole's trainer with a pretraining phase in front of :meth:`fit`.

    Pretraining runs ``pretrain_epochs`` epochs of ``model.pretrain_loss`` over the training
    sequences with its own optimizer (``pretrain_learning_rate``), without validation, checkpoints
    or early stopping. Fine-tuning is RecBole's ``fit`` unchanged (``model.calculate_loss``,
    ``learning_rate``, ``epochs``), so early stopping counts fine-tuning epochs only. A fit resumed
    from a checkpoint (``start_epoch > 0``) skips pretraining. Both phases' epochs are timed
    (``epoch_seconds`` of the safe-checkpoint mixin).
    """

    def fit(self, train_data: AbstractDataLoader, valid_data: AbstractDataLoader | None = None, verbose: bool = True,
            saved: bool = True, show_progress: bool = False,
            callback_fn: Callable[[int, float], Any] | None = None) -> tuple[float, dict | None]:
        if self.start_epoch == 0:
            self.pretrain(train_data, verbose, show_progress)
        return super().fit(train_data, valid_data, verbose, saved, show_progress, callback_fn)

    def pretrain(self, train_data: AbstractDataLoader, verbose: bool = True,
                 show_progress: bool = False) -> list[float]:
        """Multi-mask pretraining; returns the summed loss of each epoch."""
        fine_tune_optimizer = self.optimizer
        self.optimizer = self._build_optimizer(learning_rate=self.config["pretrain_learning_rate"])
        losses = []
        for epoch in range(self.config["pretrain_epochs"]):
            start = time()
            losses.append(self._train_epoch(train_data, epoch, loss_func=self.model.pretrain_loss,
                                            show_progress=show_progress))
            if verbose:
                self.logger.info(set_color(f"pretrain epoch {epoch}", "green")
                                 + f" [time: {time() - start:.2f}s, multi-mask loss: {losses[-1]:.4f}]")
        self.optimizer = fine_tune_optimizer
        return losses
