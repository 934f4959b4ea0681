"""Output heads of the semantic-ID transformer: one K-way classifier per code level."""

from __future__ import annotations

import torch
from torch import Tensor, nn


class LevelHeads(nn.Module):
    """Maps hidden states ``[..., L, H]`` (one per level of an item) to code logits ``[..., L, K]``,
    level ``l`` through its own linear head."""

    def __init__(self, levels: int, codebook_size: int, hidden_size: int, initializer_range: float) -> None:
        super().__init__()
        self.weight = nn.Parameter(torch.randn(levels, codebook_size, hidden_size) * initializer_range)
        self.bias = nn.Parameter(torch.zeros(levels, codebook_size))

    def forward(self, hidden: Tensor) -> Tensor:
        return torch.einsum("...lh,lkh->...lk", hidden, self.weight) + self.bias
