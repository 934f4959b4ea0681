"""Dataset statistics printed by every data-preparation command."""

from __future__ import annotations

from collections.abc import Mapping, Sequence


def sequence_stats(sequences: Mapping[str, Sequence[int]]) -> dict[str, float]:
    """Users, items, interactions, sparsity and average sequence length of ``user -> items``."""
    users = len(sequences)
    items = len({item for seq in sequences.values() for item in seq})
    interactions = sum(len(seq) for seq in sequences.values())
    return {
        "users": users,
        "items": items,
        "interactions": interactions,
        "sparsity": 1.0 - interactions / (users * items) if users and items else 1.0,
        "avg_length": interactions / users if users else 0.0,
    }


def format_stats(name: str, stats: Mapping[str, float]) -> str:
    """One human-readable line per statistic."""
    return (
        f"{name}: users {stats['users']:,} | items {stats['items']:,} | interactions {stats['interactions']:,} | "
        f"sparsity {stats['sparsity']:.4%} | avg length {stats['avg_length']:.2f}"
    )
