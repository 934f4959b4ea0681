"""Re-measure the quality floors of tests/floors.json and raise them on purpose, never silently lower them.

Each model's small run (its ``settings``) is trained twice on the first 500 users of Instruments on the CPU (the
same run as tests/test_floors.py) and its untrained model evaluated once. The proposed floor is the lower of the
two measurements less ``--margin`` (relative), rounded down to 4 decimals. With ``--write`` a proposed floor above
the current one is appended to the model's history with the current commit and date; one below it is written
only with ``--lowered_because REASON``.

    python bench/floors.py                          # print measured values and proposed floors
    python bench/floors.py --models SASRec --write  # raise SASRec's floor if it now measures higher
"""

from __future__ import annotations

import argparse
import importlib.util
import math
import tempfile
import time
from datetime import UTC, datetime
from pathlib import Path
from types import ModuleType

import torch

from common import REPO_ROOT, prepare_data
from recbole_qrec.fileio import write_json_atomic
from recbole_qrec.results import git_state



def load_test_module(path: Path) -> ModuleType:
    """The test module at ``path``, loaded by file location (the floors are measured by the tests' own run)."""
    spec = importlib.util.spec_from_file_location(path.stem, path)
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


test_floors = load_test_module(REPO_ROOT / "tests" / "test_floors.py")
FLOORS_FILE, load_floors, small_run = test_floors.FLOORS_FILE, test_floors.load_floors, test_floors.small_run

SUBSET_USERS = 500  # tests/conftest.py SUBSET_USERS


def proposed_floor(measured: list[float], margin: float) -> float:
    """The lowest measurement less ``margin`` (relative), rounded down to 4 decimals."""
    return math.floor(min(measured) * (1 - margin) * 1e4) / 1e4


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--models", nargs="+", help="models to measure (default: all in tests/floors.json)")
    parser.add_argument("--margin", type=float, default=0.1, help="relative margin below the lowest measurement")
    parser.add_argument("--data_path", help="processed-data root (default: $QREC_DATA_DIR)")
    parser.add_argument("--write", action="store_true", help="append raised floors to tests/floors.json")
    parser.add_argument("--lowered_because", help="allow --write to lower a floor, recording this reason")
    args = parser.parse_args(argv)
    if not 0 <= args.margin < 1:
        raise SystemExit(f"error: --margin {args.margin} is outside [0, 1) — pass a margin at or above 0, below 1")
    floors = load_floors()
    models = args.models or list(floors["models"])
    unknown = sorted(set(models) - set(floors["models"]))
    if unknown:
        raise SystemExit(f"error: no floors entry for {', '.join(unknown)} — add its settings to {FLOORS_FILE}")
    torch.set_num_threads(1)
    commit, dirty = git_state()
    date = datetime.now(UTC).strftime("%Y-%m-%d")
    with tempfile.TemporaryDirectory() as folder:
        data_path = prepare_data("Instruments", Path(folder), SUBSET_USERS, args.data_path)
        print(f"{'model':<10} {'run 1':>7} {'run 2':>7} {'untrained':>9} {'seconds':>8} {'floor':>7} {'proposed':>8}")
        for model in models:
            entry = floors["models"][model]
            start = time.time()
            (untrained, first), (_, second) = (small_run(model, entry["settings"], data_path) for _ in range(2))
            measured, seconds = [first, second], (time.time() - start) / 2
            current = entry["floors"][-1]["floor"] if entry["floors"] else None
            proposed = proposed_floor(measured, args.margin)
            print(f"{model:<10} {measured[0]:7.4f} {measured[1]:7.4f} {untrained:9.4f} {seconds:8.1f} "
                  f"{current if current is not None else '-':>7} {proposed:8.4f}")
            if proposed <= untrained:
                print(f"  {model}: the proposed floor does not exceed the untrained model; not written")
                continue
            lowered = current is not None and proposed < current
            if lowered and not args.lowered_because:
                print(f"  {model}: below its floor {current}; kept (to lower it on purpose: --lowered_because REASON)")
            elif args.write and proposed != current:
                record = {"floor": proposed, "measured": measured, "untrained": untrained, "commit": commit,
                          "dirty": dirty, "date": date}
                entry["floors"].append({**record, "lowered_because": args.lowered_because} if lowered else record)
    if args.write:
        write_json_atomic(FLOORS_FILE, floors)


if __name__ == "__main__":
    main()
