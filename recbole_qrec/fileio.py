"""Atomic file output: every file the project writes appears whole or not at all; exclusive locks for writers
that several processes share."""

from __future__ import annotations

import fcntl
import json
import os
import tempfile
from contextlib import contextmanager
from pathlib import Path
from typing import Any, Callable, Iterator

from recbole_qrec.errors import ConfigError


def current_umask() -> int:
    """The process umask (read by setting and restoring it)."""
    mask = os.umask(0)
    os.umask(mask)
    return mask


def blocking_file(folder: str | os.PathLike) -> Path | None:
    """The first of ``folder`` and its parents that exists but is not a folder (so nothing can be written under
    ``folder``); None when ``folder`` is, or can be made, a folder."""
    for path in (Path(folder), *Path(folder).parents):
        if path.exists():
            return None if path.is_dir() else path
    return None


def check_output_folder(folder: str | os.PathLike, problem: str, remedy: str) -> None:
    """A :class:`ConfigError` ``<problem>: <file> is a file, not a folder — <remedy> (missing folders are created)``
    when ``folder``, or a folder above it, is a file (checked before any work whose output would land there)."""
    blocker = blocking_file(folder)
    if blocker is not None:
        raise ConfigError(f"{problem}: {blocker} is a file, not a folder — {remedy} (missing folders are created)")


@contextmanager
def atomic_path(path: str | os.PathLike) -> Iterator[Path]:
    """Yield a temporary path beside ``path``; rename it onto ``path`` only if the block succeeds."""
    target = Path(path)
    target.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp_name = tempfile.mkstemp(prefix=f".{target.name}.", suffix=".tmp", dir=target.parent)
    os.close(fd)
    tmp = Path(tmp_name)
    os.chmod(tmp, 0o666 & ~current_umask())  # mkstemp creates 0600; give the final file normal permissions
    try:
        yield tmp
        os.replace(tmp, target)
    finally:
        tmp.unlink(missing_ok=True)


@contextmanager
def atomic_open(path: str | os.PathLike, mode: str = "w", **kwargs: Any) -> Iterator[Any]:
    """Open a temporary file beside ``path`` for writing; it replaces ``path`` when the block succeeds."""
    with atomic_path(path) as tmp, open(tmp, mode, **kwargs) as handle:
        yield handle


def write_json_atomic(path: str | os.PathLike, obj: Any, indent: int | None = 2) -> None:
    """Serialise ``obj`` as JSON to ``path`` atomically."""
    with atomic_open(path, "w", encoding="utf-8") as handle:
        json.dump(obj, handle, indent=indent)
        handle.write("\n")


@contextmanager
def exclusive_lock(path: str | os.PathLike, on_wait: Callable[[], None] | None = None) -> Iterator[None]:
    """Hold an exclusive ``flock`` of ``path`` (created if missing) for the block; other holders wait, calling
    ``on_wait`` first when another holds it."""
    Path(path).parent.mkdir(parents=True, exist_ok=True)
    with open(path, "a") as handle:
        try:
            fcntl.flock(handle, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            if on_wait is not None:
                on_wait()
            fcntl.flock(handle, fcntl.LOCK_EX)
        yield
