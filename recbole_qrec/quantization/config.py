"""Every knob of the semantic-ID tokenizer, validated; the same defaults live in ``properties/tokenizer.yaml``."""

from __future__ import annotations

import difflib

from collections.abc import Callable, Mapping
from dataclasses import asdict, dataclass, fields
from typing import Any

from recbole_qrec.errors import ConfigError

COLLISION_STRATEGIES = ("rerank", "append_level")
ALIGNMENTS = ("none", "contrastive", "mmd")
FUSIONS = ("mean", "concat")
QUANTIZERS = ("joint", "per_modality")
RECONSTRUCTIONS = ("mse", "mmd")


@dataclass(frozen=True)
class TokenizerConfig:
    """RQ-VAE architecture, training, collision handling and multi-modal alignment settings.

    ``dead_code_threshold``: a code unused for this many consecutive training steps is re-seeded
    from a current residual (0 disables). ``align_sample``: the alignment losses (O(B^2)) use the
    first ``align_sample`` rows of each shuffled batch. ``mixed_precision``: bf16 autocast for the
    encoder/decoder MLPs on CUDA (quantization distances always run in fp32). ``quantizers``: ``joint`` (one
    residual quantizer over the fused latent) or ``per_modality`` (MME-SID's MM-RQ-VAE: one per modality, the codes
    side by side). ``reconstruction``: ``mse`` or ``mmd`` (MME-SID: Gaussian MMD^2 between a modality's features and
    their reconstruction), weighted by ``reconstruction_weight``.
    """

    levels: int = 4
    codebook_size: int = 256
    code_dim: int = 32
    hidden_dims: tuple[int, ...] = (512, 256, 128)
    beta: float = 0.25
    lr: float = 0.001
    weight_decay: float = 0.0001
    epochs: int = 100
    batch_size: int = 1024
    assign_batch_size: int = 65536
    seed: int = 2020
    kmeans_init: bool = True
    kmeans_iters: int = 25
    dead_code_threshold: int = 100
    collision_strategy: str = "rerank"
    fusion: str = "mean"
    alignment: str = "none"
    contrastive_weight: float = 0.1
    recon_align_weight: float = 0.001
    temperature: float = 0.1
    mmd_weight: float = 0.1
    align_sample: int = 2048
    mixed_precision: bool = True
    quantizers: str = "joint"
    reconstruction: str = "mse"
    reconstruction_weight: float = 1.0

    def __post_init__(self) -> None:
        if isinstance(self.hidden_dims, list):
            object.__setattr__(self, "hidden_dims", tuple(self.hidden_dims))
        for name, (check, allowed) in _RULES.items():
            value = getattr(self, name)
            if not check(value):
                raise ConfigError(f"Invalid tokenizer setting {name}={value!r} — allowed is {allowed}")
        if self.quantizers == "per_modality" and self.collision_strategy != "append_level":
            raise ConfigError(f"quantizers=per_modality with collision_strategy={self.collision_strategy!r}: re-ranking "
                              "needs one quantizer — set collision_strategy=append_level")

    @classmethod
    def from_dict(cls, values: Mapping[str, Any]) -> TokenizerConfig:
        """Build from a mapping (e.g. parsed YAML); an unknown key raises :class:`ConfigError`."""
        valid = [f.name for f in fields(cls)]
        for key in values:
            if key not in valid:
                close = difflib.get_close_matches(key, valid, n=1)
                hint = f"did you mean '{close[0]}'? " if close else ""
                raise ConfigError(f"Unknown tokenizer setting '{key}' — {hint}valid keys: {', '.join(valid)}")
        return cls(**values)

    def to_dict(self) -> dict[str, Any]:
        """Plain-Python form (``hidden_dims`` as a list), e.g. for a JSON report."""
        values = asdict(self)
        values["hidden_dims"] = list(self.hidden_dims)
        return values


def _int_at_least(low: int) -> Callable[[Any], bool]:
    return lambda v: isinstance(v, int) and not isinstance(v, bool) and v >= low


def _number(positive: bool) -> Callable[[Any], bool]:
    return lambda v: isinstance(v, (int, float)) and not isinstance(v, bool) and (v > 0 if positive else v >= 0)


def _one_of(options: tuple[str, ...]) -> Callable[[Any], bool]:
    return lambda v: v in options


_RULES: dict[str, tuple[Callable[[Any], bool], str]] = {
    "levels": (_int_at_least(1), "an integer >= 1"),
    "codebook_size": (_int_at_least(2), "an integer >= 2"),
    "code_dim": (_int_at_least(1), "an integer >= 1"),
    "hidden_dims": (lambda v: isinstance(v, tuple) and all(map(_int_at_least(1), v)), "a list of integers >= 1 (may be empty)"),
    "beta": (_number(positive=False), "a number >= 0"),
    "lr": (_number(positive=True), "a number > 0"),
    "weight_decay": (_number(positive=False), "a number >= 0"),
    "epochs": (_int_at_least(1), "an integer >= 1"),
    "batch_size": (_int_at_least(1), "an integer >= 1"),
    "assign_batch_size": (_int_at_least(1), "an integer >= 1"),
    "seed": (_int_at_least(0), "an integer >= 0"),
    "kmeans_init": (lambda v: isinstance(v, bool), "true or false"),
    "kmeans_iters": (_int_at_least(1), "an integer >= 1"),
    "dead_code_threshold": (_int_at_least(0), "an integer >= 0 (0 disables re-seeding)"),
    "collision_strategy": (_one_of(COLLISION_STRATEGIES), " or ".join(COLLISION_STRATEGIES)),
    "fusion": (_one_of(FUSIONS), " or ".join(FUSIONS)),
    "alignment": (_one_of(ALIGNMENTS), " or ".join(ALIGNMENTS)),
    "contrastive_weight": (_number(positive=False), "a number >= 0"),
    "recon_align_weight": (_number(positive=False), "a number >= 0"),
    "temperature": (_number(positive=True), "a number > 0"),
    "mmd_weight": (_number(positive=False), "a number >= 0"),
    "align_sample": (_int_at_least(2), "an integer >= 2"),
    "mixed_precision": (lambda v: isinstance(v, bool), "true or false"),
    "quantizers": (_one_of(QUANTIZERS), " or ".join(QUANTIZERS)),
    "reconstruction": (_one_of(RECONSTRUCTIONS), " or ".join(RECONSTRUCTIONS)),
    "reconstruction_weight": (_number(positive=False), "a number >= 0"),
}
