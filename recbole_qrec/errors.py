"""Errors that carry a message for the user, and the one path that reports them: ``error: <message>`` on
stderr and exit status 2, the traceback only with ``--debug`` or ``QREC_DEBUG=1``."""

from __future__ import annotations

import importlib
import os
import signal
import sys
from collections.abc import Hashable, Iterator, Sequence
from contextlib import contextmanager
from types import ModuleType

DEBUG_ENV = "QREC_DEBUG"
DEBUG_EPILOG = (f"A problem with the input prints one line 'error: ...' and exits with status 2 "
                f"({DEBUG_ENV}=1 shows the traceback).")


class QRecError(Exception):
    """Base class of user-facing errors: the message says what is wrong and how to fix it."""


class ConfigError(QRecError, ValueError):
    """A configuration key or value that cannot work."""


class UnknownModelError(ConfigError):
    """A model name that is neither a recbole-qrec nor a RecBole model."""


class DatasetNotFoundError(QRecError, FileNotFoundError):
    """No copy of a dataset exists in any searched location."""


class MalformedDataError(QRecError, ValueError):
    """An input file does not have the documented format."""


class PackagingError(QRecError):
    """The installed package lacks a file it ships (a broken install)."""


class CheckpointError(QRecError, ValueError):
    """A checkpoint that cannot be read, or that was written for another model, dataset or configuration."""


class DataMismatchError(QRecError, ValueError):
    """A dataset's files do not have the users, items or interactions its dataset YAML expects."""


class TrainingDivergedError(QRecError, ValueError):
    """The training loss stopped being a finite number."""


class MissingDependencyError(QRecError, ImportError):
    """An optional dependency (an extra such as ``pip install 'recbole-qrec[image]'``) is not installed."""


class Terminated(KeyboardInterrupt):
    """SIGTERM (``kill``, a job scheduler's stop) or SIGHUP (the terminal closed), taken as Ctrl-C; unlike Ctrl-C it
    reaches only the one process, which passes it on to the runs it started."""

    def __init__(self, signum: int = signal.SIGTERM) -> None:
        super().__init__(signum)
        self.signum = signum


def interrupt_signal(interrupt: KeyboardInterrupt) -> int:
    """The signal that ``interrupt`` stands for: :class:`Terminated`'s, else SIGINT (Ctrl-C)."""
    return interrupt.signum if isinstance(interrupt, Terminated) else signal.SIGINT


def interrupted_status(interrupt: KeyboardInterrupt) -> int:
    """The exit status of a run that ``interrupt`` ended, 128 plus the signal's number: 130 for Ctrl-C (SIGINT), 143
    for SIGTERM, 129 for SIGHUP."""
    return 128 + interrupt_signal(interrupt)


def required_module(name: str, needed_by: str, install: str) -> ModuleType:
    """``import name``, or a :class:`MissingDependencyError` ``<needed_by> needs <name> — <install>``."""
    try:
        return importlib.import_module(name)
    except ImportError:
        raise MissingDependencyError(f"{needed_by} needs {name}, which is not installed — {install}") from None


def checked_choice(key: str, value: object, choices: Sequence[object], hint: str = "") -> object:
    """``value`` if it is one of ``choices``, else a :class:`ConfigError` ``<key> must be one of ..., got <value> —
    <hint>`` (None written ``~``, as in YAML; ``hint`` says what the choices do; by default an example, the first
    choice)."""
    if value not in choices:
        written = ["~" if choice is None else str(choice) for choice in choices]
        raise ConfigError(f"{key} must be one of {', '.join(written)}, got {value!r} — "
                          f"{hint or f'e.g. --{key}={written[0]}'}")
    return value


def debug_requested(argv: list[str] | tuple[str, ...] = ()) -> bool:
    """``--debug`` among ``argv`` or ``QREC_DEBUG`` set (to anything but 0)."""
    return "--debug" in argv or os.environ.get(DEBUG_ENV, "") not in ("", "0")


def repeated(values: Sequence[Hashable]) -> list[str]:
    """The values that ``values`` holds more than once, as sorted text (for a message that refuses them)."""
    return sorted({str(value) for value in values if values.count(value) > 1})


def single_line(error: BaseException) -> str:
    """An error's message with its line breaks folded."""
    return " ".join(str(error).split())


@contextmanager
def user_errors(debug: bool = False) -> Iterator[None]:
    """Report a :class:`QRecError` as one ``error:`` line and exit 2; with ``debug`` (or ``QREC_DEBUG=1``) let it
    through with its traceback."""
    try:
        yield
    except QRecError as err:
        if debug or debug_requested():
            raise
        print(f"error: {single_line(err)}", file=sys.stderr)
        sys.exit(2)
