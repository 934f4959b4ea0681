"""Small real datasets for tests and smoke runs: the first ``N`` users of a processed dataset."""

from __future__ import annotations

import json
import shutil
from collections.abc import Mapping
from pathlib import Path

from dataset_prep.convert import convert


def write_user_subset(dataset: str, source: Path, out: Path, users: int) -> Path:
    """Write the first ``users`` users of ``source/<dataset>.inter.json`` (and its code files) to ``out/<dataset>/``.

    The result is in the same processed format, so ``dataset_prep.convert`` reads it with ``--src out``.
    Returns ``out``.
    """
    target = out / dataset
    target.mkdir(parents=True, exist_ok=True)
    sequences = json.loads((source / f"{dataset}.inter.json").read_text(encoding="utf-8"))
    subset = dict(list(sequences.items())[:users])
    (target / f"{dataset}.inter.json").write_text(json.dumps(subset), encoding="utf-8")
    for code_file in source.glob(f"{dataset}.index*.json"):
        shutil.copy(code_file, target / code_file.name)
    return out


def convert_user_subsets(source_root: Path, out: Path, users: Mapping[str, int]) -> Path:
    """For each ``dataset: N`` of ``users``: its first ``N`` users in processed format under ``out/processed``
    and as RecBole atomic files under ``out/dataset``. Returns ``out``."""
    for dataset, count in users.items():
        write_user_subset(dataset, source_root / dataset, out / "processed", count)
        convert(dataset, src=out / "processed", out=out / "dataset")
    return out
