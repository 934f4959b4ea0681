"""Packaging: a non-editable install ships every YAML default and runs a job from outside the source tree;
importing the package is cheap; an optional extra that is missing is named with the command that installs it."""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys
from pathlib import Path

import pytest

from dataset_prep.features.image import ImageEncoder, ImageOptions
from recbole_qrec.errors import MissingDependencyError

REPO_ROOT = Path(__file__).resolve().parents[1]
SMALL_JOB = ["--model=SASRec", "--dataset=Instruments", "--epochs=1", "--use_gpu=False", "--train_batch_size=256",
             "--eval_batch_size=256", "--allow_data_mismatch=True"]


def source_files() -> list[str]:
    """The checkout's files as a clone would have them: tracked and not-ignored untracked files."""
    listed = subprocess.run(["git", "ls-files", "--cached", "--others", "--exclude-standard"], cwd=REPO_ROOT,
                            capture_output=True, text=True, check=True).stdout.splitlines()
    return [name for name in listed if (REPO_ROOT / name).is_file()]


@pytest.fixture(scope="module")
def installed(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """``pip install --target`` (not editable) of a copy of the checkout; returns the target folder."""
    source = tmp_path_factory.mktemp("source")
    for name in source_files():  # a copy, so no build/ folder of an earlier build leaks into the wheel
        (source / name).parent.mkdir(parents=True, exist_ok=True)
        shutil.copy2(REPO_ROOT / name, source / name)
    target = tmp_path_factory.mktemp("site")
    subprocess.run([sys.executable, "-m", "pip", "install", "--quiet", "--no-deps", "--no-build-isolation",
                    "--target", str(target), str(source)], check=True)
    return target


def installed_env(target: Path) -> dict[str, str]:
    """Environment that imports recbole-qrec from ``target`` (ahead of the editable install of the checkout)."""
    return {**os.environ, "PYTHONPATH": str(target), "OMP_NUM_THREADS": "1"}


def relative_files(folder: Path) -> list[str]:
    return sorted(str(path.relative_to(folder)) for path in folder.rglob("*")
                  if path.is_file() and "__pycache__" not in path.parts)


def test_installed_tree_ships_every_default(installed: Path, tmp_path: Path):
    shipped = installed / "recbole_qrec" / "properties"
    assert relative_files(shipped) == relative_files(REPO_ROOT / "properties")
    code = "import recbole_qrec.resources as r; print(r.PROPERTIES_DIR)"
    found = subprocess.run([sys.executable, "-c", code], cwd=tmp_path, env=installed_env(installed),
                           capture_output=True, text=True, check=True).stdout.strip()
    assert Path(found) == shipped.resolve()


@pytest.mark.parametrize("entry", ["python -m recbole_qrec", "recbole-qrec"])
def test_installed_package_runs_a_job_from_outside_the_source_tree(installed: Path, work: Path, tmp_path: Path,
                                                                   entry: str):
    env = installed_env(installed)
    where = subprocess.run([sys.executable, "-c", "import recbole_qrec; print(recbole_qrec.__file__)"], cwd=tmp_path,
                           env=env, capture_output=True, text=True, check=True).stdout.strip()
    assert Path(where).is_relative_to(installed)
    command = [sys.executable, "-m", "recbole_qrec"] if entry.startswith("python") else [str(installed / "bin" / entry)]
    done = subprocess.run([*command, *SMALL_JOB, f"--data_path={work / 'dataset'}"], cwd=tmp_path, env=env,
                          capture_output=True, text=True, timeout=600)
    assert done.returncode == 0, done.stderr[-3000:]
    records = (tmp_path / "results" / "results.jsonl").read_text(encoding="utf-8").splitlines()
    assert len(records) == 1
    record = json.loads(records[0])
    assert record["model"] == "SASRec" and record["dataset"] == "Instruments" and "ndcg@10" in record["test"]


def test_import_is_cheap_and_loads_neither_torch_nor_recbole():
    code = ("import sys, time; start = time.perf_counter(); import {module}; seconds = time.perf_counter() - start; "
            "heavy = sorted(name for name in ('torch', 'recbole') if name in sys.modules); print(seconds, heavy)")
    for module in ("recbole_qrec", "dataset_prep.convert"):
        printed = subprocess.run([sys.executable, "-c", code.format(module=module)], cwd=REPO_ROOT,
                                 capture_output=True, text=True, check=True).stdout.split(maxsplit=1)
        assert float(printed[0]) < 2.0, f"import {module} took {printed[0]} s"
        assert printed[1].strip() == "[]", f"import {module} loaded {printed[1].strip()}"


def test_image_features_without_the_image_extra_name_the_install_command(monkeypatch: pytest.MonkeyPatch):
    monkeypatch.setitem(sys.modules, "open_clip", None)  # as if open_clip_torch were not installed
    with pytest.raises(MissingDependencyError, match=r"'open_clip', which is not installed — pip install 'recbole-qrec\[image\]'"):
        ImageEncoder(ImageOptions(pretrained=None))
