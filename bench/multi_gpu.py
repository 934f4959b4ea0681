"""Multi-GPU training: the same runs (global batch, seed, settings) on 1, 2 and 4 GPUs through DistributedDataParallel.

Each (dataset, model, GPU count) runs through the entry point with ``--nproc=<GPUs>`` (one process per GPU, NCCL;
with ``--device cpu`` one gloo process per "GPU"). From its record and log (RecBole's per-epoch lines, written by
rank 0): seconds per training epoch, the speed-up over 1 GPU, the time to the best validation NDCG@10, test HR@10 and
NDCG@10, and the users of its test evaluation (the "evaluated N users on K processes" line), checked against the
distinct users of the test split: every test user evaluated exactly once. Datasets: processed ones (``Games``, the
largest shared one) and ``synthetic``, the catalogue of ``bench/scale.py`` (default 1M items, 10M interactions).
With ``--sweep-trials N`` it also measures sweep throughput: N trials of ``recbole-qrec sweep`` (the first model,
random learning rates) with ``--parallel <GPUs> --gpus 0,...``, one trial per GPU, in trials per hour. Written to
``<out>.md``, ``<out>.csv`` (one row per run) and ``<out>.json`` (rows, sweep rows and records):

    python bench/multi_gpu.py --gpus 1 2 4 --commit <sha> --out docs/results/multi_gpu --set epochs=20 \\
        --sweep-trials 8
"""

from __future__ import annotations

import argparse
import re
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import numpy as np
import yaml
from common import (COLOUR, REPO_ROOT, SYNTHETIC, load_data, log_timings, machine_name, make_config, prepare_data,
                    provenance_lines, row, run_model, split_records, write_outputs, write_synthetic)

from recbole_qrec.data import check_dataset
from recbole_qrec.results import git_state
from recbole_qrec.tokenize import ensure_semantic_ids

SEED = 2020
COLUMNS = ["dataset", "model", "gpus", "epochs", "train_s_per_epoch", "speedup", "best_epoch", "time_to_best_s",
           "time_to_best_speedup", "wall_time_s", "hit@10", "ndcg@10", "test_users", "evaluated_users",
           "each_user_once"]
SWEEP_COLUMNS = ["dataset", "model", "gpus", "trials", "wall_time_s", "trials_per_hour", "speedup"]
# The line DistributedTrainerMixin.evaluate logs after each evaluation (the last one is the test evaluation).
EVALUATED = re.compile(r"evaluated (\d+) users on (\d+) processes")


def device_args(device: str, gpus: int) -> list[str]:
    """``gpus`` CUDA devices (0, 1, ...) or, with ``--device cpu``, none (gloo processes)."""
    if device == "cpu":
        return ["--use_gpu=False", "--gpu_id="]
    return ["--use_gpu=True", f"--gpu_id={','.join(map(str, range(gpus)))}"]


def test_users(model: str, dataset: str, data: Path, work: Path, device: str, settings: list[str]) -> int:
    """The distinct users of ``model``'s test split, built as the entry point builds it (its tokenize stage runs here,
    on ``device``, and writes the semantic IDs that the runs then find up to date)."""
    config = make_config(model, dataset, data, work, device, settings)
    check_dataset(config)
    ensure_semantic_ids(config)
    _, _, _, test = load_data(config)
    return int(np.unique(test._dataset.inter_feat[test._dataset.uid_field].numpy()).size)


def run(model: str, dataset: str, gpus: int, data: Path, folder: Path, args: argparse.Namespace) -> dict:
    """One run on ``gpus`` GPUs (processes): its table row, record added."""
    folder.mkdir(parents=True)
    overrides = [f"--data_path={data}", f"--checkpoint_dir={folder / 'saved'}", f"--seed={SEED}",
                 "--show_progress=False", f"--nproc={gpus}", *device_args(args.device, gpus),
                 *(["--allow_data_mismatch=True"] if args.users else []), *(f"--{item}" for item in args.set)]
    record = run_model(model, dataset, overrides, folder, folder)
    log = COLOUR.sub("", (folder / f"{model}.log").read_text(encoding="utf-8"))
    timed = row(record, "", log_timings(log), None)
    evaluated = EVALUATED.findall(log)
    if gpus > 1 and (not evaluated or int(evaluated[-1][1]) != gpus):
        raise RuntimeError(f"{model} on {gpus} processes logged no 'evaluated N users on {gpus} processes' line — "
                           f"see {folder / f'{model}.log'}")
    return {"dataset": dataset, "model": model, "gpus": record["processes"],
            **{key: timed[key] for key in ("epochs", "train_s_per_epoch", "best_epoch", "time_to_best_s", "wall_time_s",
                                           "hit@10", "ndcg@10")},
            "evaluated_users": int(evaluated[-1][0]) if evaluated else None, "record": record}


def add_speedups(rows: list[dict], keys: dict[str, str], group: tuple[str, ...]) -> None:
    """``rows[i][speedup] = base / rows[i][key]`` for each ``key: speedup``, base the 1-GPU row of the same group."""
    base = {tuple(item[g] for g in group): item for item in rows if item["gpus"] == 1}
    for item in rows:
        one = base.get(tuple(item[g] for g in group))
        for key, speedup in keys.items():
            item[speedup] = round(one[key] / item[key], 2) if one and one[key] and item[key] else None


def sweep_throughput(model: str, dataset: str, gpus: int, data: Path, folder: Path, args: argparse.Namespace) -> dict:
    """``--sweep-trials`` trials of ``model`` (random learning rates), ``gpus`` at a time, one per GPU."""
    folder.mkdir(parents=True)
    fixed = {key: yaml.safe_load(value) for key, value in (item.split("=", 1) for item in args.set)}
    fixed.update(data_path=str(data), show_progress=False,
                 **({"use_gpu": False, "gpu_id": ""} if args.device == "cpu" else {"use_gpu": True}),
                 **({"allow_data_mismatch": True} if args.users else {}))
    spec = {"model": model, "dataset": dataset, "fixed": fixed,
            "space": {"learning_rate": {"loguniform": [1.0e-4, 1.0e-2]}}, "algorithm": "random",
            "trials": args.sweep_trials, "seeds": [SEED]}
    (folder / "sweep.yaml").write_text(yaml.safe_dump(spec, sort_keys=False), encoding="utf-8")
    command = [sys.executable, "-m", "recbole_qrec", "sweep", str(folder / "sweep.yaml"), "--out", str(folder / "out"),
               "--parallel", str(gpus), *(["--gpus", ",".join(map(str, range(gpus)))] if args.device != "cpu" else [])]
    start = time.perf_counter()
    with open(folder / "sweep.log", "w", encoding="utf-8") as log:
        code = subprocess.run(command, cwd=REPO_ROOT, stdout=log, stderr=subprocess.STDOUT, check=False).returncode
    seconds = time.perf_counter() - start
    if code != 0:
        raise RuntimeError(f"the sweep on {gpus} GPUs failed with exit status {code} — see {folder / 'sweep.log'}")
    return {"dataset": dataset, "model": model, "gpus": gpus, "trials": args.sweep_trials,
            "wall_time_s": round(seconds, 1), "trials_per_hour": round(args.sweep_trials * 3600 / seconds, 1)}


def cell(value: object, column: str) -> str:
    return "" if value is None else f"{value:.4f}" if column in ("hit@10", "ndcg@10") else str(value)


def table(rows: list[dict], columns: list[str]) -> list[str]:
    return ["| " + " | ".join(columns) + " |", "|" + "---|" * len(columns),
            *("| " + " | ".join(cell(item[c], c) for c in columns) + " |" for item in rows)]


def main() -> None:
    parser = argparse.ArgumentParser(prog="python bench/multi_gpu.py", description=__doc__.split("\n\n")[0])
    parser.add_argument("--datasets", nargs="+", default=["Games", "synthetic"],
                        help="processed datasets, or synthetic (the catalogue of bench/scale.py)")
    parser.add_argument("--models", nargs="+", default=["SASRec", "QBert4Rec"])
    parser.add_argument("--gpus", type=int, nargs="+", default=[1, 2], help="GPU counts (processes with --device cpu)")
    parser.add_argument("--device", choices=["cuda", "cpu"], default="cuda",
                        help="cpu: gloo processes stand in for the GPUs (a check of the harness)")
    parser.add_argument("--synthetic-items", type=int, default=1_000_000)
    parser.add_argument("--synthetic-interactions", type=int, default=10_000_000)
    parser.add_argument("--users", type=int, help="only a processed dataset's first USERS users (a quick check)")
    parser.add_argument("--sweep-trials", type=int, default=0, metavar="N",
                        help="also time a sweep of N trials of the first model per GPU count (default: no sweep)")
    parser.add_argument("--data_path", help="processed data root (default: $QREC_DATA_DIR)")
    parser.add_argument("--set", nargs="*", default=[], metavar="KEY=VALUE", help="settings of every run")
    parser.add_argument("--commit", help="this checkout's commit, where git cannot tell (a copied tree)")
    parser.add_argument("--out", type=Path, default=Path("docs/results/multi_gpu"), help="output prefix")
    args = parser.parse_args()
    if min(args.gpus) < 1 or args.sweep_trials < 0:
        parser.error("--gpus must be at least 1 and --sweep-trials at least 0")
    if any("=" not in item for item in args.set):
        parser.error("--set takes KEY=VALUE items")
    rows, sweeps = [], []
    with tempfile.TemporaryDirectory() as tmp:
        work = Path(tmp)
        for dataset in args.datasets:
            name = SYNTHETIC if dataset.lower() == "synthetic" else dataset
            data = (write_synthetic(work / name / "data", args.synthetic_items, args.synthetic_interactions, SEED)
                    if name == SYNTHETIC else prepare_data(name, work / name, args.users, args.data_path))
            for model in args.models:
                users = test_users(model, name, data, work / name / "count", args.device, args.set)
                for gpus in args.gpus:
                    done = run(model, name, gpus, data, work / name / f"{model}-{gpus}", args)
                    done["test_users"] = users
                    done["each_user_once"] = done["evaluated_users"] in (None, users)  # one process ranks all
                    rows.append(done)
                    print(f"{name} {model} on {gpus}: {done['train_s_per_epoch']} s/epoch, {done['time_to_best_s']} s "
                          f"to the best epoch, ndcg@10 {done['ndcg@10']:.4f}, evaluated {done['evaluated_users']} of "
                          f"{users} test users", flush=True)
            for gpus in args.gpus if args.sweep_trials else []:
                sweeps.append(sweep_throughput(args.models[0], name, gpus, data, work / name / f"sweep-{gpus}", args))
                print(sweeps[-1], flush=True)
    add_speedups(rows, {"train_s_per_epoch": "speedup", "time_to_best_s": "time_to_best_speedup"},
                 ("dataset", "model"))
    add_speedups(sweeps, {"wall_time_s": "speedup"}, ("dataset",))  # the same trials: throughput ratio
    commit = args.commit or git_state()[0]
    command = "python bench/multi_gpu.py " + " ".join(sys.argv[1:])
    lines = ["# Multi-GPU training (DistributedDataParallel)", "", *provenance_lines(command, commit),
             f"- {'GPUs' if args.device == 'cuda' else 'gloo processes on the CPU'} per run; the same global batch "
             f"(train_batch_size split over the processes), seed {SEED} and settings; synthetic: "
             f"{args.synthetic_items} items, about {args.synthetic_interactions} interactions",
             "- train_s_per_epoch excludes validation; speedup: 1-GPU seconds per epoch / these; time_to_best_s: "
             "training and validations up to the best validation NDCG@10 (time_to_best_speedup likewise); test HR@10, "
             "NDCG@10; evaluated_users: users of the test evaluation as logged by the processes together (one process "
             "ranks every user), each_user_once: it equals test_users, the distinct users of the test split",
             "", *table(rows, COLUMNS)]
    if sweeps:
        lines += ["", "## Sweep throughput", "", f"{args.sweep_trials} trials of `recbole-qrec sweep` (random "
                  "learning rates), `--parallel <GPUs> --gpus 0,...`: one trial per GPU; speedup: over 1 GPU", "",
                  *table(sweeps, SWEEP_COLUMNS)]
    payload = {"command": command, "commit": commit, "machine": machine_name(), "device": args.device,
               "sweeps": sweeps, **split_records(rows)}
    write_outputs(args.out, payload, rows, "\n".join(lines) + "\n", COLUMNS)
    if not all(item["each_user_once"] for item in rows):
        sys.exit(f"error: a run did not evaluate every test user exactly once — see each_user_once in {args.out}.md")


if __name__ == "__main__":
    main()
