"""Training-step time of TIGER and MQL4GRec in fp32 (TF32 matmuls) and under autocast (fp16 + GradScaler, bf16).

For each model: the harness config at ``--batch-size`` and RecBole's training loader on the real
dataset (under ``--data_path`` or ``$QREC_DATA_DIR``; config, data and seeded models built by
``bench/common.py``'s helpers); the
first ``--steps`` batches moved to the device once, then for each precision a freshly seeded model
trained on those batches with AdamW; the median step time after ``--warmup`` steps
(device-synchronised) and the first/last loss. fp16 is what RecBole's ``enable_amp: True`` +
``enable_scaler: True`` do. The epoch estimate is the median step time times the loader's batches.

    python bench/generative_precision.py --device cuda --out docs/results/generative_precision
    python bench/generative_precision.py --device cpu --batch-size 32 --steps 4 --warmup 1 \\
        --set MAX_ITEM_LIST_LENGTH=8 --out /tmp/generative_precision     # local smoke test
    python bench/generative_precision.py --device cuda --precisions fp32 --set length_bucket_rows=0 \\
        --out /tmp/one_call                                                # length bucketing off
"""

from __future__ import annotations

import argparse
import statistics
import sys
import tempfile
import time
from datetime import datetime, timezone
from pathlib import Path

import torch

from common import build_model, load_data, machine_name, make_config, prepare_data, synchronize
from recbole_qrec.fileio import write_json_atomic

PRECISIONS = {"fp32": None, "fp16": torch.float16, "bf16": torch.bfloat16}


def time_steps(model: torch.nn.Module, batches: list, dtype: torch.dtype | None, device: torch.device,
               warmup: int) -> dict:
    """Train ``model`` on ``batches`` under ``dtype`` autocast (``None``: none); median step seconds and losses."""
    optimizer = torch.optim.AdamW(model.parameters(), lr=1e-3)
    scaler = torch.amp.GradScaler(device.type, enabled=dtype is torch.float16)
    seconds, losses = [], []
    for batch in batches:
        synchronize(device)
        start = time.perf_counter()
        optimizer.zero_grad()
        with torch.autocast(device.type, dtype=dtype or torch.bfloat16, enabled=dtype is not None):
            loss = model.calculate_loss(batch)
        scaler.scale(loss).backward()
        scaler.step(optimizer)
        scaler.update()
        synchronize(device)
        seconds.append(time.perf_counter() - start)
        losses.append(loss.item())
    return {"median_s_per_step": statistics.median(seconds[warmup:]), "first_loss": losses[0], "last_loss": losses[-1]}


def measure_model(name: str, args: argparse.Namespace, data_path: Path, work: Path) -> dict:
    """Step times of ``name`` in every precision on the same batches."""
    overrides = [f"train_batch_size={args.batch_size}", *args.set]
    config = make_config(name, args.dataset, data_path, work / name, args.device, overrides)
    torch.set_float32_matmul_precision(config["float32_matmul_precision"])
    _, train_data, _, _ = load_data(config)
    device = config["device"]
    batches = [batch.to(device) for _, batch in zip(range(args.steps), train_data)]
    results = {}
    for precision in args.precisions:
        dtype = PRECISIONS[precision]
        model = build_model(config, train_data).train()
        result = time_steps(model, batches, dtype, device, args.warmup)
        result["epoch_estimate_s"] = result["median_s_per_step"] * len(train_data)
        results[precision] = {**result, "steps_per_epoch": len(train_data)}
        print(f"{name:9s} {precision}: {result['median_s_per_step'] * 1000:8.1f} ms/step  "
              f"~{result['epoch_estimate_s']:7.1f} s/epoch  loss {result['first_loss']:.3f} -> {result['last_loss']:.3f}",
              flush=True)
    return results


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--dataset", default="Instruments")
    parser.add_argument("--data_path", help="folder of the processed datasets (default: $QREC_DATA_DIR)")
    parser.add_argument("--models", nargs="+", default=["TIGER", "MQL4GRec"])
    parser.add_argument("--device", default="cuda", help="cpu, cuda or cuda:N")
    parser.add_argument("--precisions", nargs="+", choices=list(PRECISIONS), default=list(PRECISIONS))
    parser.add_argument("--batch-size", type=int, default=1024)
    parser.add_argument("--steps", type=int, default=45, help="training batches timed per precision")
    parser.add_argument("--warmup", type=int, default=5, help="first steps left out of the median")
    parser.add_argument("--set", nargs="*", default=[], help="config overrides key=value")
    parser.add_argument("--work-dir", type=Path, default=None, help="where the atomic files go (default: a temp dir)")
    parser.add_argument("--out", type=Path, required=True, help="output path without suffix; writes <out>.json")
    args = parser.parse_args()
    if args.steps <= args.warmup:
        parser.error("--steps must exceed --warmup")
    with tempfile.TemporaryDirectory() as tmp:
        work = args.work_dir or Path(tmp)
        data_path = prepare_data(args.dataset, work, users=None, data_path=args.data_path)
        results = {name: measure_model(name, args, data_path, work) for name in args.models}
    write_json_atomic(args.out.with_suffix(".json"), {
        "command": " ".join(sys.argv), "machine": machine_name(),
        "date": datetime.now(timezone.utc).isoformat(timespec="seconds"), "batch_size": args.batch_size,
        "results": results,
    })
    print(f"wrote {args.out.with_suffix('.json')}")


if __name__ == "__main__":
    main()
