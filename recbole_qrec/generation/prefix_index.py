"""Which code may follow a prefix of semantic-ID codes: a prefix tree stored as tensors.

Prefixes of length ``t`` are numbered ``0..n_t-1`` in lexicographic order (the empty prefix is id 0
of level 0). The children of level ``t`` are the prefixes of length ``t + 1``; sorted by
``(parent id, code)`` they are exactly the prefixes of length ``t + 1`` in lexicographic order, so
a child's position in that list *is* its prefix id at the next level. Each level stores them as a
CSR (``indptr[n_t + 1]``, ``codes[n_{t+1}]``; child id = position) and, when
``n_t * codebook_size <= dense_limit``, also as a dense table ``[n_t, codebook_size]`` of child ids
(-1: the code may not follow). A 1M-item, 4 x 256 table keeps its two deep levels as CSR only.
Prefix ids of length ``L`` (leaves) map to item indices through ``leaf_items``.
"""

from __future__ import annotations

from dataclasses import dataclass, replace

import torch

from recbole_qrec.errors import MalformedDataError

DENSE_LIMIT = 1 << 22  # entries of a dense child table (32 MiB of int64)


@dataclass(frozen=True)
class LevelIndex:
    """Children of the prefixes of one length: CSR ``indptr``/``codes`` and an optional dense table."""

    indptr: torch.Tensor
    codes: torch.Tensor
    dense: torch.Tensor | None

    @classmethod
    def from_keys(cls, keys: torch.Tensor, n_parents: int, codebook_size: int, dense_limit: int) -> LevelIndex:
        """Build from the sorted unique keys ``parent id * codebook_size + code`` of all children."""
        parents, codes = keys // codebook_size, keys % codebook_size
        bounds = torch.arange(n_parents + 1, device=keys.device) * codebook_size
        indptr = torch.searchsorted(keys, bounds)
        dense = None
        if n_parents * codebook_size <= dense_limit:
            dense = torch.full((n_parents, codebook_size), -1, dtype=torch.long, device=keys.device)
            dense[parents, codes] = torch.arange(len(keys), device=keys.device)
        return cls(indptr, codes, dense)

    def children(self, prefix_ids: torch.Tensor, codebook_size: int) -> torch.Tensor:
        """Child id of every (prefix, code) pair, ``[len(prefix_ids), codebook_size]``; -1 where not allowed."""
        if self.dense is not None:
            return self.dense[prefix_ids]
        start = self.indptr[prefix_ids, None]
        rank = torch.arange(codebook_size, device=prefix_ids.device)
        present = rank < self.indptr[prefix_ids + 1, None] - start
        position = (start + rank).clamp_max(len(self.codes) - 1)
        column = torch.where(present, self.codes[position], codebook_size)  # absent ranks go to a spare column
        table = torch.full((len(prefix_ids), codebook_size + 1), -1, dtype=torch.long, device=prefix_ids.device)
        return table.scatter_(1, column, torch.where(present, position, -1))[:, :codebook_size]

    def to(self, device: torch.device | str) -> LevelIndex:
        dense = None if self.dense is None else self.dense.to(device)
        return replace(self, indptr=self.indptr.to(device), codes=self.codes.to(device), dense=dense)


class PrefixIndex:
    """Allowed next codes for every prefix of the semantic IDs of a collision-free code table.

    ``codes``: ``LongTensor[n_rows, L]`` with codes in ``0..codebook_size-1``; ``item_ids``: the
    item index of each row (default ``arange(n_rows)``; e.g. ``arange(1, n)`` for RecBole tables
    whose row 0 is the padding item, passed as ``codes[1:]``). Built on ``codes``' device with
    vectorised sorting; raises :class:`MalformedDataError` if two rows share a code tuple.
    """

    def __init__(self, codes: torch.Tensor, codebook_size: int, item_ids: torch.Tensor | None = None,
                 dense_limit: int = DENSE_LIMIT) -> None:
        check_code_table(codes, codebook_size)
        if item_ids is not None and item_ids.shape != codes.shape[:1]:
            raise ValueError(f"item_ids has shape {tuple(item_ids.shape)}; expected ({len(codes)},), one per row.")
        self.codebook_size = codebook_size
        self.level_indexes: list[LevelIndex] = []
        parent = torch.zeros(len(codes), dtype=torch.long, device=codes.device)
        n_parents = 1
        for level in range(codes.shape[1]):
            keys, parent = torch.unique(parent * codebook_size + codes[:, level], sorted=True, return_inverse=True)
            self.level_indexes.append(LevelIndex.from_keys(keys, n_parents, codebook_size, dense_limit))
            n_parents = len(keys)
        if n_parents < len(codes):
            raise MalformedDataError(collision_message(codes, parent, item_ids))
        rows = torch.arange(len(codes), device=codes.device)
        self.leaf_items = torch.empty_like(rows).index_copy_(0, parent, rows if item_ids is None else item_ids.to(rows))

    @property
    def depth(self) -> int:
        """Number of code levels ``L``."""
        return len(self.level_indexes)

    def children(self, level: int, prefix_ids: torch.Tensor) -> torch.Tensor:
        """Next-prefix id (or, at the last level, leaf id) per (prefix, code); -1 where the code may not follow."""
        return self.level_indexes[level].children(prefix_ids, self.codebook_size)

    def to(self, device: torch.device | str) -> PrefixIndex:
        """Move the index to ``device`` (in place; returns ``self``)."""
        self.level_indexes = [level.to(device) for level in self.level_indexes]
        self.leaf_items = self.leaf_items.to(device)
        return self


def check_code_table(codes: torch.Tensor, codebook_size: int) -> None:
    """Raise :class:`MalformedDataError` unless ``codes`` is a non-empty ``[n, L]`` integer table in range."""
    if codes.dim() != 2 or codes.numel() == 0 or codes.dtype != torch.long:
        raise MalformedDataError(f"the code table is {codes.dtype} {tuple(codes.shape)} — it must be a non-empty "
                                 "LongTensor[n_items, levels]")
    if codes.min() < 0 or codes.max() >= codebook_size:
        raise MalformedDataError(f"codes range over {codes.min().item()}..{codes.max().item()} — they must lie in "
                                 f"0..{codebook_size - 1} (the codebook size)")


def collision_message(codes: torch.Tensor, leaf: torch.Tensor, item_ids: torch.Tensor | None) -> str:
    """Name a few items that share a code tuple."""
    shared = torch.bincount(leaf)[leaf] > 1
    rows = shared.nonzero().flatten()[:6].cpu()
    items = rows if item_ids is None else item_ids.cpu()[rows]
    examples = ", ".join(f"item {item} {tuple(codes[row].tolist())}" for item, row in zip(items.tolist(), rows.tolist()))
    return (f"the code table is not collision-free: {int(shared.sum())} items share their code tuple with another "
            f"item (e.g. {examples}); make the semantic IDs unique, e.g. with an extra disambiguation level.")
