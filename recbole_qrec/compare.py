"""Train a grid of models × datasets × seeds and table the results: ``recbole-qrec compare``.

Each run is the entry point in its own process (``python -m recbole_qrec --model=.. --dataset=.. --seed=..``
with the given overrides and ``run_tags`` ``{'compare': <id>}``), ``--parallel`` at a time, sharing the GPU. A run
whose identical result is already recorded in its ``results.jsonl`` (same model, dataset, seed, ``config_hash``,
data fingerprint and git commit) is skipped unless ``--rerun``: its config hash and fingerprint are computed here
as the run computes them (:func:`recbole_qrec.config.build_config`, :func:`recbole_qrec.data.check_dataset`,
:func:`recbole_qrec.results.config_hash`). A run that fails costs only its own result; the failures are listed at
the end, after the table of the others (:mod:`recbole_qrec.table`), and make the command fail.

``--continue`` carries long trainings over several budgeted invocations: a run whose latest record with the same
settings and data (any commit) stopped at its training budget (``train_time_limit_reached``) runs again from the
last state that run left (its record's ``resume_checkpoint``, given as ``--resume_checkpoint``), with the budget
again, instead of counting as recorded.
"""

from __future__ import annotations

import argparse
import shlex
import subprocess
import sys
import time
from concurrent.futures import ThreadPoolExecutor, as_completed
from dataclasses import dataclass, replace
from datetime import datetime, timezone
from pathlib import Path
from typing import Any

from recbole_qrec import table
from recbole_qrec.child_runs import ChildRuns, child_environment, run_outcome
from recbole_qrec.config import build_config
from recbole_qrec.data import check_dataset
from recbole_qrec.errors import ConfigError, QRecError, interrupted_status, repeated, single_line
from recbole_qrec.results import config_hash, git_state

DESCRIPTION = ("Train every model on every dataset with --seeds seeds (each run the entry point in its own process, "
               "--parallel at a time), skip the runs already recorded with the same settings, data and code, and "
               "print the table of the results (options as in table).")
SET_PER_RUN = ("model", "dataset", "run_tags")  # keys compare sets itself on each run's command line


@dataclass(frozen=True, eq=False)  # each run its own key
class Run:
    """One cell of the grid: its command line and, once its config was built, what its record will carry."""

    model: str
    dataset: str
    seed: int | None
    args: tuple[str, ...]
    results_file: Path | None = None
    config_hash: str | None = None
    fingerprint: dict[str, Any] | None = None
    error: str | None = None  # why it cannot start (its config or data check failed)
    resume_from: str | None = None  # the checkpoint of its budget-stopped record (--continue)

    @property
    def name(self) -> str:
        return f"{self.model} {self.dataset}" + (f" seed {self.seed}" if self.seed is not None else "")

    @property
    def command(self) -> list[str]:
        resume = [f"--resume_checkpoint={self.resume_from}"] if self.resume_from else []
        return [sys.executable, "-m", "recbole_qrec", *self.args, *resume]

    def configured_as(self, record: dict[str, Any]) -> bool:
        """Whether ``record`` is a result of this run with the same settings and data (any code)."""
        return (record.get("model"), record.get("dataset"), record.get("seed"), record.get("config_hash"),
                record.get("data_fingerprint")) == (self.model, self.dataset, self.seed, self.config_hash,
                                                    self.fingerprint)

    def recorded_by(self, record: dict[str, Any], commit: str) -> bool:
        """Whether ``record`` is this run's result with the same settings, data and code."""
        return self.configured_as(record) and record.get("git_commit") == commit


def add_arguments(parser: argparse.ArgumentParser) -> None:
    """The options of ``compare``, with the table's (:func:`recbole_qrec.table.add_output_arguments`)."""
    parser.add_argument("--models", nargs="+", required=True, metavar="MODEL", help="models to train, e.g. SASRec TIGER")
    parser.add_argument("--datasets", nargs="+", required=True, metavar="DATASET", help="datasets, e.g. Instruments Arts")
    parser.add_argument("--seeds", type=int, default=1, metavar="N",
                        help="seeds per model and dataset: seed, seed+1, ... (seed: 2020 unless set with --seed=S)")
    parser.add_argument("--parallel", type=int, default=1, metavar="N", help="runs at once (default 1)")
    parser.add_argument("--rerun", action="store_true", help="run again the runs whose result is already recorded")
    parser.add_argument("--continue", dest="continue_runs", action="store_true",
                        help="continue each run whose latest record (same settings and data) stopped at its training "
                        "budget (train_time_limit) from the last state it left, with the budget again")
    parser.add_argument("--results-dir", type=Path, metavar="DIR",
                        help="results_dir of every run (default: the configured one, results/)")
    parser.add_argument("--config_files", nargs="+", default=[], metavar="FILE", help="YAML files of every run, later files win")
    table.add_output_arguments(parser)
    parser.add_argument("--debug", action="store_true", help="show the traceback of an error")


def plan(models: list[str], datasets: list[str], seeds: int, config_files: list[str], overrides: list[str],
         compare_id: str) -> list[Run]:
    """The grid's runs: each with its command line, or with the one-line error that keeps it from starting."""
    given = [arg for arg in overrides if not arg.startswith("--seed=")]  # compare sets each run's seed
    files = ["--config_files", *config_files] if config_files else []
    runs = []
    for model in models:
        for dataset in datasets:
            base = [f"--model={model}", f"--dataset={dataset}", *files, *given]
            try:
                config = build_config(model, dataset, config_files, cmd_args=overrides)
                fingerprint = check_dataset(config)
            except QRecError as err:
                runs.append(Run(model, dataset, None, tuple(base), error=f"error: {single_line(err)}"))
                continue
            first = config["seed"]
            for seed in range(first, first + seeds):
                config["seed"] = seed
                args = (*base, f"--seed={seed}", f"--run_tags={{'compare': '{compare_id}'}}")
                runs.append(Run(model, dataset, seed, args, Path(config["results_dir"]) / "results.jsonl",
                                config_hash(config), fingerprint))
    return runs


def recorded(path: Path | None) -> list[dict[str, Any]]:
    """The records of a results file; none when it does not exist yet."""
    return table.load_records([path]) if path is not None and path.is_file() and path.stat().st_size else []


def budget_stopped(runs: list[Run]) -> list[Run]:
    """``runs``, each whose latest record with the same settings and data stopped at its training budget set to
    resume from the last state that run left (``resume_checkpoint``; when that file is gone or the record has none:
    its best checkpoint, whose later epochs are trained again); such a run whose checkpoints are all gone gets an
    error instead of counting as recorded."""
    existing = {path: recorded(path) for path in {run.results_file for run in runs if run.error is None}}
    continued = []
    for run in runs:
        same = [record for record in existing.get(run.results_file, []) if run.configured_as(record)]
        latest = same[-1] if same else {}
        if not latest.get("train_time_limit_reached"):
            continued.append(run)
            continue
        candidates = [path for path in (latest.get("resume_checkpoint"), latest.get("checkpoint")) if path]
        checkpoint = next((path for path in candidates if Path(path).is_file()), None)
        if checkpoint is not None:
            continued.append(replace(run, resume_from=checkpoint))
            continue
        gone = " and ".join(candidates) or "(none recorded)"
        continued.append(replace(run, error=(
            f"error: its latest record stopped at its training budget, but its checkpoints {gone} are gone, so "
            "--continue cannot carry it on — restore them (run compare from the folder it ran in), or add --rerun "
            "to train it anew")))
    return continued


def execute(run: Run, env: dict[str, str], children: ChildRuns) -> tuple[int, str, float]:
    """Run the entry point in ``env`` (one of ``children``); its exit status, its ``error:`` line (else how it ended
    and its last line of output) and seconds."""
    start = time.time()
    with children.started(run.command, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True, env=env) as process:
        _, stderr = process.communicate()
    return process.returncode, run_outcome(process.returncode, stderr), time.time() - start


class Progress:
    """One line on stderr per finished run: ``[k/n] <model> <dataset> seed <seed>: <outcome>``."""

    def __init__(self, total: int) -> None:
        self.total, self.count = total, 0

    def report(self, run: Run, outcome: str) -> None:
        self.count += 1
        print(f"[{self.count}/{self.total}] {run.name}: {outcome}", file=sys.stderr, flush=True)


def score(record: dict[str, Any], metric: str) -> str:
    value = record["test"].get(metric)
    return f"test {metric} {value:.4f}" if value is not None else f"no test {metric}"


def recorded_runs(runs: list[Run]) -> dict[Run, dict[str, Any]]:
    """The runs whose identical result is already recorded, each with its latest such record."""
    commit, _ = git_state()
    existing = {path: recorded(path) for path in {run.results_file for run in runs if run.error is None}}
    found = {run: [r for r in existing[run.results_file] if run.recorded_by(r, commit)]
             for run in runs if run.error is None}
    return {run: records[-1] for run, records in found.items() if records}


def run_grid(runs: list[Run], parallel: int, compare_id: str, metric: str,
             progress: Progress) -> tuple[dict[Run, dict[str, Any]], dict[Run, str]]:
    """Run ``runs``, ``parallel`` at a time; the record of each that succeeded and the error of each that failed."""
    records: dict[Run, dict[str, Any]] = {}
    failures: dict[Run, str] = {}
    pool = ThreadPoolExecutor(parallel)
    children = ChildRuns()
    try:
        env = child_environment(parallel)
        futures = {pool.submit(execute, run, env, children): run for run in runs}
        for future in as_completed(futures):
            run, (status, error, seconds) = futures[future], future.result()
            found = [r for r in recorded(run.results_file) if (r.get("tags") or {}).get("compare") == compare_id
                     and (r["model"], r["dataset"], r.get("seed")) == (run.model, run.dataset, run.seed)]
            if status == 0 and found:
                records[run] = found[-1]
                progress.report(run, f"{score(found[-1], metric)}, {seconds:.1f} s")
            else:
                failures[run] = error if status else f"it exited 0 but recorded no result in {run.results_file}"
                progress.report(run, f"FAILED after {seconds:.1f} s: {failures[run]}")
    except KeyboardInterrupt as interrupt:  # the finished runs are recorded, the others write nothing
        children.pass_on(interrupt)
        print(f"error: interrupted after {progress.count} of {progress.total} runs — the finished runs are recorded; "
              "run the same command again to run the others (the recorded runs are skipped)", file=sys.stderr)
        sys.exit(interrupted_status(interrupt))
    finally:
        pool.shutdown(cancel_futures=True)  # waits for the runs under way, starts no other
    return records, failures


def compare(args: argparse.Namespace, overrides: list[str]) -> None:
    """Run the grid of ``args`` (the overrides on every run), print a line per finished run, then the table."""
    if args.seeds < 1 or args.parallel < 1:
        raise ConfigError(f"--seeds {args.seeds} --parallel {args.parallel}: both must be at least 1 — e.g. "
                          "--seeds 3 --parallel 2")
    for option, names in (("--models", args.models), ("--datasets", args.datasets)):
        twice = repeated(names)
        if twice:
            raise ConfigError(f"{option} names {', '.join(twice)} more than once, which would run the same runs twice "
                              f"— name each once (--seeds N runs each cell N times)")
    taken = [arg for arg in overrides if arg.lstrip("-").split("=")[0] in SET_PER_RUN]
    if taken:
        raise ConfigError(f"{taken[0]} is set by compare on each run — use --models and --datasets, and leave "
                          "run_tags to compare")
    request = table.table_request(args)
    if args.results_dir is not None:
        overrides = [*overrides, f"--results_dir={args.results_dir}"]
    compare_id = datetime.now(timezone.utc).strftime("%Y%m%dT%H%M%SZ")
    config_files = [name for group in args.config_files for name in group.split()]  # as the entry point reads them
    runs = plan(args.models, args.datasets, args.seeds, config_files, overrides, compare_id)
    if args.continue_runs:
        runs = budget_stopped(runs)
    records = {} if args.rerun else {run: record for run, record in recorded_runs(runs).items() if not run.resume_from}
    failures = {run: run.error for run in runs if run.error is not None}
    to_run = [run for run in runs if run not in records and run not in failures]
    continued = sum(run.resume_from is not None for run in to_run)
    print(f"compare {compare_id}: {len(runs)} runs, {len(records)} already recorded (skipped), {len(to_run)} to run"
          f"{f' ({continued} continued from their budget-stopped checkpoints)' if continued else ''}, "
          f"{args.parallel} at a time", file=sys.stderr, flush=True)
    progress = Progress(len(runs))
    for run, record in records.items():
        progress.report(run, f"recorded {record.get('finished_at')}, {score(record, request.key_metric)}")
    for run, error in failures.items():
        progress.report(run, f"FAILED {error}")
    finished, failed = run_grid(to_run, args.parallel, compare_id, request.key_metric, progress)
    records.update(finished)
    failures.update(failed)

    if records:
        table.publish([records[run] for run in runs if run in records], request)
    if failures:
        print(f"failed runs ({len(failures)} of {len(runs)}):", file=sys.stderr)
        for run, error in failures.items():
            print(f"  {run.name}: {error}\n    {shlex.join(run.command)}", file=sys.stderr)
        raise QRecError(f"{len(failures)} of {len(runs)} runs failed (listed above) — fix their cause and run the same "
                        "command again: the recorded runs are skipped")
