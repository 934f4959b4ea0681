"""Pretrain-then-fine-tune training for the semantic-ID models (QBert4Rec, MQL4GRec)."""

from __future__ import annotations

import copy
from functools import partial
from pathlib import Path
from collections.abc import Mapping
from time import time
from typing import Any, Callable

import numpy as np
import torch
import torch.distributed as dist
from recbole.config import Config
from recbole.data.dataloader import AbstractDataLoader
from recbole.data.dataset import Dataset
from recbole.trainer import Trainer
from recbole.utils import set_color

from recbole_qrec.distributed import broadcast_from_main
from recbole_qrec.errors import checked_choice
from recbole_qrec.model.abstract_recommender import PretrainableRecommender
from recbole_qrec.trainer.schedule import attach_lr_schedule


# What one pretraining epoch passes over: every training prefix (RecBole's augmented rows, as fine-tuning) or each
# user's whole training sequence once.
PRETRAIN_SEQUENCES = ("prefix", "user")
# How a pretraining epoch orders several domains' batches: each domain's in turn, or all of them in one seeded random
# order, so that consecutive steps mix the domains.
PRETRAIN_DOMAIN_ORDERS = ("sequential", "interleaved")
# A pretraining whose loss per step fell by less than this share, from its first epoch to its last (the weights kept),
# barely learned and leaves fine-tuning a poor start (one H200; the falls below are first epoch to last):
# QBert4Rec on Arts pretrained on Instruments and Games (docs/results/main_table): the seeds whose loss fell 1.2% and
# 1.6% fine-tuned to test NDCG@10 .055 and .056, the one whose loss fell 3.8% to .088; again at 8322bdf
# (docs/results/qbert4rec_ablations_arts.md): 1.2%, and validation NDCG@10 stayed at .022 for 18 fine-tuning epochs
# (test NDCG@10 .014); on Instruments at pretrain_learning_rate 1e-3 (docs/results/sweeps/qbert4rec_pretrain) the loss
# fell 0.3% and fine-tuning reached validation NDCG@10 .082, against .119 without pretraining and .121 after the
# default pretraining. Hence discard_stalled_pretraining. The last epoch, not the lowest: at 5851a08 the loss of Arts'
# pretraining with content_kept_codes fell 2.7% in two epochs and rose again to 1.1% below the first; kept (the check
# then measured the lowest epoch), its fine-tuning peaked at validation NDCG@10 .075 against .103 discarded
# (docs/results/qbert4rec_content_kept_codes).
MIN_PRETRAIN_LOSS_DROP = 0.02


def whole_sequences(dataset: Dataset) -> Dataset:
    """``dataset``'s training rows (one per prefix of each user's training sequence) cut to one row per user: its
    longest prefix, i.e. the whole training sequence (its last ``MAX_ITEM_LIST_LENGTH`` items as history, then
    the target)."""
    users = dataset.inter_feat[dataset.uid_field]
    lengths = dataset.inter_feat[dataset.item_list_length_field]
    by_user = torch.from_numpy(np.lexsort((lengths.numpy(), users.numpy())))  # stable: the latest of equal lengths last
    sorted_users = users[by_user]
    last = torch.ones_like(sorted_users, dtype=torch.bool)
    last[:-1] = sorted_users[1:] != sorted_users[:-1]
    return dataset.copy(dataset.inter_feat[by_user[last].sort().values])


def pretraining_loader(loader: AbstractDataLoader, batch_size: int, sequences: str) -> AbstractDataLoader:
    """RecBole training loader ``loader`` with ``batch_size`` rows per batch (same sampler and shuffling) over every
    training prefix (``sequences`` ``prefix``) or each user's whole training sequence (``user``)."""
    if sequences == "prefix" and loader.config["train_batch_size"] == batch_size:
        return loader
    config = copy.copy(loader.config)
    config.final_config_dict = {**loader.config.final_config_dict, "train_batch_size": batch_size}
    dataset = whole_sequences(loader._dataset) if sequences == "user" else loader._dataset
    return type(loader)(config, dataset, loader._sampler, shuffle=loader.shuffle)


def pretrained_model_file(saved_model_file: str) -> str:
    """Where the checkpoint at the end of pretraining goes: ``<fine-tuning checkpoint>-pretrained.pth``."""
    path = Path(saved_model_file)
    return str(path.with_name(f"{path.stem}-pretrained{path.suffix}"))


def check_pretraining_choices(config: Config) -> None:
    """``pretrain_sequences`` and ``pretrain_domain_order``, for a model with a pretraining phase (the keys are among
    its defaults): checked with the config, before a tokenize stage writes codes."""
    for key, allowed in (("pretrain_sequences", PRETRAIN_SEQUENCES), ("pretrain_domain_order", PRETRAIN_DOMAIN_ORDERS)):
        if key in config.internal_config_dict:
            checked_choice(key, config[key], allowed)


class InterleavedDomains:
    """One pretraining epoch over several domains' loaders, their batches in one random order drawn from ``seed``
    (each loader keeping its own order); ``domain`` is the domain of the batch last yielded. Iterated like a RecBole
    training loader (``len``, ``shuffle``, ``sampler.set_epoch`` in a distributed run)."""

    def __init__(self, loaders: list[tuple[str | None, AbstractDataLoader]], seed: list[int]) -> None:
        self.loaders = loaders
        self.seed = seed
        self.domain: str | None = None
        self.shuffle = any(loader.shuffle for _, loader in loaders)
        self.sampler = self

    def __len__(self) -> int:
        return sum(len(loader) for _, loader in self.loaders)

    def set_epoch(self, epoch: int) -> None:
        """Each loader's distributed sampler to ``epoch`` (the domains' order comes from ``seed``)."""
        for _, loader in self.loaders:
            loader.sampler.set_epoch(epoch)

    def order(self) -> np.ndarray:
        """Index into ``loaders`` of each step's batch: every loader's batches once, shuffled."""
        steps = np.repeat(np.arange(len(self.loaders)), [len(loader) for _, loader in self.loaders])
        return np.random.default_rng(self.seed).permutation(steps)

    def __iter__(self) -> Any:
        batches = [iter(loader) for _, loader in self.loaders]
        for index in self.order():
            self.domain = self.loaders[index][0]
            yield next(batches[index])


class PretrainFineTuneTrainer(Trainer):
    """RecBole's trainer with a pretraining phase in front of :meth:`fit`.

    Pretraining runs ``pretrain_epochs`` epochs of ``model.pretrain_loss(interaction, domain)`` (the
    model is a :class:`~recbole_qrec.model.abstract_recommender.PretrainableRecommender`) with its own
    optimizer (``pretrain_learning_rate``) and batch size (``pretrain_batch_size``), without validation
    or early stopping. Its data come through ``fit(..., pretrain_data=...)``: the training loaders of the
    source domains by name (from :func:`recbole_qrec.data.data_preparation`), one pass over each per epoch
    with ``domain`` set to the source's name, then, with ``pretrain_on_target``, over the target's own training data
    (``domain=None``); with no sources it is the target's own training data alone. Each pretraining epoch's wall time
    goes to ``pretrain_epoch_seconds`` (fine-tuning epochs are counted apart, in ``epoch_seconds``), its mean loss per
    step to ``pretrain_loss_curve`` and each domain's to ``pretrain_domain_loss_curves``. When saving, the pretrained
    model is checkpointed to ``<saved_model_file stem>-pretrained.pth``. Fine-tuning is RecBole's ``fit`` unchanged
    (``model.calculate_loss``, ``learning_rate``, ``epochs``), so early stopping counts fine-tuning epochs
    only. Each phase follows ``lr_scheduler`` over its own steps. A fit after :meth:`resume_checkpoint` skips
    pretraining: every checkpoint is written after it. Resuming from the pretraining checkpoint fine-tunes the
    pretrained model from epoch 0, with a fresh optimizer of this run's settings, into a new checkpoint file, leaving
    the pretrained one as it is. A pretraining that barely learned (its loss per step fell by less than
    :data:`MIN_PRETRAIN_LOSS_DROP`) is warned of and, with ``discard_stalled_pretraining``, undone: fine-tuning starts
    from the weights pretraining started from (``pretraining_discarded``; the pretrained checkpoint holds them too).
    """

    def __init__(self, config: Config, model: PretrainableRecommender) -> None:
        super().__init__(config, model)
        self.pretrained = False
        self.pretrain_epoch_seconds: list[float] = []
        self.pretrain_loss_curve: list[float] = []
        self.pretrain_domain_loss_curves: dict[str, list[float]] = {}
        self.pretraining_discarded = False

    def resume_checkpoint(self, resume_file: str) -> None:
        fine_tuning_file = self.saved_model_file
        super().resume_checkpoint(resume_file)
        self.pretrained = True
        if self.start_epoch == 0:  # the checkpoint at the end of pretraining (epoch -1)
            self.saved_model_file = fine_tuning_file
            # fine-tuning starts with a fresh optimizer, as after pretraining in one run: the checkpoint's holds the
            # pretraining moments and settings (learning rate, weight decay), which would override this run's
            self.optimizer = self._build_optimizer()

    def fit(self, train_data: AbstractDataLoader, valid_data: AbstractDataLoader | None = None, verbose: bool = True,
            saved: bool = True, show_progress: bool = False, callback_fn: Callable[[int, float], Any] | None = None,
            pretrain_data: Mapping[str, AbstractDataLoader] | None = None) -> tuple[float, dict | None]:
        if not self.pretrained and self.config["pretrain_epochs"]:
            self.pretrain(train_data, pretrain_data, verbose, show_progress)
            if saved:
                self._save_checkpoint(-1, verbose=verbose, saved_model_file=pretrained_model_file(self.saved_model_file))
        return super().fit(train_data, valid_data, verbose, saved, show_progress, callback_fn)

    def pretraining_data(self, train_data: AbstractDataLoader,
                         pretrain_data: Mapping[str, AbstractDataLoader] | None = None
                         ) -> list[tuple[str | None, AbstractDataLoader]]:
        """``(domain, loader)`` pairs of one pretraining epoch, batched by ``pretrain_batch_size`` over the rows
        ``pretrain_sequences`` names: the sources', and with ``pretrain_on_target`` the target's ``train_data``
        (domain ``None``, last); without sources the target's alone."""
        pairs = list((pretrain_data or {}).items())
        if not pairs or self.config["pretrain_on_target"]:
            pairs.append((None, train_data))
        batch_size = self.config["pretrain_batch_size"] or self.config["train_batch_size"]
        return [(domain, pretraining_loader(loader, batch_size, self.config["pretrain_sequences"]))
                for domain, loader in pairs]

    def pretrain(self, train_data: AbstractDataLoader, pretrain_data: Mapping[str, AbstractDataLoader] | None = None,
                 verbose: bool = True, show_progress: bool = False) -> list[float]:
        """Pretraining; returns the summed loss of each epoch (over all domains)."""
        fine_tune_optimizer = self.optimizer
        initial_weights = copy.deepcopy(self.model.state_dict()) if self.config["discard_stalled_pretraining"] else None
        self.optimizer = self._build_optimizer(learning_rate=self.config["pretrain_learning_rate"])
        data = self.pretraining_data(train_data, pretrain_data)
        steps_per_epoch = sum(len(loader) for _, loader in data)
        attach_lr_schedule(self.optimizer, self.config, self.config["pretrain_learning_rate"],
                           self.config["pretrain_epochs"] * steps_per_epoch)
        losses = []
        for epoch in range(self.config["pretrain_epochs"]):
            start = time()
            if self.config["pretrain_domain_order"] == "interleaved" and len(data) > 1:
                domain_losses = self.interleaved_epoch(data, epoch, show_progress)
            else:
                domain_losses = [float(self._train_epoch(loader, epoch, show_progress=show_progress,
                                                         loss_func=partial(self.model.pretrain_loss, domain=domain)))
                                 for domain, loader in data]
            for (domain, loader), domain_loss in zip(data, domain_losses):
                name = domain or self.config["dataset"]
                self.pretrain_domain_loss_curves.setdefault(name, []).append(domain_loss / max(len(loader), 1))
            epoch_loss = sum(domain_losses)
            losses.append(epoch_loss)
            self.pretrain_loss_curve.append(epoch_loss / steps_per_epoch)
            self.pretrain_epoch_seconds.append(time() - start)
            if verbose:
                curves = self.pretrain_domain_loss_curves
                per_domain = ", ".join(f"{name} {curve[-1]:.4f}" for name, curve in curves.items())
                self.logger.info(set_color(f"pretrain epoch {epoch}", "green")
                                 + f" [time: {self.pretrain_epoch_seconds[-1]:.2f}s, pretraining loss: {epoch_loss:.4f}"
                                 + (f", per step: {per_domain}" if len(data) > 1 else "") + "]")
        self.optimizer = fine_tune_optimizer
        drop = self.pretraining_loss_drop()
        if not self.config["single_spec"] and dist.is_initialized():
            drop = broadcast_from_main(drop)  # every rank keeps or discards alike (each saw its own share of the loss)
        if drop is not None and drop < MIN_PRETRAIN_LOSS_DROP:
            self.handle_stalled_pretraining(drop, initial_weights)
        return losses

    def interleaved_epoch(self, data: list[tuple[str | None, AbstractDataLoader]], epoch: int,
                          show_progress: bool = False) -> list[float]:
        """One pretraining epoch over ``data``'s batches in one random order (:class:`InterleavedDomains`, drawn from
        the run's seed and ``epoch``, alike on every rank); each domain's summed loss, in ``data``'s order."""
        batches = InterleavedDomains(data, [self.config["seed"], epoch])
        sums: dict[str | None, torch.Tensor] = {}

        def loss_func(interaction: Any) -> torch.Tensor:
            loss = self.model.pretrain_loss(interaction, domain=batches.domain)
            # summed on the device (no wait per step), in float32 whatever autocast_dtype computed the loss in
            sums[batches.domain] = loss.detach().float() + sums.get(batches.domain, 0)
            return loss

        self._train_epoch(batches, epoch, loss_func=loss_func, show_progress=show_progress)
        return [float(sums[domain]) if domain in sums else 0.0 for domain, _ in data]

    def pretraining_loss_drop(self) -> float | None:
        """The share by which the pretraining loss per step fell from the first epoch to the last, whose weights
        fine-tuning starts from (None with fewer than two epochs)."""
        curve = self.pretrain_loss_curve
        if len(curve) < 2 or curve[0] <= 0:
            return None
        return 1 - curve[-1] / curve[0]

    def handle_stalled_pretraining(self, drop: float, initial_weights: dict[str, torch.Tensor] | None) -> None:
        """Warn of a pretraining that barely learned; with ``initial_weights`` (``discard_stalled_pretraining``), load
        them back so that fine-tuning starts from where pretraining started."""
        curve = self.pretrain_loss_curve
        stalled = (f"pretraining barely learned: its loss per step fell {drop:.1%} over {len(curve)} epochs "
                   f"({curve[0]:.4f} -> {curve[-1]:.4f})")
        remedies = ("pretrain longer (pretrain_epochs), at another (often lower) pretrain_learning_rate, or on other "
                    "data (pretrain_datasets, [] for the target's own sequences; pretrain_on_target to add them)")
        if initial_weights is None:
            self.logger.warning(set_color(
                f"{stalled}, so fine-tuning starts from a poor state — {remedies}, or set pretrain_epochs to 0 or "
                "discard_stalled_pretraining to True: fine-tuning from a stalled pretraining can end well below "
                "fine-tuning without one", "yellow"))
            return
        self.model.load_state_dict(initial_weights)
        self.pretraining_discarded = True
        self.logger.warning(set_color(
            f"{stalled}: discarded (discard_stalled_pretraining), fine-tuning starts from the weights pretraining "
            f"started from — to use pretraining, {remedies}", "yellow"))
