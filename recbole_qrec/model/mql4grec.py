"""MQL4GRec (Zhai et al., ICLR 2025): generative recommendation in two quantitative languages.

Items speak two languages: their text codes (``text_sid_source``) and their image codes
(``image_sid_source``). One randomly initialised T5 (built by :mod:`recbole_qrec.model.layers`, as TIGER's) shares
a vocabulary in which the two languages have disjoint token blocks and each task has its own special token,
prepended to the encoder input in place of the official code's soft prompt (layout:
:mod:`~recbole_qrec.model.mql4grec_modules.languages`).

Evaluation rule (``eval_rule``), which also fixes the IDs: ``group`` (the official code) keeps the content codes as
they are, so items that share a code tuple share one ID, are trained as one and generated as one, and a generated ID
counts as a hit when the target has it (:func:`~recbole_qrec.generation.credit_target_group`; ``full_sort_predict``
reads the target only for this relabelling); ``strict`` adds TIGER's extra level, every item has its own ID and only
the target's ID is a hit.

Training is a task mixture (:mod:`~recbole_qrec.model.mql4grec_modules.tasks`, selected by ``tasks``, mixed as
``task_mix`` says: :mod:`~recbole_qrec.model.mql4grec_modules.mixes`); the loss is T5's token cross-entropy over all
examples. :class:`~recbole_qrec.trainer.MQL4GRecTrainer` first pretrains on the source domains of
``pretrain_datasets`` with ``pretrain_tasks`` (:meth:`MQL4GRec.pretrain_loss`, each source with its own code tables,
which the target's dataset carries; a source without image codes, like Games, trains its text tasks only), then
fine-tunes on ``tasks`` on the target (:meth:`MQL4GRec.calculate_loss`).

Ranking: a constrained beam search (``beam_size`` IDs) from the history in each language whose next-item
generation task is trained, text history -> next text ID and image history -> next image ID, merged by
``beam_fusion`` (:mod:`~recbole_qrec.model.mql4grec_modules.fusion`). With ``eval_mode: exact`` every item is scored
instead by its IDs' teacher-forced log-probabilities (:func:`~recbole_qrec.generation.exact_score_matrix`), fused as
if every beam had found it (:func:`~recbole_qrec.model.mql4grec_modules.fusion.fuse_scores`, the score of
``predict``). Items with the same ID in every ranking language would tie there, and RecBole's top-k would give each
of them a slot, in arbitrary order; so, as a beam does, such an ID is scored once, on its first item, and under the
group rule the target takes that score.
"""

from __future__ import annotations

import torch
from recbole.config import Config
from recbole.data.interaction import Interaction
from torch import Tensor, nn
from transformers import T5ForConditionalGeneration

from recbole_qrec.data.dataset import SemanticIdDataset
from recbole_qrec.errors import ConfigError, checked_choice
from recbole_qrec.generation import (PrefixIndex, code_groups, constrained_beam_search,
                                    credit_target_group, exact_score_matrix)
from recbole_qrec.model.abstract_recommender import PretrainableRecommender
from recbole_qrec.model.layers import (batch_histories, check_t5_settings, checked_full_length_inputs,
                                       checked_length_bucket_rows, checked_ranking, length_bucketed_loss, t5_config,
                                       teacher_forced_log_prob)
from recbole_qrec.model.mql4grec_modules.fusion import checked_fusion, fuse_beams, fuse_scores
from recbole_qrec.model.mql4grec_modules.languages import (DomainCodes, language_vocabs, source_codes,
                                                           target_codes)
from recbole_qrec.model.mql4grec_modules.mixes import MIXES, Tokens
from recbole_qrec.model.mql4grec_modules.tasks import (Task, TaskExample, encoder_input, generation_task,
                                                       select_tasks, usable_tasks)

EVAL_RULES = ("group", "strict")
T5_CALLS = ("per_length", "one")  # how a step's examples go through T5 (task_mixture_loss)


class MQL4GRec(PretrainableRecommender):
    """T5 over text and image code tokens, trained on a task mixture; ranks by the fused beams of both languages."""

    check_settings = staticmethod(check_t5_settings)

    def __init__(self, config: Config, dataset: SemanticIdDataset) -> None:
        super().__init__(config, dataset)
        self.eval_mode, self.beam_size = checked_ranking(config, dataset)
        self.length_bucket_rows = checked_length_bucket_rows(config["length_bucket_rows"])
        self.t5_calls = checked_choice("t5_calls", config["t5_calls"], T5_CALLS, "e.g. --t5_calls=one")
        self.full_length_inputs = checked_full_length_inputs(config["full_length_inputs"], config["device"])
        self.eval_rule = checked_choice("eval_rule", config["eval_rule"], EVAL_RULES,
                                        f"e.g. --eval_rule={EVAL_RULES[0]} (the official code's)")
        self.task_mix = checked_choice("task_mix", config["task_mix"], tuple(MIXES),
                                       f"e.g. --task_mix={next(iter(MIXES))} (the official code's)")
        self.fusion = checked_fusion(config["beam_fusion"])
        self.tasks = select_tasks(config["tasks"])
        self.pretrain_tasks = select_tasks(config["pretrain_tasks"], "pretrain_tasks")
        unique = self.eval_rule == "strict"
        self.target_codes = target_codes(config, dataset.code_tables, disambiguate=unique)
        self.ranking_languages = ranking_languages(self.tasks, self.target_codes.languages)
        sources = dataset.source_code_tables()
        self.source_codes = nn.ModuleDict({name: source_codes(config, tables, self.target_codes.languages, unique)
                                           for name, tables in sources.items()})
        for name, codes in self.source_codes.items():
            check_source_has_tasks(name, codes, self.pretrain_tasks)
        # Items per training row of each domain (None: the target, built from its training split), for translation.
        self.items_per_row = {None: (dataset.item_num - 1) / len(dataset),
                              **{name: (source.item_num - 1) / (len(source) - 2 * (source.user_num - 1))
                                 for name, source in dataset.sources.items()}}
        self.vocabs = language_vocabs([self.target_codes, *self.source_codes.values()])
        self.groups = {language: code_groups(self.target_codes.codes(language)) for language in self.ranking_languages}
        self.indexes = {language: self.prefix_index(language) for language in self.ranking_languages}
        # Exact ranking: items with the same ID in every ranking language share a score, kept on the first of them.
        joint = torch.cat([self.target_codes.codes(language) for language in self.ranking_languages], dim=1)
        self.joint_groups = code_groups(joint)
        self.exact_items = (self.joint_groups == torch.arange(len(joint)))[1:].nonzero().flatten() + 1
        self.t5 = T5ForConditionalGeneration(t5_config(config, list(self.vocabs.values())[-1]))

    def prefix_index(self, language: str) -> PrefixIndex:
        """The prefix tree of the target's ``language`` IDs, each leading to its group's first item (row 0, the
        padding item, left out)."""
        codes, groups = self.target_codes.codes(language), self.groups[language]
        first = (groups == torch.arange(len(codes)))[1:]
        return PrefixIndex(codes[1:][first], self.vocabs[language].codebook_size,
                           item_ids=torch.arange(1, len(codes))[first])

    def domain_codes(self, domain: str | None) -> DomainCodes:
        """The code tables of source ``domain``, or of the target for ``None``."""
        return self.target_codes if domain is None else self.source_codes[domain]

    def history(self, interaction: Interaction) -> Tensor:
        """Item ids of the histories ``[B, S']``, ``S'`` the longest history of the batch (``MAX_ITEM_LIST_LENGTH``
        with ``full_length_inputs``)."""
        return batch_histories(interaction[self.ITEM_SEQ], interaction[self.ITEM_SEQ_LEN], self.full_length_inputs)

    def task_examples(self, interaction: Interaction, domain: str | None = None,
                      tasks: list[Task] | None = None) -> dict[str, TaskExample]:
        """The examples of ``tasks`` (default: the fine-tuning ``tasks``) that the domain can train, as ``task_mix``
        draws them from the batch's rows, by task name."""
        codes = self.domain_codes(domain)

        def tokens(items: Tensor) -> Tokens:
            return {language: codes.tokens(language, items, self.vocabs[language]) for language in codes.languages}

        def translation_items(rows: int) -> Tokens:
            """Tokens of ``rows * items_per_row`` items (rounded) drawn uniformly: a count known without reading a
            random number back from a tensor, which would split a compiled step in several graphs."""
            count = round(rows * self.items_per_row[domain])
            n_items = len(codes.codes(codes.languages[0]))
            return tokens(torch.randint(1, n_items, (count,), device=codes.codes(codes.languages[0]).device))

        usable = usable_tasks(self.tasks if tasks is None else tasks, codes.languages)
        target = interaction[self.POS_ITEM_ID]
        return MIXES[self.task_mix](usable, tokens(self.history(interaction)), tokens(target), translation_items)

    def task_mixture_loss(self, interaction: Interaction, domain: str | None, tasks: list[Task]) -> Tensor:
        """T5's token cross-entropy over all examples of the batch (each has ``L`` label tokens).

        ``t5_calls: per_length``: examples whose encoder inputs have the same length (the history tasks; the
        translation tasks) go through T5 as one batch; ``one``: all examples of the same label length as one batch,
        the shorter inputs right-padded and masked. Each batch runs whole or in parts of ``length_bucket_rows`` rows
        (:func:`~recbole_qrec.model.layers.length_bucketed_loss`); the batches' means weighted by their rows give the
        mean over all examples. With ``task_mix: per_row`` every task has the batch's rows, so this is the mean of
        the per-task losses.
        """
        examples = list(self.task_examples(interaction, domain, tasks).values())
        field = "labels" if self.t5_calls == "one" else "input_ids"  # one batch per label or per input length
        groups = [padded_examples(group) for group in examples_by_width(examples, field)]
        losses = [length_bucketed_loss(self.t5, *group, self.length_bucket_rows) * len(group.labels) for group in groups]
        return sum(losses) / sum(len(group.labels) for group in groups)

    def pretrain_loss(self, interaction: Interaction, domain: str | None = None) -> Tensor:
        """The ``pretrain_tasks`` mixture on source ``domain``'s rows (the target's for ``None``)."""
        return self.task_mixture_loss(interaction, domain, self.pretrain_tasks)

    def calculate_loss(self, interaction: Interaction) -> Tensor:
        """Fine-tuning: the ``tasks`` mixture on the target's rows."""
        return self.task_mixture_loss(interaction, None, self.tasks)

    def history_input(self, interaction: Interaction, language: str) -> tuple[Tensor, Tensor]:
        """Encoder tokens and mask of the next-item generation task in ``language`` on the target's histories."""
        tokens = self.target_codes.tokens(language, self.history(interaction), self.vocabs[language])
        return encoder_input(generation_task(language), tokens)

    def beam(self, interaction: Interaction, language: str) -> tuple[Tensor, Tensor]:
        """``(items, scores)`` ``[B, beam_size]`` of the constrained beam search in ``language`` (an ID shared by
        several items stands for its group's first item)."""
        index = self.indexes[language].to(self.target_codes.codes(language).device)
        tokens, mask = self.history_input(interaction, language)
        return constrained_beam_search(self.t5, tokens, mask, index, self.vocabs[language], self.beam_size)

    def levels(self) -> list[int]:
        """Code levels of each ranking language's IDs."""
        return [self.vocabs[language].levels for language in self.ranking_languages]

    def full_sort_predict(self, interaction: Interaction) -> Tensor:
        """``[B, n_items]``: the fused scores of the languages' beams, ``-inf`` for items in none (``eval_mode:
        exact``: :meth:`exact_scores`); under the group rule the target takes the score of its group (beam: of the
        first ranking language; exact: of the items with its IDs in every ranking language) in place of that group's
        first item."""
        if self.eval_mode == "exact":
            scores, groups = self.exact_scores(interaction), self.joint_groups
        else:
            beams = [self.beam(interaction, language) for language in self.ranking_languages]
            scores = fuse_beams(beams, self.n_items, self.levels(), self.fusion)
            groups = self.groups[self.ranking_languages[0]]
        if self.eval_rule == "group":
            scores = credit_target_group(scores, interaction[self.POS_ITEM_ID], groups.to(scores.device))
        return scores

    def exact_scores(self, interaction: Interaction) -> Tensor:
        """``[B, n_items]``: each item's fused teacher-forced score (``predict``'s) on the first item of its group of
        :attr:`joint_groups`, ``-inf`` on the group's other items and on the padding item 0."""
        items = self.exact_items.to(interaction[self.ITEM_SEQ].device)
        scores = [exact_score_matrix(self.t5, *self.history_input(interaction, language),
                                     self.target_codes.tokens(language, items, self.vocabs[language]), items,
                                     self.n_items)
                  for language in self.ranking_languages]
        return fuse_scores(scores, self.levels(), self.fusion)

    def predict(self, interaction: Interaction) -> Tensor:
        """The fused score of the candidate (``ITEM_ID``) as if every beam had found it, from its teacher-forced
        log-probability in each ranking language."""
        items = interaction[self.ITEM_ID]
        scores = [teacher_forced_log_prob(self.t5, *self.history_input(interaction, language),
                                          self.target_codes.tokens(language, items, self.vocabs[language]))
                  for language in self.ranking_languages]
        return fuse_scores(scores, self.levels(), self.fusion)


def examples_by_width(examples: list[TaskExample], field: str) -> list[list[TaskExample]]:
    """``examples`` grouped by the width of their ``field`` (``input_ids`` or ``labels``), in order of first
    appearance."""
    groups: dict[int, list[TaskExample]] = {}
    for example in examples:
        groups.setdefault(getattr(example, field).shape[1], []).append(example)
    return list(groups.values())


def padded_examples(examples: list[TaskExample]) -> TaskExample:
    """``examples`` of one label length as one batch (the rows of the first, then of the second, ...), encoder inputs
    right-padded to the longest (pad token 0, masked)."""
    width = max(example.input_ids.shape[1] for example in examples)

    def padded(tensor: Tensor) -> Tensor:
        return nn.functional.pad(tensor, (0, width - tensor.shape[1]))

    return TaskExample(torch.cat([padded(example.input_ids) for example in examples]),
                       torch.cat([padded(example.attention_mask) for example in examples]),
                       torch.cat([example.labels for example in examples]))


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
                          f"none of the pretrain_tasks {[task.name for task in tasks]} uses — remove it from "
                          "pretrain_datasets or add a task in its languages to pretrain_tasks")
