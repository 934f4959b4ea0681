"""Efficiency of Q-Bert4Rec on one dataset: parameters, FLOPs, full-ranking latency, epoch time, injection depths.

Measured on the harness's own data path (processed dataset under ``--data_path`` or ``$QREC_DATA_DIR`` ->
``dataset_prep.convert`` -> the tokenize stage -> ``recbole_qrec.data.create_dataset`` / ``data_preparation``)
and configs (``build_config("QBert4Rec", ...)`` and ``build_config("BERT4Rec", ...)``):

* trainable parameters of the stage-3 model, of the stage-1 injection module and of the stage-2
  RQ-VAE (both discarded after the codes are made; rebuilt here only to be counted), and of BERT4Rec;
* FLOPs of one forward pass for one user: RecBole's ``get_flops`` (thop; counts ``nn.Linear`` /
  ``nn.Embedding`` / ``nn.LayerNorm`` modules only, multiply-adds as one op, so attention matmuls and
  the per-level output heads are missing) and ``torch.utils.flop_counter.FlopCounterMode`` on
  ``full_sort_predict`` (every matmul-class aten op: mm/addmm/bmm/einsum/SDPA, 2 FLOPs per
  multiply-add; element-wise ops not counted), next to an analytic matmul count;
* full-ranking latency: ``model.full_sort_predict`` over RecBole's test users in batches of
  ``--batch-size`` (real test interactions, already on the device), CUDA-synchronised, after warm-up;
  median over ``--runs`` passes, in ms per user (and at batch size 1 on a few users);
* training epoch time: ``trainer._train_epoch`` of QBert4Rec fine-tuning (``calculate_loss``), of
  its multi-mask pretraining (``pretrain_loss``) and of RecBole's BERT4Rec, each model alone on the
  device, one warm-up epoch then the median of ``--epochs`` epochs; both at their harness configs and
  at one common ``train_batch_size``;
* the stage-1 injection depth histogram (items per number of cross-attention blocks applied), from the
  tokenize stage's ``<dataset>.QBert4Rec.sid.json``.

Stages 1-2 run with the configured (paper) epochs by default: they take seconds on a GPU, and the
depth histogram only means something for a trained injection module. ``--quick-stages`` cuts them
to a few epochs for smoke tests. Stage 3 is not trained: timings do not depend on the weights.

    python bench/qbert4rec_efficiency.py --device cuda --out docs/results/qbert4rec_efficiency
    python bench/qbert4rec_efficiency.py --device cpu --users 300 --quick-stages --runs 2 --epochs 1 --batch-size 128 \\
        --set hidden_size=32 n_layers=1 --out /tmp/qbert4rec_efficiency     # local smoke test
"""

from __future__ import annotations

import argparse
import json
import os
import shlex
import statistics
import sys
import tempfile
import time
from contextlib import contextmanager
from datetime import datetime, timezone
from logging import getLogger
from pathlib import Path
from typing import Any, Callable, Iterator

import torch
from torch import nn

from common import build_model, load_data, machine_name, make_config, prepare_data, synchronize
from recbole_qrec.data.sid import sid_metadata_path, sid_path
from recbole_qrec.fileio import atomic_open, write_json_atomic
from recbole_qrec.tokenize import ensure_semantic_ids

PAPER = {"parameters_instruments": 3.71e6, "median_depth": 2, "ms_per_user_target": 0.05, "epoch_ratio_target": 1.2}
QUICK_STAGES = ["injection_epochs=2", "sid_epochs=5"]


# Models

def trainable(module: nn.Module) -> int:
    return sum(p.numel() for p in module.parameters() if p.requires_grad)


def parameter_breakdown(module: nn.Module) -> dict[str, int]:
    """Trainable parameters per direct child (and directly owned ones under ``(own)``)."""
    parts = {name: trainable(child) for name, child in module.named_children() if trainable(child)}
    own = sum(p.numel() for p in module.parameters(recurse=False) if p.requires_grad)
    return {**parts, **({"(own)": own} if own else {})}


def stage12_parameters(config, dataset) -> dict[str, Any]:
    """Parameters of the stage-1 injection module and the stage-2 RQ-VAE (fresh modules: same shapes)."""
    from recbole_qrec.data.item_features import load_item_features
    from recbole_qrec.qbert4rec_stage import build_injection, tokenizer_config
    from recbole_qrec.quantization.tokenizer import build_rqvae

    features = load_item_features(config, dataset)
    injection = build_injection(config, features)
    rqvae = build_rqvae([config["injection_dim"]], tokenizer_config(config), torch.device("cpu"))
    return {"injection": trainable(injection), "injection_breakdown": parameter_breakdown(injection),
            "rqvae": trainable(rqvae), "feature_dims": [m.shape[1] for m in features.matrices]}


def injection_depths(config) -> tuple[list[int], float]:
    """Items per injection depth ``0..injection_layers`` (real items only) and the median depth, as the tokenize
    stage recorded them."""
    sid_file = sid_path(config["data_path"], config["dataset"], config["sid_producer"])
    metadata = json.loads(sid_metadata_path(sid_file).read_text(encoding="utf-8"))
    histogram = metadata["domains"][config["dataset"]]["depth_histogram"]
    depths = torch.repeat_interleave(torch.arange(len(histogram)), torch.tensor(histogram))
    return histogram, float(depths.float().median())


# FLOPs

def one_user(test_users, device):
    return test_users[torch.arange(1)].to(device)


def flop_counter(fn: Callable[..., Any], *args: Any) -> int:
    from torch.utils.flop_counter import FlopCounterMode

    with FlopCounterMode(display=False) as counter, torch.no_grad():
        fn(*args)
    return int(counter.get_total_flops())


def thop_flops(model, config, train) -> float | str:
    """RecBole's own ``get_flops`` (thop, on ``model.predict`` for one training row)."""
    from recbole.data.transform import construct_transform
    from recbole.utils import get_flops

    try:
        return float(get_flops(model, train._dataset, config["device"], getLogger(), construct_transform(config)))
    except Exception as err:  # noqa: BLE001 -- report, do not fail the whole bench
        return f"failed: {type(err).__name__}: {err}"


def analytic_qbert4rec_flops(config, n_items: int, levels: int) -> dict[str, int]:
    """Matmul FLOPs (2 per multiply-add) of one user's ``full_sort_predict``, by hand."""
    tokens = (config["MAX_ITEM_LIST_LENGTH"] + 1) * levels  # S history slots + the [MASK] slot, L tokens each
    hidden, inner, layers = config["hidden_size"], config["inner_size"], config["n_layers"]
    per_layer = 2 * (4 * tokens * hidden * hidden + 2 * tokens * tokens * hidden + 2 * tokens * hidden * inner)
    if config["scoring"] == "item":  # the pooled slot state against every item embedding (ID + mean code tokens)
        heads, scoring = 2 * n_items * hidden, n_items * (levels + 1) * hidden
    else:  # the L slot states through their level heads; sum of L gathered log-probabilities per item
        heads, scoring = 2 * levels * config["sid_codebook_size"] * hidden, n_items * (levels - 1)
    return {"encoder": layers * per_layer, "heads": heads, "scoring_adds": scoring,
            "total": layers * per_layer + heads + scoring, "tokens": tokens}


def analytic_bert4rec_flops(config, n_items: int) -> dict[str, int]:
    tokens = config["MAX_ITEM_LIST_LENGTH"]  # RecBole's BERT4Rec puts [MASK] inside the window
    hidden, inner, layers = config["hidden_size"], config["inner_size"], config["n_layers"]
    per_layer = 2 * (4 * tokens * hidden * hidden + 2 * tokens * tokens * hidden + 2 * tokens * hidden * inner)
    output_ffn = 2 * tokens * hidden * hidden  # BERT4Rec's output Linear(H, H), applied to every position
    scoring = 2 * n_items * hidden  # dot product with every item embedding
    return {"encoder": layers * per_layer, "output_ffn": output_ffn, "scoring": scoring,
            "total": layers * per_layer + output_ffn + scoring, "tokens": tokens}


# Timing

def test_users(test_loader):
    """Every test user's interaction (history, length, target), in RecBole's order, as one Interaction."""
    from recbole.data.interaction import cat_interactions

    return cat_interactions([batch[0] for batch in test_loader])


@torch.no_grad()
def full_sort_latency(model, users, batch_size: int, device: torch.device, warmup: int, runs: int) -> dict[str, Any]:
    """ms/user of ``full_sort_predict`` over ``len(users) // batch_size`` full batches (on the device up front)."""
    model.eval()
    n_batches = len(users) // batch_size
    if n_batches == 0:
        raise SystemExit(f"error: only {len(users)} test users, fewer than --batch-size {batch_size}")
    batches = [users[torch.arange(i * batch_size, (i + 1) * batch_size)].to(device) for i in range(n_batches)]
    if device.type == "cuda":
        torch.cuda.reset_peak_memory_stats(device)
    seconds = []
    for run in range(warmup + runs):
        synchronize(device)
        start = time.perf_counter()
        for batch in batches:
            model.full_sort_predict(batch)
        synchronize(device)
        if run >= warmup:
            seconds.append(time.perf_counter() - start)
    median = statistics.median(seconds)
    n_users = n_batches * batch_size
    return {"batch_size": batch_size, "batches": n_batches, "users": n_users, "runs": runs, "warmup_runs": warmup,
            "ms_per_user": 1000 * median / n_users, "ms_per_batch": 1000 * median / n_batches,
            "users_per_s": n_users / median, "ms_per_user_runs": [1000 * s / n_users for s in seconds],
            "peak_memory_mib": torch.cuda.max_memory_allocated(device) / 2**20 if device.type == "cuda" else None}


def epoch_seconds(trainer, train, device: torch.device, epochs: int, loss_func=None) -> dict[str, Any]:
    """One warm-up epoch of ``trainer._train_epoch``, then ``epochs`` timed ones (synchronised)."""
    times = []
    for epoch in range(1 + epochs):
        synchronize(device)
        start = time.perf_counter()
        trainer._train_epoch(train, epoch, loss_func=loss_func)
        synchronize(device)
        if epoch:
            times.append(time.perf_counter() - start)
    return {"seconds": statistics.median(times), "epoch_seconds": times, "batches": len(train),
            "train_batch_size": trainer.config["train_batch_size"]}


def free(device: torch.device) -> None:
    import gc

    gc.collect()
    if device.type == "cuda":
        torch.cuda.empty_cache()


@contextmanager
def working_directory(path: Path) -> Iterator[None]:
    """RecBole's trainer opens a TensorBoard writer under ./log_tensorboard: keep it out of the checkout."""
    previous = Path.cwd()
    os.chdir(path)
    try:
        yield
    finally:
        os.chdir(previous)


# Report

def fmt(value: float | str, digits: int = 4) -> str:
    return f"{value:,.{digits}f}" if isinstance(value, float) else str(value)


def markdown(result: dict[str, Any]) -> str:
    q, b, p = result["qbert4rec"], result["bert4rec"], result["paper"]
    params, flops, lat, ep, depth = q["parameters"], q["flops"], result["latency"], result["epochs"], q["depths"]
    lines = [
        f"# Q-Bert4Rec efficiency on {result['dataset']}",
        "",
        f"- command: `{result['command']}`",
        f"- machine: {result['machine']}",
        f"- device: {result['device']}",
        f"- date: {result['date']}",
        f"- data: {result['data']['users']} users, {result['data']['items']} items (incl. padding id 0: "
        f"{result['data']['item_num']}), {result['data']['interactions']} interactions, "
        f"{result['data']['training_rows']} training sequences, {result['data']['test_users']} test users"
        + (f" (first {result['users_subset']} users only)" if result["users_subset"] else ""),
        f"- QBert4Rec: {result['settings']['qbert4rec']}",
        f"- BERT4Rec: {result['settings']['bert4rec']}",
        f"- stages 1-2 (injection + RQ-VAE: the tokenize stage, reading the dataset included): {q['stage12_seconds']:.1f} s; "
        f"fp32 throughout (float32 matmul precision '{result['settings']['float32_matmul_precision']}', no AMP)",
        "",
        "## Parameters (trainable)",
        "",
        "| module | parameters |",
        "|---|---|",
        f"| Q-Bert4Rec stage 3 (transformer over semantic-ID tokens) | {params['stage3']:,} |",
        *[f"| &nbsp;&nbsp;{name} | {count:,} |" for name, count in params["stage3_breakdown"].items()],
        f"| Q-Bert4Rec stage 1 (cross-modal injection; discarded after stage 2) | {params['injection']:,} |",
        *[f"| &nbsp;&nbsp;{name} | {count:,} |" for name, count in params["injection_breakdown"].items()],
        f"| Q-Bert4Rec stage 2 (RQ-VAE; discarded after the codes are made) | {params['rqvae']:,} |",
        f"| Q-Bert4Rec stages 1+2+3 | {params['all_stages']:,} |",
        f"| BERT4Rec (RecBole, harness config) | {b['parameters']:,} |",
        "",
        f"Paper (Instruments): {p['parameters_instruments'] / 1e6:.2f}M.",
        "",
        "## FLOPs of one forward pass, one user",
        "",
        "| count | Q-Bert4Rec | BERT4Rec |",
        "|---|---|---|",
        f"| FlopCounterMode on `full_sort_predict` (matmul-class ops, 2 per MAC) | {flops['flop_counter_full_sort']:,} "
        f"| {b['flops']['flop_counter_full_sort']:,} |",
        f"| FlopCounterMode on `predict` (one item) | {flops['flop_counter_predict']:,} | {b['flops']['flop_counter_predict']:,} |",
        f"| analytic matmul count, `full_sort_predict` | {flops['analytic']['total']:,} | {b['flops']['analytic']['total']:,} |",
        f"| RecBole `get_flops` (thop, `predict`; Linear/Embedding/LayerNorm modules only, MACs) | "
        f"{fmt(flops['thop_predict'], 0)} | {fmt(b['flops']['thop_predict'], 0)} |",
        "",
        f"Q-Bert4Rec encodes {flops['analytic']['tokens']} tokens per user ((history + [MASK] slot) x {q['levels']} levels); "
        f"BERT4Rec {b['flops']['analytic']['tokens']}. thop misses the attention matmuls and Q-Bert4Rec's per-level "
        "heads (an einsum in a custom module), so its number is a lower bound.",
        "",
        "## Full-ranking inference latency",
        "",
        "| model | batch | users timed | ms/user (median) | ms/batch | users/s | peak GPU MiB |",
        "|---|---|---|---|---|---|---|",
    ]
    for name, rows in (("Q-Bert4Rec", lat["qbert4rec"]), ("BERT4Rec", lat["bert4rec"])):
        for row in rows:
            memory = "" if row["peak_memory_mib"] is None else f"{row['peak_memory_mib']:,.0f}"
            lines.append(f"| {name} | {row['batch_size']} | {row['users']} | {row['ms_per_user']:.5f} | "
                         f"{row['ms_per_batch']:.3f} | {row['users_per_s']:,.0f} | {memory} |")
    main = lat["qbert4rec"][0]
    lines += [
        "",
        f"`model.full_sort_predict` only (scores for all {result['data']['item_num']} item ids; no top-k, no history "
        f"masking), inputs already on the device, synchronised, {main['warmup_runs']} warm-up passes, median of "
        f"{main['runs']}. Target: <= {p['ms_per_user_target']} ms/user at batch 1024 on the GPU -> "
        + (f"{'met' if main['ms_per_user'] <= p['ms_per_user_target'] else 'NOT met'} ({main['ms_per_user']:.5f})."
           if main["batch_size"] == 1024 and result["device"].startswith("cuda") else "not comparable (other batch size or device)."),
        "",
        "## Training epoch time",
        "",
        "| run | train_batch_size | batches | s/epoch (median) | vs BERT4Rec |",
        "|---|---|---|---|---|",
    ]
    for row in ep["rows"]:
        ratio = f"{row['ratio']:.2f}x" if row.get("ratio") is not None else ""
        lines.append(f"| {row['name']} | {row['train_batch_size']} | {row['batches']} | {row['seconds']:.3f} | {ratio} |")
    lines += [
        "",
        f"`trainer._train_epoch` (forward, backward, optimizer step, RecBole's batching and BERT4Rec's masking "
        f"transform), one warm-up epoch, median of {ep['epochs']}; each model alone on the device. Target: "
        f"fine-tuning <= {p['epoch_ratio_target']}x BERT4Rec at the harness configs -> "
        f"{'met' if ep['headline_ratio'] <= p['epoch_ratio_target'] else 'NOT met'} ({ep['headline_ratio']:.2f}x).",
        "",
        "## Stage-1 injection depth",
        "",
        "| depth (blocks applied) | " + " | ".join(str(d) for d in range(len(depth["histogram"]))) + " |",
        "|---|" + "---|" * len(depth["histogram"]),
        "| items | " + " | ".join(str(n) for n in depth["histogram"]) + " |",
        "",
        f"Median depth {depth['median']:g} after {result['settings']['injection_epochs']} injection epochs "
        f"(gate threshold {result['settings']['gate_threshold']}); paper: median {p['median_depth']} layers.",
        "",
    ]
    return "\n".join(lines)


def settings_line(config, keys: list[str]) -> str:
    return ", ".join(f"{key}={config[key]}" for key in keys)


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--dataset", default="Instruments")
    parser.add_argument("--device", default="cuda", help="cpu, cuda or cuda:N")
    parser.add_argument("--batch-size", type=int, default=1024, help="users per full_sort_predict batch")
    parser.add_argument("--runs", type=int, default=10, help="timed passes over the test users (median reported)")
    parser.add_argument("--warmup", type=int, default=3, help="untimed passes first")
    parser.add_argument("--single-users", type=int, default=200, help="users timed at batch size 1 (0: skip)")
    parser.add_argument("--epochs", type=int, default=3, help="timed training epochs per run (after one warm-up)")
    parser.add_argument("--common-batch-size", type=int, default=None,
                        help="extra epoch-time rows with both models at this train_batch_size "
                             "(default: QBert4Rec's; 0: skip)")
    parser.add_argument("--users", type=int, default=None, help="use only the first N users (smoke tests)")
    parser.add_argument("--quick-stages", action="store_true",
                        help=f"stage 1-2 epochs cut to {' '.join(QUICK_STAGES)} (depth histogram then meaningless)")
    parser.add_argument("--set", nargs="+", action="extend", default=[], metavar="KEY=VALUE",
                        help="QBert4Rec config overrides, e.g. --set injection_epochs=5 hidden_size=64")
    parser.add_argument("--bert-set", nargs="+", action="extend", default=[], metavar="KEY=VALUE",
                        help="BERT4Rec config overrides")
    parser.add_argument("--data_path", help="folder of the processed datasets (default: $QREC_DATA_DIR)")
    parser.add_argument("--atomic-dir", help="keep the converted atomic files here (default: a temporary folder)")
    parser.add_argument("--out", default="docs/results/qbert4rec_efficiency", help="output path without extension")
    return parser.parse_args(argv)


def main(argv: list[str] | None = None) -> dict[str, Any]:
    args = parse_args(argv)
    command = "python " + " ".join(shlex.quote(a) for a in [sys.argv[0], *(sys.argv[1:] if argv is None else argv)])
    qbert_overrides = [*(QUICK_STAGES if args.quick_stages else []), *args.set]
    out = Path(args.out).resolve()
    with tempfile.TemporaryDirectory(prefix="qbert4rec_efficiency_") as tmp:
        work = Path(tmp)
        data_root = Path(args.atomic_dir).resolve() if args.atomic_dir else work
        data_path = prepare_data(args.dataset, data_root, args.users, args.data_path)
        with working_directory(work):
            result = measure(args, command, qbert_overrides, data_path, work)
    write_json_atomic(out.with_suffix(".json"), result)
    with atomic_open(out.with_suffix(".md"), "w", encoding="utf-8") as handle:
        handle.write(markdown(result))
    print(markdown(result))
    print(f"wrote {out.with_suffix('.json')} and {out.with_suffix('.md')}")
    return result


def measure(args, command: str, qbert_overrides: list[str], data_path: Path, work: Path) -> dict[str, Any]:
    from recbole_qrec.trainer import get_trainer

    qconfig = make_config("QBert4Rec", args.dataset, data_path, work, args.device, qbert_overrides)
    bconfig = make_config("BERT4Rec", args.dataset, data_path, work, args.device, args.bert_set)
    device = qconfig["device"]
    common = qconfig["train_batch_size"] if args.common_batch_size is None else args.common_batch_size

    # Q-Bert4Rec: stages 1-2 (the tokenize stage, timed), data, parameters, FLOPs, latency.
    synchronize(device)
    start = time.perf_counter()
    if not ensure_semantic_ids(qconfig):
        raise SystemExit("error: the semantic IDs in --atomic-dir were up to date, so stages 1-2 were not timed — "
                         "give a fresh --atomic-dir")
    synchronize(device)
    stage12_seconds = time.perf_counter() - start
    dataset, train, _, test = load_data(qconfig)
    model = build_model(qconfig, train)
    # Q-Bert4Rec epochs first, on a freshly built model: fine-tuning (calculate_loss) and multi-mask
    # pretraining, harness batch size.
    qtrainer = get_trainer(qconfig["MODEL_TYPE"], qconfig["model"])(qconfig, model)
    fine_tune = epoch_seconds(qtrainer, train, device, args.epochs)
    pretrain = epoch_seconds(qtrainer, train, device, args.epochs, loss_func=model.pretrain_loss)
    histogram, median_depth = injection_depths(qconfig)
    stage12 = stage12_parameters(qconfig, train._dataset)
    users = test_users(test)
    model.eval()
    single = one_user(users, device)
    q_flops = {
        "flop_counter_full_sort": flop_counter(model.full_sort_predict, single),
        "flop_counter_predict": flop_counter(model.predict, single),
        "thop_predict": thop_flops(model, qconfig, train),
        "analytic": analytic_qbert4rec_flops(qconfig, model.n_items, model.levels),
    }
    q_latency = [full_sort_latency(model, users, args.batch_size, device, args.warmup, args.runs)]
    if args.single_users:
        q_latency.append(full_sort_latency(model, users[torch.arange(min(args.single_users, len(users)))], 1,
                                           device, 1, 3))
    stage3 = trainable(model)
    qbert = {
        "levels": model.levels,
        "stage12_seconds": stage12_seconds,
        "parameters": {"stage3": stage3, "stage3_breakdown": parameter_breakdown(model), **stage12,
                       "all_stages": stage3 + stage12["injection"] + stage12["rqvae"]},
        "flops": q_flops,
        "depths": {"histogram": histogram, "median": median_depth},
    }
    inter_file = data_path / args.dataset / f"{args.dataset}.inter"
    with open(inter_file, encoding="utf-8") as handle:
        interactions = sum(1 for _ in handle) - 1  # header
    data_stats = {"users": dataset.user_num - 1, "items": dataset.item_num - 1, "item_num": dataset.item_num,
                  "interactions": interactions, "training_rows": len(train._dataset), "test_users": len(users)}

    qbert_common = None
    if common and common != qconfig["train_batch_size"]:
        cconfig = make_config("QBert4Rec", args.dataset, data_path, work, args.device,
                              [*qbert_overrides, f"train_batch_size={common}"])
        ctrain = load_data(cconfig)[1]
        qbert_common = epoch_seconds(get_trainer(cconfig["MODEL_TYPE"], "QBert4Rec")(cconfig, model), ctrain,
                                     device, args.epochs)
    del qtrainer, model, train, test
    free(device)

    # BERT4Rec alone: parameters, FLOPs, latency, epochs.
    _, btrain, _, btest = load_data(bconfig)
    bmodel = build_model(bconfig, btrain)
    bmodel.eval()
    busers = test_users(btest)
    bsingle = one_user(busers, device)
    b_flops = {
        "flop_counter_full_sort": flop_counter(bmodel.full_sort_predict, bsingle),
        "flop_counter_predict": flop_counter(bmodel.predict, bsingle),
        "thop_predict": thop_flops(bmodel, bconfig, btrain),
        "analytic": analytic_bert4rec_flops(bconfig, bmodel.n_items),
    }
    b_latency = [full_sort_latency(bmodel, busers, args.batch_size, device, args.warmup, args.runs)]
    if args.single_users:
        b_latency.append(full_sort_latency(bmodel, busers[torch.arange(min(args.single_users, len(busers)))], 1,
                                           device, 1, 3))
    btrainer = get_trainer(bconfig["MODEL_TYPE"], bconfig["model"])(bconfig, bmodel)
    bert_epoch = epoch_seconds(btrainer, btrain, device, args.epochs)
    bert_common = None
    if common and common != bconfig["train_batch_size"]:
        cconfig = make_config("BERT4Rec", args.dataset, data_path, work, args.device,
                              [*args.bert_set, f"train_batch_size={common}"])
        ctrain = load_data(cconfig)[1]
        bert_common = epoch_seconds(get_trainer(cconfig["MODEL_TYPE"], "BERT4Rec")(cconfig, bmodel), ctrain,
                                    device, args.epochs)
    bert = {"parameters": trainable(bmodel), "flops": b_flops}

    rows = [
        {"name": "BERT4Rec (harness config)", **bert_epoch, "ratio": 1.0},
        {"name": "Q-Bert4Rec fine-tuning (harness config)", **fine_tune, "ratio": fine_tune["seconds"] / bert_epoch["seconds"]},
        {"name": "Q-Bert4Rec multi-mask pretraining (harness config)", **pretrain,
         "ratio": pretrain["seconds"] / bert_epoch["seconds"]},
    ]
    if qbert_common or bert_common:
        b_ref = bert_common or bert_epoch
        q_ref = qbert_common or fine_tune
        rows += [{"name": f"BERT4Rec, train_batch_size={common}", **b_ref, "ratio": 1.0},
                 {"name": f"Q-Bert4Rec fine-tuning, train_batch_size={common}", **q_ref,
                  "ratio": q_ref["seconds"] / b_ref["seconds"]}]
    return {
        "command": command,
        "machine": machine_name(),
        "device": str(device) + (f" ({torch.cuda.get_device_name(device)})" if device.type == "cuda" else ""),
        "date": datetime.now(timezone.utc).strftime("%Y-%m-%d %H:%M UTC"),
        "dataset": args.dataset,
        "users_subset": args.users,
        "data": data_stats,
        "settings": {
            "qbert4rec": settings_line(qconfig, ["injection_dim", "injection_layers", "injection_epochs", "sid_levels",
                                                 "sid_codebook_size", "sid_epochs", "hidden_size", "inner_size",
                                                 "n_layers", "n_heads", "MAX_ITEM_LIST_LENGTH", "train_batch_size"]),
            "bert4rec": settings_line(bconfig, ["hidden_size", "inner_size", "n_layers", "n_heads",
                                                "MAX_ITEM_LIST_LENGTH", "train_batch_size", "mask_ratio"]),
            "injection_epochs": qconfig["injection_epochs"], "gate_threshold": qconfig["gate_threshold"],
            "float32_matmul_precision": torch.get_float32_matmul_precision(),
            "qbert4rec_overrides": qbert_overrides, "bert4rec_overrides": args.bert_set,
        },
        "qbert4rec": qbert,
        "bert4rec": bert,
        "latency": {"qbert4rec": q_latency, "bert4rec": b_latency},
        "epochs": {"epochs": args.epochs, "rows": rows, "headline_ratio": rows[1]["ratio"]},
        "paper": PAPER,
    }


if __name__ == "__main__":
    main()
