"""Train the stage-1 injection module on all items, then read out fused embeddings and depths."""

from __future__ import annotations

from dataclasses import dataclass

import torch
from torch import Tensor

from recbole_qrec.model.qbert4rec_modules.injection import CrossModalInjection
from recbole_qrec.data.item_features import ItemFeatures


@dataclass
class InjectionCurve:
    """Per training epoch: the mean loss, and the items per injection depth ``0 .. layers`` that the hard gates gave in
    its batches (every item once), i.e. how the depth distribution moved while the gates trained."""

    losses: list[float]
    depths: list[list[int]]


def train_injection(module: CrossModalInjection, features: ItemFeatures, epochs: int, batch_size: int,
                    learning_rate: float, generator: torch.Generator) -> InjectionCurve:
    """AdamW over shuffled item batches (``features`` on the module's device), steering the depth after each step;
    under the capacity objective, inference's thresholds from a ranking of every item at the end.
    No step waits for the device: losses and depth counts are summed there and read once per epoch."""
    optimizer = torch.optim.AdamW(module.parameters(), lr=learning_rate, fused=features.present.device.type == "cuda")
    n_items, layers = len(features.present), len(module.blocks)
    module.train()
    curve = InjectionCurve([], [])
    for _ in range(epochs):
        batches = torch.randperm(n_items, generator=generator, device=generator.device).split(batch_size)
        total = torch.zeros((), device=features.present.device)
        depths = torch.zeros(layers + 1, dtype=torch.long, device=features.present.device)
        for rows in batches:
            present = features.present[rows]
            output = module(rows, [matrix[rows] for matrix in features.matrices], present)
            loss = module.loss(output, present)
            optimizer.zero_grad(set_to_none=True)
            loss.backward()
            optimizer.step()
            module.steer_depth(output)
            total += loss.detach()
            depths.scatter_add_(0, output.depth, torch.ones_like(output.depth))  # bincount would wait for a CUDA device
        curve.losses.append(float(total / len(batches)))
        curve.depths.append(depths.tolist())
    if module.capacity:
        module.calibrate_capacity(torch.arange(n_items, device=features.present.device), features.matrices,
                                  features.present)
    return curve


@torch.no_grad()
def fuse_items(module: CrossModalInjection, features: ItemFeatures, batch_size: int) -> tuple[Tensor, Tensor]:
    """Hard-gated inference for every item: fused embeddings ``[n, d]`` and depths ``[n]``."""
    module.eval()
    outputs = [
        module(rows, [matrix[rows] for matrix in features.matrices], features.present[rows])
        for rows in torch.arange(len(features.present), device=features.present.device).split(batch_size)
    ]
    return torch.cat([out.fused for out in outputs]), torch.cat([out.depth for out in outputs])
