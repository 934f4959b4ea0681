"""Benchmark the semantic-ID tokenizer (train + assign + collision handling) and write a results table.

Rows: a synthetic catalog (clustered Gaussian features generated on the device, fixed seed;
default 1,000,000 items x 4096 dims, budget 300 s per fit) and Instruments (6,250 items; the
one-hot of the 4 text-code levels of ``Instruments.index_lemb.json``, 1024 dims; found under
``--data_path``, else ``$QREC_DATA_DIR``, else skipped), each with every collision strategy.
On CUDA the MLPs run under bf16 autocast; nearest-code distances stay in full fp32 (no TF32), so
near-ties are decided exactly. The training loop never waits on the host.

    python bench/tokenizer.py --out docs/results/tokenizer                     # one GPU
    python bench/tokenizer.py --items 20000 --dim 256 --epochs 2 --device cpu --out /tmp/tokenizer
"""

from __future__ import annotations

import argparse
import csv
import shlex
import sys
import time
from datetime import datetime, timezone
from pathlib import Path

import torch

from common import machine_name, processed_file
from dataset_prep.features import code_file_features
from recbole_qrec.fileio import atomic_open, write_json_atomic
from recbole_qrec.quantization import TokenizerConfig, fit_tokenizer
from recbole_qrec.quantization.config import COLLISION_STRATEGIES

COLUMNS = ["dataset", "items", "dim", "strategy", "epochs", "batch_size", "train_s", "assign_s", "collisions_s",
           "total_s", "reconstruction_loss", "collision_rate_before", "collision_rate_after", "levels",
           "utilisation", "perplexity", "within_budget"]


def clustered_features(items: int, dim: int, clusters: int, seed: int, device: torch.device) -> torch.Tensor:
    """``centre[label] + 0.5 * N(0, I)`` with ``clusters`` N(0, I) centres, built on ``device`` in chunks
    (bf16 on CUDA to halve the memory of the 1M x 4096 matrix)."""
    generator = torch.Generator(device=device).manual_seed(seed)
    centres = torch.randn(clusters, dim, generator=generator, device=device)
    labels = torch.randint(clusters, (items,), generator=generator, device=device)
    dtype = torch.bfloat16 if device.type == "cuda" else torch.float32
    features = torch.empty(items, dim, dtype=dtype, device=device)
    for start in range(0, items, 65536):
        rows = slice(start, start + 65536)
        noise = torch.randn(len(labels[rows]), dim, generator=generator, device=device)
        features[rows] = (centres[labels[rows]] + 0.5 * noise).to(dtype)
    return features


def bench_row(name: str, features: torch.Tensor, config: TokenizerConfig, device: torch.device, budget: float) -> dict:
    """Fit once and summarise the report as one table row."""
    result = fit_tokenizer(features, config, device)
    report = result.report
    total = report["seconds_train"] + report["seconds_assign"] + report["seconds_collisions"]
    return {
        "dataset": name, "items": features.shape[0], "dim": features.shape[1],
        "strategy": config.collision_strategy, "epochs": config.epochs, "batch_size": config.batch_size,
        "train_s": round(report["seconds_train"], 2), "assign_s": round(report["seconds_assign"], 2),
        "collisions_s": round(report["seconds_collisions"], 2), "total_s": round(total, 2),
        "reconstruction_loss": round(report["reconstruction_loss"], 6),
        "collision_rate_before": round(report["collision_rate_before"], 5),
        "collision_rate_after": report["collision_rate_after"], "levels": report["levels"],
        "utilisation": "/".join(f"{u:.3f}" for u in report["utilisation"]),
        "perplexity": "/".join(f"{p:.1f}" for p in report["perplexity"]),
        "within_budget": total <= budget and report["collision_rate_after"] == 0.0,
    }


def markdown(rows: list[dict]) -> str:
    lines = ["| " + " | ".join(COLUMNS) + " |", "|" + "---|" * len(COLUMNS)]
    lines += ["| " + " | ".join(str(row[c]) for c in COLUMNS) + " |" for row in rows]
    return "\n".join(lines)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--items", type=int, default=1_000_000)
    parser.add_argument("--dim", type=int, default=4096)
    parser.add_argument("--clusters", type=int, default=1024)
    parser.add_argument("--epochs", type=int, default=50)
    parser.add_argument("--batch-size", type=int, default=16384, help="synthetic rows only (Instruments: config default)")
    parser.add_argument("--strategies", nargs="+", default=list(COLLISION_STRATEGIES), choices=COLLISION_STRATEGIES)
    parser.add_argument("--device", default="cuda" if torch.cuda.is_available() else "cpu")
    parser.add_argument("--seed", type=int, default=2020)
    parser.add_argument("--budget", type=float, default=300.0, help="seconds allowed per fit (train+assign+collisions)")
    parser.add_argument("--data_path", help="folder of the processed datasets (default: $QREC_DATA_DIR)")
    parser.add_argument("--out", default="docs/results/tokenizer", help="output path without extension (.json, .csv)")
    args = parser.parse_args()
    command = "python " + " ".join(shlex.quote(a) for a in sys.argv)
    device = torch.device(args.device)

    started = time.perf_counter()
    synthetic = clustered_features(args.items, args.dim, args.clusters, args.seed, device)
    print(f"synthetic features {tuple(synthetic.shape)} {synthetic.dtype} built in {time.perf_counter() - started:.1f} s")
    datasets = [("synthetic", synthetic, {"batch_size": args.batch_size})]
    path = processed_file(args.data_path, "Instruments", "Instruments.index_lemb.json")
    if path is None:
        print("Instruments skipped: no Instruments/Instruments.index_lemb.json under --data_path or $QREC_DATA_DIR")
    else:
        datasets.append(("Instruments", torch.from_numpy(code_file_features(path)), {}))

    rows = []
    for name, features, overrides in datasets:
        for strategy in args.strategies:
            config = TokenizerConfig(epochs=args.epochs, seed=args.seed, collision_strategy=strategy, **overrides)
            rows.append(bench_row(name, features, config, device, args.budget))
            print(markdown(rows[-1:]).splitlines()[-1], flush=True)

    date = datetime.now(timezone.utc).strftime("%Y-%m-%d %H:%M UTC")
    peak = torch.cuda.max_memory_allocated(device) / 2**30 if device.type == "cuda" else None
    print(f"\n# Tokenizer benchmark\n\n- command: `{command}`\n- machine: {machine_name()}\n- date: {date}\n"
          f"- peak GPU memory: {peak and f'{peak:.1f} GiB'}\n\n{markdown(rows)}")
    out = Path(args.out)
    write_json_atomic(out.with_suffix(".json"), {"command": command, "machine": machine_name(), "date": date,
                                                 "device": str(device), "peak_gpu_gib": peak, "rows": rows})
    with atomic_open(out.with_suffix(".csv"), "w", newline="", encoding="utf-8") as handle:
        writer = csv.DictWriter(handle, fieldnames=[*COLUMNS, "machine", "date", "command"])
        writer.writeheader()
        writer.writerows({**row, "machine": machine_name(), "date": date, "command": command} for row in rows)


if __name__ == "__main__":
    main()
