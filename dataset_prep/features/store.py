"""Resumable, chunked feature files shared by the text, image and code extractors.

Files of ``--out text.npy`` (same scheme for any name; ``<stem>`` is the name without ``.npy``):

* ``text.npy`` -- float32 ``[n_items, dim]``, row ``i`` = item id ``i``;
* ``text.mask.npy`` -- bool ``[n_items]``, False where the item has no input (zero row);
* ``text.progress.json`` -- the sidecar: ``kind``, ``settings`` (model, pooling, ... and a hash of
  the inputs), ``n_items``, ``dim``, ``rows_done``, ``present``, ``unreadable`` (ids), ``complete``;
* while running: ``text.partial.npy`` / ``text.mask.partial.npy``, written in place through
  ``numpy.lib.format.open_memmap`` one chunk at a time.

Completion rule: rows are written to the ``.partial`` files; after each chunk both are flushed and
the sidecar is rewritten atomically with the new ``rows_done``. Only when every row is written are
the partial files renamed to their final names, and then the sidecar records ``complete: true``.
So ``text.npy`` exists only when complete, and :func:`load_features` also refuses a file whose
sidecar says otherwise. A rerun with the same settings continues at ``rows_done`` (a chunk cut off
by a crash is recomputed); with other settings it is an error unless ``overwrite``.
"""

from __future__ import annotations

import hashlib
import json
import os
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any, Callable

import numpy as np
from numpy.lib.format import open_memmap
from tqdm import tqdm

from dataset_prep.features.encoding import EncodedRows, ItemEncoder, encode_items
from dataset_prep.features.items import format_ids
from recbole_qrec.errors import DatasetNotFoundError, MalformedDataError, QRecError
from recbole_qrec.fileio import write_json_atomic

DEFAULT_CHUNK_SIZE = 1024


class FeatureStateError(QRecError):
    """An output's progress record does not allow the requested write or read."""


class NonFiniteFeaturesError(MalformedDataError):
    """Features contain NaN or infinity."""


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
    """The sidecar's content; also what an extraction returns."""

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


def inputs_digest(values: Any) -> str:
    """SHA-256 of JSON-serialisable ``values``: identifies a run's inputs in its progress file."""
    return hashlib.sha256(json.dumps(values, sort_keys=True).encode("utf-8")).hexdigest()


def read_progress(path: Path) -> FeatureProgress:
    """Parse a sidecar; a foreign or damaged file is a :class:`FeatureStateError`."""
    try:
        return FeatureProgress(**json.loads(path.read_text(encoding="utf-8")))
    except (ValueError, TypeError) as err:
        raise FeatureStateError(f"{path} is not a feature progress file ({err}); delete it or pass --overwrite.") from err


def write_progress(path: Path, progress: FeatureProgress) -> None:
    write_json_atomic(path, asdict(progress))


def non_finite_ids(features: np.ndarray, first_id: int = 0) -> list[int]:
    """Item ids (row index + ``first_id``) of rows holding NaN or infinity."""
    return (np.flatnonzero(~np.isfinite(features).all(axis=1)) + first_id).tolist()


def check_finite(features: np.ndarray, source: str, first_id: int = 0) -> None:
    """Raise :class:`NonFiniteFeaturesError` naming the items whose rows are not finite."""
    bad = non_finite_ids(features, first_id)
    if bad:
        raise NonFiniteFeaturesError(f"{source}: NaN or infinite features for {len(bad)} item(s), ids {format_ids(bad)}.")


def discard(paths: FeaturePaths) -> None:
    """Delete an output and its progress (the sidecar first, so nothing claims completeness)."""
    for path in (paths.progress, paths.features, paths.mask, paths.partial_features, paths.partial_mask):
        path.unlink(missing_ok=True)


def previous_progress(paths: FeaturePaths, kind: str, settings: dict[str, Any], n_items: int,
                      overwrite: bool) -> FeatureProgress | None:
    """The progress of an earlier run to continue, or None to start afresh; errors on any conflict."""
    if overwrite:
        discard(paths)
        return None
    if not paths.progress.exists():
        if paths.features.exists():
            raise FeatureStateError(
                f"{paths.features} exists but has no progress file {paths.progress}, so it was not written by "
                "dataset_prep.features or its record was lost; pass --overwrite (overwrite=True) to replace it."
            )
        return None
    progress = read_progress(paths.progress)
    differences = progress.differences(kind, settings, n_items)
    if differences:
        raise FeatureStateError(
            f"{paths.features} was {'made' if progress.complete else 'started'} with other settings "
            f"(recorded in {paths.progress}): "
            f"{'; '.join(differences)}. Rerun with the original arguments to continue it, "
            "or pass --overwrite (overwrite=True) to start again."
        )
    if progress.complete and not paths.features.exists():
        raise FeatureStateError(f"{paths.progress} records a finished run but {paths.features} is missing; "
                                "pass --overwrite (overwrite=True) to recreate it.")
    return progress


def open_partials(paths: FeaturePaths, progress: FeatureProgress) -> tuple[np.memmap, np.memmap]:
    """The partial feature and mask arrays: created for a fresh run, reopened to continue one."""
    shape = (progress.n_items, progress.dim)
    if progress.rows_done == 0:
        paths.features.parent.mkdir(parents=True, exist_ok=True)
        return (open_memmap(paths.partial_features, "w+", np.float32, shape),
                open_memmap(paths.partial_mask, "w+", np.bool_, (progress.n_items,)))
    try:
        features = open_memmap(paths.partial_features, "r+")
        mask = open_memmap(paths.partial_mask, "r+")
    except (OSError, ValueError) as err:
        raise FeatureStateError(
            f"{paths.progress} records {progress.rows_done} rows done but the partial files cannot be opened "
            f"({err}); pass --overwrite (overwrite=True) to start again."
        ) from err
    if features.shape != shape or features.dtype != np.float32 or mask.shape != shape[:1]:
        raise FeatureStateError(
            f"{paths.partial_features} has shape {features.shape} ({features.dtype}), expected {shape} float32; "
            "pass --overwrite (overwrite=True) to start again."
        )
    return features, mask


def finalize(paths: FeaturePaths, progress: FeatureProgress) -> None:
    """Rename the partial files to their final names, then record completion (safe to repeat)."""
    for partial, final in ((paths.partial_mask, paths.mask), (paths.partial_features, paths.features)):
        if partial.exists():
            os.replace(partial, final)
    progress.complete = True
    write_progress(paths.progress, progress)


def store_chunk(features: np.memmap, mask: np.memmap, start: int, rows: EncodedRows, progress: FeatureProgress,
                paths: FeaturePaths) -> None:
    """Write one encoded chunk, flush it, then advance the sidecar."""
    stop = start + len(rows.present)
    features[start:stop] = rows.features
    mask[start:stop] = rows.present
    features.flush()
    mask.flush()
    progress.rows_done = stop
    progress.present += int(rows.present.sum())
    progress.unreadable += rows.unreadable
    write_progress(paths.progress, progress)


def write_features(out: str | os.PathLike, kind: str, settings: dict[str, Any], n_items: int,
                   make_encoder: Callable[[], ItemEncoder], *, chunk_size: int = DEFAULT_CHUNK_SIZE,
                   overwrite: bool = False, max_chunks: int | None = None, progress_bar: bool = True) -> FeatureProgress:
    """Encode items ``0..n_items-1`` into ``out`` chunk by chunk, continuing an earlier run.

    ``settings`` identify the run (a rerun must repeat them); ``make_encoder`` is only called
    when rows remain. ``max_chunks`` stops after that many chunks (the result is then incomplete;
    calling again continues).
    """
    paths = FeaturePaths.of(out)
    progress = previous_progress(paths, kind, settings, n_items, overwrite)
    if progress is not None and progress.complete:
        return progress
    encoder = make_encoder()
    progress = progress or FeatureProgress(kind, settings, n_items, encoder.dim)
    if encoder.dim != progress.dim:
        raise FeatureStateError(f"{paths.progress} records dim {progress.dim} but the encoder gives {encoder.dim}; "
                                "pass --overwrite (overwrite=True) to start again.")
    if progress.rows_done < n_items:
        features, mask = open_partials(paths, progress)
        write_progress(paths.progress, progress)
        starts = range(progress.rows_done, n_items, chunk_size)[:max_chunks]
        with tqdm(total=n_items, initial=progress.rows_done, desc=f"{kind} features", unit="item",
                  disable=not progress_bar) as bar:
            for start in starts:
                rows = encode_items(encoder, range(start, min(start + chunk_size, n_items)), bar)
                check_finite(rows.features, f"{kind} features for {out}", first_id=start)
                store_chunk(features, mask, start, rows, progress, paths)
        del features, mask  # close the memory maps before renaming
    if progress.rows_done == n_items:
        finalize(paths, progress)
    return progress


def load_features(path: str | os.PathLike, n_items: int | None = None) -> np.ndarray:
    """A finished feature matrix as float32 ``[n_items, dim]``, validated.

    With a sidecar (files written here): it must record completion and match the shape. A ``.npy``
    without one (features made elsewhere) must be a 2-D floating-point matrix. In both cases
    NaN/inf is an error naming the items, and so is a row count other than ``n_items`` when given.
    """
    paths = FeaturePaths.of(path)
    progress = read_progress(paths.progress) if paths.progress.exists() else None
    if progress is not None and not progress.complete:
        raise FeatureStateError(
            f"{paths.features} is incomplete: {progress.rows_done:,} of {progress.n_items:,} rows done "
            f"({paths.progress}); rerun the same `python -m dataset_prep.features {progress.kind} ...` command to finish it."
        )
    if not paths.features.is_file():
        raise DatasetNotFoundError(
            f"feature file {paths.features} not found; create it with "
            "`python -m dataset_prep.features text|image|codes ... --out " f"{paths.features}`."
        )
    matrix = np.load(paths.features)
    if matrix.ndim != 2 or not np.issubdtype(matrix.dtype, np.floating):
        raise MalformedDataError(f"{paths.features}: expected a 2-D float matrix, got shape {matrix.shape} ({matrix.dtype}).")
    if progress is not None and matrix.shape != (progress.n_items, progress.dim):
        raise MalformedDataError(f"{paths.features} has shape {matrix.shape} but {paths.progress} records "
                                 f"{(progress.n_items, progress.dim)}; recreate it with --overwrite.")
    if n_items is not None and len(matrix) != n_items:
        raise MalformedDataError(f"{paths.features} has {len(matrix):,} rows, expected {n_items:,} (one per item id).")
    check_finite(matrix, str(paths.features))
    return matrix.astype(np.float32, copy=False)


def load_mask(path: str | os.PathLike) -> np.ndarray:
    """The bool ``[n_items]`` mask beside the feature file ``path`` (False: no input, zero row)."""
    paths = FeaturePaths.of(path)
    if not paths.mask.is_file():
        raise DatasetNotFoundError(f"mask file {paths.mask} not found; it is written with {paths.features} "
                                   "by `python -m dataset_prep.features`.")
    return np.load(paths.mask)
