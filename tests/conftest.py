"""Shared fixtures: the real Amazon data (skipped with a reason when absent) and small subsets of it."""

from __future__ import annotations

import os
from pathlib import Path

import pytest
import torch

from dataset_prep.convert import convert
from dataset_prep.locate import ENV_VAR, SHARED_DATA_DIR
from dataset_prep.subset import write_user_subset

REPO_ROOT = Path(__file__).resolve().parents[1]
SUBSET_USERS = 500


def real_data_dir() -> Path:
    """``$QREC_DATA_DIR`` if set, else ``../shared/data/amazon``."""
    return Path(os.environ.get(ENV_VAR) or SHARED_DATA_DIR)


@pytest.fixture(scope="session")
def amazon_dir() -> Path:
    """Folder with the processed Amazon datasets; skips the test when the data is not there."""
    root = real_data_dir()
    if not (root / "Instruments" / "Instruments.inter.json").is_file():
        pytest.skip(f"real Amazon data not found at {root}: set {ENV_VAR} or provide ../shared/data/amazon")
    return root


@pytest.fixture(scope="session")
def instruments_subset(amazon_dir: Path, tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A processed-format copy of the first 500 users of Instruments (with the real code files)."""
    return write_user_subset("Instruments", amazon_dir / "Instruments", tmp_path_factory.mktemp("subset"), SUBSET_USERS)


@pytest.fixture(scope="module")
def work(instruments_subset: Path, tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A folder per test module with the subset converted to atomic files under ``dataset/``."""
    folder = tmp_path_factory.mktemp("work")
    convert("Instruments", src=instruments_subset, out=folder / "dataset")
    return folder


@pytest.fixture(scope="module")
def one_thread():
    """For modules of tiny tensors: one intra-op thread avoids oversubscribing a shared CPU (several times faster)."""
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(threads)
