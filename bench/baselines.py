"""Train several models side by side on one dataset and write a comparison table.

Each model runs ``run_recbole_qrec.py`` in its own process (``--parallel`` at a time, sharing
the GPU); every run's JSON result line is collected into ``<out>.json``, ``<out>.csv`` and a
Markdown table ``<out>.md`` that records the exact command, machine and date.

    python bench/baselines.py --dataset Instruments --models GRU4Rec SASRec BERT4Rec FDSA \
        --out docs/results/baselines_instruments [--key=value ...]
"""

from __future__ import annotations

import argparse
import csv
import json
import platform
import shlex
import subprocess
import sys
import tempfile
from concurrent.futures import ThreadPoolExecutor
from datetime import datetime, timezone
from pathlib import Path

import torch

REPO_ROOT = Path(__file__).resolve().parents[1]
METRICS = ["hit@1", "hit@5", "hit@10", "ndcg@5", "ndcg@10"]
COLUMNS = ["model", "epochs", "train_seconds_per_epoch", "wall_time_s", *METRICS]

sys.path.insert(0, str(REPO_ROOT))
from recbole_qrec.fileio import atomic_open, write_json_atomic  # noqa: E402


def machine_name() -> str:
    gpu = torch.cuda.get_device_name(0) if torch.cuda.is_available() else "no GPU"
    return f"{gpu}; {platform.processor() or platform.machine()}; torch {torch.__version__}"


def synchronize(device: torch.device) -> None:
    """Wait for ``device``'s queued work (a no-op off CUDA), so that wall-clock timings cover it."""
    if device.type == "cuda":
        torch.cuda.synchronize(device)


def run_model(model: str, dataset: str, overrides: list[str], results_dir: Path, log_dir: Path) -> dict:
    """Run one model to completion and return its recorded result line."""
    command = [sys.executable, str(REPO_ROOT / "run_recbole_qrec.py"), f"--model={model}", f"--dataset={dataset}",
               f"--results_dir={results_dir / model}", *overrides]
    log_file = log_dir / f"{model}.log"
    with open(log_file, "w", encoding="utf-8") as log:
        code = subprocess.run(command, cwd=REPO_ROOT, stdout=log, stderr=subprocess.STDOUT, check=False).returncode
    if code != 0:
        tail = log_file.read_text(encoding="utf-8").splitlines()[-20:]
        raise RuntimeError(f"{model} failed with exit code {code}:\n" + "\n".join(tail))
    lines = (results_dir / model / "results.jsonl").read_text(encoding="utf-8").splitlines()
    return json.loads(lines[-1])


def table_rows(results: list[dict]) -> list[dict]:
    return [
        {"model": r["model"], "epochs": r["epochs"], "train_seconds_per_epoch": r["train_seconds_per_epoch"],
         "wall_time_s": r["wall_time_s"], **{m: r["test"][m] for m in METRICS}}
        for r in results
    ]


def markdown(rows: list[dict], header: str) -> str:
    lines = [header, "", "| " + " | ".join(COLUMNS) + " |", "|" + "---|" * len(COLUMNS)]
    lines += ["| " + " | ".join(f"{row[c]:.4f}" if isinstance(row[c], float) and c in METRICS else str(row[c])
                                for c in COLUMNS) + " |" for row in rows]
    return "\n".join(lines) + "\n"


def write_outputs(out: Path, payload: dict, rows: list[dict], table: str) -> None:
    """``<out>.json`` (every record), ``<out>.csv`` (the table's rows) and ``<out>.md``, each written atomically."""
    write_json_atomic(out.with_suffix(".json"), payload)
    with atomic_open(out.with_suffix(".csv"), "w", newline="", encoding="utf-8") as handle:
        writer = csv.DictWriter(handle, fieldnames=COLUMNS)
        writer.writeheader()
        writer.writerows(rows)
    with atomic_open(out.with_suffix(".md"), "w", encoding="utf-8") as handle:
        handle.write(table)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--dataset", default="Instruments")
    parser.add_argument("--models", nargs="+", default=["GRU4Rec", "SASRec", "BERT4Rec", "FDSA"])
    parser.add_argument("--parallel", type=int, default=4, help="models trained at once")
    parser.add_argument("--work-dir", help="keep per-model logs and result lines here (default: a temporary folder)")
    parser.add_argument("--out", required=True, help="output path without extension, e.g. docs/results/baselines_instruments")
    args, overrides = parser.parse_known_args()
    command = "python " + " ".join(shlex.quote(a) for a in sys.argv)
    with tempfile.TemporaryDirectory() as tmp:
        work = Path(args.work_dir or tmp)
        work.mkdir(parents=True, exist_ok=True)
        with ThreadPoolExecutor(args.parallel) as pool:
            results = list(pool.map(lambda m: run_model(m, args.dataset, overrides, work, work), args.models))
    rows = table_rows(results)
    date = datetime.now(timezone.utc).strftime("%Y-%m-%d %H:%M UTC")
    header = (f"# {args.dataset}: test metrics (leave-one-out, full ranking)\n\n"
              f"- command: `{command}`\n- machine: {machine_name()}\n- date: {date}\n"
              f"- config hashes: " + ", ".join(f"{r['model']}={r['config_hash']}" for r in results))
    table = markdown(rows, header)
    print(table)
    payload = {"command": command, "machine": machine_name(), "date": date, "results": results}
    write_outputs(Path(args.out), payload, rows, table)


if __name__ == "__main__":
    main()
