"""Train and evaluate one model on one dataset, RecBole-style (``recbole.quick_start.run_recbole``), and record it.

Everything that can be checked is checked before anything is written: the configuration, the dataset's
files (:func:`recbole_qrec.data.check_dataset`, which also fingerprints them) and a ``resume_checkpoint``.
Only then do RecBole's logger (``log/``), training (checkpoints in ``checkpoint_dir``) and the result
record (``results_dir``) write; a run that fails or is interrupted after that point leaves no result line
and none of the checkpoints it wrote (a checkpoint it was resuming is restored as it was).
"""

from __future__ import annotations

import hashlib
import logging
import shutil
import time
from collections.abc import Iterator, Sequence
from contextlib import contextmanager, nullcontext
from logging import getLogger
from pathlib import Path
from typing import Any

import torch
from recbole.config import Config
from recbole.data.dataloader import AbstractDataLoader
from recbole.trainer import Trainer
from recbole.utils import init_logger, init_seed, set_color

from recbole_qrec.config import build_config
from recbole_qrec.console import log_settings, resolve_show_progress
from recbole_qrec.data import check_dataset, create_dataset, data_preparation
from recbole_qrec.data.cold_start import target_groups
from recbole_qrec.data.cross_domain import pretrain_dataset_names, source_settings
from recbole_qrec.data.item_features import run_content_sources
from recbole_qrec.distributed import end_distributed, is_main_process, main_process_first, trainer_for
from recbole_qrec.errors import QRecError
from recbole_qrec.results import append_result, build_record
from recbole_qrec.tokenize import ensure_semantic_ids, semantic_ids_lock
from recbole_qrec.trainer import get_trainer
from recbole_qrec.trainer.checkpoint import check_resume_checkpoint
from recbole_qrec.utils import get_model


# Where RecBole's init_logger writes, relative to the working folder: log/<model>/<run>.log and the
# TensorBoard folder log_tensorboard/<run>/ (recbole.utils.logger.init_logger, recbole.utils.get_tensorboard).
LOG_DIR, TENSORBOARD_DIR = Path("log"), Path("log_tensorboard")


def run_log_name(config: Config) -> str:
    """The glob of the names init_logger gives this run's log file, ``<model>-<dataset>-<time>-<hash of the
    settings>``; taken before the run changes any setting."""
    settings = "".join(str(value) for value in config.final_config_dict.values())  # init_logger's hash
    return f"{config['model']}-{config['dataset']}-*-{hashlib.md5(settings.encode('utf-8')).hexdigest()[:6]}"


def own_log_entries(model: str, run: str) -> set[Path]:
    """This run's entries in RecBole's log folders: its log files (``run``: :func:`run_log_name`) and the TensorBoard
    folders get_tensorboard names after the file of the root logger's first file handler (init_logger's, or one set
    up before it). Other runs in the same working folder (other settings, models or datasets, other processes) have
    other names."""
    log_files = set((LOG_DIR / model).glob(f"{run}.log"))
    first_file = next((Path(handler.baseFilename) for handler in logging.getLogger().handlers
                       if hasattr(handler, "baseFilename")), None)
    names = {path.name.split(".")[0] for path in [*log_files, *([first_file] if first_file else [])]}
    return log_files | {TENSORBOARD_DIR / name for name in names if (TENSORBOARD_DIR / name).is_dir()}


@contextmanager
def logs_removed_on_user_error(config: Config) -> Iterator[None]:
    """A user error found once RecBole's logger has started leaves none of the log entries this run created: the
    one error line says all there is to say, and a failed run writes nothing. Only this run's own log file and
    TensorBoard folder go (:func:`own_log_entries`), then the log folders it created if nothing else is in them:
    runs started beside it in the same working folder keep theirs."""
    model, run = config["model"], run_log_name(config)
    folders = (LOG_DIR, LOG_DIR / model, TENSORBOARD_DIR)
    existed, before = {folder for folder in folders if folder.is_dir()}, own_log_entries(model, run)
    try:
        yield
    except QRecError:
        created = own_log_entries(model, run) - before
        created_files = {path.resolve() for path in created}
        for handler in logging.getLogger().handlers:
            if isinstance(handler, logging.FileHandler) and Path(handler.baseFilename) in created_files:
                handler.close()
        for path in created:
            if path.is_dir():
                shutil.rmtree(path, ignore_errors=True)
            else:
                path.unlink(missing_ok=True)
        for folder in reversed(folders):
            if folder not in existed and folder.is_dir() and not any(folder.iterdir()):
                folder.rmdir()
        raise


def evaluate_target_groups(trainer: Trainer, test_data: AbstractDataLoader, show_progress: bool) -> dict[str, Any]:
    """The cold-start fields of the record: the test metrics of the users whose target is a warm item
    (``test_warm``) and a cold one (``test_cold``; empty without such users), each group evaluated by the trainer
    (RecBole's metrics) with the model it tested, and ``cold_start``: the share, the cold items, the users per group
    and the users dropped (:mod:`recbole_qrec.data.cold_start`)."""
    dataset = test_data._dataset
    summary = {"share": dataset.config["cold_start_share"], "cold_items": int(dataset.cold_items.sum()),
               "dropped_users": dataset.dropped_users}
    fields: dict[str, Any] = {"cold_start": summary}
    for group, loader in target_groups(test_data, dataset.cold_items).items():
        result = trainer.evaluate(loader, load_best_model=False, show_progress=show_progress) or {}
        summary[f"{group}_users"] = len(loader._dataset)
        fields[f"test_{group}"] = {name: float(value) for name, value in result.items()}
        getLogger().info(set_color(f"test result, {group} targets ({len(loader._dataset)} users)", "yellow")
                         + f": {result}")
    return fields


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
    check_dataset(config)
    source_configs = [build_config(config["model"], name, config_dict=source_settings(config))
                      for name in pretrain_dataset_names(config)]
    for source_config in source_configs:
        check_dataset(source_config)
    if config["resume_checkpoint"]:
        check_resume_checkpoint(config)
    config["show_progress"] = resolve_show_progress(config["show_progress"])

    init_seed(config["seed"], config["reproducibility"])
    torch.set_float32_matmul_precision(config["float32_matmul_precision"])
    with logs_removed_on_user_error(config):  # e.g. a resume checkpoint that does not fit the built model
        if is_main_process(config):  # the other processes of a distributed run log errors only, to stderr
            init_logger(config)
        logger = getLogger()
        log_settings(config)

        # Other runs on this data_path wait while this one checks, runs and reads the model's tokenize stage (its
        # codes and the content sources its metadata records).
        with semantic_ids_lock(config) if is_main_process(config) else nullcontext():
            with main_process_first(config):  # the others then find its output up to date
                ensure_semantic_ids(config, source_configs)  # the model's tokenize stage, when missing or stale
            dataset_obj = create_dataset(config, source_configs)
            content_sources = run_content_sources(config, [source["dataset"] for source in source_configs])
        logger.info(dataset_obj)
        train_data, valid_data, test_data, pretrain_data = data_preparation(config, dataset_obj)

        init_seed(config["seed"] + config["local_rank"], config["reproducibility"])
        model_obj = get_model(config["model"])(config, train_data._dataset).to(config["device"])
        logger.info(model_obj)
        trainer = trainer_for(get_trainer(config["MODEL_TYPE"], config["model"]), config)(config, model_obj)
        if config["resume_checkpoint"]:
            trainer.resume_checkpoint(config["resume_checkpoint"])

    fit_sources = {"pretrain_data": pretrain_data} if pretrain_data else {}  # pretraining trainers take the sources
    with trainer.checkpoints_kept_on_success():
        best_valid_score, best_valid_result = trainer.fit(
            train_data, valid_data, saved=saved, show_progress=config["show_progress"], **fit_sources
        )
        test_result = trainer.evaluate(test_data, load_best_model=saved, show_progress=config["show_progress"])
        logger.info(set_color("best valid ", "yellow") + f": {best_valid_result}")
        logger.info(set_color("test result", "yellow") + f": {test_result}")
        cold_start = (evaluate_target_groups(trainer, test_data, config["show_progress"])
                      if config["cold_start_share"] is not None else None)
        record = build_record(config, trainer, best_valid_score, best_valid_result, test_result,
                              time.time() - start, saved, dataset_obj, content_sources, cold_start)
        path = append_result(record, config["results_dir"]) if is_main_process(config) else None  # one per run
    if path:
        logger.info(f"result recorded in {path}")
    end_distributed(config)
    return record
