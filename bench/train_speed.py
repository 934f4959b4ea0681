"""Training and evaluation speed of each data path (``data_path_mode``) with the same models, settings and seeds.

Each (model, mode, seed) runs through the entry point (one at a time, or with ``--parallel`` every model of a mode
and seed at once on the same GPU). From its record and its log (RecBole's per-epoch lines): seconds per training
epoch, seconds per validation (all validation users unless ``valid_sample_users`` is set), the time to the best
validation NDCG@10 (pretraining, training and validations up to the best epoch), test HR@10/NDCG@10, and the GPU's
busy fraction while it ran (``nvidia-smi`` samples; empty without one). Written to ``<out>.md`` (mean ± std over
the seeds), ``<out>.csv`` and ``<out>.json`` (one row and record per run):

    python bench/train_speed.py --dataset Instruments --modes recbole gpu --seeds 3 --commit <sha> \\
        --out docs/results/train_speed --set epochs=50 eval_step=1

A mode may carry settings of its own after a colon, joined by ``+``: ``--modes gpu "gpu:compile_model=True"``.

The first mode is the reference: for each other mode, model and seed the report adds the speed-up per training epoch
and to the same metric: the time the run took (pretraining, training and validations) to first validate at or above
the reference run's best validation score (``valid_metric``, NDCG@10 by default), against the reference's time to that
best. A run that never reached it counts as not reached. ``--logs DIR`` keeps every run's log, a failed run's too
(its warnings, e.g. of compiled steps run without CUDA graphs); the runs' other files go with the bench's temporary
folder.
"""

from __future__ import annotations

import argparse
import re
import shutil
import statistics
import subprocess
import sys
import tempfile
import threading
from collections.abc import Callable, Iterator
from concurrent.futures import ThreadPoolExecutor
from contextlib import contextmanager
from pathlib import Path

from common import (log_timings, machine_name, prepare_data, provenance_lines, row, run_model, split_records,
                    write_outputs)

from recbole_qrec.results import git_state

MODELS = ["GRU4Rec", "SASRec", "BERT4Rec", "FDSA", "QBert4Rec", "TIGER", "MQL4GRec"]
FIRST_SEED = 2020
COLUMNS = ["model", "data_path_mode", "seed", "epochs", "train_s_per_epoch", "train_s_after_first",
           "pretrain_s_per_epoch", "eval_s", "best_epoch", "time_to_best_s",
           "wall_time_s", "hit@10", "ndcg@10", "gpu_busy"]
MEANS = ["train_s_per_epoch", "train_s_after_first", "pretrain_s_per_epoch", "eval_s", "time_to_best_s", "wall_time_s",
         "hit@10", "ndcg@10", "gpu_busy"]


class GpuBusy:
    """Samples GPU 0's utilisation (percent of time a kernel ran; NVML through ``pynvml``, else ``nvidia-smi``) every
    ``interval`` seconds while its block runs; :attr:`fraction` is their mean / 100, None without either."""

    def __init__(self, interval: float = 0.5):
        self.interval, self.samples, self.fraction = interval, [], None
        self.read = nvml_reader() or nvidia_smi_reader()

    def sample(self, stop: threading.Event) -> None:
        while not stop.wait(self.interval):
            value = self.read()
            if value is not None:
                self.samples.append(value)

    @contextmanager
    def running(self) -> Iterator[GpuBusy]:
        stop = threading.Event()
        thread = threading.Thread(target=self.sample, args=(stop,), daemon=True) if self.read else None
        if thread:
            thread.start()
        try:
            yield self
        finally:
            stop.set()
            if thread:
                thread.join()
            self.fraction = round(statistics.mean(self.samples) / 100, 3) if self.samples else None


def nvml_reader() -> Callable[[], int | None] | None:
    """A reader of GPU 0's utilisation through NVML (``pynvml``); None without it or without a GPU."""
    try:
        import pynvml
    except ImportError:
        return None
    try:
        pynvml.nvmlInit()
        handle = pynvml.nvmlDeviceGetHandleByIndex(0)
    except pynvml.NVMLError:  # no driver or no GPU
        return None
    return lambda: pynvml.nvmlDeviceGetUtilizationRates(handle).gpu


def nvidia_smi_reader() -> Callable[[], int | None] | None:
    """A reader of GPU 0's utilisation through ``nvidia-smi``; None without it."""
    command = shutil.which("nvidia-smi")
    if command is None:
        return None

    def read() -> int | None:
        done = subprocess.run([command, "--query-gpu=utilization.gpu", "--format=csv,noheader,nounits", "--id=0"],
                              capture_output=True, text=True, check=False)
        return int(done.stdout.strip()) if done.returncode == 0 and done.stdout.strip().isdigit() else None

    return read


def run_group(models: list[str], mode: str, seed: int, args: argparse.Namespace, data: Path, work: Path) -> list[dict]:
    """Run ``models`` in ``mode`` with ``seed`` (at once with ``--parallel``); their rows, records added. A run that
    fails is reported and left out."""
    folder = work / f"{re.sub(r'[^A-Za-z0-9_.-]', '_', mode)}-{seed}"
    folder.mkdir(parents=True, exist_ok=True)
    data_path_mode, _, settings = mode.partition(":")
    overrides = [f"--data_path={data}", f"--data_path_mode={data_path_mode}", f"--seed={seed}",
                 *(f"--{item}" for item in settings.split("+") if item),
                 f"--checkpoint_dir={folder / 'saved'}", *(["--allow_data_mismatch=True"] if args.users else []),
                 *(f"--{item}" for item in args.set)]

    def kept_log(model: str) -> Path:
        log = folder / f"{model}.log"
        if args.logs:
            (args.logs / folder.name).mkdir(parents=True, exist_ok=True)
            shutil.copy(log, args.logs / folder.name / log.name)
        return log

    def run(model: str) -> dict | None:
        try:
            return run_model(model, args.dataset, overrides, folder, folder)
        except RuntimeError as err:
            kept_log(model)  # it says why
            print(f"{model} {mode} seed {seed}: {err}", flush=True)
            return None

    def finished(record: dict, busy: GpuBusy) -> dict:
        timings = log_timings(kept_log(record["model"]).read_text(encoding="utf-8"))
        done = {**row(record, mode, timings, busy.fraction), "record": record}
        print(f"{record['model']} {mode} seed {seed}: {done['train_s_per_epoch']} s/epoch, {done['eval_s']} "
              f"s/validation, {done['time_to_best_s']} s to the best epoch, ndcg@10 {done['ndcg@10']:.4f}", flush=True)
        return done

    if args.parallel:
        with GpuBusy().running() as shared, ThreadPoolExecutor(len(models)) as pool:
            records = list(pool.map(run, models))
        return [finished(record, shared) for record in records if record is not None]
    rows = []
    for model in models:
        with GpuBusy().running() as busy:
            record = run(model)
        if record is not None:
            rows.append(finished(record, busy))
    return rows


def mean_std(values: list) -> str:
    values = [value for value in values if value is not None]
    if not values:
        return ""
    digits = 0 if all(isinstance(value, int) for value in values) else 4 if max(values) < 1 else 2
    text = f"{statistics.mean(values):.{digits}f}"
    return f"{text} ± {statistics.stdev(values):.{digits}f}" if len(values) > 1 else text


def time_to_score(validations: list[list[float]], score: float) -> float | None:
    """Seconds to the first validation at or above ``score`` (None: none was)."""
    return next((seconds for seconds, value in validations if value >= score), None)


def speedups(rows: list[dict], reference: str) -> list[dict]:
    """For each run of a mode other than ``reference`` whose model and seed also ran in ``reference``: the reference's
    best validation score, the speed-up per training epoch, the seconds to reach that score and the speed-up to it."""
    base = {(item["model"], item["seed"]): item for item in rows if item["data_path_mode"] == reference}
    result = []
    for item in rows:
        matched = base.get((item["model"], item["seed"]))
        if item["data_path_mode"] == reference or matched is None or not matched["validations"]:
            continue
        target = max(score for _, score in matched["validations"])
        reached = time_to_score(item["validations"], target)
        result.append({"model": item["model"], "data_path_mode": item["data_path_mode"], "seed": item["seed"],
                       "reference_best_valid": target,
                       "epoch_speedup": round(matched["train_s_per_epoch"] / item["train_s_per_epoch"], 2),
                       "time_to_reference_best_s": reached,
                       "speedup_to_reference_best": None if reached is None
                       else round(matched["time_to_best_s"] / reached, 2)})
    return result


def speedup_markdown(items: list[dict], reference: str) -> str:
    """Mean ± std over the seeds of each (model, mode) of ``items`` (:func:`speedups` over ``reference``), with how many
    seeds reached the score."""
    columns = ["model", "data_path_mode", "seeds", "epoch_speedup", "time_to_reference_best_s",
               "speedup_to_reference_best", "reached"]
    lines = [f"## Speed-up over `{reference}`", "", "epoch_speedup: the reference's seconds per training epoch over the "
             "mode's; time_to_reference_best_s: seconds (pretraining, training, validations) to first validate at or "
             "above the reference run's best validation score (same model and seed); speedup_to_reference_best: the "
             "reference's time to its best over that; reached: seeds that got there", "",
             "| " + " | ".join(columns) + " |", "|" + "---|" * len(columns)]
    groups: dict[tuple[str, str], list[dict]] = {}
    for item in items:
        groups.setdefault((item["model"], item["data_path_mode"]), []).append(item)
    for (model, mode), runs in groups.items():
        reached = [run for run in runs if run["time_to_reference_best_s"] is not None]
        cells = [model, mode, str(len(runs)), mean_std([run["epoch_speedup"] for run in runs]),
                 mean_std([run["time_to_reference_best_s"] for run in reached]),
                 mean_std([run["speedup_to_reference_best"] for run in reached]), f"{len(reached)}/{len(runs)}"]
        lines.append("| " + " | ".join(cells) + " |")
    return "\n".join(lines) + "\n"


def markdown(rows: list[dict], header: list[str]) -> str:
    """Mean ± std over the seeds of each (model, mode), in run order."""
    columns = ["model", "data_path_mode", "seeds", "epochs", *MEANS]
    lines = [*header, "", "| " + " | ".join(columns) + " |", "|" + "---|" * len(columns)]
    groups: dict[tuple[str, str], list[dict]] = {}
    for item in rows:
        groups.setdefault((item["model"], item["data_path_mode"]), []).append(item)
    for (model, mode), runs in groups.items():
        cells = [model, mode, str(len(runs)), mean_std([run["epochs"] for run in runs]),
                 *(mean_std([run[column] for run in runs]) for column in MEANS)]
        lines.append("| " + " | ".join(cells) + " |")
    return "\n".join(lines) + "\n"


def main() -> None:
    parser = argparse.ArgumentParser(prog="python bench/train_speed.py", description=__doc__.split("\n\n")[0])
    parser.add_argument("--dataset", default="Instruments")
    parser.add_argument("--models", nargs="+", default=MODELS)
    parser.add_argument("--modes", nargs="+", default=["recbole", "gpu"],
                        help="data_path_mode of each run group, optionally with settings: gpu:KEY=VALUE+KEY=VALUE")
    parser.add_argument("--seeds", type=int, default=1, help=f"runs per model and mode, seeds {FIRST_SEED}, ...")
    parser.add_argument("--parallel", action="store_true", help="run the models of a mode and seed at once")
    parser.add_argument("--users", type=int, help="only the dataset's first USERS users (a quick check)")
    parser.add_argument("--data_path", help="processed data root (default: $QREC_DATA_DIR)")
    parser.add_argument("--set", nargs="*", default=[], metavar="KEY=VALUE", help="settings of every run")
    parser.add_argument("--commit", help="this checkout's commit, where git cannot tell (a copied tree)")
    parser.add_argument("--out", type=Path, required=True, help="output prefix")
    parser.add_argument("--logs", type=Path, help="keep each run's RecBole log here, as MODE-SEED/MODEL.log")
    args = parser.parse_args()
    if args.seeds < 1:
        parser.error("--seeds must be at least 1")
    if args.logs and args.logs.exists() and not args.logs.is_dir():
        parser.error(f"--logs {args.logs} is a file — give a folder (made if missing)")
    commit = args.commit or git_state()[0]
    command = "python bench/train_speed.py " + " ".join(sys.argv[1:])
    header = ["# Training and evaluation speed by data path", "", *provenance_lines(command, commit),
              f"- {'the models of a mode and seed at once on one GPU' if args.parallel else 'one run at a time'}; "
              "mean ± std over seeds; train_s_per_epoch excludes validation (train_s_after_first: without the first epoch, "
              "which compiles a compiled model); pretrain_s_per_epoch: a pretraining epoch; eval_s: seconds per validation; "
              "time_to_best_s: pretraining + training + validations up to the best validation NDCG@10; test HR@10, "
              "NDCG@10; gpu_busy: mean GPU utilisation over the whole run, start-up included (shared by the runs of "
              "a group with --parallel)"]
    rows: list[dict] = []

    def write() -> None:
        reference = args.modes[0]
        over_reference = speedups(rows, reference)
        payload = {"command": command, "commit": commit, "machine": machine_name(), "parallel": args.parallel,
                   "reference_mode": reference, "speedups": over_reference, **split_records(rows)}
        report = markdown(rows, header) + (f"\n{speedup_markdown(over_reference, reference)}"
                                           if len(args.modes) > 1 else "")
        write_outputs(args.out, payload, rows, report, COLUMNS)

    # Outputs are rewritten after every group of runs (each model and mode, or each mode with --parallel), so a
    # bench stopped part-way keeps what it finished.
    groups = [(args.models, mode) for mode in args.modes] if args.parallel else \
        [([model], mode) for model in args.models for mode in args.modes]
    with tempfile.TemporaryDirectory() as tmp:
        data = prepare_data(args.dataset, Path(tmp), args.users, args.data_path)
        for seed in range(FIRST_SEED, FIRST_SEED + args.seeds):
            for models, mode in groups:
                rows += run_group(models, mode, seed, args, data, Path(tmp) / "runs")
                write()


if __name__ == "__main__":
    main()
