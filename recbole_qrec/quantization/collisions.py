"""Make every item's semantic-ID tuple unique.

* ``rerank`` (Q-Bert4Rec): one item of each group sharing a tuple keeps it; each other item moves
  to the nearest free tuple, trying the next-nearest codes of the deepest level first and moving
  one level up only when every code of a level below is taken (:func:`rerank_collisions`).
* ``append_level`` (TIGER): an extra level holds the item's index within its duplicate group
  (:func:`append_level`).

Either way :func:`assert_unique` checks the result (a real check, not an ``assert`` statement).
"""

from __future__ import annotations

import numpy as np

Suffix = tuple[int, ...]

_RANK_ROWS = 16384  # colliding items whose deepest-level distances are ranked at once


def tuple_ids(codes: np.ndarray) -> np.ndarray:
    """A dense id per distinct row of ``codes`` (equal rows, equal ids), without int64 overflow for any L."""
    ids = np.zeros(len(codes), dtype=np.int64)
    for column in codes.T.astype(np.int64):
        ids = np.unique(ids * (int(column.max()) + 1) + column, return_inverse=True)[1].reshape(-1)
    return ids


def shared_mask(codes: np.ndarray) -> np.ndarray:
    """True for each item whose full code tuple is shared with another item."""
    return _shared(tuple_ids(codes))


def _shared(ids: np.ndarray) -> np.ndarray:
    return np.bincount(ids)[ids] > 1


def assert_unique(codes: np.ndarray) -> None:
    """Raise ``RuntimeError`` if any two items share a code tuple."""
    shared = int(shared_mask(codes).sum())
    if shared:
        raise RuntimeError(f"{shared} items still share a semantic-ID tuple after collision handling")


def append_level(codes: np.ndarray) -> np.ndarray:
    """TIGER: append a level with each item's index (in item order) within its group of equal tuples."""
    ids = tuple_ids(codes)
    order = np.argsort(ids, kind="stable")
    sorted_ids = ids[order]
    group_start = np.flatnonzero(np.r_[True, sorted_ids[1:] != sorted_ids[:-1]])
    position = np.arange(len(codes)) - np.repeat(group_start, np.diff(np.r_[group_start, len(codes)]))
    extra = np.empty(len(codes), dtype=np.int64)
    extra[order] = position
    return np.column_stack([codes, extra])


def level_residuals(latents: np.ndarray, codes: np.ndarray, codebooks: np.ndarray) -> np.ndarray:
    """``(n, L, d)`` residuals ``r_l = z - sum_{j<l} E_j[c_j]`` that each level quantized."""
    chosen = codebooks[np.arange(codebooks.shape[0]), codes]
    return latents[:, None, :] - (np.cumsum(chosen, axis=1) - chosen)


def ranked_codes(residuals: np.ndarray, codebook: np.ndarray) -> np.ndarray:
    """Codebook indices ordered nearest first for each residual row, ``(n, K)``."""
    distances = (residuals**2).sum(1, keepdims=True) - 2 * residuals @ codebook.T + (codebook**2).sum(1)
    return np.argsort(distances, axis=1, kind="stable")


def rerank_collisions(codes: np.ndarray, latents: np.ndarray, codebooks: np.ndarray) -> np.ndarray:
    """Q-Bert4Rec collision handling; returns new ``(n, L)`` codes with every tuple unique.

    ``latents`` ``(n, d)`` are the quantizer inputs and ``codebooks`` ``(L, K, d)``. In each group of
    items sharing a tuple, the item with the smallest final quantization error keeps it; the
    others, in item order, take the first free tuple of :func:`first_free_suffix` starting at the
    deepest level, then one level higher, and so on. Distance rankings for the deepest level are
    computed for all moving items at once; only the colliding items are looped over.
    """
    codes = np.asarray(codes, dtype=np.int64)
    ids = tuple_ids(codes)
    colliding = np.flatnonzero(_shared(ids))
    result = codes.copy()
    if colliding.size == 0:
        return result
    residuals = level_residuals(latents[colliding].astype(np.float32), codes[colliding], codebooks)
    last_chosen = codebooks[-1][codes[colliding, -1]]
    error = ((residuals[:, -1] - last_chosen) ** 2).sum(1)
    order = np.lexsort((colliding, error, ids[colliding]))
    group = ids[colliding][order]
    keeps = np.r_[True, group[1:] != group[:-1]]
    movers = np.sort(order[~keeps])  # positions within ``colliding``, in item order
    taken = set(zip(*codes.T.tolist()))
    for start in range(0, len(movers), _RANK_ROWS):
        chunk = movers[start : start + _RANK_ROWS]
        deepest_ranking = ranked_codes(residuals[chunk, -1], codebooks[-1])
        for position, ranking in zip(chunk, deepest_ranking):
            item = colliding[position]
            new = _move(tuple(codes[item].tolist()), residuals[position], codebooks, taken, ranking)
            taken.add(new)
            result[item] = new
    return result


def _move(current: Suffix, residuals: np.ndarray, codebooks: np.ndarray, taken: set[Suffix],
          deepest_ranking: np.ndarray) -> Suffix:
    """The nearest free tuple for one item: deepest level first, then one level up at a time."""
    for level in reversed(range(len(current))):
        ranking = deepest_ranking if level == len(current) - 1 else None
        suffix = first_free_suffix(residuals[level], current[:level], level, codebooks, taken,
                                   skip=current[level], ranking=ranking)
        if suffix is not None:
            return current[:level] + suffix
    raise ValueError(f"no free semantic-ID tuple left: the codebooks allow {codebooks.shape[1] ** len(current)} tuples")


def first_free_suffix(residual: np.ndarray, prefix: Suffix, level: int, codebooks: np.ndarray, taken: set[Suffix],
                      skip: int | None = None, ranking: np.ndarray | None = None) -> Suffix | None:
    """Depth-first, nearest-first search for codes of levels ``level..L-1`` such that ``prefix + codes``
    is not taken; ``skip`` excludes one code at ``level``. ``None`` if every completion is taken.

    At each level the codes are ranked by distance to that level's residual; below a candidate
    code ``c`` the residual becomes ``residual - E_level[c]`` and the deeper level is re-ranked.
    """
    if ranking is None:
        ranking = ranked_codes(residual[None, :], codebooks[level])[0]
    deepest = level == len(codebooks) - 1
    for code in ranking.tolist():
        if code == skip:
            continue
        if deepest:
            if prefix + (code,) not in taken:
                return (code,)
            continue
        deeper = first_free_suffix(residual - codebooks[level][code], prefix + (code,), level + 1, codebooks, taken)
        if deeper is not None:
            return (code,) + deeper
    return None


def resolve_collisions(codes: np.ndarray, latents: np.ndarray, codebooks: np.ndarray, strategy: str) -> np.ndarray:
    """Apply ``strategy`` (``"rerank"`` or ``"append_level"``) and check that every tuple is unique."""
    if strategy == "rerank":
        resolved = rerank_collisions(codes, latents, codebooks)
    elif strategy == "append_level":
        resolved = append_level(codes)
    else:
        raise ValueError(f"unknown collision strategy {strategy!r}: use 'rerank' or 'append_level'")
    assert_unique(resolved)
    return resolved
