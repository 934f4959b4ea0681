"""One block of the cross-modal injection transformer: the item's ID state attends to its modalities."""

from __future__ import annotations

from torch import Tensor, nn


class CrossAttentionBlock(nn.Module):
    """Pre-LayerNorm cross-attention (query: the item state, keys/values: its modality tokens) plus FFN."""

    def __init__(self, dim: int, heads: int) -> None:
        super().__init__()
        self.query_norm = nn.LayerNorm(dim)
        self.attention = nn.MultiheadAttention(dim, heads, batch_first=True)
        self.ffn_norm = nn.LayerNorm(dim)
        self.ffn = nn.Sequential(nn.Linear(dim, 4 * dim), nn.GELU(), nn.Linear(4 * dim, dim))

    def forward(self, state: Tensor, modalities: Tensor, present: Tensor) -> Tensor:
        """``state`` ``[n, d]``, ``modalities`` ``[n, M, d]``, ``present`` ``[n, M]`` bool -> new state ``[n, d]``.

        Missing modalities are hidden from the attention; an item with none attends to its (zero) rows.
        """
        hidden = ~present & present.any(1, keepdim=True)
        attended = self.attention(self.query_norm(state).unsqueeze(1), modalities, modalities,
                                  key_padding_mask=hidden, need_weights=False)[0]
        state = state + attended.squeeze(1)
        return state + self.ffn(self.ffn_norm(state))
