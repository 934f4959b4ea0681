"""Item content feature matrices: row ``i`` = item id ``i``, float32; read and validated here.

Files of a feature output ``text.npy`` (``<stem>`` is the name without ``.npy``), as
``python -m dataset_prep.features`` writes them:

* ``text.npy`` -- float32 ``[n_items, dim]``, row ``i`` = item id ``i``;
* ``text.mask.npy`` -- bool ``[n_items]``, False where the item has no input (zero row);
* ``text.progress.json`` -- the record of the extraction (``kind``, ``settings``, ``n_items``, ``dim``,
  ``rows_done``, ``present``, ``unreadable``, ``complete``).

:func:`save_features` writes a matrix computed in one piece (e.g. a trained model's item embeddings) with its mask
and a complete progress record. :func:`load_features` refuses an unfinished extraction, a non-2-D or non-float matrix, NaN/inf values and a
row count other than the expected one. :func:`codes_to_features` builds the content-code proxy: the
concatenated one-hot of an item's code levels (``levels * codebook_size`` dims), level ``l``'s block weighted by
``level_decay ** l``, optionally multiplied by a fixed Gaussian random matrix (seeded, entries ``N(0, 1/project_dim)``)
to ``project_dim`` dims. The codes are residual codes: level 1 names an item's coarse cluster and each deeper level a
smaller correction, so the embedding they were made from is a sum of codewords of shrinking norm. Equal weights
(``level_decay`` 1, the default) make an item's last code, the finest, as far-reaching as its first; weights that
shrink (e.g. 0.5) keep the codes' order: two items sharing their first code are nearer than two that do not.

Content provenance: ``<data_path>/<dataset>/<dataset>.content.json`` maps each content-code field of
``<dataset>.item`` to where its codes came from, ``{"text_codes": {"source": "text:llama", ...}}`` (sources like
``text:llama``, ``image:vit``, ``id-embedding:SASRec``); ``dataset_prep.convert`` and ``python -m
recbole_qrec.tokenize --item_field`` write it (:func:`record_content_sources`), :func:`content_sources` reads it, and
:func:`feature_source` names the source of a feature file from its progress record.
"""

from __future__ import annotations

import json
import os
from collections.abc import Mapping, Sequence
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

import numpy as np

from recbole_qrec.errors import ConfigError, DatasetNotFoundError, MalformedDataError, QRecError
from recbole_qrec.fileio import atomic_open, write_json_atomic

DEFAULT_CODEBOOK_SIZE = 256
# Weight ratio of consecutive code levels in the content-code proxy (1: the plain one-hot).
DEFAULT_LEVEL_DECAY = 1.0
SHOWN_IDS = 10


class FeatureStateError(QRecError):
    """An output's progress record does not allow the requested write or read."""


class NonFiniteFeaturesError(MalformedDataError):
    """Features contain NaN or infinity."""


def format_ids(ids: Sequence[Any]) -> str:
    """The first few ``ids``, comma-separated, with "..." when there are more."""
    return ", ".join(map(str, ids[:SHOWN_IDS])) + (", ..." if len(ids) > SHOWN_IDS else "")


@dataclass(frozen=True)
class FeaturePaths:
    """Every file belonging to one feature output (see the module docstring)."""

    features: Path
    mask: Path
    progress: Path
    partial_features: Path
    partial_mask: Path

    @classmethod
    def of(cls, out: str | os.PathLike) -> FeaturePaths:
        out = Path(out)
        stem = out.parent / (out.name[: -len(".npy")] if out.name.endswith(".npy") else out.name)
        return cls(out, Path(f"{stem}.mask.npy"), Path(f"{stem}.progress.json"),
                   Path(f"{stem}.partial.npy"), Path(f"{stem}.mask.partial.npy"))


@dataclass
class FeatureProgress:
    """The progress record's content; also what an extraction returns."""

    kind: str
    settings: dict[str, Any]
    n_items: int
    dim: int
    rows_done: int = 0
    present: int = 0
    unreadable: list[int] = field(default_factory=list)
    complete: bool = False

    def differences(self, kind: str, settings: dict[str, Any], n_items: int) -> list[str]:
        """``"key: old -> new"`` for every identifying value that differs from the requested run."""
        old = {"kind": self.kind, "n_items": self.n_items, **self.settings}
        new = {"kind": kind, "n_items": n_items, **settings}
        return [f"{key}: {old.get(key)!r} -> {new.get(key)!r}" for key in sorted(old.keys() | new.keys())
                if old.get(key) != new.get(key)]


@dataclass
class EncodedRows:
    """``features`` float32 ``[n, dim]`` (zero rows where ``present`` is False), ``present`` bool ``[n]``,
    ``unreadable``: ids of items whose input exists but could not be read (also not present)."""

    features: np.ndarray
    present: np.ndarray
    unreadable: list[int] = field(default_factory=list)


def read_progress(path: Path) -> FeatureProgress:
    """Parse a progress record; a foreign or damaged file is a :class:`FeatureStateError`."""
    try:
        return FeatureProgress(**json.loads(path.read_text(encoding="utf-8")))
    except (ValueError, TypeError) as err:
        raise FeatureStateError(f"{path} is not a feature progress file ({err}) — delete it or pass --overwrite") from err


def non_finite_ids(features: np.ndarray, first_id: int = 0) -> list[int]:
    """Item ids (row index + ``first_id``) of rows holding NaN or infinity."""
    return (np.flatnonzero(~np.isfinite(features).all(axis=1)) + first_id).tolist()


def check_finite(features: np.ndarray, source: str, first_id: int = 0) -> None:
    """Raise :class:`NonFiniteFeaturesError` naming the items whose rows are not finite."""
    bad = non_finite_ids(features, first_id)
    if bad:
        raise NonFiniteFeaturesError(f"{source}: NaN or infinite features for {len(bad)} item(s), ids {format_ids(bad)} "
                                     "— re-create the features (the encoder produced invalid values for these items)")


def check_row_count(matrix: np.ndarray, source: str, n_items: int) -> None:
    """Exactly one row per item id ``0..n_items-1``: fewer rows miss items, more rows describe items that do not exist."""
    if len(matrix) < n_items:
        raise MalformedDataError(f"{source} has {len(matrix):,} rows but the dataset has item ids up to {n_items - 1:,} "
                                 f"— row i must hold item i's features: re-create it for this dataset ({n_items:,} rows)")
    if len(matrix) > n_items:
        raise MalformedDataError(f"{source} has {len(matrix):,} rows but the dataset's largest item id is {n_items - 1:,}, "
                                 f"so {len(matrix) - n_items:,} row(s) belong to items that do not exist — use the feature "
                                 f"file made for this dataset ({n_items:,} rows)")


def load_features(path: str | os.PathLike, n_items: int | None = None) -> np.ndarray:
    """A finished feature matrix as float32 ``[n_items, dim]``, validated.

    With a progress record (files written by ``dataset_prep.features``): it must record completion and
    match the shape. A ``.npy`` without one (features made elsewhere) must be a 2-D floating-point matrix.
    In both cases NaN/inf is an error naming the items, and so is a row count other than ``n_items`` when given.
    """
    paths = FeaturePaths.of(path)
    progress = read_progress(paths.progress) if paths.progress.exists() else None
    if progress is not None and not progress.complete:
        raise FeatureStateError(
            f"{paths.features} is incomplete: {progress.rows_done:,} of {progress.n_items:,} rows done "
            f"({paths.progress}) — rerun the same `python -m dataset_prep.features {progress.kind} ...` command to finish it"
        )
    if not paths.features.is_file():
        what = "is a folder, not a .npy file" if paths.features.is_dir() else "not found"
        raise DatasetNotFoundError(f"feature file {paths.features} {what} — create it with "
                                   f"`python -m dataset_prep.features text|image|codes ... --out {paths.features}`")
    try:
        matrix = np.load(paths.features)
    except (OSError, ValueError, EOFError) as err:  # EOFError: an empty file
        raise MalformedDataError(f"{paths.features} is not a readable .npy file ({err or 'empty'}) — re-create it with "
                                 "`python -m dataset_prep.features`") from err
    if not isinstance(matrix, np.ndarray):
        matrix.close()
        raise MalformedDataError(f"{paths.features} is a .npz archive of arrays {matrix.files}, not one .npy matrix — "
                                 "save the feature matrix alone with numpy.save (or `python -m dataset_prep.features`)")
    if matrix.ndim != 2 or not matrix.shape[1] or not np.issubdtype(matrix.dtype, np.floating):
        raise MalformedDataError(f"{paths.features} has shape {matrix.shape} ({matrix.dtype}) — features must be a 2-D "
                                 "float matrix with at least one column, one row per item id")
    if progress is not None and matrix.shape != (progress.n_items, progress.dim):
        raise MalformedDataError(f"{paths.features} has shape {matrix.shape} but {paths.progress} records "
                                 f"{(progress.n_items, progress.dim)} — recreate it with --overwrite")
    if n_items is not None:
        check_row_count(matrix, str(paths.features), n_items)
    check_finite(matrix, str(paths.features))
    with np.errstate(over="ignore"):  # told below, by item
        single = matrix.astype(np.float32, copy=False)
    overflow = non_finite_ids(single)
    if overflow:
        raise MalformedDataError(f"{paths.features} ({matrix.dtype}) has values beyond the float32 range (±3.4e38) for "
                                 f"{len(overflow)} item(s), ids {format_ids(overflow)} — scale the features (e.g. "
                                 "normalise each row) before saving them")
    return single


def save_features(out: str | os.PathLike, kind: str, settings: dict[str, Any], rows: EncodedRows) -> FeatureProgress:
    """Write features computed in one piece (``rows``) with their mask and a complete progress record."""
    paths = FeaturePaths.of(out)
    check_finite(rows.features, f"{kind} features for {out}")
    paths.progress.unlink(missing_ok=True)  # nothing claims completeness while the matrices are replaced
    for path, array in ((paths.mask, rows.present), (paths.features, rows.features.astype(np.float32, copy=False))):
        with atomic_open(path, "wb") as handle:
            np.save(handle, array)
    n_items, dim = rows.features.shape
    progress = FeatureProgress(kind, settings, n_items, dim, rows_done=n_items, present=int(rows.present.sum()),
                               unreadable=list(rows.unreadable), complete=True)
    write_json_atomic(paths.progress, asdict(progress))
    return progress


def load_mask(path: str | os.PathLike) -> np.ndarray:
    """The bool ``[n_items]`` mask beside the feature file ``path`` (False: no input, zero row)."""
    paths = FeaturePaths.of(path)
    if not paths.mask.is_file():
        raise DatasetNotFoundError(f"mask file {paths.mask} not found — it is written with {paths.features} "
                                   "by `python -m dataset_prep.features`")
    return np.load(paths.mask)


def check_codes(codes: Mapping[int, Sequence[int]], n_items: int, codebook_size: int, source: str) -> int:
    """The number of levels, after checking item ids against ``n_items`` and codes against the codebook."""
    if not codes:
        raise MalformedDataError(f"{source}: no item has codes — give a code file with one entry per item")
    levels = {len(row) for row in codes.values()}
    if len(levels) != 1:
        raise MalformedDataError(f"{source}: items have different numbers of code levels {sorted(levels)} — "
                                 "every item needs the same number of levels")
    outside = sorted(item for item in codes if not 0 <= item < n_items)
    if outside:
        raise MalformedDataError(f"{source}: item ids {format_ids(outside)} are outside 0..{n_items - 1} "
                                 f"(n_items={n_items}) — pass the dataset's item count")
    low, high = min(min(row) for row in codes.values()), max(max(row) for row in codes.values())
    if low < 0 or high >= codebook_size:
        raise MalformedDataError(f"{source}: codes must lie in 0..{codebook_size - 1}, found {low}..{high} "
                                 "— set codebook_size to the tokenizer's")
    return levels.pop()


def one_hot(codes: np.ndarray, codebook_size: int, rows: int | None = None, at: np.ndarray | None = None,
            level_decay: float = 1.0) -> np.ndarray:
    """``[k, levels]`` codes -> ``[k, levels * codebook_size]`` float32, level ``l`` (from 0) in block ``l`` with the
    value ``level_decay ** l`` (1: the plain one-hot); with ``rows`` and ``at``: a ``[rows, ...]`` matrix holding code
    row ``j`` in row ``at[j]``, zero rows elsewhere (built in place)."""
    levels = codes.shape[1]
    at = np.arange(len(codes)) if at is None else at
    out = np.zeros((len(codes) if rows is None else rows, levels * codebook_size), np.float32)
    out[at[:, None], codes + codebook_size * np.arange(levels)] = level_weights(levels, level_decay)
    return out


def level_weights(levels: int, level_decay: float) -> np.ndarray:
    """``[levels]`` float32 weights ``level_decay ** l`` of the proxy's code levels; ``level_decay`` in (0, 1]."""
    if isinstance(level_decay, bool) or not isinstance(level_decay, (int, float)) or not 0 < level_decay <= 1:
        raise ConfigError(f"code_proxy_level_decay (--level-decay) is {level_decay!r} — give a number in (0, 1] (1: "
                          f"every code level weighted alike; default {DEFAULT_LEVEL_DECAY})")
    return np.float32(level_decay) ** np.arange(levels, dtype=np.float32)


def random_projection(in_dim: int, out_dim: int, seed: int) -> np.ndarray:
    """A fixed ``[in_dim, out_dim]`` Gaussian matrix, entries ``N(0, 1/out_dim)``, from ``seed``."""
    if out_dim < 1:
        raise ConfigError(f"project_dim must be positive, got {out_dim} — give a dimension >= 1")
    return np.random.default_rng(seed).standard_normal((in_dim, out_dim), dtype=np.float32) / np.float32(np.sqrt(out_dim))


def codes_to_features(codes: Mapping[int, Sequence[int]], n_items: int, codebook_size: int = DEFAULT_CODEBOOK_SIZE,
                      project_dim: int | None = None, seed: int = 0, source: str = "codes",
                      level_decay: float = DEFAULT_LEVEL_DECAY) -> EncodedRows:
    """Proxy features of items ``0..n_items-1`` (see the module docstring); items without codes: zero rows."""
    levels = check_codes(codes, n_items, codebook_size, source)
    dim = project_dim or levels * codebook_size
    ids = np.array(sorted(codes), dtype=np.int64)
    code_rows = np.array([codes[item] for item in ids.tolist()], dtype=np.int64)
    if project_dim:
        features = np.zeros((n_items, dim), np.float32)
        features[ids] = (one_hot(code_rows, codebook_size, level_decay=level_decay)
                         @ random_projection(levels * codebook_size, project_dim, seed))
    else:  # in place: one [n_items, levels * codebook_size] matrix, not a second one of the coded rows
        features = one_hot(code_rows, codebook_size, rows=n_items, at=ids, level_decay=level_decay)
    present = np.zeros(n_items, bool)
    present[ids] = True
    return EncodedRows(features, present)


CONTENT_SUFFIX = "content.json"
UNKNOWN_SOURCE = "unknown"


def content_path(folder: str | os.PathLike, dataset: str) -> Path:
    """``<folder>/<dataset>.content.json``, the provenance of the dataset's content-code fields."""
    return Path(folder) / f"{dataset}.{CONTENT_SUFFIX}"


def read_content_metadata(folder: str | os.PathLike, dataset: str) -> dict[str, dict[str, Any]]:
    """``field -> {"source": ..., ...}`` of ``<dataset>.content.json`` (empty when the file does not exist)."""
    path = content_path(folder, dataset)
    if not path.is_file():
        return {}
    try:
        metadata = json.loads(path.read_text(encoding="utf-8"))
    except ValueError as err:
        raise MalformedDataError(f"{path} is not valid JSON ({err}) — delete it and re-create the content fields "
                                 "(`python -m dataset_prep.convert` / `python -m recbole_qrec.tokenize --item_field`)") from err
    if not isinstance(metadata, dict) or not all(isinstance(entry, dict) and "source" in entry
                                                 for entry in metadata.values()):
        raise MalformedDataError(f"{path} is not a JSON object of {{field: {{\"source\": ...}}}} entries — delete it and "
                                 "re-create the content fields")
    return metadata


def content_sources(folder: str | os.PathLike, dataset: str) -> dict[str, str]:
    """``field -> source`` (e.g. ``{"text_codes": "text:llama"}``) of the dataset's content-code fields."""
    return {field: entry["source"] for field, entry in read_content_metadata(folder, dataset).items()}


def record_content_sources(folder: str | os.PathLike, dataset: str, entries: dict[str, dict[str, Any]],
                           replace: bool = False) -> None:
    """Set the entries ``field -> {"source": ..., ...}`` in ``<dataset>.content.json``; ``replace`` drops the other
    fields' entries (a conversion that rewrites the whole ``.item`` file)."""
    metadata = {} if replace else read_content_metadata(folder, dataset)
    write_json_atomic(content_path(folder, dataset), {**metadata, **entries})


def feature_source(path: str | os.PathLike) -> str:
    """Where a feature file's rows came from, from its progress record: ``text:<model>``, ``image:<model>`` (a model
    name or folder), ``id-embedding:<model>`` (e.g. ``SASRec``), ``codes`` (the content-code proxy); ``unknown`` for a
    file without a record."""
    paths = FeaturePaths.of(path)
    if not paths.progress.exists():
        return UNKNOWN_SOURCE
    progress = read_progress(paths.progress)
    model = progress.settings.get("model")
    return f"{progress.kind}:{model}" if model else progress.kind
