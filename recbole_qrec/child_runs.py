"""Runs of the entry point in child processes, several at a time (``recbole-qrec compare`` and ``sweep``)."""

from __future__ import annotations

import os
import signal
import subprocess
import threading
from collections.abc import Iterator, Sequence
from contextlib import contextmanager
from typing import Any

from recbole_qrec.errors import interrupt_signal

ERROR_PREFIX = "error: "


class ChildRuns:
    """The runs started in child processes that are running now. Each runs in a session of its own, so that no
    Ctrl-C, SIGTERM or SIGHUP reaches it directly: :meth:`pass_on` hands it the signal, and no run starts after it
    (a run started just after a Ctrl-C to the whole process group would miss it and train to its end)."""

    def __init__(self) -> None:
        self.lock = threading.Lock()
        self.processes: set[subprocess.Popen] = set()
        self.interrupt: KeyboardInterrupt | None = None

    @contextmanager
    def started(self, command: Sequence[str], **options: Any) -> Iterator[subprocess.Popen]:
        """``subprocess.Popen(command, **options)``, one of the running runs inside the block; raises the interrupt
        passed on once :meth:`pass_on` was called."""
        with self.lock:
            if self.interrupt is not None:
                raise type(self.interrupt)
            process = subprocess.Popen(command, stdin=subprocess.DEVNULL, start_new_session=True, **options)
            self.processes.add(process)
        try:
            with process:
                yield process
        finally:
            with self.lock:
                self.processes.discard(process)

    def pass_on(self, interrupt: KeyboardInterrupt) -> None:
        """Send every running run the signal that ``interrupt`` stands for (:func:`interrupt_signal`) and start no
        other."""
        signum = interrupt_signal(interrupt)
        with self.lock:
            self.interrupt = interrupt
            for process in self.processes:
                process.send_signal(signum)


def child_environment(parallel: int) -> dict[str, str]:
    """The environment of runs started ``parallel`` at a time: unless set, ``OMP_NUM_THREADS`` shares the CPU cores
    among them (more threads than cores slow every run down many times)."""
    return {"OMP_NUM_THREADS": str(max(1, (os.cpu_count() or 1) // parallel)), **os.environ}


def ended_by(code: int) -> str:
    """How a run's process ended, from its exit status: ``killed by SIGKILL`` (negative) or ``exit status 1``."""
    return f"killed by {signal.Signals(-code).name}" if code < 0 else f"exit status {code}"


def run_outcome(code: int, output: str) -> str:
    """One line on how a finished run ended: its ``error:`` line; else, when it failed, how it ended (a killed run,
    e.g. out of memory, prints no error line) and its last line of output; else its last line."""
    error = last_error(output)
    if error is not None:
        return f"error: {error}"
    lines = [line for line in output.splitlines() if line.strip()]
    if code == 0:
        return lines[-1] if lines else "exit status 0"
    return f"stopped ({ended_by(code)}) without an error line" + (f"; its last line: {lines[-1]}" if lines else "")


def last_error(output: str) -> str | None:
    """The message of the last ``error: ...`` line a failed run printed (the entry point's one-line error), if any."""
    errors = [line for line in output.splitlines() if line.startswith(ERROR_PREFIX)]
    return errors[-1][len(ERROR_PREFIX):] if errors else None
