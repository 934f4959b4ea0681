"""The record of a finished run: one JSON line appended to ``<results_dir>/results.jsonl``.

A record says what ran (model, dataset, the hash of every setting that can change a result), on
which data (the dataset fingerprint from :func:`recbole_qrec.data.check_dataset`) and which code
(git commit and whether the checkout had uncommitted changes), how long it took (fine-tuning and
pretraining epochs counted apart), what it scored on the validation and test splits (and on validation after each
evaluated epoch), the labels it was given (``run_tags``) and the quality of the semantic-ID code tables its model
reads (``tokenizer``, :func:`recbole_qrec.data.sid_quality.code_table_quality`). A cold-start run
(``cold_start_share``) adds the test metrics of the users with a warm and with a cold target (``test_warm``,
``test_cold``) and ``cold_start`` (share, cold items, users per group, users dropped).
"""

from __future__ import annotations

import hashlib
import json
import math
import os
import platform
import subprocess
from datetime import datetime, timezone
from pathlib import Path
from typing import Any

import torch
from recbole.config import Config
from recbole.data.dataset import Dataset
from recbole.trainer import Trainer

from recbole_qrec.data.cold_start import TARGET_GROUPS
from recbole_qrec.data.dataset import SemanticIdDataset
from recbole_qrec.data.sid_quality import code_table_quality
from recbole_qrec.fileio import atomic_open, exclusive_lock
from recbole_qrec.resources import PACKAGE_DIR
from recbole_qrec.trainer.checkpoint import RUN_LOCATION_KEYS, plain_config, resume_state_file


def run_settings(config: Config) -> dict[str, Any]:
    """Every setting that can change a run's result but the seed (paths and verbosity left out), as plain values:
    what a record's ``settings`` holds and its ``config_hash`` hashes."""
    return {key: value for key, value in plain_config(config.final_config_dict).items()
            if key not in RUN_LOCATION_KEYS and key != "seed"}


def config_hash(config: Config) -> str:
    """Short stable hash of :func:`run_settings`: records of one configuration under several seeds share it, and each
    record carries its ``seed``."""
    return hashlib.sha256(json.dumps(run_settings(config), sort_keys=True).encode()).hexdigest()[:12]


def git_state(directory: Path = PACKAGE_DIR) -> tuple[str, bool | None]:
    """``(commit, dirty)`` of the git checkout that tracks ``directory``; ``("unknown", None)`` outside one.

    ``dirty`` is True when a tracked file differs from the commit; untracked files (the run outputs a checkout
    gathers: results folders, logs, converted datasets) do not change the code that ran. An installed copy of the package
    that merely lies inside some other checkout (e.g. a virtual environment in a project) is not tracked
    there, so it counts as outside.
    """
    def git(*args: str) -> subprocess.CompletedProcess:
        return subprocess.run(["git", *args], cwd=directory, capture_output=True, text=True, check=False)

    try:
        tracked = git("ls-files", "--error-unmatch", "--", ".")
    except OSError:  # no git program
        return "unknown", None
    commit = git("rev-parse", "HEAD")
    if tracked.returncode != 0 or commit.returncode != 0:
        return "unknown", None
    return commit.stdout.strip(), bool(git("status", "--porcelain", "--untracked-files=no").stdout.strip())


def machine_name(device: torch.device | str) -> str:
    """The accelerator a run used (e.g. ``NVIDIA H200``), or the CPU's architecture and core count."""
    device = torch.device(device)
    if device.type == "cuda":
        return torch.cuda.get_device_name(device)
    return f"{platform.machine() or 'unknown'} CPU, {os.cpu_count()} cores"


def mean_seconds(seconds: list[float]) -> float | None:
    """Mean of per-epoch times, rounded to ms; None when no epoch ran."""
    return round(sum(seconds) / len(seconds), 3) if seconds else None


TARGET_SPLITS = tuple(f"test_{group}" for group in TARGET_GROUPS)  # the test metrics per group of targets


def check_finite(record: dict[str, Any]) -> None:
    """Raise on a NaN or infinite metric: a run that got that far has a bug, and such a record must not be kept."""
    metrics = {"best_valid_score": record["best_valid_score"], **record["valid"], **record["test"],
               **{f"{split} {name}": value for split in TARGET_SPLITS for name, value in record.get(split, {}).items()}}
    bad = {name: value for name, value in metrics.items() if not math.isfinite(value)}
    if bad:
        raise ValueError(f"refusing to record non-finite metrics {bad} of {record['model']} on {record['dataset']}")


def build_record(config: Config, trainer: Trainer, best_valid_score: float, best_valid_result: dict | None,
                 test_result: dict, wall_time_s: float, saved: bool, dataset: Dataset | None = None,
                 content_sources: dict[str, dict[str, str]] | None = None,
                 cold_start: dict[str, Any] | None = None) -> dict[str, Any]:
    """The result record of a finished run (checked: every metric is finite); ``dataset``, the run's, gives the
    quality of the semantic-ID code tables its model reads (``tokenizer``, empty for models of item IDs),
    ``content_sources`` (:func:`recbole_qrec.data.item_features.run_content_sources`) where their content came from,
    and ``cold_start`` the cold-start protocol's fields (``test_warm``, ``test_cold``, ``cold_start``)."""
    commit, dirty = git_state()
    pretrain_seconds = getattr(trainer, "pretrain_epoch_seconds", [])  # trainers without a pretraining phase
    stopped = bool(getattr(trainer, "stopped_by_time_limit", False))
    record = {
        "model": config["model"],
        "dataset": config["dataset"],
        "data_fingerprint": config["data_fingerprint"],
        "data_counts_match": config["data_fingerprint"]["expected_counts_match"],
        "content_sources": content_sources or {},
        "config_hash": config_hash(config),
        "settings": run_settings(config),  # what the hash is of: tables label configurations by their differences
        "seed": config["seed"],
        "git_commit": commit,
        "git_dirty": dirty,
        "device": str(config["device"]),
        "machine": machine_name(config["device"]),
        "processes": 1 if config["single_spec"] else config["world_size"],
        "finished_at": datetime.now(timezone.utc).isoformat(timespec="seconds"),
        "wall_time_s": round(wall_time_s, 2),
        "epochs": trainer.start_epoch + len(trainer.epoch_seconds),  # a resumed run's earlier epochs included
        "train_seconds_per_epoch": mean_seconds(trainer.epoch_seconds),
        "pretrain_epochs": len(pretrain_seconds),
        "pretrain_seconds_per_epoch": mean_seconds(pretrain_seconds),
        "pretrain_loss_curve": [round(loss, 4) for loss in getattr(trainer, "pretrain_loss_curve", [])],
        "pretrain_domain_loss_curves": {domain: [round(loss, 4) for loss in curve] for domain, curve
                                        in getattr(trainer, "pretrain_domain_loss_curves", {}).items()},
        "pretraining_discarded": getattr(trainer, "pretraining_discarded", False),
        "best_valid_score": float(best_valid_score),
        "valid": {k: float(v) for k, v in (best_valid_result or {}).items()},  # None: no new best after a resume
        "test": {k: float(v) for k, v in test_result.items()},
        "checkpoint": trainer.saved_model_file if saved else None,
        "resumed_from": config["resume_checkpoint"],
        "train_time_limit_reached": stopped,
        "resume_checkpoint": resume_state_file(trainer.saved_model_file) if saved and stopped else None,
        "parameters": sum(parameter.numel() for parameter in trainer.model.parameters()),
        "valid_curve": trainer.valid_curve,
        "tags": dict(config["run_tags"] or {}),
        "eval_rule": config.final_config_dict.get("eval_rule"),  # generative models: how a shared code counts
        "eval_mode": config.final_config_dict.get("eval_mode"),  # generative models: beam search or exact ranking
        "tokenizer": code_table_quality(config, dataset) if isinstance(dataset, SemanticIdDataset) else {},
    }
    record.update(cold_start or {})
    depth = getattr(trainer.model, "injection_depth_histogram", None)  # QBert4Rec: items per injection depth
    if depth is not None:
        record["injection_depth_histogram"] = [int(count) for count in depth]
    llm_source = getattr(trainer.model, "llm_source", None)  # MMESID: where its language model's weights came from
    if llm_source is not None:
        record["llm_source"] = llm_source
    check_finite(record)
    return record


def append_result(record: dict[str, Any], results_dir: str | Path) -> Path:
    """Append ``record`` as one JSON line to ``<results_dir>/results.jsonl`` (rewritten atomically, under an
    exclusive lock of ``.results.jsonl.lock`` beside it, so runs finishing at once all keep their lines). A last line
    left without its line break (a writer that died mid-line) is ended first, so the record keeps a line of its own."""
    path = Path(results_dir) / "results.jsonl"
    path.parent.mkdir(parents=True, exist_ok=True)
    with exclusive_lock(path.with_name(f".{path.name}.lock")):
        previous = path.read_text(encoding="utf-8") if path.is_file() else ""
        if previous and not previous.endswith("\n"):
            previous += "\n"
        with atomic_open(path, "w", encoding="utf-8") as handle:
            handle.write(previous + json.dumps(record, sort_keys=True, allow_nan=False) + "\n")
    return path
