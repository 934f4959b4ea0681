"""Run the same models and settings on this checkout and on an earlier one, side by side, and compare.

For a change that should not move the numbers (a refactor), this trains each ``--run`` once with the current
code and once with a reference tree (an earlier commit extracted with ``git archive REV | tar -x -C DIR``), all
processes at once on one machine, each tree converting the processed data with its own
``dataset_prep.convert``; then it writes ``<out>.md`` and ``<out>.json`` with both test results per run:

    python bench/reference_comparison.py --reference-tree /tmp/ref --reference-commit 7a07835 \\
        --dataset Instruments --data_path $QREC_DATA_DIR --out docs/results/reference_comparison \\
        --run "--model=QBert4Rec --epochs=10 --pretrain_epochs=4" --run "--model=TIGER --epochs=12"
"""

from __future__ import annotations

import argparse
import json
import os
import shlex
import subprocess
import sys
import tempfile
import time
from concurrent.futures import ThreadPoolExecutor
from datetime import datetime, timezone
from pathlib import Path

from common import METRICS, REPO_ROOT, machine_name

from recbole_qrec.fileio import atomic_open, write_json_atomic
from recbole_qrec.results import git_state


def tree_env(tree: Path) -> dict[str, str]:
    """The environment in which ``tree``'s code is imported first."""
    return {**os.environ, "PYTHONPATH": os.pathsep.join(filter(None, [str(tree), os.environ.get("PYTHONPATH")]))}


def convert(tree: Path, dataset: str, source: Path, out: Path) -> None:
    """Atomic files of ``dataset`` made by ``tree``'s own converter."""
    command = [sys.executable, "-m", "dataset_prep.convert", "--dataset", dataset, "--src", str(source),
               "--out", str(out)]
    subprocess.run(command, cwd=tree, env=tree_env(tree), check=True, capture_output=True)


def train(tree: Path, dataset: str, args: list[str], work: Path, timeout: int) -> dict:
    """One run of ``tree``'s entry point; its result record, or why it has none."""
    work.mkdir(parents=True)
    command = [sys.executable, str(tree / "run_recbole_qrec.py"), f"--dataset={dataset}", *args,
               f"--data_path={work.parent / 'data'}", f"--results_dir={work / 'results'}",
               f"--checkpoint_dir={work / 'saved'}"]
    start = time.time()
    with open(work / "log.txt", "w", encoding="utf-8") as log:
        try:
            code = subprocess.run(command, cwd=work, env=tree_env(tree), stdout=log,
                                  stderr=subprocess.STDOUT, timeout=timeout).returncode
        except subprocess.TimeoutExpired:
            return {"error": f"stopped after {timeout} s", "log_tail": tail(work / "log.txt")}
    results = work / "results" / "results.jsonl"
    if code or not results.is_file():
        return {"error": f"exit status {code}", "log_tail": tail(work / "log.txt")}
    record = json.loads(results.read_text(encoding="utf-8").splitlines()[-1])
    return {"test": record["test"], "valid": record["valid"], "epochs": record["epochs"],
            "wall_time_s": round(time.time() - start, 1)}


def tail(path: Path, lines: int = 5) -> list[str]:
    return path.read_text(encoding="utf-8", errors="replace").splitlines()[-lines:]


def cell(result: dict, metric: str) -> str:
    return f"{result['test'][metric]:.4f}" if "test" in result else "—"


def markdown(rows: list[dict], header: list[str]) -> str:
    lines = [*header, "", "| run | code | " + " | ".join(METRICS) + " | epochs |",
             "|---|---|" + "---|" * (len(METRICS) + 1)]
    for row in rows:
        for code in ("current", "reference"):
            result = row[code]
            status = result.get("epochs", result.get("error", ""))
            lines.append(f"| `{row['run']}` | {code} | " + " | ".join(cell(result, m) for m in METRICS)
                         + f" | {status} |")
    return "\n".join(lines) + "\n"


def main() -> None:
    parser = argparse.ArgumentParser(prog="python bench/reference_comparison.py",
                                     description="Compare test metrics of this checkout and a reference tree.")
    parser.add_argument("--reference-tree", type=Path, required=True, help="an earlier checkout's files")
    parser.add_argument("--reference-commit", required=True, help="the commit the reference tree was taken from")
    parser.add_argument("--current-commit", help="this checkout's commit, where git cannot tell (a copied tree)")
    parser.add_argument("--dataset", default="Instruments")
    parser.add_argument("--data_path", type=Path, default=os.environ.get("QREC_DATA_DIR"),
                        help="processed data root (default: $QREC_DATA_DIR)")
    parser.add_argument("--run", action="append", required=True, help="entry-point arguments of one run")
    parser.add_argument("--timeout", type=int, default=540, help="seconds per run")
    parser.add_argument("--out", type=Path, required=True, help="output prefix")
    args = parser.parse_args()
    if args.data_path is None:
        parser.error("give --data_path or set QREC_DATA_DIR")
    trees = {"current": REPO_ROOT, "reference": args.reference_tree.resolve()}
    with tempfile.TemporaryDirectory() as tmp:
        for name, tree in trees.items():
            convert(tree, args.dataset, args.data_path.resolve(), Path(tmp) / name / "data")
        jobs = {(index, name): (tree, Path(tmp) / name / f"run{index}")
                for index in range(len(args.run)) for name, tree in trees.items()}
        with ThreadPoolExecutor(len(jobs)) as pool:
            futures = {key: pool.submit(train, tree, args.dataset, shlex.split(args.run[key[0]]), work, args.timeout)
                       for key, (tree, work) in jobs.items()}
        results = {key: future.result() for key, future in futures.items()}
    rows = [{"run": run, **{name: results[(index, name)] for name in trees}} for index, run in enumerate(args.run)]
    commit, dirty = (args.current_commit, False) if args.current_commit else git_state()
    command = "python bench/reference_comparison.py " + shlex.join(sys.argv[1:])
    header = ["# Test metrics: this checkout against a reference commit, same settings and seed", "",
              f"- command: `{command}`", f"- current commit: {commit}{' (uncommitted changes)' if dirty else ''}; "
              f"reference commit: {args.reference_commit}",
              f"- machine: {machine_name()}", f"- date: {datetime.now(timezone.utc).isoformat(timespec='minutes')}",
              f"- dataset: {args.dataset}; all {len(jobs)} runs at once on this machine"]
    with atomic_open(args.out.with_suffix(".md"), "w", encoding="utf-8") as handle:
        handle.write(markdown(rows, header))
    write_json_atomic(args.out.with_suffix(".json"), {"command": command, "current_commit": commit,
                                                      "reference_commit": args.reference_commit, "rows": rows})


if __name__ == "__main__":
    main()
