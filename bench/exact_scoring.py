"""Ranking by constrained beam search vs exact ranking (``eval_mode: beam | exact``) of TIGER and MQL4GRec.

For each model: the harness config on the real dataset (under ``--data_path`` or ``$QREC_DATA_DIR``; its first
``--users`` users if given), a model trained for ``--epochs`` epochs by its trainer (no validation), or the weights of
``--checkpoint`` (a recbole-qrec checkpoint of that model and config); then the same weights evaluated on the test
split (or the same random ``--test_users`` of its users) in each mode, timed (device-synchronised): test metrics
and milliseconds per test user. The modes differ where the beam prunes (it keeps the best prefixes level by level):
a target it drops is a miss, and the items it drops that would score above the target no longer rank above it. Writes ``<out>.json`` (every figure, the command, machine and
date), ``<out>.csv`` and ``<out>.md``.

    python bench/exact_scoring.py --device cuda --epochs 30 --out docs/results/exact_scoring
    python bench/exact_scoring.py --device cuda --epochs 6 --test_users 2000 --out docs/results/exact_scoring
    python bench/exact_scoring.py --models TIGER --checkpoint saved/TIGER-....pth --device cuda \\
        --out docs/results/exact_scoring                                  # a trained checkpoint
    python bench/exact_scoring.py --device cpu --users 100 --epochs 1 --set d_model=32 d_ff=64 num_layers=1 \\
        num_decoder_layers=1 num_heads=2 --out /tmp/exact_scoring         # local smoke test
"""

from __future__ import annotations

import argparse
import shlex
import sys
import tempfile
import time
from datetime import datetime, timezone
from pathlib import Path

from common import (METRICS, build_model, load_data, machine_name, make_config, prepare_data, synchronize,
                    write_outputs)
from recbole_qrec.data.eval_dataloader import user_sample
from recbole_qrec.generation import EVAL_MODES
from recbole_qrec.results import git_state
from recbole_qrec.trainer import get_trainer
from recbole_qrec.trainer.checkpoint import read_checkpoint

COLUMNS = ["model", "eval_mode", "users", "ms_per_user", *METRICS]


def evaluate_modes(model_name: str, dataset: str, data_path: Path, work: Path, args: argparse.Namespace) -> list[dict]:
    """Train (or load) ``model_name`` once, then evaluate its weights on the test split in every eval mode."""
    rows, weights = [], None
    for mode in EVAL_MODES:
        config = make_config(model_name, dataset, data_path, work, args.device, [*args.set, f"eval_mode={mode}"])
        _, train, _, test = load_data(config)
        if args.test_users:
            test = user_sample(test, args.test_users, config["seed"])
        model = build_model(config, train)
        trainer = get_trainer(config["MODEL_TYPE"], config["model"])(config, model)
        if weights is None:
            if args.checkpoint:
                model.load_state_dict(read_checkpoint(args.checkpoint, "--checkpoint")["state_dict"])
            else:
                trainer.fit(train, None, saved=False, show_progress=False)
            weights = model.state_dict()
        model.load_state_dict(weights)
        synchronize(config["device"])
        start = time.perf_counter()
        result = trainer.evaluate(test, load_best_model=False, show_progress=False)
        synchronize(config["device"])
        users = len(test.dataset)
        rows.append({"model": model_name, "eval_mode": mode, "users": users,
                     "ms_per_user": 1000 * (time.perf_counter() - start) / users,
                     **{metric: float(result[metric]) for metric in METRICS}})
        print(f"{model_name} {mode}: " + ", ".join(f"{key} {value:.4f}" for key, value in rows[-1].items()
                                                    if isinstance(value, float)), flush=True)
    return rows


def markdown(rows: list[dict], header: str) -> str:
    lines = [header, "", "| " + " | ".join(COLUMNS) + " |", "|" + "---|" * len(COLUMNS)]
    lines += ["| " + " | ".join(f"{row[c]:.4f}" if c in METRICS else f"{row[c]:.2f}" if c == "ms_per_user"
                                else str(row[c]) for c in COLUMNS) + " |" for row in rows]
    return "\n".join(lines) + "\n"


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--dataset", default="Instruments")
    parser.add_argument("--data_path", help="processed datasets (default: $QREC_DATA_DIR)")
    parser.add_argument("--models", nargs="+", default=["TIGER", "MQL4GRec"], choices=["TIGER", "MQL4GRec"])
    parser.add_argument("--users", type=int, help="only the first N users (default: all)")
    parser.add_argument("--test_users", type=int, help="rank the same random N test users in both modes (default: all)")
    parser.add_argument("--epochs", type=int, default=30, help="training epochs (without --checkpoint)")
    parser.add_argument("--checkpoint", help="weights of the one model of --models instead of training")
    parser.add_argument("--device", default="cuda", help="cpu, cuda or cuda:N")
    parser.add_argument("--set", nargs="*", default=[], metavar="KEY=VALUE", help="more config settings of both modes")
    parser.add_argument("--commit", help="this checkout's commit, where git cannot tell (a copied tree)")
    parser.add_argument("--out", type=Path, required=True, help="output prefix, e.g. docs/results/exact_scoring")
    args = parser.parse_args(argv)
    if args.checkpoint and len(args.models) != 1:
        raise SystemExit("error: --checkpoint holds one model's weights — pass that model alone with --models")
    args.set = [*args.set, f"epochs={args.epochs}"]
    command = shlex.join(["python", "bench/exact_scoring.py", *sys.argv[1:]] if argv is None else argv)
    rows: list[dict] = []
    with tempfile.TemporaryDirectory() as tmp:
        work = Path(tmp)
        data_path = prepare_data(args.dataset, work, args.users, args.data_path)
        for model in args.models:  # the outputs after each model: a run stopped later keeps the finished ones
            rows += evaluate_modes(model, args.dataset, data_path, work, args)
            table = write_results(args.out, rows, command, args)
    print(table)


def write_results(out: Path, rows: list[dict], command: str, args: argparse.Namespace) -> str:
    """Write ``<out>.json``, ``.csv`` and ``.md`` of ``rows``; returns the markdown."""
    date = datetime.now(timezone.utc).isoformat(timespec="seconds")
    commit = args.commit or git_state()[0]
    header = (f"# Beam search vs exact ranking on {args.dataset}\n\n`{command}`  \n"
              f"commit {commit}; {machine_name()}; {date}; "
              f"{'checkpoint ' + args.checkpoint if args.checkpoint else f'epochs: {args.epochs}'}")
    table = markdown(rows, header)
    write_outputs(out, {"command": command, "commit": commit, "machine": machine_name(), "date": date, "rows": rows},
                  rows, table, COLUMNS)
    return table


if __name__ == "__main__":
    main()
