"""Shared fixtures: the real Amazon data (skipped with a reason when absent) and small subsets of it."""

from __future__ import annotations

import json
import os
import shutil
from pathlib import Path

import pytest

from dataset_prep.locate import ENV_VAR, SHARED_DATA_DIR

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
    root = tmp_path_factory.mktemp("subset")
    target = root / "Instruments"
    target.mkdir()
    source = amazon_dir / "Instruments"
    sequences = json.loads((source / "Instruments.inter.json").read_text())
    subset = dict(list(sequences.items())[:SUBSET_USERS])
    (target / "Instruments.inter.json").write_text(json.dumps(subset))
    for code_file in source.glob("Instruments.index*.json"):
        shutil.copy(code_file, target / code_file.name)
    return root
