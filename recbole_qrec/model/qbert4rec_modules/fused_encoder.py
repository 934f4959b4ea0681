"""RecBole's transformer encoder with fused kernels: the same function and parameters, fewer kernel launches.

RecBole's ``MultiHeadAttention`` computes attention as matmul, scale, mask, softmax, dropout and matmul, and its
GELU as four element-wise operations; on a GPU each is a kernel launch forward and more backward, and a small
model spends its step issuing them. Here attention is one ``F.scaled_dot_product_attention`` call (on CUDA the
memory-efficient kernel, which takes RecBole's additive padding mask) and GELU is ``F.gelu``. Module names are
RecBole's, so a state dict loads in either encoder.
"""

from __future__ import annotations

import torch.nn.functional as F
from recbole.model.layers import MultiHeadAttention, TransformerEncoder
from torch import Tensor


class FusedSelfAttention(MultiHeadAttention):
    """RecBole's multi-head self-attention (residual and LayerNorm included) through one fused attention kernel."""

    def forward(self, input_tensor: Tensor, attention_mask: Tensor) -> Tensor:
        batch, length, _ = input_tensor.shape

        def heads(projected: Tensor) -> Tensor:  # [B, S, H] -> [B, heads, S, H / heads]
            return projected.view(batch, length, self.num_attention_heads, self.attention_head_size).transpose(1, 2)

        context = F.scaled_dot_product_attention(
            heads(self.query(input_tensor)), heads(self.key(input_tensor)), heads(self.value(input_tensor)),
            attn_mask=attention_mask, dropout_p=self.attn_dropout.p if self.training else 0.0)
        hidden = self.out_dropout(self.dense(context.transpose(1, 2).reshape(batch, length, self.all_head_size)))
        return self.LayerNorm(hidden + input_tensor)


class FusedTransformerEncoder(TransformerEncoder):
    """:class:`recbole.model.layers.TransformerEncoder` whose layers attend through :class:`FusedSelfAttention` and
    use ``F.gelu`` (the same exact GELU) for ``hidden_act: gelu``."""

    def __init__(self, n_layers: int, n_heads: int, hidden_size: int, inner_size: int, hidden_dropout_prob: float,
                 attn_dropout_prob: float, hidden_act: str, layer_norm_eps: float) -> None:
        super().__init__(n_layers, n_heads, hidden_size, inner_size, hidden_dropout_prob, attn_dropout_prob,
                         hidden_act, layer_norm_eps)
        for layer in self.layer:
            layer.multi_head_attention = FusedSelfAttention(n_heads, hidden_size, hidden_dropout_prob,
                                                            attn_dropout_prob, layer_norm_eps)
            if hidden_act == "gelu":
                layer.feed_forward.intermediate_act_fn = F.gelu
