"""Training speed of each training data path (``data_path_mode``) with the same models, settings and seed.

Each model runs through the entry point once per mode, one run at a time (so the timings do not share the
machine); every record's seconds per training epoch, wall time and test metrics go to ``<out>.md``,
``<out>.csv`` and ``<out>.json``:

    python bench/train_speed.py --dataset Instruments --models SASRec GRU4Rec --modes recbole gpu \\
        --out docs/results/train_speed --set epochs=10 eval_step=5
"""

from __future__ import annotations

import argparse
import csv
import sys
import tempfile
from datetime import datetime, timezone
from pathlib import Path

from common import METRICS, machine_name, prepare_data, run_model

from recbole_qrec.fileio import atomic_open, write_json_atomic
from recbole_qrec.results import git_state

COLUMNS = ["model", "data_path_mode", "epochs", "train_seconds_per_epoch", "wall_time_s", *METRICS]


def row(record: dict, mode: str) -> dict:
    return {"model": record["model"], "data_path_mode": mode, "epochs": record["epochs"],
            "train_seconds_per_epoch": record["train_seconds_per_epoch"], "wall_time_s": record["wall_time_s"],
            **{metric: record["test"][metric] for metric in METRICS}}


def markdown(rows: list[dict], header: list[str]) -> str:
    lines = [*header, "", "| " + " | ".join(COLUMNS) + " |", "|" + "---|" * len(COLUMNS)]
    for item in rows:
        lines.append("| " + " | ".join(f"{item[c]:.4f}" if c in METRICS else str(item[c]) for c in COLUMNS) + " |")
    return "\n".join(lines) + "\n"


def main() -> None:
    parser = argparse.ArgumentParser(prog="python bench/train_speed.py", description=__doc__.split("\n\n")[0])
    parser.add_argument("--dataset", default="Instruments")
    parser.add_argument("--models", nargs="+", default=["SASRec", "GRU4Rec", "FDSA"])
    parser.add_argument("--modes", nargs="+", default=["recbole", "gpu"])
    parser.add_argument("--data_path", help="processed data root (default: $QREC_DATA_DIR)")
    parser.add_argument("--set", nargs="*", default=[], metavar="KEY=VALUE", help="settings of every run")
    parser.add_argument("--commit", help="this checkout's commit, where git cannot tell (a copied tree)")
    parser.add_argument("--out", type=Path, required=True, help="output prefix")
    args = parser.parse_args()
    rows, records = [], []
    with tempfile.TemporaryDirectory() as tmp:
        data = prepare_data(args.dataset, Path(tmp), None, args.data_path)
        for model in args.models:
            for mode in args.modes:
                overrides = [f"--data_path={data}", f"--data_path_mode={mode}", f"--checkpoint_dir={tmp}/saved",
                             *(f"--{item}" for item in args.set)]
                record = run_model(model, args.dataset, overrides, Path(tmp) / mode, Path(tmp))
                records.append(record)
                rows.append(row(record, mode))
                print(f"{model} {mode}: {rows[-1]['train_seconds_per_epoch']} s/epoch, "
                      f"ndcg@10 {rows[-1]['ndcg@10']:.4f}", flush=True)
    commit = args.commit or git_state()[0]
    command = "python bench/train_speed.py " + " ".join(sys.argv[1:])
    header = ["# Training speed by data path", "", f"- command: `{command}`", f"- commit: {commit}",
              f"- machine: {machine_name()}", f"- date: {datetime.now(timezone.utc).isoformat(timespec='minutes')}",
              "- one run at a time; train_seconds_per_epoch excludes validation"]
    with atomic_open(args.out.with_suffix(".md"), "w", encoding="utf-8") as handle:
        handle.write(markdown(rows, header))
    with atomic_open(args.out.with_suffix(".csv"), "w", newline="", encoding="utf-8") as handle:
        writer = csv.DictWriter(handle, fieldnames=COLUMNS)
        writer.writeheader()
        writer.writerows(rows)
    write_json_atomic(args.out.with_suffix(".json"), {"command": command, "commit": commit, "records": records})


if __name__ == "__main__":
    main()
