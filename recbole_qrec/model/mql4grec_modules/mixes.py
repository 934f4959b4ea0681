"""How MQL4GRec's tasks share a training batch (``task_mix``): which examples a batch of rows yields.

* ``official`` (the official code's fine-tuning data, one dataset per task concatenated and shuffled): the
  next-item task of each language on every row; the cross-language next-item tasks together once per row, in a
  direction drawn at random per row (the official ``fusionseqrec``); each translation task on items drawn uniformly
  from the domain's items, ``items / training rows`` of them per row (rounded per batch; the official code translates
  every item once per epoch). The loss is the mean over all examples (every example has ``L`` label tokens), so on
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
    """The official mix's examples by task name (a task without rows in this batch is left out). The cross-language
    next-item tasks give one example per row, its direction's: when every direction's examples have one shape, as one
    example of the batch's rows under the tasks' names joined by ``+`` (a shape known before the step runs: no wait
    for the device to count each direction's rows, and one shape per batch size for CUDA graphs); otherwise split by
    task."""
    rows = len(next(iter(target.values())))
    examples: dict[str, TaskExample] = {}
    cross = [task for task in tasks if not task.translation and task.source != task.target]
    direction = torch.randint(len(cross), (rows,), device=next(iter(target.values())).device) if cross else None
    items = draw(rows) if any(task.translation for task in tasks) else {}
    for task in tasks:
        if task.translation:
            examples[task.name] = task_example(task, items, items)
        elif task not in cross:
            examples[task.name] = task_example(task, history, target)
        elif task == cross[0]:
            examples.update(one_direction_per_row(cross, direction, history, target))
    return {name: example for name, example in examples.items() if len(example.labels)}


def one_direction_per_row(cross: Sequence[Task], direction: Tensor, history: Tokens,
                          target: Tokens) -> dict[str, TaskExample]:
    """Each row's example of the cross task ``cross[direction[row]]``: one example of all rows when the tasks'
    examples have one shape, else each task's own rows."""
    every = [task_example(task, history, target) for task in cross]
    if len({tuple(part.shape for part in example) for example in every}) == 1:
        rows = torch.arange(len(direction), device=direction.device)
        return {"+".join(task.name for task in cross): TaskExample(*(torch.stack(parts)[direction, rows]
                                                                     for parts in zip(*every)))}
    return {task.name: TaskExample(*(part[direction == index] for part in example))
            for index, (task, example) in enumerate(zip(cross, every))}


MIXES: dict[str, Callable[[Sequence[Task], Tokens, Tokens, ItemDraw], dict[str, TaskExample]]] = {
    "official": official_examples, "per_row": per_row_examples}
