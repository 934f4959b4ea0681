"""Hyper-parameter sweeps driven by a YAML file: ``recbole-qrec sweep sweep.yaml [--parallel N] [--out DIR]``.

The search runs on Optuna (``pip install 'recbole-qrec[sweep]'``): a well-kept library with grid, random and TPE
samplers, whose storages (a journal file, or an RDB such as SQLite or PostgreSQL) keep every trial, so that a
killed sweep resumes without repeating finished trials and several worker processes, on one machine or several,
cooperate on one study.

A sweep YAML (``properties/sweep/SASRec.yaml`` is an example; its bare name finds the shipped copy)::

    model: SASRec                  # a name or a list: one study per model and dataset
    dataset: Instruments           # a name or a list
    fixed: {epochs: 50}            # any config keys, the same in every trial
    space:                         # the searched config keys
      learning_rate: {loguniform: [1.0e-4, 1.0e-2]}
      dropout_prob: {uniform: [0.1, 0.5]}
      n_layers: {int: [1, 3]}      # bounds included; [low, high, step] too
      hidden_size: [32, 64]        # a list is a choice, as is {choice: [32, 64]}
    algorithm: tpe                 # grid, random or tpe (bayesian is tpe); default tpe
    trials: 20                     # the budget; a grid runs every point unless trials is smaller
    metric: ndcg@10                # the validation metric to optimise (default: the config's valid_metric);
                                   # higher or lower is better as valid_metric_bigger says
    seeds: [2020]                  # each trial runs once per seed; its value is the mean

Each trial runs the entry point in its own process, once per seed (``python -m recbole_qrec --model=...
--key=value ...``), with ``results_dir`` the sweep's folder and ``run_tags`` ``{'sweep': <id>, 'trial': <n>}``;
its value is read back from those records in ``<out>/results.jsonl``. A failed trial is marked failed with its
one-line error and the sweep goes on. ``--parallel N`` runs N trials at a time (processes sharing the machine and
its GPU); ``--gpus 0,1`` spreads them over those GPUs (the i-th of the N workers runs its trials with ``gpu_id`` the
i-th GPU, round-robin: ``--parallel 2 --gpus 0,1`` is one trial per GPU). Grid points are enqueued into the study
up front, in the order of the YAML.

Resuming: the study lives in ``<out>/optuna.journal`` (or the ``--storage`` URL). While a sweep process works it
holds a lease, an ``flock`` on a file in ``<out>/workers/``; a trial left running by a process that died (its
lease free again) is run again, with the same parameters and number, by the next sweep on that folder. The
sweep id (the YAML's name and a hash of everything in it but ``trials``) tags every record; a folder that holds
another sweep is refused.

Several machines: each runs ``recbole-qrec sweep`` with the same YAML and a ``--storage`` RDB URL they all reach
(``postgresql://...``, or ``sqlite:///...`` on a shared disk), each with its own ``--out`` (records, logs,
checkpoints). The reports come from the storage, so every machine's reports list every trial.

Outputs, per model and dataset in ``<out>/<model>-<dataset>/``: ``sweep.md`` and ``sweep.csv`` (finished trials,
best first: parameters, the valid metric, test metrics, seconds, error), ``best.yaml`` (the fixed settings and
the best parameters, for ``--config_files``), ``best.json`` (the best trial's parameters and valid and test
metrics), ``sweep.png`` (the metric versus each hyper-parameter), ``trials/<n>.log`` (each trial's console
output) and ``saved/<n>/`` (its checkpoints).
"""

from __future__ import annotations

import argparse
import csv
import difflib
import fcntl
import hashlib
import io
import json
import re
import shlex
import signal
import statistics
import subprocess
import sys
import threading
import time
import uuid
from collections.abc import Iterator
from concurrent.futures import ThreadPoolExecutor
from contextlib import contextmanager
from dataclasses import dataclass, field
from itertools import product
from pathlib import Path
from typing import TYPE_CHECKING, Any

import yaml
from recbole.config import Config
from tqdm import tqdm

from recbole_qrec.child_runs import ChildRuns, child_environment, ended_by, last_error
from recbole_qrec.config import as_argument, build_config, check_config_values, is_number
from recbole_qrec.errors import (ConfigError, MalformedDataError, QRecError, interrupted_status, required_module,
                                 single_line)
from recbole_qrec.fileio import atomic_open, atomic_path, check_output_folder, exclusive_lock, write_json_atomic
from recbole_qrec.resources import PROPERTIES_DIR
from recbole_qrec.table import load_records, metric_key, metric_label, runs_line

if TYPE_CHECKING:
    import optuna

DESCRIPTION = ("Hyper-parameter sweep from a YAML file (Optuna: grid, random or TPE): each trial runs the entry point "
               "in its own process; a killed sweep resumes without repeating finished trials. Writes ranked tables, "
               "best.yaml (for --config_files), the best trial's test metrics and a plot under --out.")
SPEC_KEYS = ("model", "dataset", "fixed", "space", "algorithm", "trials", "metric", "seeds")
ALGORITHMS = {"grid": "grid", "random": "random", "tpe": "tpe", "bayesian": "tpe"}
RANGE_EXAMPLES = {"uniform": "[0.1, 0.5]", "loguniform": "[1.0e-4, 1.0e-2]", "int": "[1, 3]"}
KINDS = ("choice", *RANGE_EXAMPLES)
# Keys the sweep sets for every run itself; seed comes from `seeds`.
SWEEP_KEYS = {"model": "the model", "dataset": "the dataset", "seed": "seeds: [...]", "results_dir": "--out",
              "checkpoint_dir": "--out", "run_tags": "the sweep"}
EXAMPLES_DIR = PROPERTIES_DIR / "sweep"
# Exit statuses of a run stopped by Ctrl-C or SIGTERM: the entry point's, or the signal's when it ended the process.
INTERRUPTED = {128 + signal.SIGINT, 128 + signal.SIGTERM, -signal.SIGINT, -signal.SIGTERM}


def import_optuna() -> Any:
    """The optuna module, or a one-line error naming the extra that brings it."""
    optuna = required_module("optuna", "recbole-qrec sweep", "pip install 'recbole-qrec[sweep]' (or pip install optuna)")
    optuna.logging.set_verbosity(optuna.logging.WARNING)
    return optuna


def did_you_mean(name: str, choices: Any) -> str:
    close = difflib.get_close_matches(name, list(choices), n=1)
    return f" (did you mean {close[0]!r}?)" if close else ""


# The sweep YAML

@dataclass(frozen=True)
class Dimension:
    """One searched config key: ``choice`` values, or a ``uniform``/``loguniform``/``int`` range (bounds included)."""

    name: str
    kind: str
    values: tuple[Any, ...]  # choice: the values; a range: (low, high), an int range (low, high, step)

    def distribution(self) -> optuna.distributions.BaseDistribution:
        from optuna.distributions import (
            CategoricalDistribution,
            FloatDistribution,
            IntDistribution,
        )

        if self.kind == "choice":
            return CategoricalDistribution(self.values)
        if self.kind == "int":
            return IntDistribution(*self.values)
        return FloatDistribution(*self.values, log=self.kind == "loguniform")

    def grid(self) -> list[Any] | None:
        """The values a grid visits; None for a continuous range."""
        if self.kind == "choice":
            return list(self.values)
        return list(range(self.values[0], self.values[1] + 1, self.values[2])) if self.kind == "int" else None

    def bounds(self) -> tuple[Any, ...]:
        """The values to check against the key's rule: every choice, or a range's bounds."""
        return self.values if self.kind == "choice" else self.values[:2]


def parse_dimension(name: str, spec: Any, source: str) -> Dimension:
    """``space.<name>`` of the YAML: a list (a choice) or ``{kind: values}``."""
    where = f"{source}: space.{name}"
    example = (f"e.g. {name}: [32, 64], {{uniform: [0.1, 0.5]}}, {{loguniform: [1.0e-4, 1.0e-2]}} or "
               f"{{int: [1, 3]}}")
    spec = {"choice": spec} if isinstance(spec, list) else spec
    if not (isinstance(spec, dict) and len(spec) == 1):
        raise ConfigError(f"{where} must be a list of values or {{kind: values}} with kind one of "
                          f"{', '.join(KINDS)} — {example}")
    ((kind, values),) = spec.items()
    if kind not in KINDS:
        raise ConfigError(f"{where}: unknown kind {kind!r}{did_you_mean(kind, KINDS)} — use one of "
                          f"{', '.join(KINDS)}, {example}")
    if kind == "choice":
        if not isinstance(values, list) or not values:
            raise ConfigError(f"{where}: choice needs a non-empty list of values — e.g. {name}: [32, 64]")
        odd = [v for v in values if v is not None and not isinstance(v, (bool, int, float, str))]
        if odd:
            raise ConfigError(f"{where}: the choice {odd[0]!r} is not a number, string, boolean or null — search "
                              "plain values (set a list-valued key under fixed)")
        if len({repr(v) for v in values}) < len(values):
            raise ConfigError(f"{where}: a choice is listed twice in {values} — list each value once")
        return Dimension(name, kind, tuple(values))
    lengths = (2, 3) if kind == "int" else (2,)
    numbers = isinstance(values, list) and len(values) in lengths and all(is_number(v) for v in values)
    fits = numbers and values[0] < values[1] and {
        "uniform": True,
        "loguniform": values[0] > 0,
        "int": all(isinstance(v, int) for v in values) and (len(values) == 2 or values[2] >= 1),
    }[kind]
    if not fits:
        form = "[low, high] or [low, high, step] integers (step >= 1)" if kind == "int" else "[low, high] numbers"
        positive = " and low > 0" if kind == "loguniform" else ""
        raise ConfigError(f"{where}: {kind} needs {form} with low < high{positive}, got {values!r} — "
                          f"e.g. {name}: {{{kind}: {RANGE_EXAMPLES[kind]}}}")
    return Dimension(name, kind, tuple(values) + ((1,) if kind == "int" and len(values) == 2 else ()))


def model_names(content: dict[str, Any], key: str, source: str) -> tuple[str, ...]:
    """``model`` or ``dataset``: a name or a non-empty list of names."""
    value = content.get(key)
    names = [value] if isinstance(value, str) else value
    if not (isinstance(names, list) and names and all(isinstance(n, str) and n for n in names)):
        raise ConfigError(f"{source}: {key} must be a name or a list of names, got {value!r} — e.g. "
                          f"{key}: {'SASRec' if key == 'model' else 'Instruments'}")
    return tuple(names)


@dataclass(frozen=True)
class SweepSpec:
    """A checked sweep YAML; ``trials`` None means every point of a grid."""

    source: Path
    models: tuple[str, ...]
    datasets: tuple[str, ...]
    fixed: dict[str, Any]
    space: tuple[Dimension, ...]
    algorithm: str
    trials: int | None
    metric: str | None
    seeds: tuple[int, ...]  # empty: the config's seed

    def identity(self) -> dict[str, Any]:
        """Everything that defines the sweep's trials (not the budget)."""
        return {"models": self.models, "datasets": self.datasets, "fixed": self.fixed, "algorithm": self.algorithm,
                "space": {d.name: {d.kind: list(d.values)} for d in self.space}, "metric": self.metric,
                "seeds": self.seeds}

    @property
    def id(self) -> str:
        stem = re.sub(r"[^A-Za-z0-9_.-]+", "_", self.source.stem)
        digest = hashlib.sha256(json.dumps(self.identity(), sort_keys=True, default=str).encode()).hexdigest()
        return f"{stem}-{digest[:8]}"

    def grid(self) -> list[dict[str, Any]] | None:
        """Every point of the grid, in the YAML's order; None unless the algorithm is grid."""
        if self.algorithm != "grid":
            return None
        return [dict(zip([d.name for d in self.space], point)) for point in product(*(d.grid() for d in self.space))]


def find_spec_file(name: str) -> Path:
    """The sweep YAML ``name``: a path, or the bare name of a shipped example (``properties/sweep/``)."""
    path = Path(name)
    if not path.is_file() and path.name == name and (EXAMPLES_DIR / name).is_file():
        return EXAMPLES_DIR / name
    if not path.is_file():
        shipped = ", ".join(p.name for p in sorted(EXAMPLES_DIR.glob("*.yaml")))
        raise ConfigError(f"sweep file {name} not found — give the path of a sweep YAML or a shipped example "
                          f"({shipped})")
    return path


def read_spec_file(path: Path) -> dict[str, Any]:
    """The YAML mapping of a sweep file, read with RecBole's loader (``1e-4`` is a number)."""
    loader = Config._build_yaml_loader(None)  # RecBole's YAML loader; it uses nothing of the instance
    try:
        content = yaml.load(path.read_text(encoding="utf-8"), Loader=loader)
    except yaml.MarkedYAMLError as err:
        line = f" at line {err.problem_mark.line + 1}" if err.problem_mark else ""
        raise ConfigError(f"{path} is not valid YAML{line}: {err.problem} — fix that line") from None
    except (yaml.YAMLError, UnicodeDecodeError) as err:
        raise ConfigError(f"{path} is not a readable YAML file ({single_line(err)}) — save it as UTF-8 "
                          "YAML") from None
    if not isinstance(content, dict):
        raise ConfigError(f"{path} holds no 'key: value' mapping — write model, dataset, space, ... "
                          f"(see {EXAMPLES_DIR / 'SASRec.yaml'})")
    return content


def load_spec(path: Path, trials: int | None = None) -> SweepSpec:
    """Read and check a sweep YAML; ``trials`` (``--trials``) replaces its budget."""
    source = str(path)
    content = read_spec_file(path)
    for key in content:
        if key not in SPEC_KEYS:
            raise ConfigError(f"{source}: unknown key {key!r}{did_you_mean(str(key), SPEC_KEYS)} — a sweep YAML "
                              f"has {', '.join(SPEC_KEYS)}")
    fixed, space = content.get("fixed") or {}, content.get("space")
    if not isinstance(fixed, dict):
        raise ConfigError(f"{source}: fixed must be a mapping of config keys, got {fixed!r} — e.g. "
                          "fixed: {epochs: 50}")
    if not (isinstance(space, dict) and space):
        raise ConfigError(f"{source}: space must map config keys to their values or ranges, got {space!r} — "
                          "e.g. space: {learning_rate: {loguniform: [1.0e-4, 1.0e-2]}}")
    for key in [*fixed, *space]:
        if key in SWEEP_KEYS:
            raise ConfigError(f"{source}: {key} is set by the sweep for every run — remove it "
                              f"(use {SWEEP_KEYS[key]})")
    both = sorted(set(fixed) & set(space))
    if both:
        raise ConfigError(f"{source}: {both[0]} is both fixed and searched — keep it under fixed or space, not both")
    dimensions = tuple(parse_dimension(str(name), value, source) for name, value in space.items())

    algorithm = content.get("algorithm", "tpe")
    if algorithm not in ALGORITHMS:
        raise ConfigError(f"{source}: unknown algorithm {algorithm!r}{did_you_mean(str(algorithm), ALGORITHMS)} — "
                          f"use one of {', '.join(ALGORITHMS)}")
    algorithm = ALGORITHMS[algorithm]
    continuous = [d.name for d in dimensions if d.grid() is None]
    if algorithm == "grid" and continuous:
        raise ConfigError(f"{source}: a grid needs listed values, but space.{continuous[0]} is a continuous range — "
                          "make it a choice or an int range, or use algorithm: random or tpe")
    trials = content.get("trials") if trials is None else trials
    if trials is not None and not (isinstance(trials, int) and not isinstance(trials, bool) and trials >= 1):
        raise ConfigError(f"{source}: trials must be an integer >= 1, got {trials!r} — e.g. trials: 20")
    if trials is None and algorithm != "grid":
        raise ConfigError(f"{source}: algorithm {algorithm} needs a budget — add e.g. trials: 20")

    metric = content.get("metric")
    if metric is not None:
        if not isinstance(metric, str):
            raise ConfigError(f"{source}: metric must be a name such as ndcg@10, got {metric!r} — e.g. "
                              "metric: ndcg@10")
        if "valid_metric" in fixed:
            raise ConfigError(f"{source}: metric and fixed.valid_metric both name the metric — keep one")
        metric = metric_key(metric)
        fixed = {**fixed, "valid_metric": metric}  # early stopping follows the optimised metric
    seeds = content.get("seeds", [])
    seeds = [seeds] if isinstance(seeds, int) and not isinstance(seeds, bool) else seeds
    if not (isinstance(seeds, list) and all(isinstance(s, int) and not isinstance(s, bool) for s in seeds)):
        raise ConfigError(f"{source}: seeds must be an integer or a list of integers, got {seeds!r} — e.g. "
                          "seeds: [2020, 2021]")
    if len(set(seeds)) < len(seeds):
        raise ConfigError(f"{source}: seeds lists a seed twice ({seeds}) — list each seed once")
    return SweepSpec(path, model_names(content, "model", source), model_names(content, "dataset", source), fixed,
                     dimensions, algorithm, trials, metric, tuple(seeds))


@dataclass(frozen=True)
class Target:
    """One study of a sweep: a model on a dataset, the metric it optimises and its budget."""

    model: str
    dataset: str
    metric: str
    bigger: bool
    budget: int

    @property
    def label(self) -> str:
        return f"{self.model}-{self.dataset}"

    @property
    def metric_text(self) -> str:
        return f"valid {metric_label(self.metric)}"


def plan_targets(spec: SweepSpec) -> list[Target]:
    """Check every setting of the sweep against each model's config (before any trial runs) and plan its studies."""
    grid = spec.grid()
    budget = min(spec.trials or len(grid), len(grid)) if grid is not None else spec.trials
    first = {d.name: d.bounds()[0] for d in spec.space}
    targets = []
    for model, dataset in product(spec.models, spec.datasets):
        settings = {**spec.fixed, **first}
        if spec.metric:  # checked below against what the runs compute, naming the sweep file
            settings.pop("valid_metric", None)
        config = build_config(model, dataset, config_dict=settings)
        for dimension in spec.space:
            for value in dimension.bounds():
                try:
                    check_config_values({dimension.name: value}, config.internal_config_dict)
                except ConfigError as err:
                    raise ConfigError(f"{spec.source}: space.{dimension.name}: {err}") from None
        computed = {f"{name.lower()}@{k}" for name in config["metrics"] for k in config["topk"]}
        metric = spec.metric or metric_key(config["valid_metric"])
        if metric not in computed:
            raise ConfigError(f"{spec.source}: {metric} is not computed by the runs — use one of "
                              f"{', '.join(sorted(computed))} (metrics x topk)")
        targets.append(Target(config["model"], dataset, metric, bool(config["valid_metric_bigger"]), budget))
    return targets


# Trials

@dataclass
class Outcome:
    """What a trial gave: its value (mean over seeds) and mean valid and test metrics, or its error."""

    seconds: float
    value: float | None = None
    valid: dict[str, float] = field(default_factory=dict)
    test: dict[str, float] = field(default_factory=dict)
    error: str | None = None


def trial_command(spec: SweepSpec, target: Target, out: Path, number: int, params: dict[str, Any],
                  seed: int | None, gpu_id: str | None = None) -> list[str]:
    """The entry point's command line for one run of a trial (on GPU ``gpu_id`` if given)."""
    settings = {**spec.fixed, **params, **({"seed": seed} if seed is not None else {}),
                **({"gpu_id": gpu_id} if gpu_id is not None else {}),
                "results_dir": str(out), "checkpoint_dir": str(out / target.label / "saved" / str(number)),
                "run_tags": {"sweep": spec.id, "trial": number}}
    return [sys.executable, "-m", "recbole_qrec", f"--model={target.model}", f"--dataset={target.dataset}",
            *(f"--{key}={as_argument(value)}" for key, value in settings.items())]


def error_line(log: Path, code: int) -> str:
    """A failed run's ``error: ...`` line (the last one in its output), else its exit status."""
    error = last_error(log.read_text(encoding="utf-8", errors="replace"))
    if error is not None:
        return error
    return f"the run stopped ({ended_by(code)}) without an error line — see {log}"


def run_trial(spec: SweepSpec, target: Target, out: Path, number: int, params: dict[str, Any],
              env: dict[str, str], children: ChildRuns, gpu_id: str | None = None) -> Outcome:
    """Run a trial once per seed, each in its own process (one of ``children``, on GPU ``gpu_id`` if given), and read
    its records back; raises KeyboardInterrupt when a run was stopped by Ctrl-C or SIGTERM."""
    start = time.time()
    log_path = out / target.label / "trials" / f"{number}.log"
    log_path.parent.mkdir(parents=True, exist_ok=True)
    records = []
    with open(log_path, "w", encoding="utf-8") as log:
        for seed in spec.seeds or (None,):
            command = trial_command(spec, target, out, number, params, seed, gpu_id)
            log.write(f"$ {shlex.join(command)}\n")
            log.flush()
            with children.started(command, stdout=log, stderr=subprocess.STDOUT, env=env) as process:
                code = process.wait()
            if code in INTERRUPTED:
                raise KeyboardInterrupt
            if code != 0:
                return Outcome(time.time() - start, error=error_line(log_path, code))
            tags = {"sweep": spec.id, "trial": number}
            found = [r for r in load_records([out / "results.jsonl"]) if r.get("tags") == tags
                     and (seed is None or r.get("seed") == seed)]
            if not found or target.metric not in found[-1]["valid"]:
                return Outcome(time.time() - start, error=f"the run recorded no {target.metric_text} tagged {tags} in "
                                                          f"{out / 'results.jsonl'}")
            records.append(found[-1])

    def mean(split: str) -> dict[str, float]:
        keys = set.intersection(*(set(r[split]) for r in records))
        return {key: statistics.fmean(r[split][key] for r in records) for key in sorted(keys)}

    valid = mean("valid")
    return Outcome(time.time() - start, valid[target.metric], valid, mean("test"))


# Workers cooperating on a study

@contextmanager
def worker_lease(out: Path) -> Iterator[str]:
    """A lease that this process holds while it works on the sweep; a crash or Ctrl-C frees it and keeps its file,
    so the trials it left running are taken up by the next sweep (see :func:`lease_expired`)."""
    path = out / "workers" / f"{uuid.uuid4().hex[:12]}.lock"
    path.parent.mkdir(parents=True, exist_ok=True)
    with open(path, "w") as handle:
        fcntl.flock(handle, fcntl.LOCK_EX)
        yield path.stem
    path.unlink()


def lease_expired(out: Path, lease: str) -> bool:
    """True when the lease's file is here and no process holds it (a worker of another machine: False)."""
    path = out / "workers" / f"{lease}.lock"
    if not lease or not path.is_file():
        return False
    with open(path, "a") as handle:
        try:
            fcntl.flock(handle, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            return False
    return True


@dataclass
class Worker:
    """What the workers of one study share: the study, its storage and where the sweep writes."""

    spec: SweepSpec
    target: Target
    out: Path
    study: optuna.Study
    storage: optuna.storages.BaseStorage
    lease: str
    env: dict[str, str]
    stop: threading.Event
    progress: Progress
    children: ChildRuns = field(default_factory=ChildRuns)

    def set_attrs(self, number: int, attrs: dict[str, Any]) -> None:
        study_id = self.storage.get_study_id_from_name(self.study.study_name)
        trial_id = self.storage.get_trial_id_from_study_id_trial_number(study_id, number)
        for key, value in attrs.items():
            self.storage.set_trial_user_attr(trial_id, key, value)

    def next_trial(self) -> tuple[int, dict[str, Any]] | None:
        """A trial left running by a dead worker, else a new one while the budget lasts, else None."""
        from optuna.trial import TrialState

        with exclusive_lock(self.out / ".sweep.lock"):
            trials = self.study.get_trials(deepcopy=False)
            for trial in trials:
                if trial.state == TrialState.RUNNING and lease_expired(self.out, trial.user_attrs.get("worker", "")):
                    self.set_attrs(trial.number, {"worker": self.lease})
                    return trial.number, trial.params
            if sum(trial.state != TrialState.WAITING for trial in trials) >= self.target.budget:
                return None
            trial = self.study.ask({d.name: d.distribution() for d in self.spec.space})
            trial.set_user_attr("worker", self.lease)
            return trial.number, trial.params

    def run(self, gpu_id: str | None = None) -> None:
        """Run trials (on GPU ``gpu_id`` if given) until the budget is spent (or the sweep stops) and tell the study
        each outcome."""
        from optuna.trial import TrialState

        while not self.stop.is_set():
            claimed = self.next_trial()
            if claimed is None:
                return
            number, params = claimed
            outcome = run_trial(self.spec, self.target, self.out, number, params, self.env, self.children, gpu_id)
            if outcome.error is not None and self.stop.is_set():
                # its run died with the sweep (its stop signal is passed on to the runs): left unfinished, run
                # again on resume
                return
            self.set_attrs(number, {"seconds": round(outcome.seconds, 1), "valid": outcome.valid,
                                    "test": outcome.test, "error": outcome.error})
            if outcome.error is None:
                self.study.tell(number, outcome.value)
            else:
                self.study.tell(number, state=TrialState.FAIL)
            self.progress.trial_done(self.study, number, params, outcome)


def value_text(value: Any) -> str:
    return f"{value:.4g}" if isinstance(value, float) else str(value)


def params_text(params: dict[str, Any]) -> str:
    return ", ".join(f"{key}={value_text(value)}" for key, value in params.items())


def finished(study: optuna.Study) -> list[optuna.trial.FrozenTrial]:
    from optuna.trial import TrialState

    return [t for t in study.get_trials(deepcopy=False) if t.state in (TrialState.COMPLETE, TrialState.FAIL)]


def ranked(trials: list[optuna.trial.FrozenTrial], bigger: bool) -> list[optuna.trial.FrozenTrial]:
    """Completed trials best first (ties: lower number first), then the failed ones."""
    done = sorted((t for t in trials if t.value is not None), key=lambda t: (-t.value if bigger else t.value, t.number))
    return done + sorted((t for t in trials if t.value is None), key=lambda t: t.number)


class Progress:
    """One line per finished trial on stdout, and a bar over the budget when stderr is a terminal."""

    def __init__(self, target: Target, done: int) -> None:
        self.target = target
        self.lock = threading.Lock()
        self.bar = tqdm(total=target.budget, initial=done, desc=f"{target.model} on {target.dataset}", unit="trial",
                        disable=not sys.stderr.isatty(), file=sys.stderr)

    def trial_done(self, study: optuna.Study, number: int, params: dict[str, Any], outcome: Outcome) -> None:
        trials = finished(study)
        best = next(iter(ranked(trials, self.target.bigger)), None)
        result = (f"{self.target.metric_text} {outcome.value:.4f}" if outcome.error is None
                  else f"FAILED: {outcome.error}")
        best_text = ("no best yet" if best is None or best.value is None
                     else f"best {best.value:.4f} (trial {best.number})")
        line = (f"[{len(trials)}/{self.target.budget}] {self.target.label} trial {number}: {params_text(params)} — "
                f"{result} — {outcome.seconds:.1f} s; {best_text}")
        with self.lock:
            self.bar.update(1)
            tqdm.write(line)

    def close(self) -> None:
        self.bar.close()


# Storage, studies and the whole sweep

def open_storage(out: Path, url: str | None) -> optuna.storages.BaseStorage:
    """The ``--storage`` RDB URL, else a journal file in the sweep's folder."""
    optuna = import_optuna()
    if url is None:
        from optuna.storages.journal import JournalFileBackend, JournalStorage

        out.mkdir(parents=True, exist_ok=True)
        check_journal(out / "optuna.journal")
        return JournalStorage(JournalFileBackend(str(out / "optuna.journal")))
    from sqlalchemy.exc import SQLAlchemyError

    try:
        return optuna.storages.RDBStorage(url)
    except (SQLAlchemyError, ImportError, ValueError) as err:
        raise ConfigError(f"--storage {url} cannot be opened ({single_line(err)}) — give an RDB URL such as "
                          "sqlite:///sweep.db or postgresql://user@host/db") from None


def check_journal(path: Path) -> None:
    """A sweep's journal must be whole JSON lines: optuna would stop on a damaged one with a JSON error, and append
    its next operation to a cut-off last line (a sweep killed while writing it), damaging that line for good."""
    if not path.is_file():
        return
    data = path.read_bytes()
    fix = (f"restore the file, or pass another --out to start the sweep afresh (the trials' records stay in "
           f"{path.parent / 'results.jsonl'})")
    lines = data.split(b"\n")
    if lines[-1].strip():
        raise MalformedDataError(f"{path} ends in a cut-off line {len(lines)} (the sweep was stopped while writing it) "
                                 f"— delete that last line to resume the sweep, or {fix}")
    for number, line in enumerate(lines, start=1):
        if not line.strip():
            continue
        try:
            json.loads(line)
        except ValueError:
            raise MalformedDataError(f"{path} line {number} is not an optuna journal entry (damaged) — {fix}") from None


def open_study(spec: SweepSpec, target: Target, out: Path, storage: optuna.storages.BaseStorage) -> optuna.Study:
    """The target's study (created or loaded), with a grid's points enqueued."""
    optuna = import_optuna()
    samplers = {"tpe": lambda: optuna.samplers.TPESampler(constant_liar=True), "random": optuna.samplers.RandomSampler,
                "grid": optuna.samplers.RandomSampler}  # a grid's trials are all enqueued: nothing is sampled
    with exclusive_lock(out / ".sweep.lock"):
        study = optuna.create_study(storage=storage, study_name=f"{spec.id}:{target.label}",
                                    direction="maximize" if target.bigger else "minimize",
                                    sampler=samplers[spec.algorithm](), load_if_exists=True)
        for point in spec.grid() or []:
            study.enqueue_trial(point, skip_if_exists=True)
    return study


def stored_study(spec: SweepSpec, target: Target, storage: optuna.storages.BaseStorage) -> optuna.Study | None:
    """The target's study as the storage holds it, read without writing to it; None if it was never started."""
    optuna = import_optuna()
    try:
        return optuna.load_study(study_name=f"{spec.id}:{target.label}", storage=storage)
    except KeyError:
        return None


def claim_folder(out: Path, spec: SweepSpec) -> None:
    """Record the sweep in ``out/sweep.json``; a folder holding another sweep is refused."""
    path = out / "sweep.json"
    if path.is_file():
        held = json.loads(path.read_text(encoding="utf-8")).get("id")
        if held != spec.id:
            raise ConfigError(f"{out} holds sweep {held}, not {spec.id} (its YAML differs in more than trials) — "
                              "pass another --out, or the YAML that sweep ran")
        return
    write_json_atomic(path, {"id": spec.id, "source": str(spec.source), **spec.identity()})


def run_study(spec: SweepSpec, target: Target, out: Path, storage: optuna.storages.BaseStorage, lease: str,
              parallel: int, gpus: tuple[str, ...] = ()) -> optuna.Study:
    """Run the target's trials, ``parallel`` at a time (worker i on GPU ``gpus[i % len(gpus)]``, if any), until its
    budget is spent."""
    study = open_study(spec, target, out, storage)
    progress = Progress(target, len(finished(study)))
    stop = threading.Event()
    worker = Worker(spec, target, out, study, storage, lease, child_environment(parallel), stop, progress)
    try:
        with ThreadPoolExecutor(parallel) as pool:
            futures = [pool.submit(worker.run, gpus[i % len(gpus)] if gpus else None) for i in range(parallel)]
            try:
                for future in futures:
                    future.result()
            except BaseException as error:
                stop.set()  # the other workers take no new trial
                if isinstance(error, KeyboardInterrupt):  # and their runs stop (else they finish their trial)
                    worker.children.pass_on(error)
                raise
    finally:
        progress.close()
    return study


def run_sweep(spec: SweepSpec, out: Path, parallel: int = 1, storage_url: str | None = None,
              command: str | None = None, gpus: tuple[str, ...] = (), report_only: bool = False) -> list[Path]:
    """Run the sweep (resuming what ``out`` or the storage holds) and write its reports; returns their paths.
    ``report_only``: write the reports of the trials the storage holds, running none."""
    targets = plan_targets(spec)
    if report_only and storage_url is None and not (out / "optuna.journal").is_file():
        raise ConfigError(f"{out} holds no sweep to report (no optuna.journal) — give the --out the sweep ran with, "
                          "or drop --report to run it")
    storage = open_storage(out, storage_url)
    claim_folder(out, spec)
    if report_only:
        studies = [(target, stored_study(spec, target, storage)) for target in targets]
        return [path for target, study in studies if study is not None and finished(study)
                for path in write_reports(spec, target, study, out / target.label, command)]
    written = []
    with worker_lease(out) as lease:
        for target in targets:
            try:
                study = run_study(spec, target, out, storage, lease, parallel, gpus)
            except KeyboardInterrupt:  # report the trials finished so far, then stop
                study = open_study(spec, target, out, storage)
                if any(trial.value is not None for trial in finished(study)):
                    write_reports(spec, target, study, out / target.label, command)
                raise
            written += write_reports(spec, target, study, out / target.label, command)
    return written


# Reports

def metric_order(key: str) -> tuple[str, int]:
    name, k = key.split("@")
    return name, int(k)


def report_rows(spec: SweepSpec, target: Target,
                trials: list[optuna.trial.FrozenTrial]) -> tuple[list[str], list[list[Any]]]:
    """The ranked table: header and rows (rank, trial, parameters, valid metric, test metrics, seconds, error)."""
    tests = sorted({m for t in trials for m in t.user_attrs.get("test", {})}, key=metric_order)
    header = ["rank", "trial", *(d.name for d in spec.space), target.metric_text,
              *(f"test {metric_label(m)}" for m in tests), "seconds", "error"]
    rows = []
    for rank, trial in enumerate(ranked(trials, target.bigger), 1):
        test = trial.user_attrs.get("test", {})
        rows.append([rank if trial.value is not None else "", trial.number,
                     *(trial.params.get(d.name) for d in spec.space), trial.value, *(test.get(m) for m in tests),
                     trial.user_attrs.get("seconds"), trial.user_attrs.get("error") or ""])
    return header, rows


def md_cell(value: Any, column: str) -> str:
    """A markdown cell: metrics with 4 decimals, seconds with 1, parameters as in the progress lines."""
    if value is None:
        return ""
    if column == "seconds":
        return f"{value:.1f}"
    if isinstance(value, float) and column.startswith(("valid ", "test ")):
        return f"{value:.4f}"
    return value_text(value).replace("|", "\\|")


def seeds_text(spec: SweepSpec) -> str:
    if len(spec.seeds) > 1:
        return f"mean over seeds {', '.join(map(str, spec.seeds))}"
    return f"seed {spec.seeds[0]}" if spec.seeds else "the config's seed"


def render_md(spec: SweepSpec, target: Target, trials: list[optuna.trial.FrozenTrial]) -> str:
    header, rows = report_rows(spec, target, trials)
    failed = sum(t.value is None for t in trials)
    direction = "higher" if target.bigger else "lower"
    searched = ", ".join(d.name for d in spec.space)
    count = f"{len(trials)} of {target.budget} trials finished, {failed} failed"
    lines = [f"# Sweep {spec.id}: {target.model} on {target.dataset}", "",
             f"- {spec.algorithm} search over {searched}; {count}",
             f"- optimised: {target.metric_text} ({direction} is better), {seeds_text(spec)}",
             f"- fixed: {params_text(spec.fixed) or 'nothing'}", "",
             "| " + " | ".join(header) + " |", "|" + "---|" * len(header)]
    lines += ["| " + " | ".join(md_cell(v, c) for v, c in zip(row, header)) + " |" for row in rows]
    return "\n".join(lines) + "\n"


def provenance_text(command: str | None, records: list[dict[str, Any]]) -> str:
    """The command and the trials' commits, machines and dates, under the ranked table."""
    lines = [*([f"Command: `{command}`"] if command else []), *([runs_line(records)] if records else [])]
    return "\n" + "\n".join(lines) + "\n" if lines else ""


def render_csv(spec: SweepSpec, target: Target, trials: list[optuna.trial.FrozenTrial]) -> str:
    header, rows = report_rows(spec, target, trials)
    buffer = io.StringIO()
    writer = csv.writer(buffer, lineterminator="\n")
    writer.writerow(header)
    writer.writerows([["" if v is None else v for v in row] for row in rows])
    return buffer.getvalue()


def best_settings(spec: SweepSpec, best: optuna.trial.FrozenTrial) -> dict[str, Any]:
    """The fixed settings, the best parameters and the first seed: the best trial's run as a config file."""
    return {**spec.fixed, **best.params, **({"seed": spec.seeds[0]} if spec.seeds else {})}


def render_best_yaml(spec: SweepSpec, target: Target, best: optuna.trial.FrozenTrial, path: Path) -> str:
    seeds = seeds_text(spec) + (f"; this file runs seed {spec.seeds[0]}" if len(spec.seeds) > 1 else "")
    return (f"# Best trial of sweep {spec.id}: trial {best.number}, {target.metric_text} {best.value:.4f} ({seeds})\n"
            f"# recbole-qrec --model={target.model} --dataset={target.dataset} --config_files {path}\n"
            + yaml.safe_dump(best_settings(spec, best), sort_keys=False))


def plot_sweep(spec: SweepSpec, target: Target, trials: list[optuna.trial.FrozenTrial], path: Path) -> None:
    """The metric of each completed trial against each hyper-parameter, the best trial starred."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt
    from matplotlib import ticker

    done = [t for t in trials if t.value is not None]
    best = ranked(done, target.bigger)[0]
    columns = min(3, len(spec.space))
    rows = -(-len(spec.space) // columns)
    fig, axes = plt.subplots(rows, columns, figsize=(4.2 * columns, 3.4 * rows), dpi=150, squeeze=False, sharey=True)
    for ax, dimension in zip(axes.flat, spec.space):
        choices = list(dimension.values) if dimension.kind == "choice" else None  # one tick per choice
        position = (lambda v: v) if choices is None else choices.index
        ax.scatter([position(t.params[dimension.name]) for t in done], [t.value for t in done], s=24, alpha=0.7,
                   label="trial")
        ax.scatter([position(best.params[dimension.name])], [best.value], marker="*", s=160, color="tab:red",
                   label=f"best (trial {best.number})")
        if choices is not None:
            ax.set_xticks(range(len(choices)), [value_text(v) for v in choices])
            ax.set_xlim(-0.5, len(choices) - 0.5)
        log = dimension.kind == "loguniform"
        if log:  # ticks at 1 and 3 per decade, plainly written: the default labels overlap on a short range
            ax.set_xscale("log")
            ax.xaxis.set_major_locator(ticker.LogLocator(subs=(1.0, 3.0)))
            ax.xaxis.set_major_formatter(ticker.FuncFormatter(lambda value, _: f"{value:g}"))
            ax.xaxis.set_minor_formatter(ticker.NullFormatter())
        if dimension.kind == "int":
            ax.xaxis.set_major_locator(ticker.MaxNLocator(integer=True))
        ax.set_xlabel(dimension.name + (" (log scale)" if log else ""))
        ax.grid(alpha=0.3)
    for ax in axes[:, 0]:
        ax.set_ylabel(f"{target.metric_text} (0–1)")
    for ax in list(axes.flat)[len(spec.space):]:
        ax.set_visible(False)
    axes.flat[0].legend(fontsize="small")
    fig.suptitle(f"Sweep {spec.id}: {target.model} on {target.dataset}, {target.metric_text} per trial "
                 f"({len(done)} completed)")
    fig.tight_layout()
    with atomic_path(path) as tmp:
        fig.savefig(tmp, format="png", dpi=150)
    plt.close(fig)


def write_reports(spec: SweepSpec, target: Target, study: optuna.Study, folder: Path,
                  command: str | None = None) -> list[Path]:
    """``sweep.md``, ``sweep.csv`` and, when a trial completed, ``best.yaml``, ``best.json`` and ``sweep.png``."""
    trials = finished(study)
    records = [r for r in load_records([folder.parent / "results.jsonl"])
               if r.get("tags", {}).get("sweep") == spec.id and r.get("model") == target.model
               and r.get("dataset") == target.dataset] if (folder.parent / "results.jsonl").is_file() else []
    texts = {folder / "sweep.md": render_md(spec, target, trials) + provenance_text(command, records),
             folder / "sweep.csv": render_csv(spec, target, trials)}
    done = ranked([t for t in trials if t.value is not None], target.bigger)
    if done:
        best = done[0]
        texts[folder / "best.yaml"] = render_best_yaml(spec, target, best, folder / "best.yaml")
    for path, text in texts.items():
        with atomic_open(path, "w", encoding="utf-8") as handle:
            handle.write(text)
    if not done:
        failed = ranked(trials, target.bigger)
        first = f" (trial {failed[0].number}: {failed[0].user_attrs.get('error')})" if failed else ""
        raise QRecError(f"no trial of {target.model} on {target.dataset} completed{first} — fix the settings the "
                        f"error names (each trial's output: {folder / 'trials'}/), then run the sweep again")
    write_json_atomic(folder / "best.json", {
        "sweep": spec.id, "model": target.model, "dataset": target.dataset, "trial": best.number,
        "params": best.params, "settings": best_settings(spec, best), "metric": target.metric, "value": best.value,
        "seeds": list(spec.seeds), "valid": best.user_attrs.get("valid"), "test": best.user_attrs.get("test"),
    })
    plot_sweep(spec, target, trials, folder / "sweep.png")
    return [*texts, folder / "best.json", folder / "sweep.png"]


# Command line

def add_arguments(parser: argparse.ArgumentParser) -> None:
    """The options of ``recbole-qrec sweep`` (also ``--sweep FILE`` on the run command line)."""
    parser.add_argument("spec", nargs="?", metavar="SWEEP_YAML",
                        help="the sweep YAML, or the name of a shipped example in properties/sweep/ (SASRec.yaml)")
    parser.add_argument("--sweep", dest="sweep_file", metavar="SWEEP_YAML", help="the sweep YAML (same as SWEEP_YAML)")
    parser.add_argument("--parallel", type=int, default=1, metavar="N",
                        help="trials run at a time (each its own process, sharing the machine and its GPU)")
    parser.add_argument("--gpus", metavar="IDS", help="spread the trials that run at once over these GPUs (e.g. 0,1 "
                        "with --parallel 2: one trial per GPU), each run with its worker's gpu_id")
    parser.add_argument("--out", type=Path, metavar="DIR",
                        help="the sweep's folder: storage, records, logs, reports (default sweeps/<YAML name>); "
                        "running the same command again resumes it")
    parser.add_argument("--trials", type=int, metavar="N", help="the budget, instead of the YAML's trials")
    parser.add_argument("--storage", metavar="URL",
                        help="an Optuna RDB URL (sqlite:///sweep.db, postgresql://...) instead of "
                        "<out>/optuna.journal: sweeps on several machines with the same YAML and URL share one study")
    parser.add_argument("--report", action="store_true",
                        help="write the reports of the trials the sweep's storage holds and run none (a sweep stopped "
                        "before its budget, or still running elsewhere)")
    parser.add_argument("--debug", action="store_true", help="show the traceback of an error")


def parse_gpus(text: str | None) -> tuple[str, ...]:
    """The GPU ids of ``--gpus`` (``"0,1"``); empty without the option."""
    if text is None:
        return ()
    ids = tuple(part.strip() for part in text.split(","))
    if not all(part.isdigit() for part in ids):
        raise ConfigError(f"--gpus {text} is not a list of GPU numbers — e.g. --gpus 0,1")
    return ids


def run_command(args: argparse.Namespace) -> None:
    """``sweep``: run the sweep that ``args`` name and print each study's ranked table."""
    name = args.spec or args.sweep_file
    if not name or (args.spec and args.sweep_file):
        raise ConfigError("give one sweep YAML — recbole-qrec sweep sweep.yaml (or --sweep sweep.yaml)")
    if args.parallel < 1 or (args.trials is not None and args.trials < 1):
        raise ConfigError("--parallel and --trials must be at least 1 — e.g. --parallel 2")
    gpus = parse_gpus(args.gpus)
    path = find_spec_file(name)
    spec = load_spec(path, args.trials)
    if gpus and ("gpu_id" in spec.fixed or any(dimension.name == "gpu_id" for dimension in spec.space)):
        raise ConfigError(f"{path} sets gpu_id and --gpus is given — remove gpu_id from the YAML or drop --gpus")
    out = args.out or Path("sweeps") / path.stem
    check_output_folder(out, f"--out {out} cannot be the sweep's folder", "give --out a folder")
    try:
        written = run_sweep(spec, out, args.parallel, args.storage, getattr(args, "command", None), gpus,
                            report_only=args.report)
    except KeyboardInterrupt as interrupt:
        if args.debug:
            raise
        print(f"error: interrupted — the finished trials are kept in {out} (and reported in its sweep.md files); run "
              "the same command to resume", file=sys.stderr)
        sys.exit(interrupted_status(interrupt))
    for path in written:
        if path.suffix == ".md":
            print(path.read_text(encoding="utf-8"))
        print(f"wrote {path}", file=sys.stderr)
