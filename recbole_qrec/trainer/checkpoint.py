"""Checkpoints that load under ``torch.load(weights_only=True)``, are verified before use, and are
kept only for runs that finish; plus the training time of each fine-tuning epoch.

RecBole 1.2.1 pickles its whole ``Config`` object into every checkpoint and reloads it with a
bare ``torch.load``; since torch 2.6 defaults to ``weights_only=True`` that reload fails.
Rather than turning arbitrary unpickling back on, :class:`SafeCheckpointMixin` stores the
configuration as plain data (str/int/float/bool/None/list/dict), so the checkpoint holds
tensors and primitives only and loads under ``weights_only=True``.

Before a checkpoint is used (``resume_checkpoint``, the ``-pretrained.pth`` file of a pretraining
run, ``evaluate(load_best_model=True)``) it is read with ``weights_only=True`` and checked: readable,
written by recbole-qrec, for this model, for this dataset (its ``data_fingerprint``), with parameter
shapes that fit this model. Each problem is one :class:`~recbole_qrec.errors.CheckpointError` line.
"""

from __future__ import annotations

import os
import pickle
import pickletools
import shutil
import warnings
import zipfile
from collections.abc import Iterator
from contextlib import contextmanager
from functools import cache
from pathlib import Path
from typing import Any

import torch
from recbole.config import Config
from recbole.trainer import Trainer
from recbole.utils import argument_list
from recbole.utils import get_trainer as get_recbole_trainer
from recbole.utils import set_color
from torch import nn

import recbole_qrec.trainer as qrec_trainers
from recbole_qrec.distributed import broadcast_from_main
from recbole_qrec.errors import CheckpointError
from recbole_qrec.fileio import atomic_path
from recbole_qrec.trainer.acceleration import AccelerationMixin
from recbole_qrec.trainer.schedule import LRScheduleMixin
from recbole_qrec.trainer.time_limit import TimeLimitMixin

# Settings that change where, how verbosely or under which labels a run happens, not what it computes: left out of a
# result's config hash and of the settings compared between a checkpoint and the run that loads it.
RUN_LOCATION_KEYS = frozenset({
    "data_path", "checkpoint_dir", "results_dir", "resume_checkpoint", "data_fingerprint", "allow_data_mismatch",
    "device", "gpu_id", "use_gpu", "local_rank", "show_progress", "state", "worker", "log_wandb", "wandb_project",
    "save_dataset", "dataset_save_path", "save_dataloaders", "dataloaders_save_path", "run_tags",
    "single_spec", "nproc", "world_size", "offset", "ip", "port",  # how many processes share the run (DDP)
})
# How a model is trained and evaluated, never its parameter shapes (RecBole's own argument groups).
SCHEDULE_KEYS = frozenset(argument_list.general_arguments + argument_list.training_arguments
                          + argument_list.evaluation_arguments)
CHECKPOINT_ENTRIES = ("config", "state_dict", "epoch", "cur_step", "best_valid_score", "optimizer")
ZIP_MAGIC, PICKLE_MAGIC = b"PK\x03\x04", b"\x80"
FIND_AGAIN = "give a checkpoint written by recbole-qrec (a .pth file under checkpoint_dir, e.g. saved/)"


def plain_config(value: Any) -> Any:
    """Convert a config value to plain, weights-only-loadable data (unknown objects become ``str``)."""
    if value is None or isinstance(value, (str, int, float, bool)):
        return value
    if isinstance(value, dict):
        return {str(key): plain_config(item) for key, item in value.items()}
    if isinstance(value, (list, tuple, set)):
        return [plain_config(item) for item in value]
    return str(value)


def checkpointable_other_parameter(model: nn.Module) -> dict[str, Any]:
    """``model.other_parameter()`` without registered submodules, whose weights are in the state dict.

    RecBole's FDSA lists its feature-embedding submodule there, which would pickle a module object.
    """
    children = dict(model.named_children())
    return {
        key: value
        for key, value in model.other_parameter().items()
        if not (isinstance(value, nn.Module) and children.get(key) is value)
    }


STRING_OPCODES = {"SHORT_BINUNICODE", "BINUNICODE", "BINUNICODE8", "UNICODE", "SHORT_BINSTRING", "BINSTRING", "STRING"}
MEMO_GET_OPCODES = {"BINGET", "LONG_BINGET", "GET"}
MEMO_PUT_OPCODES = {"MEMOIZE", "BINPUT", "LONG_BINPUT", "PUT"}


def pickled_globals(pickle_bytes: bytes) -> list[str]:
    """``module.name`` of every class or function a pickle refers to, read from its opcodes (nothing is loaded)."""
    names: list[str] = []
    pushed: list[Any] = []  # the value each opcode pushed (None when not a string); memo writes push nothing
    memo: dict[int, Any] = {}
    try:
        for opcode, arg, _ in pickletools.genops(pickle_bytes):
            if opcode.name in STRING_OPCODES:
                pushed.append(arg)
            elif opcode.name in MEMO_GET_OPCODES:
                pushed.append(memo.get(arg))
            elif opcode.name in MEMO_PUT_OPCODES:
                memo[len(memo) if arg is None else arg] = pushed[-1] if pushed else None
            elif opcode.name == "GLOBAL":
                names.append(arg.replace(" ", "."))
            elif opcode.name == "STACK_GLOBAL" and len(pushed) >= 2:
                names.append(f"{pushed[-2]}.{pushed[-1]}")
            else:
                pushed.append(None)
    except ValueError:  # a cut-off pickle: the names read so far
        pass
    return names


def torch_archive_pickle(path: Path) -> bytes | None:
    """The pickle (``<name>/data.pkl``) of a torch.save zip archive; None if ``path`` is no intact one."""
    if not zipfile.is_zipfile(path):
        return None
    with zipfile.ZipFile(path) as archive:
        pickles = [name for name in archive.namelist() if name.endswith("/data.pkl")]
        return archive.read(pickles[0]) if pickles else None


def unreadable_reason(path: Path, error: Exception) -> str:
    """Why ``torch.load(path, weights_only=True)`` failed, and what to do about it."""
    with path.open("rb") as handle:
        head = handle.read(4)
    if not head:
        return f"is empty (0 bytes) — it was not written completely; {FIND_AGAIN}"
    data = torch_archive_pickle(path)
    if data is None and zipfile.is_zipfile(path):
        return f"is a zip archive but not a PyTorch checkpoint (it has no data.pkl) — {FIND_AGAIN}"
    if not (head.startswith(ZIP_MAGIC) or head.startswith(PICKLE_MAGIC)):
        return f"is not a PyTorch checkpoint (not a file written by torch.save) — {FIND_AGAIN}"
    objects = [name for name in pickled_globals(data or b"") if not name.startswith(("torch.", "collections."))]
    if any(name.startswith("recbole.") for name in objects):
        return ("was written by plain RecBole, which pickles its Config object, and recbole-qrec loads checkpoints "
                "with torch.load(weights_only=True), never unpickling objects — train the model with recbole-qrec "
                "(python run_recbole_qrec.py --model=... --dataset=...) to get a checkpoint it can use")
    if objects and isinstance(error, pickle.UnpicklingError):
        return (f"holds pickled Python objects ({', '.join(sorted(set(objects))[:3])}), not only tensors and plain "
                f"data, so it was not written by recbole-qrec and is not unpickled, for safety — {FIND_AGAIN}")
    first_sentence = str(error).strip().split(". ")[0].splitlines()[0] if str(error).strip() else type(error).__name__
    return (f"is damaged, e.g. cut off while being copied (torch.load: {first_sentence.rstrip('.')}) — copy it again "
            "from where it was written, or train anew")


def read_checkpoint(path: str | Path, label: str) -> dict[str, Any]:
    """Load a recbole-qrec checkpoint with ``weights_only=True``; ``label`` names it in errors."""
    path = Path(path)
    where = f"{label} '{path}'"
    if not path.is_file():
        problem = "is a directory" if path.is_dir() else "does not exist"
        raise CheckpointError(f"{where} {problem} — {FIND_AGAIN}")
    try:
        path.open("rb").close()
    except OSError as err:
        raise CheckpointError(f"{where} cannot be read ({err.strerror}) — check the file's permissions") from err
    try:
        with warnings.catch_warnings():  # torch's note on RecBole's pickle protocol: the error below says more
            warnings.filterwarnings("ignore", message="Detected pickle protocol")
            checkpoint = torch.load(path, map_location="cpu", weights_only=True)
    except (pickle.UnpicklingError, RuntimeError, EOFError, KeyError, ValueError, zipfile.BadZipFile, OSError) as err:
        raise CheckpointError(f"{where} {unreadable_reason(path, err)}") from err
    missing = [entry for entry in CHECKPOINT_ENTRIES if not isinstance(checkpoint, dict) or entry not in checkpoint]
    if missing or not isinstance(checkpoint["config"], dict) or "model" not in checkpoint["config"]:
        found = sorted(map(str, checkpoint))[:6] if isinstance(checkpoint, dict) else type(checkpoint).__name__
        raise CheckpointError(f"{where} is not a recbole-qrec checkpoint (it lacks the entries "
                              f"{missing or ['config.model']}; found {found}, e.g. a bare model.state_dict()) — "
                              f"{FIND_AGAIN}")
    return checkpoint


def check_written_for(checkpoint: dict[str, Any], where: str, config: Config) -> None:
    """Raise unless ``checkpoint`` was written by ``config``'s model for ``config``'s dataset files."""
    written_by = checkpoint["config"]["model"]
    if written_by != config["model"]:
        raise CheckpointError(f"{where} was written by {written_by}, not {config['model']} — resume with "
                              f"--model={written_by}, or give a {config['model']} checkpoint")
    current = config["data_fingerprint"]
    if current is None:  # a run that did not fingerprint its data (library use without check_dataset)
        return
    saved = checkpoint["config"].get("data_fingerprint")
    saved_dataset = checkpoint["config"].get("dataset")
    if saved is None:
        raise CheckpointError(f"{where} records no dataset fingerprint (it predates recbole-qrec's data fingerprints), "
                              "so its dataset cannot be verified — train anew to write a verifiable checkpoint")
    if saved_dataset != config["dataset"]:
        raise CheckpointError(f"{where} was written for dataset {saved_dataset} ({saved['items']} items), not "
                              f"{config['dataset']} — resume with --dataset={saved_dataset}, or give a checkpoint "
                              f"trained on {config['dataset']}")
    if saved["items"] != current["items"]:
        raise CheckpointError(f"{where} was written for {saved_dataset} with {saved['items']} items, but this run's "
                              f"{config['dataset']} (data_path {config['data_path']}) has {current['items']} items — "
                              "resume with the data it was trained on, or train anew on this data")
    if saved["sha256"] != current["sha256"]:
        raise CheckpointError(f"{where} was written for another copy of {saved_dataset} (atomic files sha256 "
                              f"{saved['sha256'][:12]}, this run's {current['sha256'][:12]}; same item count) — "
                              "resume with the data it was trained on, or train anew on this data")


def differing_model_settings(saved: dict[str, Any], config: Config) -> dict[str, tuple[Any, Any]]:
    """``{key: (checkpoint's value, this run's value)}`` for settings that can shape a model's parameters."""
    current = plain_config(config.final_config_dict)
    keys = (saved.keys() | current.keys()) - RUN_LOCATION_KEYS - SCHEDULE_KEYS
    return {key: (saved.get(key), current.get(key)) for key in sorted(keys) if saved.get(key) != current.get(key)}


def check_fits(checkpoint: dict[str, Any], where: str, model: nn.Module, config: Config) -> None:
    """Raise unless the checkpoint's parameters have exactly ``model``'s names and shapes."""
    saved = {name: tuple(value.shape) for name, value in checkpoint["state_dict"].items()}
    wanted = {name: tuple(value.shape) for name, value in model.state_dict().items()}
    if saved == wanted:
        return
    differing = [name for name in wanted if name in saved and saved[name] != wanted[name]]
    if differing:
        name = differing[0]
        problem = f"{name} is {list(saved[name])} in the checkpoint and {list(wanted[name])} here"
    else:
        missing, extra = sorted(wanted.keys() - saved.keys()), sorted(saved.keys() - wanted.keys())
        problem = f"parameters differ (missing from the checkpoint: {missing[:3]}; not in this model: {extra[:3]})"
    settings = differing_model_settings(checkpoint["config"], config)
    if settings:
        diff = ", ".join(f"{key} {old} vs {new}" for key, (old, new) in settings.items())
        fix = " ".join(f"--{key}={str(old).replace(' ', '')}" for key, (old, _) in settings.items())
        raise CheckpointError(f"{where} does not fit this {config['model']}: {problem} (settings that differ, "
                              f"checkpoint vs this run: {diff}) — resume with the checkpoint's settings ({fix}), "
                              "or train anew without resume_checkpoint")
    raise CheckpointError(f"{where} does not fit this {config['model']}: {problem} — give a checkpoint written "
                          "with this run's model settings and data, or train anew without resume_checkpoint")


def check_resume_checkpoint(config: Config) -> None:
    """The checks of ``resume_checkpoint`` that need no model: readable, same model and data, its best checkpoint
    there (a last state), epochs left."""
    path = config["resume_checkpoint"]
    checkpoint = read_checkpoint(path, "resume_checkpoint")
    check_written_for(checkpoint, f"resume_checkpoint '{path}'", config)
    best = checkpoint.get("best_checkpoint")  # the last state of a budget-stopped run names its best checkpoint
    if best is not None and not Path(best).is_file():
        raise CheckpointError(f"resume_checkpoint '{path}' continues a run whose best checkpoint '{best}' no longer "
                              "exists — resume from that best checkpoint instead, or train anew")
    trained = checkpoint["epoch"] + 1  # 0 for the checkpoint at the end of pretraining (epoch -1)
    if trained >= config["epochs"]:
        raise CheckpointError(f"resume_checkpoint '{path}' already holds {trained} trained epoch(s) and epochs is "
                              f"{config['epochs']} — give --epochs greater than {trained} to train on")


def resume_state_file(saved_model_file: str | Path) -> str:
    """Where a run stopped by its training budget leaves its last state: ``<best checkpoint>-resume.pth``."""
    path = Path(saved_model_file)
    return str(path.with_name(f"{path.stem}-resume{path.suffix}"))


def keep_previous_version(path: Path) -> Path | None:
    """A hidden hard link (or copy) of ``path``'s current content, or None if ``path`` does not exist yet."""
    if not path.exists():
        return None
    backup = path.with_name(f".{path.name}.before-run")
    backup.unlink(missing_ok=True)
    try:
        os.link(path, backup)
    except OSError:  # a file system without hard links
        shutil.copy2(path, backup)
    return backup


class SafeCheckpointMixin:
    """Mixed in before a RecBole trainer: safe, verified, atomically written checkpoints and epoch timings.

    ``epoch_seconds`` holds the training time of each fine-tuning epoch this trainer ran (RecBole's ``fit``) and
    ``valid_curve`` one ``{"epoch": <epoch index>, <metric>: <value>, ...}`` entry per validation.
    A fit stopped by ``train_time_limit`` also writes its last state (:func:`resume_state_file`, with the best
    checkpoint's path, the best validation result and the validation curve so far); resuming from that file continues
    after the last epoch trained, with the early-stopping count, and keeps writing the best model to the same best
    checkpoint. RecBole's own checkpoint holds the best epoch, so resuming from it would train the epochs after the
    best one again.
    Checkpoints written inside :meth:`checkpoints_kept_on_success` are removed again, and a checkpoint
    they overwrote restored, when the block raises (including ``KeyboardInterrupt``); outside such a block
    checkpoints are written as RecBole writes them (atomically here).
    """

    def __init__(self, config, model) -> None:
        super().__init__(config, model)
        # RecBole names the checkpoint <model>-<start time to the second>.pth: runs starting in the same second
        # (compare --parallel, seeds run side by side) would write, and test, one another's model. The process id
        # of the run (rank 0's in a distributed run) makes the name its own.
        saved = Path(self.saved_model_file)
        self.saved_model_file = str(saved.with_name(f"{saved.stem}-{os.getpid()}{saved.suffix}"))
        if not config["single_spec"]:
            self.saved_model_file = broadcast_from_main(self.saved_model_file)
        self.epoch_seconds: list[float] = []
        self.valid_curve: list[dict[str, float | int]] = []
        # Inside checkpoints_kept_on_success: each checkpoint written -> its kept previous version (or None).
        self.written_checkpoints: dict[Path, Path | None] | None = None

    def _generate_train_loss_output(self, epoch_idx: int, s_time: float, e_time: float, losses: Any) -> str:
        # RecBole's fit reports each epoch's training time here; a pretraining phase never calls it.
        self.epoch_seconds.append(e_time - s_time)
        return super()._generate_train_loss_output(epoch_idx, s_time, e_time, losses)

    def _valid_epoch(self, valid_data: Any, show_progress: bool = False) -> tuple[float, dict[str, float]]:
        valid_score, valid_result = super()._valid_epoch(valid_data, show_progress=show_progress)
        epoch = self.start_epoch + len(self.epoch_seconds) - 1  # RecBole validates right after training an epoch
        self.valid_curve.append({"epoch": epoch, **{name: float(value) for name, value in valid_result.items()}})
        return valid_score, valid_result

    def verified_checkpoint(self, path: str | Path, label: str) -> dict[str, Any]:
        """The checkpoint at ``path``, after checking it was written for this model, dataset and settings."""
        checkpoint = read_checkpoint(path, label)
        where = f"{label} '{path}'"
        check_written_for(checkpoint, where, self.config)
        check_fits(checkpoint, where, self.model, self.config)
        return checkpoint

    def resume_checkpoint(self, resume_file: str | Path) -> None:
        """RecBole's resume, after :meth:`verified_checkpoint`; from a last state (:func:`resume_state_file`) the
        run's best checkpoint, best validation result and validation curve come back too."""
        checkpoint = self.verified_checkpoint(resume_file, "resume_checkpoint")
        best = checkpoint.get("best_checkpoint")
        super().resume_checkpoint(str(resume_file))
        if best is not None:
            self.saved_model_file = best
            self.best_valid_result = checkpoint.get("best_valid_result")
            self.valid_curve = list(checkpoint.get("valid_curve") or [])

    def fit(self, train_data: Any, valid_data: Any = None, verbose: bool = True, saved: bool = True, *args: Any,
            **kwargs: Any) -> tuple[float, dict | None]:
        """RecBole's fit; stopped by ``train_time_limit``, it then writes the last state to resume from."""
        result = super().fit(train_data, valid_data, verbose, saved, *args, **kwargs)
        if saved and getattr(self, "stopped_by_time_limit", False):
            self._save_checkpoint(self.start_epoch + len(self.epoch_seconds) - 1, verbose=verbose,
                                  saved_model_file=resume_state_file(self.saved_model_file),
                                  best_checkpoint=str(self.saved_model_file),
                                  best_valid_result={k: float(v) for k, v in (self.best_valid_result or {}).items()},
                                  valid_curve=self.valid_curve)
        return result

    def evaluate(self, eval_data, load_best_model: bool = True, model_file: str | None = None,
                 show_progress: bool = False):
        """RecBole's evaluate; the best model is read back through :meth:`verified_checkpoint`."""
        if load_best_model and eval_data:
            checkpoint_file = model_file or self.saved_model_file
            checkpoint = self.verified_checkpoint(checkpoint_file, "checkpoint")
            self.model.load_state_dict(checkpoint["state_dict"])
            self.model.load_other_parameter(checkpoint.get("other_parameter"))
            self.logger.info(f"Loading model structure and parameters from {checkpoint_file}")
        return super().evaluate(eval_data, load_best_model=False, show_progress=show_progress)

    def _save_checkpoint(self, epoch: int, verbose: bool = True, **kwargs: Any) -> None:
        if not self.config["single_spec"] and self.config["local_rank"] != 0:
            return
        saved_model_file = Path(kwargs.pop("saved_model_file", self.saved_model_file))  # the rest: extra entries
        if self.written_checkpoints is not None and saved_model_file not in self.written_checkpoints:
            self.written_checkpoints[saved_model_file] = keep_previous_version(saved_model_file)
        state = {
            "config": plain_config(self.config.final_config_dict),
            "epoch": epoch,
            "cur_step": self.cur_step,
            "best_valid_score": float(self.best_valid_score),
            "state_dict": self.model.state_dict(),
            "other_parameter": checkpointable_other_parameter(self.model),
            "optimizer": self.optimizer.state_dict(),
            **kwargs,
        }
        with atomic_path(saved_model_file) as tmp:
            torch.save(state, tmp)
        if verbose:
            self.logger.info(set_color("Saving current", "blue") + f": {saved_model_file}")

    @contextmanager
    def checkpoints_kept_on_success(self) -> Iterator[None]:
        """Keep the checkpoints written in the block if it finishes; otherwise undo every one of them."""
        self.written_checkpoints = written = {}
        try:
            yield
        except BaseException:
            for path, previous in written.items():
                if previous is None:
                    path.unlink(missing_ok=True)
                else:
                    os.replace(previous, path)
            raise
        else:
            for previous in written.values():
                if previous is not None:
                    previous.unlink(missing_ok=True)
        finally:
            self.written_checkpoints = None


@cache
def with_safe_checkpoint(trainer_class: type[Trainer]) -> type[Trainer]:
    """``trainer_class`` with :class:`SafeCheckpointMixin`, :class:`TimeLimitMixin`, :class:`LRScheduleMixin` and
    :class:`AccelerationMixin` in front (returned as is if already there)."""
    if issubclass(trainer_class, SafeCheckpointMixin):
        return trainer_class
    return type(trainer_class.__name__, (SafeCheckpointMixin, TimeLimitMixin, LRScheduleMixin, AccelerationMixin,
                                          trainer_class),
                {"__doc__": trainer_class.__doc__})


def get_trainer(model_type: Any, model_name: str) -> type[Trainer]:
    """``<model_name>Trainer`` from ``recbole_qrec.trainer`` if defined, else RecBole's choice; always safe-checkpointing."""
    own = getattr(qrec_trainers, f"{model_name}Trainer", None)
    return with_safe_checkpoint(own or get_recbole_trainer(model_type, model_name))
