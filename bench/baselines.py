"""Train several models side by side on one dataset and write a comparison table.

Each model runs ``run_recbole_qrec.py`` in its own process (``--parallel`` at a time, sharing
the GPU); every run's JSON result line is collected into ``<out>.json``, ``<out>.csv`` and a
Markdown table ``<out>.md`` that records the exact command, machine and date.

    python bench/baselines.py --dataset Instruments --models GRU4Rec SASRec BERT4Rec FDSA \
        --out docs/results/baselines_instruments [--data_path=DIR] [--key=value ...]

Every ``--key=value`` goes to each run; ``--data_path`` names the folder of the atomic files (RecBole's
``data_path``, written by ``python -m dataset_prep.convert``).
"""

from __future__ import annotations

import argparse
import shlex
import sys
import tempfile
from concurrent.futures import ThreadPoolExecutor
from datetime import datetime, timezone
from pathlib import Path

from common import machine_name, markdown, run_model, table_rows, write_outputs


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--dataset", default="Instruments")
    parser.add_argument("--models", nargs="+", default=["GRU4Rec", "SASRec", "BERT4Rec", "FDSA"])
    parser.add_argument("--parallel", type=int, default=4, help="models trained at once")
    parser.add_argument("--work-dir", help="keep per-model logs and result lines here (default: a temporary folder)")
    parser.add_argument("--out", required=True, help="output path without extension, e.g. docs/results/baselines_instruments")
    args, overrides = parser.parse_known_args()
    command = "python " + " ".join(shlex.quote(a) for a in sys.argv)
    with tempfile.TemporaryDirectory() as tmp:
        work = Path(args.work_dir or tmp)
        work.mkdir(parents=True, exist_ok=True)
        with ThreadPoolExecutor(args.parallel) as pool:
            results = list(pool.map(lambda m: run_model(m, args.dataset, overrides, work, work), args.models))
    rows = table_rows(results)
    date = datetime.now(timezone.utc).strftime("%Y-%m-%d %H:%M UTC")
    header = (f"# {args.dataset}: test metrics (leave-one-out, full ranking)\n\n"
              f"- command: `{command}`\n- machine: {machine_name()}\n- date: {date}\n"
              f"- config hashes: " + ", ".join(f"{r['model']}={r['config_hash']}" for r in results))
    table = markdown(rows, header)
    print(table)
    payload = {"command": command, "machine": machine_name(), "date": date, "results": results}
    write_outputs(Path(args.out), payload, rows, table)


if __name__ == "__main__":
    main()
