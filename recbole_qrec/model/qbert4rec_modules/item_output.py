"""Item-level output layer of the semantic-ID transformer: one logit per catalogue item (``scoring: item``)."""

from __future__ import annotations

import torch
from torch import Tensor, nn


class ItemOutput(nn.Module):
    """Scores every item from the [MASK] slot: ``<mean_l slot_l, e_i> + b_i``, where the item embedding
    ``e_i`` is a learned ID embedding plus the mean of the item's code-token embeddings (given at call time,
    so the code tokens keep one embedding table). ``n_items * (hidden + 1)`` parameters: the table grows
    with the catalogue."""

    def __init__(self, n_items: int, hidden_size: int) -> None:
        super().__init__()
        self.id_embedding = nn.Embedding(n_items, hidden_size, padding_idx=0)
        self.bias = nn.Parameter(torch.zeros(n_items))

    def forward(self, slot: Tensor, code_embeddings: Tensor) -> Tensor:
        """``slot`` ``[B, L, H]``, ``code_embeddings`` ``[n_items, H]`` -> logits ``[B, n_items]``."""
        return slot.mean(1) @ (self.id_embedding.weight + code_embeddings).T + self.bias
