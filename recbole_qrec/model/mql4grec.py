"""MQL4GRec (Zhai et al., ICLR 2025): generative recommendation in two quantitative languages.

Items speak two languages: their text codes (``text_sid_source``) and their image codes
(``image_sid_source``), each made unique with TIGER's extra level. One randomly initialised T5 (built by
:mod:`recbole_qrec.model.layers`, as TIGER's) shares a vocabulary in which the two languages have disjoint token
blocks and each task has its own special token, prepended to the encoder input in place of the
paper's text prompt (layout: :mod:`~recbole_qrec.model.mql4grec_modules.languages`).

Training is a task mixture (:mod:`~recbole_qrec.model.mql4grec_modules.tasks`, selected by
``tasks``): each training row yields one example per task the domain's languages allow, and the
loss is the mean over tasks of T5's token cross-entropy. :class:`~recbole_qrec.trainer.MQL4GRecTrainer`
first pretrains on the source domains of ``pretrain_datasets`` (:meth:`MQL4GRec.pretrain_loss`, each
source with its own code tables, which the target's dataset carries; a source without image codes, like
Games, trains the text tasks only), then fine-tunes on all tasks of the target (:meth:`MQL4GRec.calculate_loss`).

Ranking: a constrained beam search (``beam_size`` items) from the history in each language whose
next-item generation task is trained, text history -> next text ID and image history -> next image ID;
:func:`~recbole_qrec.model.mql4grec_modules.fusion.fuse_beams` merges the two beams (sum of the
sequence log-probabilities, the beam's floor for an item it lacks, ``-inf`` for an item in neither).
"""

from __future__ import annotations

import torch
from recbole.config import Config
from recbole.data.interaction import Interaction
from torch import Tensor, nn
from transformers import T5ForConditionalGeneration

from recbole_qrec.data.dataset import SemanticIdDataset
from recbole_qrec.errors import ConfigError
from recbole_qrec.generation import PrefixIndex, constrained_beam_search
from recbole_qrec.model.abstract_recommender import PretrainableRecommender
from recbole_qrec.model.layers import (check_beam_size, checked_length_bucket_rows, length_bucketed_loss, t5_config,
                                       teacher_forced_log_prob)
from recbole_qrec.model.mql4grec_modules.fusion import fuse_beams
from recbole_qrec.model.mql4grec_modules.languages import (DomainCodes, language_vocabs, source_codes,
                                                           target_codes)
from recbole_qrec.model.mql4grec_modules.tasks import (Task, TaskExample, encoder_input, generation_task,
                                                       select_tasks, task_example, usable_tasks)


class MQL4GRec(PretrainableRecommender):
    """T5 over text and image code tokens, trained on a task mixture; ranks by the fused beams of both languages."""

    def __init__(self, config: Config, dataset: SemanticIdDataset) -> None:
        super().__init__(config, dataset)
        check_beam_size(config["beam_size"], config["topk"])
        self.beam_size = config["beam_size"]
        self.length_bucket_rows = checked_length_bucket_rows(config["length_bucket_rows"])
        self.tasks = select_tasks(config["tasks"])
        self.target_codes = target_codes(config, dataset.code_tables)
        self.ranking_languages = ranking_languages(self.tasks, self.target_codes.languages)
        self.source_codes = nn.ModuleDict({name: source_codes(config, tables)
                                           for name, tables in dataset.source_code_tables().items()})
        for name, codes in self.source_codes.items():
            check_source_has_tasks(name, codes, self.tasks)
        self.vocabs = language_vocabs([self.target_codes, *self.source_codes.values()])
        self.indexes = {language: self.prefix_index(language) for language in self.ranking_languages}
        self.t5 = T5ForConditionalGeneration(t5_config(config, list(self.vocabs.values())[-1]))

    def prefix_index(self, language: str) -> PrefixIndex:
        """The prefix tree of the target's ``language`` codes (row 0, the padding item, left out)."""
        codes = self.target_codes.codes(language)
        return PrefixIndex(codes[1:], self.vocabs[language].codebook_size, item_ids=torch.arange(1, len(codes)))

    def domain_codes(self, domain: str | None) -> DomainCodes:
        """The code tables of source ``domain``, or of the target for ``None``."""
        return self.target_codes if domain is None else self.source_codes[domain]

    def history(self, interaction: Interaction) -> Tensor:
        """Item ids of the histories ``[B, S']``, ``S'`` the longest history of the batch."""
        return interaction[self.ITEM_SEQ][:, : int(interaction[self.ITEM_SEQ_LEN].max())]

    def task_examples(self, interaction: Interaction, domain: str | None = None) -> dict[str, TaskExample]:
        """One example per row for every task the domain can train, by task name."""
        codes = self.domain_codes(domain)
        history, target = self.history(interaction), interaction[self.POS_ITEM_ID]
        history_tokens = {language: codes.tokens(language, history, self.vocabs[language])
                          for language in codes.languages}
        target_tokens = {language: codes.tokens(language, target, self.vocabs[language])
                         for language in codes.languages}
        return {task.name: task_example(task, history_tokens, target_tokens)
                for task in usable_tasks(self.tasks, codes.languages)}

    def task_mixture_loss(self, interaction: Interaction, domain: str | None) -> Tensor:
        """Mean over tasks of T5's token cross-entropy of each task's examples.

        Tasks whose encoder inputs have the same length (the history tasks; the translation tasks) go
        through T5 as one batch: every example has ``L`` label tokens, so a group's token mean weighted
        by its number of tasks sums to the mean of the per-task losses, with one T5 call per group (or per
        part of ``length_bucket_rows`` rows of it, :func:`~recbole_qrec.model.layers.length_bucketed_loss`).
        """
        examples = list(self.task_examples(interaction, domain).values())
        groups = examples_by_input_length(examples)
        return sum(length_bucketed_loss(self.t5, *stacked_examples(group), self.length_bucket_rows) * len(group)
                   for group in groups) / len(examples)

    def pretrain_loss(self, interaction: Interaction, domain: str | None = None) -> Tensor:
        """The task mixture on source ``domain``'s rows (the target's for ``None``)."""
        return self.task_mixture_loss(interaction, domain)

    def calculate_loss(self, interaction: Interaction) -> Tensor:
        """Fine-tuning: the task mixture on the target's rows."""
        return self.task_mixture_loss(interaction, None)

    def history_input(self, interaction: Interaction, language: str) -> tuple[Tensor, Tensor]:
        """Encoder tokens and mask of the next-item generation task in ``language`` on the target's histories."""
        tokens = self.target_codes.tokens(language, self.history(interaction), self.vocabs[language])
        return encoder_input(generation_task(language), tokens)

    def beam(self, interaction: Interaction, language: str) -> tuple[Tensor, Tensor]:
        """``(items, scores)`` ``[B, beam_size]`` of the constrained beam search in ``language``."""
        index = self.indexes[language].to(self.target_codes.codes(language).device)
        tokens, mask = self.history_input(interaction, language)
        return constrained_beam_search(self.t5, tokens, mask, index, self.vocabs[language], self.beam_size)

    def full_sort_predict(self, interaction: Interaction) -> Tensor:
        """``[B, n_items]``: the fused scores of the languages' beams, ``-inf`` for items in none."""
        return fuse_beams([self.beam(interaction, language) for language in self.ranking_languages], self.n_items)

    def predict(self, interaction: Interaction) -> Tensor:
        """Sum over the ranking languages of the candidate's (``ITEM_ID``) teacher-forced log-probability."""
        items = interaction[self.ITEM_ID]
        scores = [teacher_forced_log_prob(self.t5, *self.history_input(interaction, language),
                                          self.target_codes.tokens(language, items, self.vocabs[language]))
                  for language in self.ranking_languages]
        return torch.stack(scores).sum(0)


def examples_by_input_length(examples: list[TaskExample]) -> list[list[TaskExample]]:
    """``examples`` grouped by encoder input length, in order of first appearance."""
    groups: dict[int, list[TaskExample]] = {}
    for example in examples:
        groups.setdefault(example.input_ids.shape[1], []).append(example)
    return list(groups.values())


def stacked_examples(examples: list[TaskExample]) -> TaskExample:
    """Same-length ``examples`` as one batch: the rows of the first, then of the second, ..."""
    return TaskExample(*(torch.cat(parts) for parts in zip(*examples)))


def ranking_languages(tasks: list[Task], languages: tuple[str, ...]) -> list[str]:
    """The target's languages whose next-item generation task is trained: the ones the beams search in."""
    ranked = [language for language in languages if generation_task(language) in tasks]
    if not ranked:
        raise ConfigError(f"tasks must include the next-item generation task of a language the target has — add "
                          f"{' or '.join(generation_task(language).name for language in languages) or 'a language'} "
                          "(ranking generates the next item from the history in those languages)")
    return ranked


def check_source_has_tasks(name: str, codes: DomainCodes, tasks: list[Task]) -> None:
    if not usable_tasks(tasks, codes.languages):
        raise ConfigError(f"pretraining source {name} has codes in {list(codes.languages) or 'no language'}, which "
                          f"none of the tasks {[task.name for task in tasks]} uses — remove it from pretrain_datasets "
                          "or add a task in its languages")

