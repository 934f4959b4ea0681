"""Runs of the entry point in child processes, several at a time (``recbole-qrec compare`` and ``sweep``)."""

from __future__ import annotations

import os
import signal
import subprocess
import threading
from collections.abc import Callable, Iterator, Sequence
from contextlib import contextmanager
from typing import Any

from recbole_qrec.errors import Terminated

ERROR_PREFIX = "error: "


class ChildRuns:
    """The runs started in child processes that are running now. SIGTERM reaches only the process it is sent to:
    :meth:`terminate` passes it on to them, and no run starts after it."""

    def __init__(self) -> None:
        self.lock = threading.Lock()
        self.processes: set[subprocess.Popen] = set()
        self.terminated = False

    @contextmanager
    def started(self, command: Sequence[str], **options: Any) -> Iterator[subprocess.Popen]:
        """``subprocess.Popen(command, **options)``, one of the running runs inside the block; raises
        :class:`Terminated` once :meth:`terminate` was called."""
        with self.lock:
            if self.terminated:
                raise Terminated
            process = subprocess.Popen(command, **options)
            self.processes.add(process)
        try:
            with process:
                yield process
        finally:
            with self.lock:
                self.processes.discard(process)

    def terminate(self) -> None:
        """Send SIGTERM to every running run and start no other."""
        with self.lock:
            self.terminated = True
            for process in self.processes:
                process.send_signal(signal.SIGTERM)

    def pass_on(self, interrupt: BaseException) -> None:
        """Hand the runs the signal that ``interrupt`` stands for: Ctrl-C reaches them with this process, SIGTERM
        (:class:`Terminated`) only this process, so it is sent on (:meth:`terminate`)."""
        if isinstance(interrupt, Terminated):
            self.terminate()


def child_environment(parallel: int) -> dict[str, str]:
    """The environment of runs started ``parallel`` at a time: unless set, ``OMP_NUM_THREADS`` shares the CPU cores
    among them (more threads than cores slow every run down many times)."""
    return {"OMP_NUM_THREADS": str(max(1, (os.cpu_count() or 1) // parallel)), **os.environ}


def last_error(output: str) -> str | None:
    """The message of the last ``error: ...`` line a failed run printed (the entry point's one-line error), if any."""
    errors = [line for line in output.splitlines() if line.startswith(ERROR_PREFIX)]
    return errors[-1][len(ERROR_PREFIX):] if errors else None


@contextmanager
def handling_signal(signum: int, handler: Callable[[int, Any], None]) -> Iterator[None]:
    """Inside the block ``handler`` answers signal ``signum``; outside the main thread, where Python cannot set a
    handler, nothing changes."""
    if threading.current_thread() is not threading.main_thread():
        yield
        return
    previous = signal.signal(signum, handler)
    try:
        yield
    finally:
        signal.signal(signum, previous)
