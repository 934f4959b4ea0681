"""The runs that ``compare`` and ``sweep`` start: an interrupt reaches each running run once, through
:meth:`ChildRuns.pass_on`, and no run starts after it — also one started just after a Ctrl-C to the process group."""

from __future__ import annotations

import signal
import subprocess
import sys
from pathlib import Path

import pytest

from recbole_qrec.child_runs import ChildRuns, run_outcome
from recbole_qrec.errors import Terminated

# A run that says it started, then waits; Ctrl-C ends it with exit status 130, SIGTERM or SIGHUP kills it.
RUN = ("import signal, sys, time\n"
       "signal.signal(signal.SIGINT, lambda *_: sys.exit(130))\n"
       "print('started', flush=True)\n"
       "time.sleep(120)\n")
# A parent that starts its run, then sends Ctrl-C to its whole process group, as a terminal does.
GROUP_CTRL_C = ("import os, signal, subprocess, sys\n"
                "from recbole_qrec.child_runs import ChildRuns\n"
                "children = ChildRuns()\n"
                "signal.signal(signal.SIGINT, signal.SIG_IGN)\n"
                "with children.started([sys.executable, '-c', sys.argv[1]], stdout=subprocess.PIPE, text=True) as run:\n"
                "    run.stdout.readline()\n"
                "    os.killpg(0, signal.SIGINT)\n"
                "    try:\n"
                "        run.wait(timeout=2)\n"
                "    except subprocess.TimeoutExpired:\n"
                "        print('still running', flush=True)\n"
                "    children.pass_on(KeyboardInterrupt())\n"
                "    print(run.wait(timeout=60))\n")


@pytest.mark.parametrize(("interrupt", "status"), [(KeyboardInterrupt(), 130), (Terminated(), -signal.SIGTERM),
                                                   (Terminated(signal.SIGHUP), -signal.SIGHUP)])
def test_an_interrupt_passed_on_stops_the_running_run_and_starts_no_other(interrupt: KeyboardInterrupt,
                                                                         status: int) -> None:
    children = ChildRuns()
    with children.started([sys.executable, "-c", RUN], stdout=subprocess.PIPE, text=True) as run:
        assert run.stdout.readline() == "started\n"
        children.pass_on(interrupt)
        assert run.wait(timeout=60) == status
    with pytest.raises(type(interrupt)), children.started([sys.executable, "-c", RUN]):
        pass


def test_a_ctrl_c_to_the_process_group_reaches_the_run_only_when_passed_on(tmp_path: Path) -> None:
    """Otherwise a run started a moment after the Ctrl-C reached the group would train to its end."""
    parent = subprocess.run([sys.executable, "-c", GROUP_CTRL_C, RUN], capture_output=True, text=True, timeout=120,
                            start_new_session=True, cwd=tmp_path, check=True)
    assert parent.stdout.splitlines() == ["still running", "130"]


def test_a_run_killed_without_an_error_line_is_reported_with_its_signal_and_last_line() -> None:
    """A run the kernel kills (e.g. out of memory) prints no ``error:`` line; its outcome names the signal, not only
    the log line it wrote last, which reads like a run still training."""
    killed = subprocess.run([sys.executable, "-c", "import os, signal, sys\nprint('epoch 0 training', file=sys.stderr, "
                             "flush=True)\nos.kill(os.getpid(), signal.SIGKILL)\n"], capture_output=True, text=True,
                            timeout=60)
    assert run_outcome(killed.returncode, killed.stderr) == ("stopped (killed by SIGKILL) without an error line; its "
                                                             "last line: epoch 0 training")
    failed = subprocess.run([sys.executable, "-c", "import sys\nprint('error: no such dataset', file=sys.stderr)\n"
                             "sys.exit(2)\n"], capture_output=True, text=True, timeout=60)
    assert run_outcome(failed.returncode, failed.stderr) == "error: no such dataset"
