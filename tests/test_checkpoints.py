"""Checkpoints: every unusable ``resume_checkpoint`` is one clear error line and writes nothing; a run that fails
after it has written checkpoints leaves none of them (and restores the checkpoint it was resuming)."""

from __future__ import annotations

import argparse
import json
import os
import random
import shutil
import signal
import stat
import subprocess
import sys
import time
import zipfile
from collections.abc import Callable
from pathlib import Path

import pytest
import torch
from recbole.config import Config
from recbole.data import create_dataset, data_preparation
from recbole.trainer import Trainer
from recbole.utils import get_model as get_recbole_model
from recbole.utils import init_logger
from torch.utils.tensorboard import SummaryWriter

from conftest import work_config
from dataset_prep.subset import convert_user_subsets
from recbole_qrec.cli import main
from recbole_qrec.compat import prepare_recbole
from recbole_qrec.errors import ConfigError
from recbole_qrec.quick_start import logs_removed_on_user_error, run_recbole_qrec

REPO_ROOT = Path(__file__).resolve().parents[1]
SASREC = {"hidden_size": 32, "inner_size": 64, "epochs": 1, "train_batch_size": 256, "eval_batch_size": 256,
          "use_gpu": False, "allow_data_mismatch": True}
MQL4GREC = {"d_model": 32, "d_kv": 16, "d_ff": 64, "num_layers": 1, "num_decoder_layers": 1, "num_heads": 2,
            "MAX_ITEM_LIST_LENGTH": 8, "tasks": ["text_next"], "beam_size": 10, "pretrain_epochs": 1, "epochs": 1,
            "train_batch_size": 512, "pretrain_batch_size": 512, "eval_batch_size": 512, "use_gpu": False,
            "allow_data_mismatch": True}

pytestmark = pytest.mark.usefixtures("one_thread")


def as_args(settings: dict) -> list[str]:
    return [f"--{key}={value}" for key, value in settings.items()]


def files_in(folder: Path) -> dict[str, bytes]:
    """Every file under ``folder`` (relative path -> content)."""
    return {str(path.relative_to(folder)): path.read_bytes() for path in sorted(folder.rglob("*")) if path.is_file()}


def trained_run(model: str, data_path: Path, folder: Path, settings: dict) -> dict:
    """The record of a finished in-process run of ``model`` in ``folder``."""
    folder.mkdir(parents=True, exist_ok=True)
    with pytest.MonkeyPatch.context() as patch:
        patch.chdir(folder)
        return run_recbole_qrec(model, "Instruments", config_dict={"data_path": str(data_path), **settings})


@pytest.fixture(scope="module")
def sasrec(work: Path) -> Path:
    """A SASRec checkpoint (hidden_size 32, 1 epoch) of the 500-user Instruments subset."""
    record = trained_run("SASRec", work / "dataset", work / "sasrec", SASREC)
    return work / "sasrec" / record["checkpoint"]


@pytest.fixture(scope="module")
def mql4grec_pretrained(work: Path) -> Path:
    """The ``-pretrained.pth`` checkpoint of a tiny MQL4GRec run (1 pretraining + 1 fine-tuning epoch)."""
    record = trained_run("MQL4GRec", work / "dataset", work / "mql4grec", MQL4GREC)
    checkpoint = work / "mql4grec" / record["checkpoint"]
    return checkpoint.with_name(f"{checkpoint.stem}-pretrained.pth")


@pytest.fixture(scope="module")
def other_data(amazon_dir: Path, tmp_path_factory: pytest.TempPathFactory) -> Path:
    """Atomic files of other datasets: 300 users of Instruments (fewer items) and of Games, under ``dataset/``."""
    return convert_user_subsets(amazon_dir, tmp_path_factory.mktemp("other"), {"Instruments": 300, "Games": 300})


def cli(args: list[str], cwd: Path, capsys: pytest.CaptureFixture, monkeypatch: pytest.MonkeyPatch) -> tuple[int, str]:
    """Exit status and stderr of ``recbole-qrec args`` run in ``cwd``."""
    monkeypatch.chdir(cwd)
    capsys.readouterr()
    try:
        main(args)
        status = 0
    except SystemExit as done:
        status = done.code
    return status, capsys.readouterr().err


def save_plain_recbole_checkpoint(data_path: Path, target: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """What RecBole's own trainer writes: its pickled Config object in the checkpoint."""
    prepare_recbole()
    monkeypatch.setattr(sys, "argv", ["recbole"])  # RecBole's Config reads overrides from the command line
    monkeypatch.chdir(target.parent)
    config = Config(model="SASRec", dataset="Instruments",
                    config_dict={"data_path": str(data_path), "use_gpu": False, "hidden_size": 32, "inner_size": 64,
                                 "load_col": {"inter": ["user_id", "item_id", "timestamp"]}, "train_neg_sample_args": None})
    train, _, _ = data_preparation(config, create_dataset(config))
    trainer = Trainer(config, get_recbole_model("SASRec")(config, train._dataset))
    trainer._save_checkpoint(0, verbose=False, saved_model_file=str(target))


def edited(checkpoint: Path, target: Path, change: Callable[[dict], None]) -> None:
    contents = torch.load(checkpoint, weights_only=True)
    change(contents)
    torch.save(contents, target)


# name -> (write the resume file from the good checkpoint, fragment of the message)
BROKEN_FILES: dict[str, tuple[Callable[[Path, Path], None], str]] = {
    "truncated": (lambda good, bad: bad.write_bytes(good.read_bytes()[: good.stat().st_size // 2]),
                  "is damaged, e.g. cut off while being copied (torch.load: PytorchStreamReader failed reading zip"),
    "random bytes": (lambda good, bad: bad.write_bytes(random.Random(0).randbytes(4096)),
                     "is not a PyTorch checkpoint (not a file written by torch.save)"),
    "a YAML file": (lambda good, bad: bad.write_text("learning_rate: 0.01\n"),
                    "is not a PyTorch checkpoint (not a file written by torch.save)"),
    "empty": (lambda good, bad: bad.write_bytes(b""), "is empty (0 bytes) — it was not written completely"),
    "a zip archive": (lambda good, bad: zipfile.ZipFile(bad, "w").close(),
                      "is a zip archive but not a PyTorch checkpoint (it has no data.pkl)"),
    "pickled objects": (lambda good, bad: torch.save({"args": argparse.Namespace(lr=0.1)}, bad),
                        "holds pickled Python objects (argparse.Namespace), not only tensors and plain data"),
    "a bare state dict": (lambda good, bad: torch.save(torch.load(good, weights_only=True)["state_dict"], bad),
                          "is not a recbole-qrec checkpoint (it lacks the entries ['config', 'state_dict', 'epoch'"),
    "no data fingerprint": (lambda good, bad: edited(good, bad, lambda c: c["config"].pop("data_fingerprint")),
                            "records no dataset fingerprint (it predates recbole-qrec's data fingerprints)"),
}


@pytest.mark.parametrize("case", list(BROKEN_FILES))
def test_an_unusable_resume_file_is_one_line_and_writes_nothing(case, sasrec, work, tmp_path, capsys, monkeypatch):
    write, fragment = BROKEN_FILES[case]
    write(sasrec, tmp_path / "resume.pth")
    before = files_in(tmp_path)
    status, err = cli(["--model=SASRec", *as_args({**SASREC, "epochs": 3}), f"--data_path={work / 'dataset'}",
                       "--resume_checkpoint=resume.pth"], tmp_path, capsys, monkeypatch)
    assert status == 2 and err.count("\n") == 1
    assert err.startswith("error: resume_checkpoint 'resume.pth' ") and fragment in err, err
    assert files_in(tmp_path) == before


def test_a_missing_resume_file(work, tmp_path, capsys, monkeypatch):
    status, err = cli(["--model=SASRec", *as_args({**SASREC, "epochs": 3}), f"--data_path={work / 'dataset'}",
                       "--resume_checkpoint=saved/absent.pth"], tmp_path, capsys, monkeypatch)
    assert status == 2
    assert err == ("error: resume_checkpoint 'saved/absent.pth' does not exist — give a checkpoint written by "
                   "recbole-qrec (a .pth file under checkpoint_dir, e.g. saved/)\n")
    assert files_in(tmp_path) == {}


def test_a_plain_recbole_checkpoint_is_recognised_and_never_unpickled(work, tmp_path, capsys, monkeypatch):
    save_plain_recbole_checkpoint(work / "dataset", tmp_path / "recbole.pth", monkeypatch)
    before = files_in(tmp_path)
    status, err = cli(["--model=SASRec", *as_args({**SASREC, "epochs": 3}), f"--data_path={work / 'dataset'}",
                       "--resume_checkpoint=recbole.pth"], tmp_path, capsys, monkeypatch)
    assert status == 2
    assert "resume_checkpoint 'recbole.pth' was written by plain RecBole, which pickles its Config object" in err
    assert "train the model with recbole-qrec" in err
    assert files_in(tmp_path) == before


@pytest.mark.parametrize(
    ("model", "dataset", "data", "fragment"),
    [
        ("GRU4Rec", "Instruments", "work", "was written by SASRec, not GRU4Rec — resume with --model=SASRec"),
        ("SASRec", "Games", "other", "was written for dataset Instruments (2650 items), not Games — resume with "
                                     "--dataset=Instruments"),
        ("SASRec", "Instruments", "other", "was written for Instruments with 2650 items, but this run's Instruments"),
        ("SASRec", "Instruments", "changed", "was written for another copy of Instruments (atomic files sha256"),
    ],
)
def test_a_checkpoint_of_another_model_or_dataset(model, dataset, data, fragment, sasrec, work, other_data, tmp_path,
                                                   capsys, monkeypatch):
    if data == "changed":  # same users, items and interactions; one timestamp differs
        shutil.copytree(work / "dataset", tmp_path / "changed")
        inter = tmp_path / "changed" / "Instruments" / "Instruments.inter"
        header, first, *rest = inter.read_text().splitlines(keepends=True)
        user, item, stamp = first.rstrip("\n").split("\t")
        inter.write_text(header + f"{user}\t{item}\t{float(stamp) - 0.5}\n" + "".join(rest))
    data_path = {"work": work / "dataset", "other": other_data / "dataset", "changed": tmp_path / "changed"}[data]
    shutil.copy(sasrec, tmp_path / "SASRec.pth")
    before = files_in(tmp_path)
    status, err = cli([f"--model={model}", f"--dataset={dataset}", *as_args({**SASREC, "epochs": 3}),
                       f"--data_path={data_path}", "--resume_checkpoint=SASRec.pth"], tmp_path, capsys, monkeypatch)
    assert status == 2 and fragment in err, err
    assert files_in(tmp_path) == before


def test_a_checkpoint_with_other_shapes_names_the_differing_settings(sasrec, work, tmp_path, capsys, monkeypatch):
    shutil.copy(sasrec, tmp_path / "SASRec.pth")
    before = files_in(tmp_path)
    status, err = cli(["--model=SASRec", *as_args({**SASREC, "epochs": 3, "hidden_size": 64}),
                       f"--data_path={work / 'dataset'}", "--resume_checkpoint=SASRec.pth"], tmp_path, capsys, monkeypatch)
    assert status == 2
    assert ("resume_checkpoint 'SASRec.pth' does not fit this SASRec: item_embedding.weight is [2651, 32] in the "
            "checkpoint and [2651, 64] here (settings that differ, checkpoint vs this run: hidden_size 32 vs 64)") in err
    assert "resume with the checkpoint's settings (--hidden_size=32)" in err
    assert files_in(tmp_path) == before, "the run's log entries were left"
    assert stat.S_ISCHR(os.stat(os.devnull).st_mode), "a log handler outside log/ was deleted"  # e.g. pytest's own


def test_a_failed_run_removes_its_own_log_entries_and_no_other_runs(work, tmp_path, monkeypatch):
    """Runs started together in one working folder: the one that fails with a user error once its logger has started
    removes its log file and TensorBoard folder, and keeps the entries another run created meanwhile."""
    monkeypatch.chdir(tmp_path)
    config = work_config("SASRec", work, **SASREC)
    other_run = "SASRec-Instruments-Dec-06-2026_05-39-04-092afb"
    with pytest.raises(ConfigError), logs_removed_on_user_error(config):
        init_logger(config)
        (own_log,) = (tmp_path / "log" / "SASRec").glob("*.log")
        SummaryWriter(tmp_path / "log_tensorboard" / own_log.stem).close()
        (tmp_path / "log" / "SASRec" / f"{other_run}.log").write_text("another run\n")
        SummaryWriter(tmp_path / "log_tensorboard" / other_run).close()
        raise ConfigError("a setting found wrong after the logger started")
    assert [path.name for path in (tmp_path / "log" / "SASRec").iterdir()] == [f"{other_run}.log"]
    assert [path.name for path in (tmp_path / "log_tensorboard").iterdir()] == [other_run]
    assert list((tmp_path / "log_tensorboard" / other_run).iterdir()), "the other run's TensorBoard events were removed"


def test_a_checkpoint_that_has_trained_all_epochs(sasrec, work, tmp_path, capsys, monkeypatch):
    shutil.copy(sasrec, tmp_path / "SASRec.pth")
    before = files_in(tmp_path)
    status, err = cli(["--model=SASRec", *as_args(SASREC), f"--data_path={work / 'dataset'}",
                       "--resume_checkpoint=SASRec.pth"], tmp_path, capsys, monkeypatch)
    assert status == 2
    assert "already holds 1 trained epoch(s) and epochs is 1 — give --epochs greater than 1" in err
    assert files_in(tmp_path) == before


def test_the_pretrained_checkpoint_is_checked_the_same_way(mql4grec_pretrained, work, tmp_path, capsys, monkeypatch):
    shutil.copy(mql4grec_pretrained, tmp_path / "MQL4GRec-pretrained.pth")
    before = files_in(tmp_path)
    status, err = cli(["--model=MQL4GRec", *as_args({**MQL4GREC, "d_ff": 128}), f"--data_path={work / 'dataset'}",
                       "--resume_checkpoint=MQL4GRec-pretrained.pth"], tmp_path, capsys, monkeypatch)
    assert status == 2
    assert "resume_checkpoint 'MQL4GRec-pretrained.pth' does not fit this MQL4GRec: " in err
    assert "d_ff 64 vs 128" in err and "(--d_ff=64)" in err
    assert files_in(tmp_path) == before
    status, err = cli(["--model=SASRec", *as_args({**SASREC, "epochs": 3}), f"--data_path={work / 'dataset'}",
                       "--resume_checkpoint=MQL4GRec-pretrained.pth"], tmp_path, capsys, monkeypatch)
    assert status == 2 and "was written by MQL4GRec, not SASRec" in err


def interrupted_run(args: list[str], cwd: Path, data: Path, ready: Callable[[], bool],
                    signum: int = signal.SIGINT, nohup: bool = False) -> subprocess.CompletedProcess:
    """Start ``run_recbole_qrec.py args`` in ``cwd`` (under ``nohup``: SIGHUP ignored), send ``signum`` (default
    Ctrl-C's) once ``ready()``, and wait for it to end."""
    env = {**os.environ, "OMP_NUM_THREADS": "1"}
    command = [*(["nohup"] if nohup else []), sys.executable, str(REPO_ROOT / "run_recbole_qrec.py"),
               f"--data_path={data}", *args]
    with open(cwd / "stderr.txt", "w") as stderr:
        process = subprocess.Popen(command, cwd=cwd, env=env, stdout=subprocess.DEVNULL, stderr=stderr)
        deadline = time.monotonic() + 400
        while process.poll() is None and not ready() and time.monotonic() < deadline:
            time.sleep(0.1)
        assert process.poll() is None, "the run ended before it could be interrupted"
        assert ready(), "the run did not reach the point to interrupt in time"
        if nohup:  # the terminal closing does not stop it
            process.send_signal(signal.SIGHUP)
            with pytest.raises(subprocess.TimeoutExpired):
                process.wait(timeout=3)
        process.send_signal(signum)
        process.wait(timeout=120)
    return subprocess.CompletedProcess(command, process.returncode, "", (cwd / "stderr.txt").read_text())


# Ctrl-C, kill or a job scheduler's stop (SIGTERM reaches the process of an --nproc run that started the others), and
# the terminal closed (SIGHUP)
# (under nohup SIGHUP is ignored: the run goes on until SIGTERM)
@pytest.mark.parametrize(("signum", "nproc", "nohup"), [(signal.SIGINT, 1, False), (signal.SIGTERM, 1, False),
                                                        (signal.SIGTERM, 2, False), (signal.SIGHUP, 1, False),
                                                        (signal.SIGTERM, 1, True)])
def test_an_interrupted_run_leaves_no_checkpoint_and_no_result(signum, nproc, nohup, work, tmp_path):
    saved = tmp_path / "saved"
    done = interrupted_run(["--model=SASRec", *as_args({**SASREC, "epochs": 500, "stopping_step": 500}),
                            f"--nproc={nproc}"], tmp_path, work / "dataset", lambda: any(saved.glob("*.pth")), signum,
                           nohup)
    assert done.returncode == 128 + signum and done.stderr.count("error: interrupted — ") == 1  # 130, 143, 129
    assert done.stderr.strip().splitlines()[-1].startswith("error: interrupted — ")
    assert "Traceback" not in done.stderr
    assert not [path for path in saved.iterdir()], "a checkpoint of the failed run was left"
    assert not (tmp_path / "results").exists()


def test_an_interrupted_resumed_run_restores_the_checkpoint_it_resumed(sasrec, work, tmp_path):
    resumed = tmp_path / "saved" / "SASRec.pth"
    resumed.parent.mkdir()
    shutil.copy(sasrec, resumed)
    original, inode = resumed.read_bytes(), resumed.stat().st_ino
    done = interrupted_run(["--model=SASRec", *as_args({**SASREC, "epochs": 500, "stopping_step": 500}),
                            f"--resume_checkpoint={resumed}"], tmp_path, work / "dataset",
                           lambda: resumed.stat().st_ino != inode)  # the run saved a better epoch into it
    assert done.returncode != 0 and "Resume training from epoch 1" in done.stderr
    assert resumed.read_bytes() == original
    assert [path.name for path in resumed.parent.iterdir()] == ["SASRec.pth"]
    assert not (tmp_path / "results").exists()


def test_an_interrupted_pretraining_run_leaves_no_pretrained_checkpoint(work, tmp_path):
    saved = tmp_path / "saved"
    done = interrupted_run(["--model=MQL4GRec", *as_args({**MQL4GREC, "epochs": 500, "stopping_step": 500})],
                           tmp_path, work / "dataset", lambda: any(saved.glob("*-pretrained.pth")))
    assert done.returncode != 0
    assert not list(saved.glob("*.pth")) and not list(saved.glob(".*")), list(saved.iterdir())
    assert not (tmp_path / "results").exists()


def test_runs_started_together_keep_their_own_checkpoints(work, tmp_path):
    """Side by side (compare --parallel, seeds run at once) runs start in the same second, which RecBole's checkpoint
    name holds: each run's own process id keeps them apart."""
    command = [sys.executable, str(REPO_ROOT / "run_recbole_qrec.py"), f"--data_path={work / 'dataset'}",
               "--model=SASRec", *as_args(SASREC)]
    env = {**os.environ, "OMP_NUM_THREADS": "1"}
    runs = [subprocess.Popen(command, cwd=tmp_path, env=env, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
            for _ in range(2)]
    assert [run.wait(timeout=300) for run in runs] == [0, 0]
    records = [json.loads(line) for line in (tmp_path / "results" / "results.jsonl").read_text().splitlines()]
    assert sorted(Path(record["checkpoint"]).stem.rsplit("-", 1)[1] for record in records) == sorted(
        str(run.pid) for run in runs)
    assert all((tmp_path / record["checkpoint"]).is_file() for record in records)
