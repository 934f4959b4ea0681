"""Train and evaluate one model on one dataset, RecBole-style, and record the result.

``python run_recbole_qrec.py --model=SASRec --dataset=Instruments [--config_files a.yaml b.yaml] [--key=value ...]``
"""

from __future__ import annotations

import argparse
import hashlib
import json
import subprocess
import sys
import time
from datetime import datetime, timezone
from logging import getLogger
from pathlib import Path
from typing import Any, Sequence

import torch
from recbole.config import Config
from recbole.data import create_dataset, data_preparation
from recbole.utils import init_logger, init_seed, set_color

from recbole_qrec.config import PROPERTIES_DIR, build_config
from recbole_qrec.data import check_item_features, ensure_atomic_files
from recbole_qrec.errors import QRecError
from recbole_qrec.fileio import atomic_open
from recbole_qrec.trainer import get_trainer, plain_config
from recbole_qrec.utils import get_model

# Keys that change where or how verbosely a run happens, not what it computes.
NON_RESULT_KEYS = {"device", "gpu_id", "use_gpu", "show_progress", "checkpoint_dir", "results_dir", "state", "worker"}


def config_hash(config: Config) -> str:
    """Short stable hash of every setting that can change a result."""
    settings = {k: v for k, v in plain_config(config.final_config_dict).items() if k not in NON_RESULT_KEYS}
    return hashlib.sha256(json.dumps(settings, sort_keys=True).encode()).hexdigest()[:12]


def git_commit() -> str:
    """The commit of the recbole-qrec checkout, or ``unknown`` outside a git checkout."""
    result = subprocess.run(
        ["git", "rev-parse", "HEAD"], cwd=PROPERTIES_DIR.parent, capture_output=True, text=True, check=False
    )
    return result.stdout.strip() if result.returncode == 0 else "unknown"


def append_result(record: dict[str, Any], results_dir: str | Path) -> Path:
    """Append ``record`` as one JSON line to ``<results_dir>/results.jsonl`` (rewritten atomically)."""
    path = Path(results_dir) / "results.jsonl"
    previous = path.read_text(encoding="utf-8") if path.is_file() else ""
    with atomic_open(path, "w", encoding="utf-8") as handle:
        handle.write(previous + json.dumps(record, sort_keys=True) + "\n")
    return path


def run_recbole_qrec(
    model: str,
    dataset: str,
    config_file_list: Sequence[str] = (),
    config_dict: dict[str, Any] | None = None,
    cmd_args: Sequence[str] = (),
    saved: bool = True,
) -> dict[str, Any]:
    """Train ``model`` on ``dataset``, evaluate the best checkpoint on the test split, record and return the result."""
    start = time.time()
    config = build_config(model, dataset, config_file_list, config_dict, cmd_args)
    check_item_features(config)
    init_seed(config["seed"], config["reproducibility"])
    torch.set_float32_matmul_precision(config["float32_matmul_precision"])
    init_logger(config)
    logger = getLogger()
    logger.info(sys.argv)
    logger.info(config)

    ensure_atomic_files(config)
    dataset_obj = create_dataset(config)
    logger.info(dataset_obj)
    train_data, valid_data, test_data = data_preparation(config, dataset_obj)

    init_seed(config["seed"] + config["local_rank"], config["reproducibility"])
    model_obj = get_model(config["model"])(config, train_data._dataset).to(config["device"])
    logger.info(model_obj)
    trainer = get_trainer(config["MODEL_TYPE"], config["model"])(config, model_obj)
    if config["resume_checkpoint"]:
        trainer.resume_checkpoint(config["resume_checkpoint"])
    best_valid_score, best_valid_result = trainer.fit(
        train_data, valid_data, saved=saved, show_progress=config["show_progress"]
    )
    test_result = trainer.evaluate(test_data, load_best_model=saved, show_progress=config["show_progress"])
    logger.info(set_color("best valid ", "yellow") + f": {best_valid_result}")
    logger.info(set_color("test result", "yellow") + f": {test_result}")

    record = {
        "model": config["model"],
        "dataset": config["dataset"],
        "config_hash": config_hash(config),
        "seed": config["seed"],
        "git_commit": git_commit(),
        "device": str(config["device"]),
        "finished_at": datetime.now(timezone.utc).isoformat(timespec="seconds"),
        "wall_time_s": round(time.time() - start, 2),
        "epochs": len(trainer.epoch_seconds),
        "train_seconds_per_epoch": round(sum(trainer.epoch_seconds) / max(len(trainer.epoch_seconds), 1), 3),
        "best_valid_score": float(best_valid_score),
        "valid": {k: float(v) for k, v in (best_valid_result or {}).items()},  # None: no new best after a resume
        "test": {k: float(v) for k, v in test_result.items()},
        "checkpoint": trainer.saved_model_file if saved else None,
        "resumed_from": config["resume_checkpoint"],
    }
    path = append_result(record, config["results_dir"])
    logger.info(f"result recorded in {path}")
    return record


def parse_args(argv: Sequence[str] | None) -> tuple[argparse.Namespace, list[str]]:
    """Our own options; every other ``--key=value`` goes to RecBole's ``Config`` as a command-line override."""
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0], allow_abbrev=False)
    parser.add_argument("--model", "-m", default="SASRec", help="recbole-qrec or RecBole model name")
    parser.add_argument("--dataset", "-d", default="Instruments", help="dataset name, e.g. Instruments, Arts, Games")
    parser.add_argument(
        "--config_files", nargs="+", default=[], help="YAML files layered over properties/ (space-separated)"
    )
    return parser.parse_known_args(argv)


def main(argv: Sequence[str] | None = None) -> None:
    args, overrides = parse_args(argv)
    config_files = [name for group in args.config_files for name in group.split()]
    try:
        run_recbole_qrec(args.model, args.dataset, config_files, cmd_args=overrides)
    except QRecError as err:
        sys.exit(f"error: {err}")
