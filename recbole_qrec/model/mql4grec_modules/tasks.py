"""MQL4GRec's generation tasks over two quantitative languages and the T5 examples they make.

Every task reads one language and writes the other or the same one:

* next-item generation: ``text_next`` (text history -> next item's text ID), ``image_next``;
* cross-language next item (the paper's asymmetric item generation): ``text_to_image_next``
  (text history -> next item's image ID), ``image_to_text_next``;
* item translation (the paper's quantitative language alignment): ``text_to_image`` (an item's text
  ID -> its image ID), ``image_to_text``; the item is the training row's target item.

The encoder input is the task's token (a learned special token standing in for the paper's text
prompt) followed by the source tokens (history item by item, level by level, padding after its
end; or the item's own ID), and the labels are the ``L`` tokens of the target ID.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from typing import NamedTuple

import torch
from torch import Tensor

from recbole_qrec.errors import ConfigError
from recbole_qrec.generation import SemanticIdVocab

TEXT, IMAGE = "text", "image"
LANGUAGES = (TEXT, IMAGE)


class Task(NamedTuple):
    """A generation task: ``source`` language in, ``target`` language out; ``translation`` reads the
    target item's own ID instead of the history. A named tuple, which ``torch.compile`` traces and rebuilds across a
    graph break (a frozen dataclass it cannot: ``compile_model`` failed on MQL4GRec and MACRec)."""

    name: str
    source: str
    target: str
    translation: bool = False


TASKS = (
    Task("text_next", TEXT, TEXT),
    Task("image_next", IMAGE, IMAGE),
    Task("text_to_image_next", TEXT, IMAGE),
    Task("image_to_text_next", IMAGE, TEXT),
    Task("text_to_image", TEXT, IMAGE, translation=True),
    Task("image_to_text", IMAGE, TEXT, translation=True),
)
# Special tokens: padding (also the decoder start), end of sequence, then one token per task of TASKS.
N_SPECIAL = 2 + len(TASKS)


class TaskExample(NamedTuple):
    """The keyword arguments of a T5 training call: encoder tokens, their attention mask and the labels."""

    input_ids: Tensor
    attention_mask: Tensor
    labels: Tensor


def select_tasks(names: Sequence[str] | None, key: str = "tasks") -> list[Task]:
    """The tasks named in the config's ``key`` (``tasks``, ``pretrain_tasks``), in the order of :data:`TASKS`."""
    known = [task.name for task in TASKS]
    if isinstance(names, str) or not names or any(name not in known for name in names):
        raise ConfigError(f"{key} must be a non-empty list of task names, got {names!r} — choose from {', '.join(known)}")
    return [task for task in TASKS if task.name in names]


def task_token(task: Task) -> int:
    """The special token id that announces ``task`` to the encoder."""
    return SemanticIdVocab.eos_id + 1 + TASKS.index(task)


def generation_task(language: str) -> Task:
    """The next-item generation task within ``language`` (used for ranking)."""
    return next(task for task in TASKS if task.source == task.target == language)


def usable_tasks(tasks: Sequence[Task], languages: Sequence[str]) -> list[Task]:
    """The tasks a domain whose items have codes in ``languages`` can train."""
    return [task for task in tasks if task.source in languages and task.target in languages]


def encoder_input(task: Task, source_tokens: Tensor) -> tuple[Tensor, Tensor]:
    """``[task token, source tokens...]`` ``[B, 1 + n * L]`` from ``[B, n, L]`` tokens, and its attention mask."""
    prompt = source_tokens.new_full((len(source_tokens), 1), task_token(task))
    tokens = torch.cat([prompt, source_tokens.flatten(1)], dim=1)
    return tokens, (tokens != SemanticIdVocab.pad_id).long()


def task_example(task: Task, history: Mapping[str, Tensor], target: Mapping[str, Tensor]) -> TaskExample:
    """The example of ``task`` for each row, from per-language tokens of the history ``[B, S, L]`` and
    of the target item ``[B, L]``."""
    source = target[task.source].unsqueeze(1) if task.translation else history[task.source]
    return TaskExample(*encoder_input(task, source), labels=target[task.target])
