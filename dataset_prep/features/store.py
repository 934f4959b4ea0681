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
So ``text.npy`` exists only when complete, and ``recbole_qrec.data.features.load_features`` (the
reader, with the file layout) also refuses a file whose sidecar says otherwise. A rerun with the same settings continues at ``rows_done`` (a chunk cut off
by a crash is recomputed); with other settings it is an error unless ``overwrite``.
"""

from __future__ import annotations

import hashlib
import json
import os
from dataclasses import asdict
from pathlib import Path
from typing import Any, Callable

import numpy as np
from numpy.lib.format import open_memmap
from tqdm import tqdm

from dataset_prep.features.encoding import EncodedRows, ItemEncoder, encode_items
from recbole_qrec.data.features import FeaturePaths, FeatureProgress, FeatureStateError, check_finite, read_progress
from recbole_qrec.errors import ConfigError, MalformedDataError
from recbole_qrec.fileio import check_output_folder, write_json_atomic

DEFAULT_CHUNK_SIZE = 1024


def inputs_digest(values: Any) -> str:
    """SHA-256 of JSON-serialisable ``values``: identifies a run's inputs in its progress file."""
    return hashlib.sha256(json.dumps(values, sort_keys=True).encode("utf-8")).hexdigest()


def write_progress(path: Path, progress: FeatureProgress) -> None:
    write_json_atomic(path, asdict(progress))


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
                "dataset_prep.features or its record was lost — pass --overwrite (overwrite=True) to replace it"
            )
        return None
    progress = read_progress(paths.progress)
    differences = progress.differences(kind, settings, n_items)
    if differences:
        raise FeatureStateError(
            f"{paths.features} was {'made' if progress.complete else 'started'} with other settings "
            f"(recorded in {paths.progress}): "
            f"{'; '.join(differences)} — rerun with the original arguments to continue it, "
            "or pass --overwrite (overwrite=True) to start again"
        )
    if progress.complete and not paths.features.exists():
        raise FeatureStateError(f"{paths.progress} records a finished run but {paths.features} is missing "
                                "— pass --overwrite (overwrite=True) to recreate it")
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
            f"({err}) — pass --overwrite (overwrite=True) to start again"
        ) from err
    if features.shape != shape or features.dtype != np.float32 or mask.shape != shape[:1]:
        raise FeatureStateError(
            f"{paths.partial_features} has shape {features.shape} ({features.dtype}), expected {shape} float32 "
            "— pass --overwrite (overwrite=True) to start again"
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
    check_output(paths)
    progress = previous_progress(paths, kind, settings, n_items, overwrite)
    if progress is not None and progress.complete:
        return progress
    encoder = make_encoder()
    progress = progress or FeatureProgress(kind, settings, n_items, encoder.dim)
    if encoder.dim != progress.dim:
        raise FeatureStateError(f"{paths.progress} records dim {progress.dim} but the encoder gives {encoder.dim} "
                                "— pass --overwrite (overwrite=True) to start again")
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
        if progress.present == 0:
            discard(paths)
            unreadable = (f" ({len(progress.unreadable):,} had an input file that could not be read)"
                          if progress.unreadable else "")
            raise MalformedDataError(f"none of the {n_items:,} items has a readable {kind} input{unreadable}, so every "
                                     f"{kind} feature row would be zero — check the item file and the inputs it points "
                                     "to (e.g. --image-dir); nothing was written")
        finalize(paths, progress)
    return progress


def check_output(paths: FeaturePaths) -> None:
    """A clear error when ``--out`` is a folder or lies under a file."""
    if paths.features.is_dir():
        raise ConfigError(f"--out {paths.features} is a folder — give a file name in it, e.g. "
                          f"--out {paths.features / 'features.npy'}")
    check_output_folder(paths.features.parent, f"--out {paths.features} cannot be written", "give an --out in a folder")
