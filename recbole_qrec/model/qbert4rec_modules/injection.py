"""Stage 1 of Q-Bert4Rec: dynamic cross-modal semantic injection into learnable item ID vectors.

Each item ``i`` has a learnable ID vector ``q_i``. Its modality features (text, image) are
L2-normalised and linearly projected to the shared dimension (``fixed_projection``: by the projection's random
initialisation, kept fixed, which roughly keeps the features' distances; else learned); each projected view ``p_m`` is
weighted by ``softmax_m(cos(q_i, p_m) / tau)`` over the modalities the item has, and the weighted
views are the keys/values of up to ``layers`` cross-attention blocks whose query is the item's
state ``h`` (``h_0 = q_i``).

Adaptive depth (``dynamic=True``): after block ``l`` (``l < layers - 1``) a gate
``g_l = sigmoid(MLP_l(h))`` decides whether the item continues into block ``l + 1``: it stops after the
first block whose gate is below ``gate_threshold``; its depth is the number of blocks it went through
(1 .. ``layers``). Training runs the same hard rule (``c_l`` = 1 while every gate so far is open, else 0;
``h_{l+1} = c_l * block_l(h_l) + (1 - c_l) * h_l``) with straight-through gradients to the gates (the
backward pass sees the running product of the sigmoids), so the depths trained are the depths used.
The ponder penalty ``depth_weight * mean(depth)`` (ACT's, Graves 2016) makes every block cost something,
so gates close where a block does not pay for itself in the contrastive terms.
:meth:`CrossModalInjection.steer_depth` moves ``depth_weight`` after every step by dual ascent towards the
mean depth ``depth_target`` (``depth_weight += depth_weight_step * (mean depth - depth_target)``, at least 0):
a fixed weight that spreads the depths on one catalogue sends every item to depth 1 or every item to the last
block on another (the paper: most items stop within 1-3 blocks, median 2). With ``depth_weight_step`` 0 the
weight stays fixed; at weight 0 nothing rewards stopping and every gate stays open.

Halting objective (``gate_objective="halting"``, PonderNet's, Banino et al. 2021) instead of the ponder penalty:
the gates give every item a distribution over its depths (:mod:`~recbole_qrec.model.qbert4rec_modules.halting`);
training runs every block for every item and minimises each item's loss at each depth weighted by that distribution,
plus ``halting_kl_weight`` times its KL divergence to a truncated geometric prior with mean ``depth_target``. An item
whose loss keeps falling with depth can move its mass deeper while one that a block does not help stops earlier
(measured on Instruments and its pretraining union, the depths follow the prior's weight instead, one depth for nearly
every item: docs/results/qbert4rec_stage_depths/). Inference stops an item after the first block
at which its probability of going on (the product of its gates so far) falls below ``gate_threshold``: the median of
its depth distribution at 0.5.

Capacity objective (``gate_objective="capacity"``, after Mixture-of-Depths, Raposo et al. 2024): the gates rank the
items instead of each deciding alone. After block ``l`` the items still going whose gates are highest go on, as many
as the truncated geometric prior with mean ``depth_target`` lets reach block ``l + 1`` (at mean 2 over 4 blocks: 54%,
30% and 16% of the items reach blocks 2, 3 and 4; the median depth is 2). So the depths always spread as the prior
does, and the gates only choose which items go deeper, by the same straight-through gradient as the ponder penalty's
(which is off). A training batch ranks its own items; after training, :meth:`CrossModalInjection.calibrate_capacity`
ranks the whole catalogue once and keeps the gate logits it ranked at as inference's thresholds, so inference gives
the catalogue the prior's shares and an item's depth depends on its own gates alone. Items are ranked by the gates'
logits, which do not saturate: many gates reach exactly 1.0 in float32 and would all tie at the threshold.

``dynamic=False`` (``fusion: static``): every item goes through all blocks, no gates.

Loss: multi-view InfoNCE between the fused ID view ``h_i`` and each modality view, and between
every two modality views, each over the items that have the views it compares; plus the
ID-consistency term ``consistency_weight * mean(1 - cos(h_i, q_i))``, which keeps the fused
embedding anchored to the item's own ID vector (the gates trade this against injecting content), plus the
ponder penalty of dynamic fusion (with the halting objective, the ID-view terms and the ID-consistency term are
each item's expectation over its depths, plus the prior term).
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from itertools import combinations

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from recbole_qrec.model.qbert4rec_modules.contrastive import item_info_nce, masked_info_nce
from recbole_qrec.model.qbert4rec_modules.cross_attention_block import CrossAttentionBlock
from recbole_qrec.model.qbert4rec_modules.halting import depth_distribution, kl_to_prior, truncated_geometric

GATE_OBJECTIVES = ("ponder", "halting", "capacity")


@dataclass
class InjectionOutput:
    """``fused`` ``[n, d]`` item embeddings ``h``, the ``ids`` ``q`` and projected ``views`` (one
    ``[n, d]`` per modality) they came from, each item's ``depth``: blocks applied under the
    hard rule, and its ``soft_depth`` ``[n]``: the same value in the forward pass, carrying the straight-through
    gradient the ponder penalty sends to the gates. Training under the halting objective adds the state after every
    block (``states``, ``[layers]`` of ``[n, d]``, every item through every block) and each item's
    ``depth_probabilities`` ``[n, layers]``."""

    fused: Tensor
    ids: Tensor
    views: list[Tensor]
    depth: Tensor
    soft_depth: Tensor
    states: list[Tensor] | None = None
    depth_probabilities: Tensor | None = None


class CrossModalInjection(nn.Module):
    """Fuses text/image features into learnable item ID vectors (stage 1 of Q-Bert4Rec)."""

    def __init__(self, n_items: int, modality_dims: Sequence[int], dim: int, layers: int, heads: int,
                 temperature: float, gate_threshold: float, dynamic: bool, consistency_weight: float,
                 depth_weight: float, depth_target: float = 1.0, depth_weight_step: float = 0.0,
                 fixed_projection: bool = False, gate_objective: str = "ponder",
                 halting_kl_weight: float = 0.0) -> None:
        super().__init__()
        self.temperature = temperature
        self.gate_threshold = gate_threshold
        self.consistency_weight = consistency_weight
        self.depth_target = depth_target
        self.halting = dynamic and gate_objective == "halting" and layers > 1
        self.capacity = dynamic and gate_objective == "capacity" and layers > 1
        self.halting_kl_weight = halting_kl_weight
        ponder = dynamic and not self.halting and not self.capacity
        self.depth_weight_step = depth_weight_step if ponder else 0.0
        self.register_buffer("depth_weight", torch.tensor(depth_weight if ponder else 0.0))
        self.register_buffer("depth_prior", truncated_geometric(layers, depth_target), persistent=False)
        # capacity objective: the share of the items that goes on after each gate, and the gate logits the catalogue
        # was ranked at (inference's thresholds, see calibrate_capacity; 0, a gate of 0.5, until then); ranking: rank
        # the batch outside training too
        self.reach = (1 - self.depth_prior.cumsum(0)[:-1]).tolist()
        self.ranking = False
        self.register_buffer("capacity_thresholds", torch.zeros(max(layers - 1, 0)))
        self.id_embedding = nn.Embedding(n_items, dim)
        self.projections = nn.ModuleList(nn.Linear(in_dim, dim) for in_dim in modality_dims)
        self.projections.requires_grad_(not fixed_projection)
        self.blocks = nn.ModuleList(CrossAttentionBlock(dim, heads) for _ in range(layers))
        gate_count = layers - 1 if dynamic else 0
        self.gates = nn.ModuleList(
            nn.Sequential(nn.Linear(dim, dim), nn.GELU(), nn.Linear(dim, 1)) for _ in range(gate_count)
        )

    def forward(self, items: Tensor, features: Sequence[Tensor], present: Tensor) -> InjectionOutput:
        """``items`` ``[n]`` row indices, ``features`` one ``[n, dim_m]`` per modality, ``present`` ``[n, M]``."""
        ids = self.id_embedding(items)
        views = [projection(F.normalize(x, dim=-1)) for projection, x in zip(self.projections, features)]
        modalities = self.weighted_modalities(ids, torch.stack(views, 1), present)
        if self.halting and self.training:
            return self.fuse_every_depth(ids, views, modalities, present)
        fused, depth, soft_depth = self.fuse(ids, modalities, present)
        return InjectionOutput(fused, ids, views, depth, soft_depth)

    def weighted_modalities(self, ids: Tensor, views: Tensor, present: Tensor) -> Tensor:
        """Each view times ``softmax`` over the item's present modalities of ``cos(q_i, view) / tau``."""
        similarity = F.cosine_similarity(ids.unsqueeze(1), views, dim=-1) / self.temperature
        # An item with no modality at all gets all-zero weights (finite in both passes, no softmax over -inf only).
        has_any = present.any(1, keepdim=True)
        weights = similarity.masked_fill(~present & has_any, float("-inf")).softmax(1) * present
        return weights.unsqueeze(-1) * views

    def fuse(self, ids: Tensor, modalities: Tensor, present: Tensor) -> tuple[Tensor, Tensor, Tensor]:
        """Run the blocks under the hard gating rule (straight-through gradients in training); returns
        ``(h, depth, soft depth)``."""
        state = ids
        carry = torch.ones(len(ids), 1, device=ids.device)  # 0/1: still going
        go_on = torch.ones(len(ids), 1, device=ids.device)  # halting: the product of the gates so far
        depth = torch.zeros(len(ids), dtype=torch.long, device=ids.device)
        soft_depth = torch.zeros(len(ids), device=ids.device)
        for index, block in enumerate(self.blocks):
            state = carry * block(state, modalities, present) + (1 - carry) * state
            depth += carry.squeeze(1).gt(0).long()
            soft_depth = soft_depth + carry.squeeze(1)
            if index < len(self.gates):
                logit = self.gates[index](state)
                gate = torch.sigmoid(logit)
                if self.halting:
                    go_on = go_on * gate
                    carry = carry * (go_on >= self.gate_threshold).float()
                else:
                    # capacity ranks logits: saturated gates (exactly 1.0 in float32) would tie at the threshold
                    open_gate = (logit >= self.capacity_threshold(index, logit, carry) if self.capacity
                                 else gate >= self.gate_threshold).float()
                    carry = carry * (open_gate + gate - gate.detach() if self.training else open_gate)
        return state, depth, soft_depth

    def capacity_threshold(self, index: int, logit: Tensor, carry: Tensor) -> Tensor:
        """The gate logit at or above which an item goes on after block ``index``: when ranking (training,
        calibration) the ``k``-th highest logit of the batch's items still going (``k``: the prior's share of the batch
        reaching the next block), which calibration keeps as inference's threshold; else that kept threshold."""
        if not (self.training or self.ranking):
            return self.capacity_thresholds[index]
        going = logit.detach().squeeze(1).masked_fill(carry.detach().squeeze(1) <= 0, float("-inf"))
        k = round(self.reach[index] * len(going))
        threshold = going.topk(k).values[-1] if k else going.new_tensor(float("inf"))  # k = 0: nobody goes on
        if self.ranking:
            self.capacity_thresholds[index] = threshold
        return threshold

    @torch.no_grad()
    def calibrate_capacity(self, items: Tensor, features: Sequence[Tensor], present: Tensor) -> None:
        """Capacity objective: rank ``items`` (the whole catalogue, in one batch) without dropout and keep the gate
        logits they were ranked at as inference's thresholds."""
        self.eval()
        self.ranking = True
        try:
            self(items, features, present)
        finally:
            self.ranking = False

    def fuse_every_depth(self, ids: Tensor, views: list[Tensor], modalities: Tensor,
                         present: Tensor) -> InjectionOutput:
        """Training under the halting objective: every item through every block, its state after each, its depth
        distribution and the depth inference would give it (``fused`` is the state at that depth)."""
        states, gates = [], []
        state = ids
        for index, block in enumerate(self.blocks):
            state = block(state, modalities, present)
            states.append(state)
            if index < len(self.gates):
                gates.append(torch.sigmoid(self.gates[index](state)))
        gates = torch.cat(gates, 1)
        # the blocks whose probability of being reached is at least the threshold: a prefix, as the products only fall
        depth = 1 + gates.detach().cumprod(1).ge(self.gate_threshold).sum(1)
        fused = torch.stack(states, 1)[torch.arange(len(ids), device=ids.device), depth - 1]
        return InjectionOutput(fused, ids, views, depth, depth.float(), states, depth_distribution(gates))

    def loss(self, output: InjectionOutput, present: Tensor) -> Tensor:
        """Multi-view InfoNCE (ID-modality and modality-modality pairs), the ID-consistency term and the ponder
        penalty (or, under the halting objective, :meth:`halting_loss`)."""
        if output.states is not None:
            return self.halting_loss(output, present)
        everyone = torch.ones(len(present), dtype=torch.bool, device=present.device)
        views = [(output.fused, everyone)] + [(view, present[:, m]) for m, view in enumerate(output.views)]
        contrastive = sum(
            masked_info_nce(first, second, first_rows & second_rows, self.temperature)
            for (first, first_rows), (second, second_rows) in combinations(views, 2)
        )
        consistency = (1 - F.cosine_similarity(output.fused, output.ids, dim=-1)).mean()
        ponder = output.soft_depth.mean()
        return contrastive + self.consistency_weight * consistency + self.depth_weight * ponder

    def halting_loss(self, output: InjectionOutput, present: Tensor) -> Tensor:
        """Each item's ID-view InfoNCE and ID-consistency terms at each depth, weighted by its depth distribution,
        plus the modality-modality InfoNCE and ``halting_kl_weight`` times the mean KL divergence to the prior."""
        per_depth = torch.stack([
            sum(item_info_nce(state, view, present[:, m], self.temperature) for m, view in enumerate(output.views))
            + self.consistency_weight * (1 - F.cosine_similarity(state, output.ids, dim=-1))
            for state in output.states
        ], 1)
        modality_pairs = sum(
            masked_info_nce(output.views[first], output.views[second], present[:, first] & present[:, second],
                            self.temperature)
            for first, second in combinations(range(len(output.views)), 2)
        )
        expected = (output.depth_probabilities * per_depth).sum(1).mean()
        prior = kl_to_prior(output.depth_probabilities, self.depth_prior).mean()
        return expected + modality_pairs + self.halting_kl_weight * prior

    @torch.no_grad()
    def steer_depth(self, output: InjectionOutput) -> None:
        """Dual ascent of ``depth_weight`` towards ``depth_target`` from a training batch's depths (no-op when
        ``depth_weight_step`` is 0)."""
        if self.depth_weight_step:
            error = output.depth.float().mean() - self.depth_target
            self.depth_weight.add_(self.depth_weight_step * error).clamp_(min=0.0)


def depth_histogram(depth: Tensor, layers: int) -> list[int]:
    """Item counts per injection depth ``0 .. layers`` (real items have depth >= 1)."""
    return torch.bincount(depth, minlength=layers + 1).tolist()
