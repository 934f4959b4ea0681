"""RecBole's dataset transforms (``transform``, ``recbole/data/transform.py``) computed with tensor operations on the
batch's device, for the device-resident loaders (``data_path_mode: gpu``)."""

from __future__ import annotations

import random
from typing import Callable

import torch
from recbole.config import Config
from recbole.data.dataset import Dataset
from recbole.data.interaction import Interaction
from recbole.data.transform import Equal, MaskItemSequence

Transform = Callable[[Dataset, Interaction], Interaction]


def right_aligned(selected: torch.Tensor, values: torch.Tensor, width: int) -> torch.Tensor:
    """``[B, width]``: per row, ``values`` at the last ``width`` ``selected`` positions, in order, left-padded with 0
    (RecBole's ``_padding_sequence`` of the selected values)."""
    from_end = selected.flip(1).cumsum(1).flip(1)  # selected positions at or after each position
    slot = torch.where(selected & (from_end <= width), width - from_end, width)
    out = torch.zeros(values.size(0), width + 1, dtype=values.dtype, device=values.device)
    return out.scatter_(1, slot, values)[:, :width].contiguous()  # column ``width``: the positions left out


def items_not_in(sequences: torch.Tensor, shape: tuple[int, int], n_items: int) -> torch.Tensor:
    """``shape`` items drawn uniformly from ``1 .. n_items - 1`` without the items of each row of ``sequences``
    (RecBole's ``_neg_sample``): the ``r``-th item outside the row's sorted distinct items, ``r`` uniform."""
    sorted_items = sequences.sort(dim=1).values
    repeated = torch.zeros_like(sorted_items, dtype=torch.bool)
    repeated[:, 1:] = sorted_items[:, 1:] == sorted_items[:, :-1]
    excluded = sorted_items.masked_fill(repeated | (sorted_items == 0), n_items)  # n_items: no item
    allowed = (n_items - 1) - (excluded < n_items).sum(dim=1, keepdim=True)
    items = (torch.rand(shape, device=sequences.device) * allowed).long().clamp_(max=allowed - 1) + 1
    for column in excluded.sort(dim=1).values.unbind(1):  # ascending: skip each excluded item at or below
        items += (column.unsqueeze(1) <= items).long()
    return items


class DeviceMaskItemSequence(MaskItemSequence):
    """RecBole's ``mask_itemseq`` (BERT4Rec's cloze masking) with the same distribution and fields, as tensor
    operations: with probability ``ft_ratio`` a batch masks each sequence's last item, otherwise each item before
    the padding is masked with probability ``mask_ratio``; the last ``int(mask_ratio * MAX_ITEM_LIST_LENGTH)``
    masked items of a row are its ``Pos_`` targets, each with a ``Neg_`` item outside the sequence."""

    def __call__(self, dataset: Dataset, interaction: Interaction) -> Interaction:
        sequences = interaction[self.ITEM_SEQ]
        n_items = dataset.num(self.ITEM_ID)
        positions = torch.arange(sequences.size(1), device=sequences.device).expand_as(sequences)
        if random.random() < self.ft_ratio:
            masked = positions == (interaction[self.ITEM_SEQ_LEN] - 1).unsqueeze(1)
        else:
            before_padding = (sequences != 0).cumprod(dim=1).bool()
            masked = (torch.rand(sequences.shape, device=sequences.device) < self.mask_ratio) & before_padding
        pos_items = right_aligned(masked, sequences, self.mask_item_length)
        negatives = items_not_in(sequences, tuple(pos_items.shape), n_items)
        interaction.update(Interaction({
            self.MASK_ITEM_SEQ: sequences.masked_fill(masked, n_items),
            self.POS_ITEMS: pos_items,
            self.NEG_ITEMS: torch.where(pos_items > 0, negatives, 0),
            self.MASK_INDEX: right_aligned(masked, positions, self.mask_item_length),
        }))
        return interaction


# ``transform`` values with a device implementation here (None: no transform).
DEVICE_TRANSFORMS: dict[str | None, type] = {None: Equal, "mask_itemseq": DeviceMaskItemSequence}


def device_transform(config: Config) -> Transform:
    """The device implementation of ``config``'s ``transform`` (one of :data:`DEVICE_TRANSFORMS`)."""
    return DEVICE_TRANSFORMS[config["transform"]](config)
