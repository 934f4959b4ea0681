"""How MQL4GRec's tasks share a training batch (``task_mix``): which examples a batch of rows yields.

* ``official`` (the official code's fine-tuning data, one dataset per task concatenated and shuffled): the
  next-item task of each language on every row; the cross-language next-item tasks together once per row, in a
  direction drawn at random per row (the official ``fusionseqrec``); each translation task on items drawn uniformly
  from the domain's items, ``items / training rows`` of them per row on average (the official code translates every
  item once per epoch). The loss is the mean over all examples (every example has ``L`` label tokens), so on
  Instruments (84,890 training rows, 6,250 items) the two next-item tasks carry 2 x 84,890 / (3 x 84,890 + 2 x 6,250)
  = 63.5% of it, as in the official code.
* ``per_row``: every task on every row, so each of the six tasks carries a sixth of the loss.
"""

from __future__ import annotations

from collections.abc import Callable, Mapping, Sequence

import torch
from torch import Tensor

from recbole_qrec.model.mql4grec_modules.tasks import Task, TaskExample, task_example

Tokens = Mapping[str, Tensor]  # language -> token ids [B, L] of items, or [B, S, L] of histories
ItemDraw = Callable[[int], Tokens]  # rows of a batch -> tokens [m, L] of the items to translate for them


def per_row_examples(tasks: Sequence[Task], history: Tokens, target: Tokens, draw: ItemDraw) -> dict[str, TaskExample]:
    """Every task's example on every row (translation: of the row's target item), by task name."""
    return {task.name: task_example(task, history, target) for task in tasks}


def official_examples(tasks: Sequence[Task], history: Tokens, target: Tokens, draw: ItemDraw) -> dict[str, TaskExample]:
    """The official mix's examples by task name (a task without rows in this batch is left out)."""
    rows = len(next(iter(target.values())))
    examples: dict[str, TaskExample] = {}
    cross = [task for task in tasks if not task.translation and task.source != task.target]
    direction = torch.randint(len(cross), (rows,), device=next(iter(target.values())).device) if cross else None
    items = draw(rows) if any(task.translation for task in tasks) else {}
    for task in tasks:
        if task.translation:
            example = task_example(task, items, items)
        elif task in cross:
            example = TaskExample(*(part[direction == cross.index(task)] for part in task_example(task, history, target)))
        else:
            example = task_example(task, history, target)
        if len(example.labels):
            examples[task.name] = example
    return examples


MIXES: dict[str, Callable[[Sequence[Task], Tokens, Tokens, ItemDraw], dict[str, TaskExample]]] = {
    "official": official_examples, "per_row": per_row_examples}
