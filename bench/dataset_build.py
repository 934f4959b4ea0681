"""Seconds to build a sequential dataset's train/valid/test splits (``Dataset.build``: the augmentation of every
training prefix and the leave-one-out split), RecBole's ``SequentialDataset`` against recbole-qrec's
``QRecSequentialDataset`` (its augmentation by array indexing), and whether the splits are identical field by field:

    python bench/dataset_build.py --datasets Instruments Arts Games --repeats 3 --out docs/results/dataset_build

Processed datasets under ``--data_path`` or ``$QREC_DATA_DIR`` are converted into a temporary folder first.
"""

from __future__ import annotations

import argparse
import statistics
import sys
import tempfile
import time
from pathlib import Path

import torch
from common import machine_name, markdown, prepare_data, provenance_lines, write_outputs
from recbole.data.dataset import Dataset, SequentialDataset

from recbole_qrec.config import build_config
from recbole_qrec.data.dataset import QRecSequentialDataset
from recbole_qrec.results import git_state

COLUMNS = ["dataset", "training_rows", "recbole_build_s", "qrec_build_s", "speedup", "identical"]


def build_seconds(dataset_class: type[Dataset], config) -> tuple[float, list[Dataset]]:
    """Seconds of ``dataset_class(config).build()`` (the atomic files read before the clock starts) and the splits."""
    dataset = dataset_class(config)
    start = time.perf_counter()
    splits = dataset.build()
    return time.perf_counter() - start, splits


def identical(ours: list[Dataset], recbole: list[Dataset]) -> bool:
    """Whether every split has the same fields with the same dtypes and values."""
    return all(sorted(mine.inter_feat.columns) == sorted(theirs.inter_feat.columns)
               and all(mine.inter_feat[field].dtype == theirs.inter_feat[field].dtype
                       and torch.equal(mine.inter_feat[field], theirs.inter_feat[field])
                       for field in theirs.inter_feat.columns)
               for mine, theirs in zip(ours, recbole))


def measure(dataset: str, data: Path, repeats: int) -> dict:
    config = build_config("SASRec", dataset, config_dict={"data_path": str(data), "use_gpu": False})
    recbole_times, qrec_times = [], []
    for _ in range(repeats):
        seconds, recbole_splits = build_seconds(SequentialDataset, config)
        recbole_times.append(seconds)
        seconds, qrec_splits = build_seconds(QRecSequentialDataset, config)
        qrec_times.append(seconds)
    recbole_s, qrec_s = statistics.median(recbole_times), statistics.median(qrec_times)
    return {"dataset": dataset, "training_rows": len(qrec_splits[0].inter_feat), "recbole_build_s": round(recbole_s, 2),
            "qrec_build_s": round(qrec_s, 2), "speedup": round(recbole_s / qrec_s, 1),
            "identical": identical(qrec_splits, recbole_splits)}


def main() -> None:
    parser = argparse.ArgumentParser(prog="python bench/dataset_build.py", description=__doc__.split("\n\n")[0])
    parser.add_argument("--datasets", nargs="+", default=["Instruments", "Arts", "Games"])
    parser.add_argument("--data_path", help="processed datasets (default: $QREC_DATA_DIR)")
    parser.add_argument("--repeats", type=int, default=3, help="builds per class; the median is reported")
    parser.add_argument("--out", type=Path, required=True, help="output prefix")
    args = parser.parse_args()
    with tempfile.TemporaryDirectory() as tmp:
        rows = [measure(name, prepare_data(name, Path(tmp) / name, None, args.data_path), args.repeats)
                for name in args.datasets]
    commit = git_state()[0]
    command = "python bench/dataset_build.py " + " ".join(sys.argv[1:])
    header = "\n".join([
        "# Building a sequential dataset's splits: RecBole's SequentialDataset vs QRecSequentialDataset", "",
        *provenance_lines(command, commit),
        f"- seconds of `Dataset.build()` (augmentation and leave-one-out split, files already read), median of "
        f"{args.repeats}; identical: every field of the train/valid/test splits equal"])
    payload = {"command": command, "commit": commit, "machine": machine_name(), "rows": rows}
    write_outputs(args.out, payload, rows, markdown(rows, header, COLUMNS), COLUMNS)


if __name__ == "__main__":
    main()
