"""Helpers shared by the benchmark scripts: machine description, timing, runs through the entry point,
result tables, and the harness's own data path, configs and models.

Scripts import it as ``common`` (Python puts a script's folder on ``sys.path``) and recbole-qrec as the
installed package. Processed datasets (``<name>/<name>.inter.json``, code files) are found under
``--data_path`` or, without it, ``$QREC_DATA_DIR``.
"""

from __future__ import annotations

import csv
import json
import platform
import re
import statistics
import subprocess
import sys
from datetime import datetime, timezone
from pathlib import Path

import numpy as np
import pandas as pd
import torch

from dataset_prep.convert import convert
from dataset_prep.locate import find_processed_dataset, search_roots
from dataset_prep.subset import write_user_subset
from recbole_qrec.config import build_config
from recbole_qrec.data import create_dataset, data_preparation
from recbole_qrec.fileio import atomic_open, write_json_atomic

REPO_ROOT = Path(__file__).resolve().parents[1]
METRICS = ["hit@1", "hit@5", "hit@10", "ndcg@5", "ndcg@10"]
COLUMNS = ["model", "pretrain_epochs", "epochs", "budget_stopped", "train_seconds_per_epoch", "wall_time_s", *METRICS]


def machine_name() -> str:
    gpu = torch.cuda.get_device_name(0) if torch.cuda.is_available() else "no GPU"
    return f"{gpu}; {platform.processor() or platform.machine()}; torch {torch.__version__}"


def provenance_lines(command: str, commit: str) -> list[str]:
    """A results file's ``- command``, ``- commit``, ``- machine`` and ``- date`` (now, UTC) lines."""
    return [f"- command: `{command}`", f"- commit: {commit}", f"- machine: {machine_name()}",
            f"- date: {datetime.now(timezone.utc).isoformat(timespec='minutes')}"]


def synchronize(device: torch.device) -> None:
    """Wait for ``device``'s queued work (a no-op off CUDA), so that wall-clock timings cover it."""
    if device.type == "cuda":
        torch.cuda.synchronize(device)


# Runs through the entry point, and their tables

def run_model(model: str, dataset: str, overrides: list[str], results_dir: Path, log_dir: Path) -> dict:
    """Run one model to completion through ``run_recbole_qrec.py`` and return its recorded result line."""
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
    """A row per result record: its pretraining and training epochs, whether its training budget
    (``train_time_limit``, pretraining included) stopped it before early stopping, its timings and test metrics."""
    return [
        {"model": r["model"], "pretrain_epochs": r.get("pretrain_epochs") or 0, "epochs": r["epochs"],
         "budget_stopped": "yes" if r.get("train_time_limit_reached") else "no",
         "train_seconds_per_epoch": r["train_seconds_per_epoch"], "wall_time_s": r["wall_time_s"],
         **{m: r["test"][m] for m in METRICS}}
        for r in results
    ]


def markdown(rows: list[dict], header: str, columns: list[str] = COLUMNS) -> str:
    lines = [header, "", "| " + " | ".join(columns) + " |", "|" + "---|" * len(columns)]
    lines += ["| " + " | ".join(f"{row[c]:.4f}" if isinstance(row[c], float) and c in METRICS else str(row[c])
                                for c in columns) + " |" for row in rows]
    return "\n".join(lines) + "\n"


def write_outputs(out: Path, payload: dict, rows: list[dict], table: str, columns: list[str] = COLUMNS) -> None:
    """``<out>.json`` (every record), ``<out>.csv`` (the table's ``columns`` of ``rows``) and ``<out>.md``, each
    written atomically."""
    out.parent.mkdir(parents=True, exist_ok=True)
    write_json_atomic(out.with_suffix(".json"), payload)
    with atomic_open(out.with_suffix(".csv"), "w", newline="", encoding="utf-8") as handle:
        writer = csv.DictWriter(handle, fieldnames=columns, extrasaction="ignore")
        writer.writeheader()
        writer.writerows(rows)
    with atomic_open(out.with_suffix(".md"), "w", encoding="utf-8") as handle:
        handle.write(table)


# Data, configs and models, as the entry point builds them

def processed_file(data_path: str | None, dataset: str, name: str) -> Path | None:
    """``<root>/<dataset>/<name>`` in the first processed-data root (``--data_path``, else ``$QREC_DATA_DIR``)
    that has it, or None."""
    paths = [root / dataset / name for root in search_roots(data_path)]
    return next((path for path in paths if path.is_file()), None)


def prepare_data(dataset: str, root: Path, users: int | None, data_path: str | None = None) -> Path:
    """Convert the processed dataset (under ``data_path``, else ``$QREC_DATA_DIR``; its first ``users`` users,
    if given) into ``<root>/data``; returns that RecBole data_path."""
    source = find_processed_dataset(dataset, data_path)
    if users:
        source = write_user_subset(dataset, source, root / "subset", users)
    convert(dataset, src=source, out=root / "data")
    return root / "data"


def device_args(device: str) -> list[str]:
    """RecBole selects its device through use_gpu / gpu_id."""
    if device == "cpu":
        return ["--use_gpu=False"]
    if device == "cuda" or device.startswith("cuda:"):
        return ["--use_gpu=True", f"--gpu_id={device.partition(':')[2] or 0}"]
    raise SystemExit(f"error: --device must be cpu, cuda or cuda:N, not {device!r}")


def make_config(model: str, dataset: str, data_path: Path, work: Path, device: str, overrides: list[str]):
    """The harness config of ``model`` on the atomic files under ``data_path`` (subsets allowed)."""
    args = [f"--data_path={data_path}", f"--checkpoint_dir={work / 'saved'}", "--show_progress=False",
            "--allow_data_mismatch=True", *device_args(device), *(f"--{item}" for item in overrides)]
    return build_config(model, dataset, cmd_args=args)


def load_data(config):
    """The dataset and its train/valid/test loaders, seeded as the entry point seeds them."""
    from recbole.utils import init_seed

    init_seed(config["seed"], config["reproducibility"])
    dataset = create_dataset(config)
    train, valid, test, _ = data_preparation(config, dataset)
    return dataset, train, valid, test


def build_model(config, train):
    """The model of ``config`` on the training split, seeded as the entry point seeds it, on the config's device."""
    from recbole.utils import init_seed

    from recbole_qrec.utils import get_model

    init_seed(config["seed"] + config["local_rank"], config["reproducibility"])
    return get_model(config["model"])(config, train._dataset).to(config["device"])

def split_records(rows: list[dict]) -> dict:
    """``rows`` without their ``record`` entries, and the records apart (the JSON of a timing bench)."""
    return {"rows": [{key: value for key, value in item.items() if key != "record"} for item in rows],
            "records": [item["record"] for item in rows]}


# Per-epoch timings of a run's log (RecBole's epoch lines), and the row of a timed run

TRAINED = re.compile(r"^.*?epoch (\d+) training \[time: ([\d.]+)s", re.MULTILINE)
VALIDATED = re.compile(r"^.*?epoch (\d+) evaluating \[time: ([\d.]+)s, valid_score: ([\d.eE+-]+|nan)\]", re.MULTILINE)
PRETRAINED = re.compile(r"^.*?pretrain epoch \d+ \[time: ([\d.]+)s", re.MULTILINE)
COLOUR = re.compile(r"\x1b\[[0-9;]*m")


def log_timings(log: str) -> dict:
    """Per-epoch training seconds, validations ``(epoch, seconds, score)`` and pretraining seconds of a run's log."""
    log = COLOUR.sub("", log)
    return {"train": {int(epoch): float(seconds) for epoch, seconds in TRAINED.findall(log)},
            "valid": [(int(epoch), float(seconds), float(score)) for epoch, seconds, score in VALIDATED.findall(log)],
            "pretrain": [float(seconds) for seconds in PRETRAINED.findall(log)]}


def validation_times(timings: dict) -> list[list[float]]:
    """``[seconds, score]`` of each validation of a run's log: the pretraining, training and validation seconds up to
    and including it, and its score (the ``valid_metric``)."""
    pretraining = sum(timings["pretrain"])
    return [[round(pretraining + sum(seconds for epoch, seconds in timings["train"].items() if epoch <= validated)
                   + sum(seconds for epoch, seconds, _ in timings["valid"] if epoch <= validated), 2), score]
            for validated, _, score in timings["valid"]]


def row(record: dict, mode: str, timings: dict, gpu_busy: float | None) -> dict:
    """The table row of one run: its record's metrics and the timings of its log (``validations``: see
    :func:`validation_times`)."""
    valid = timings["valid"]
    validations = validation_times(timings)
    best = max(range(len(valid)), key=lambda index: valid[index][2]) if valid else None  # the first best validation
    later = [seconds for epoch, seconds in sorted(timings["train"].items())[1:]]  # a compiled model's first epoch compiles
    return {"model": record["model"], "data_path_mode": mode, "seed": record["seed"], "epochs": record["epochs"],
            "train_s_per_epoch": record["train_seconds_per_epoch"],
            "train_s_after_first": round(statistics.mean(later), 3) if later else None,
            "pretrain_s_per_epoch": round(statistics.mean(timings["pretrain"]), 3) if timings["pretrain"] else None,
            "eval_s": round(statistics.mean(seconds for _, seconds, _ in valid), 3) if valid else None,
            "best_epoch": None if best is None else valid[best][0],
            "time_to_best_s": None if best is None else validations[best][0],
            "wall_time_s": record["wall_time_s"], "hit@10": record["test"]["hit@10"],
            "ndcg@10": record["test"]["ndcg@10"], "gpu_busy": gpu_busy, "validations": validations}


# A synthetic catalogue

SYNTHETIC = "Synthetic"


def write_synthetic(folder: Path, items: int, interactions: int, seed: int) -> Path:
    """``<folder>/Synthetic/Synthetic.{inter,item}`` (RecBole atomic files) as described above, up to ``items``
    items (the rarest may draw no interaction and are left out); returns the data_path."""
    rng = np.random.default_rng(seed)
    lengths = rng.integers(5, 36, size=max(interactions // 20, 1))
    lengths = lengths[: np.searchsorted(lengths.cumsum(), interactions) + 1]
    popularity = 1 / np.arange(1, items + 1) ** 0.8
    item_ids = rng.choice(items, size=int(lengths.sum()), p=popularity / popularity.sum())
    users = np.repeat(np.arange(len(lengths)), lengths)
    order = np.arange(len(users)) - np.repeat(lengths.cumsum() - lengths, lengths)  # position in the history
    out = folder / SYNTHETIC
    out.mkdir(parents=True)
    pd.DataFrame({"user_id:token": users, "item_id:token": item_ids, "timestamp:float": order}).to_csv(
        out / f"{SYNTHETIC}.inter", sep="\t", index=False)
    listed = np.unique(item_ids)  # the items with interactions (the rarest may have none)
    codes = {field: [" ".join(f"{prefix}_{code}" for prefix, code in zip(letters, row))
                     for row in rng.integers(0, 256, size=(len(listed), 4)).tolist()]
             for field, letters in (("text_codes:token_seq", "abcd"), ("image_codes:token_seq", "ABCD"))}
    pd.DataFrame({"item_id:token": listed, **codes}).to_csv(out / f"{SYNTHETIC}.item", sep="\t", index=False)
    return folder
