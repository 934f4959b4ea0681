"""The item-list positions a training epoch holds with ``length_buckets`` against full-length batches, from the
device loader's own batches (on the CPU): every position of every batch, padding included, over the epoch's
``rows x MAX_ITEM_LIST_LENGTH``; with the batches per epoch and the batch shapes:

    python bench/length_buckets.py --datasets Instruments Arts Games --buckets 3,8 2,5,10 \\
        --out docs/results/length_buckets

Processed datasets under ``--data_path`` or ``$QREC_DATA_DIR`` are converted into a temporary folder first.
"""

from __future__ import annotations

import argparse
import sys
import tempfile
from collections import Counter
from pathlib import Path

from common import machine_name, markdown, prepare_data, provenance_lines, write_outputs

from recbole_qrec.config import build_config
from recbole_qrec.data import create_dataset, data_preparation
from recbole_qrec.results import git_state

COLUMNS = ["dataset", "length_buckets", "training_rows", "batches", "positions_kept", "batch_widths"]


def epoch_positions(dataset: str, data: Path, bounds: list[int] | None) -> dict:
    """One epoch of SASRec's device training loader with ``length_buckets: bounds``: its batches and the share of a
    full-length epoch's item-list positions they hold."""
    config = build_config("SASRec", dataset, config_dict={"data_path": str(data), "use_gpu": False,
                                                         "data_path_mode": "gpu", "length_buckets": bounds})
    loader = data_preparation(config, create_dataset(config))[0]
    shapes = Counter(tuple(batch["item_id_list"].shape) for batch in loader)
    rows = sum(count * batch_rows for (batch_rows, _), count in shapes.items())
    positions = sum(count * batch_rows * width for (batch_rows, width), count in shapes.items())
    widths = sorted({width for _, width in shapes})
    full_length = rows * config["MAX_ITEM_LIST_LENGTH"]
    return {"dataset": dataset, "length_buckets": "~" if bounds is None else str(bounds), "training_rows": rows,
            "batches": sum(shapes.values()), "positions_kept": round(positions / full_length, 4),
            "batch_widths": ", ".join(map(str, widths)), "max_length": config["MAX_ITEM_LIST_LENGTH"],
            "batch_size": config["train_batch_size"]}


def main() -> None:
    parser = argparse.ArgumentParser(prog="python bench/length_buckets.py", description=__doc__.split("\n\n")[0])
    parser.add_argument("--datasets", nargs="+", default=["Instruments", "Arts", "Games"])
    parser.add_argument("--data_path", help="processed datasets (default: $QREC_DATA_DIR)")
    parser.add_argument("--buckets", nargs="+", default=["3,8", "2,5,10"],
                        help="length_buckets to compare with full-length batches, each as comma-separated bounds")
    parser.add_argument("--out", type=Path, required=True, help="output prefix")
    args = parser.parse_args()
    try:
        choices = [None, *([int(bound) for bound in bounds.split(",")] for bounds in args.buckets)]
    except ValueError:
        parser.error(f"--buckets takes comma-separated integers such as 3,8, got {' '.join(args.buckets)}")
    with tempfile.TemporaryDirectory() as tmp:
        rows = []
        for name in args.datasets:
            data = prepare_data(name, Path(tmp) / name, None, args.data_path)
            rows += [epoch_positions(name, data, bounds) for bounds in choices]
    commit = git_state()[0]
    command = "python bench/length_buckets.py " + " ".join(sys.argv[1:])
    header = "\n".join([
        "# Item-list positions per training epoch with length buckets", "",
        *provenance_lines(command, commit),
        f"- SASRec's device training loader at its defaults (MAX_ITEM_LIST_LENGTH {rows[0]['max_length']}, "
        f"train_batch_size {rows[0]['batch_size']}), one epoch; positions_kept: the epoch's batches' item-list "
        "positions (padding included) over training_rows x MAX_ITEM_LIST_LENGTH; batch_widths: the item-list widths "
        "of its batches"])
    payload = {"command": command, "commit": commit, "machine": machine_name(), "rows": rows}
    write_outputs(args.out, payload, rows, markdown(rows, header, COLUMNS), COLUMNS)


if __name__ == "__main__":
    main()
