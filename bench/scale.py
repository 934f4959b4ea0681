"""Scale check: one training epoch and one full-ranking evaluation of each model on a synthetic catalogue (default
1M items, 10M interactions), with the time of each step and the peak GPU memory.

The synthetic dataset ``Synthetic`` has Zipf-distributed item popularity, user histories of 5 to 35 items and random
4-level text and image codes per item (what QBert4Rec's tokenize stage reads, like the converted Amazon code files).
Each (model, mode) builds its dataset and loaders as the entry point does, then trains one epoch
(``Trainer._train_epoch``) and ranks all items for every test user (``Trainer.evaluate``). Written to ``<out>.md``
and ``<out>.json``:

    python bench/scale.py --models SASRec QBert4Rec --modes gpu --commit <sha> --out docs/results/scale \\
        --set injection_epochs=1 sid_epochs=1
"""

from __future__ import annotations

import argparse
import gc
import sys
import tempfile
import time
from pathlib import Path

import torch
from common import SYNTHETIC, machine_name, provenance_lines, synchronize, write_synthetic
from recbole.utils import init_seed

from recbole_qrec.config import build_config
from recbole_qrec.data import check_dataset, create_dataset, data_preparation
from recbole_qrec.fileio import atomic_open, write_json_atomic
from recbole_qrec.results import git_state
from recbole_qrec.tokenize import ensure_semantic_ids
from recbole_qrec.trainer import get_trainer
from recbole_qrec.utils import get_model

COLUMNS = ["model", "data_path_mode", "train_batch_size", "prepare_s", "train_epoch_s", "full_eval_s", "peak_gpu_gib",
           "ndcg@10"]


def peak_gib(device: torch.device) -> float | None:
    return round(torch.cuda.max_memory_allocated(device) / 2**30, 2) if device.type == "cuda" else None


def measure(model: str, mode: str, data: Path, work: Path, settings: list[str]) -> dict:
    """Build ``model``'s data in ``mode``, train one epoch and evaluate on the test users; the timings."""
    args = [f"--data_path={data}", f"--data_path_mode={mode}", f"--checkpoint_dir={work / 'saved'}",
            "--show_progress=False", *(f"--{item}" for item in settings)]
    config = build_config(model, SYNTHETIC, cmd_args=args)
    device = torch.device(config["device"])
    torch.set_float32_matmul_precision(config["float32_matmul_precision"])  # as the entry point sets it
    if device.type == "cuda":
        torch.cuda.reset_peak_memory_stats(device)
    start = time.perf_counter()
    check_dataset(config)
    ensure_semantic_ids(config)
    init_seed(config["seed"], config["reproducibility"])
    train, _, test, _ = data_preparation(config, create_dataset(config))
    trainer = get_trainer(config["MODEL_TYPE"], model)(config, get_model(model)(config, train._dataset).to(device))
    prepared = time.perf_counter()
    print(f"{model} {mode}: prepared in {prepared - start:.1f} s ({len(train._dataset)} training rows)", flush=True)
    trainer._train_epoch(train, 0)
    synchronize(device)
    trained = time.perf_counter()
    print(f"{model} {mode}: one training epoch in {trained - prepared:.1f} s", flush=True)
    row = {"model": model, "data_path_mode": mode, "train_batch_size": config["train_batch_size"],
           "prepare_s": round(prepared - start, 1), "train_epoch_s": round(trained - prepared, 2),
           "users": test._dataset.user_num - 1, "items": train._dataset.item_num - 1,
           "training_rows": len(train._dataset)}
    try:
        result = trainer.evaluate(test, load_best_model=False)
    except torch.OutOfMemoryError as err:  # the row keeps the phases measured before
        error = str(err).split("\n")[0]
        print(f"{model} {mode}: evaluation failed: {error}", flush=True)
        return {**row, "full_eval_s": None, "ndcg@10": None, "peak_gpu_gib": peak_gib(device),
                "evaluation_error": error}
    synchronize(device)
    return {**row, "full_eval_s": round(time.perf_counter() - trained, 2), "peak_gpu_gib": peak_gib(device),
            "ndcg@10": float(result["ndcg@10"])}


def write_report(args: argparse.Namespace, rows: list[dict]) -> None:
    """``<args.out>.md`` and ``.json`` of the rows measured so far."""
    commit = args.commit or git_state()[0]
    command = "python bench/scale.py " + " ".join(sys.argv[1:])
    lines = ["# Scale: one epoch and one full-ranking evaluation on a synthetic catalogue", "",
             *provenance_lines(command, commit),
             f"- data: {rows[0]['items']} items, {rows[0]['users']} users, about {args.interactions} interactions "
             "(Zipf popularity, histories of 5-35 items, random codes)",
             "- prepare_s: tokenize stage (QBert4Rec), dataset, loaders and model; peak_gpu_gib: "
             "torch.cuda.max_memory_allocated over the whole run", "",
             "| " + " | ".join(COLUMNS) + " |", "|" + "---|" * len(COLUMNS)]
    lines += ["| " + " | ".join("" if row[column] is None else str(row[column]) for column in COLUMNS) + " |"
              for row in rows]
    with atomic_open(args.out.with_suffix(".md"), "w", encoding="utf-8") as handle:
        handle.write("\n".join(lines) + "\n")
    write_json_atomic(args.out.with_suffix(".json"), {"command": command, "commit": commit, "machine": machine_name(),
                                                      "rows": rows})


def main() -> None:
    parser = argparse.ArgumentParser(prog="python bench/scale.py", description=__doc__.split("\n\n")[0])
    parser.add_argument("--items", type=int, default=1_000_000)
    parser.add_argument("--interactions", type=int, default=10_000_000)
    parser.add_argument("--models", nargs="+", default=["SASRec", "QBert4Rec"])
    parser.add_argument("--modes", nargs="+", default=["gpu"])
    parser.add_argument("--set", nargs="*", default=[], metavar="KEY=VALUE", help="settings of every run")
    parser.add_argument("--commit", help="this checkout's commit, where git cannot tell (a copied tree)")
    parser.add_argument("--out", type=Path, required=True, help="output prefix")
    args = parser.parse_args()
    rows = []
    with tempfile.TemporaryDirectory() as tmp:
        data = write_synthetic(Path(tmp) / "data", args.items, args.interactions, seed=2020)
        for model in args.models:
            for mode in args.modes:
                rows.append(measure(model, mode, data, Path(tmp), args.set))
                print(rows[-1], flush=True)
                write_report(args, rows)  # after every row: a run stopped later keeps the rows measured
                gc.collect()
                torch.cuda.empty_cache()


if __name__ == "__main__":
    main()
