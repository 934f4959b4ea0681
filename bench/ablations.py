"""Ablations of QBert4Rec, TIGER and MQL4GRec: each variant trained and tested through the real entry point, several at
once on one GPU (``--model``, QBert4Rec by default; this bench was ``bench/qbert4rec_ablations.py`` before it took
the other two).

Variants: each a set of config overrides on top of the harness config, ``default`` being the model's defaults (the
paper's design). QBert4Rec (the paper's ablation grid): ``default`` (item-level scoring, dynamic fusion with the
ponder penalty, the target's modalities, multi-mask pretraining with span + tail + multi on the other domains of
``pretrain_domain_pool`` that are there, their batches interleaved), ``static_fusion``, ``no_depth_penalty`` (dynamic
gates that never close), ``levels_scoring`` (factorised per-level scoring), ``l2_sid_input`` (the RQ-VAE on
L2-normalised fused embeddings), ``text_only``, ``image_only``, ``no_pretrain``, ``mlm_pretrain`` (MLM-only
pretraining), ``in_domain_pretrain`` (pretrained on the target's own sequences), ``with_target_pretrain`` (on the
sources' and the target's sequences), ``cross_domain_games`` (pretrained on Games alone; stages 1-2 over the union of
both domains' items), ``content_kept_codes`` (content-code proxy levels weighted 0.5 ** level and stage 1's modality
projections fixed, which keep the content codes' sequential signal in the stage's codes:
``docs/results/qbert4rec_stage_codes_arts_decay.md``), ``sequential_pretrain`` (the sources' pretraining batches one
source after the other instead of in one mixed order), ``halting_gates`` (stage 1's gates trained by PonderNet's
halting objective instead of the ponder penalty) and ``capacity_gates`` (stage 1's gates rank the items, as many going
deeper as a geometric prior of mean depth 2 lets reach each block). TIGER: ``no_user_token`` (no hashed user token),
``paper_levels`` (3 code levels + the disambiguation level instead of 4 + 1), ``paper_schedule`` (the paper's 0.01
with 10k warm-up steps instead of the tuned 0.001 with 1k), ``constant_lr`` (a constant 2e-3, the earlier default).
MQL4GRec: ``per_row_task_mix`` (the six tasks weighted equally per row instead of the official mix),
``floor_sum_fusion`` (the two languages' beams fused by the sum of their scores instead of the official rule),
``strict_eval`` (only the target's own ID is a hit), ``text_only`` (no image language), ``constant_lr`` (a constant
1e-3 without gradient clipping, the earlier default), ``cross_domain_pretrain`` (10 epochs on Arts and Games first),
``games_pretrain`` (3 epochs on Games first), ``batch_1024`` (1024 training rows per batch instead of 256),
``no_decay_on_norms`` (no weight decay on the layer-norm weights, as the official code's Trainer) and
``earlier_run`` (the settings of the 56-epoch run of ``docs/results/generative.md``, all at once).

Each variant runs ``run_recbole_qrec.py`` in its own process (:func:`common.run_model`,
``--parallel`` at a time, all on the default GPU), with its own checkpoint folder (RecBole names
checkpoints by model and second, so parallel runs of one model would overwrite each other's) and its
own copy of the atomic files of the target and the sources (each variant's tokenize stage writes its
own ``<dataset>.QBert4Rec.sid``). The atomic files are read from ``data_path`` (``--set data_path=DIR``, default
``dataset/``; written by ``python -m dataset_prep.convert``). ``--set key=value ...`` applies to every
variant (a variant's own keys win), e.g. the epoch caps that make the grid fit a time budget; relative
paths in them are relative to the repository root, where the runs start. Output: the Markdown table on stdout and ``<out>.md`` / ``<out>.json`` /
``<out>.csv`` (atomically written), with the command, machine, date and every variant's overrides. With
``--work-dir``, a grid stopped part way (a lost machine, a time limit) resumes: the same command does not train again a
variant whose record there has the same settings, data and code (``compare``'s rule), and reports it (``--rerun``
trains it again). ``--report <out>.json [...] --out <out>`` writes the report of finished grids from their JSON, training
nothing: one grid again, or several grids of one dataset (e.g. one per ``--set seed=S``) as one report with each
variant's test HR@10 / NDCG@10 and validation NDCG@10 as mean ± std over its seeds.

    python bench/ablations.py --dataset Instruments --parallel 7 \\
        --set epochs=10 pretrain_epochs=4 float32_matmul_precision=high --out docs/results/qbert4rec_ablations_instruments

That command (QBert4Rec) took 7 min 11 s on one H100 (16 cores; the runs are CPU-bound, about 21 s per epoch each with 7 at once).
CPU smoke test: convert small subsets (Instruments, Games) into ``/tmp/subset_atomic`` and add ``--set
use_gpu=False data_path=/tmp/subset_atomic allow_data_mismatch=True`` plus tiny model and epoch settings.
"""

from __future__ import annotations

import argparse
import json
import os
import shlex
import shutil
import sys
import tempfile
from concurrent.futures import ThreadPoolExecutor
from datetime import datetime, timezone
from pathlib import Path
from typing import Any

from common import COLUMNS, REPO_ROOT, machine_name, markdown, run_model, table_rows, write_outputs
from recbole_qrec.compare import plan, recorded_runs
from recbole_qrec.config import build_config
from recbole_qrec.data import ensure_atomic_files
from recbole_qrec.data.cross_domain import pretrain_dataset_names
from recbole_qrec.data.sid import SID_SUFFIX
from recbole_qrec.table import Cell, value_text

ABLATIONS: dict[str, dict[str, dict[str, Any]]] = {  # model -> variant -> config overrides
    "QBert4Rec": {
        "default": {},
        "static_fusion": {"fusion": "static"},
        "no_depth_penalty": {"depth_weight": 0.0},
        "levels_scoring": {"scoring": "levels"},
        "no_item_id_input": {"item_id_input": False},
        "l2_sid_input": {"sid_l2_normalize": True},
        "text_only": {"modalities": ["text"]},
        "image_only": {"modalities": ["image"]},
        "no_pretrain": {"pretrain_epochs": 0},
        "mlm_pretrain": {"mask_strategy": ["mlm"]},
        "in_domain_pretrain": {"pretrain_datasets": []},
        "with_target_pretrain": {"pretrain_on_target": True},
        "cross_domain_games": {"pretrain_datasets": ["Games"]},
        "content_kept_codes": {"code_proxy_level_decay": 0.5, "injection_projection": "fixed"},
        "sequential_pretrain": {"pretrain_domain_order": "sequential"},
        "halting_gates": {"gate_objective": "halting"},
        "capacity_gates": {"gate_objective": "capacity"},
    },
    "TIGER": {
        "default": {},
        "no_user_token": {"user_buckets": 0},
        "paper_levels": {"code_levels": 3},
        "paper_schedule": {"learning_rate": 0.01, "warmup_steps": 10000},
        "constant_lr": {"learning_rate": 0.002, "lr_scheduler": "constant", "warmup_steps": 0},
    },
    "MQL4GRec": {
        "default": {},
        "per_row_task_mix": {"task_mix": "per_row"},
        "floor_sum_fusion": {"beam_fusion": "floor_sum"},
        "strict_eval": {"eval_rule": "strict"},
        "text_only": {"image_sid_source": None},
        "constant_lr": {"learning_rate": 0.001, "lr_scheduler": "constant", "warmup_steps": 0, "clip_grad_norm": None},
        "cross_domain_pretrain": {"pretrain_datasets": ["Arts", "Games"], "pretrain_epochs": 10},
        "games_pretrain": {"pretrain_datasets": ["Games"], "pretrain_epochs": 3},
        "batch_1024": {"train_batch_size": 1024},
        "no_decay_on_norms": {"weight_decay_exempt": "norms"},
        # the settings of docs/results/generative.md's 56-epoch run (.1189 / .0946 on Instruments), all at once
        "earlier_run": {"task_mix": "per_row", "beam_fusion": "floor_sum", "eval_rule": "strict",
                        "learning_rate": 0.001, "lr_scheduler": "constant", "warmup_steps": 0, "clip_grad_norm": None,
                        "train_batch_size": 1024, "pretrain_datasets": ["Games"], "pretrain_epochs": 3,
                        "pretrain_batch_size": 1024, "epochs": 56},
    },
}
# Variants of stored grids whose setting has since become the default: ``--report`` still names their overrides.
RETIRED_ABLATIONS: dict[str, dict[str, dict[str, Any]]] = {
    "QBert4Rec": {"interleaved_pretrain": {"pretrain_domain_order": "interleaved"}}}


def reported_variants(model: str) -> dict[str, dict[str, Any]]:
    """Every variant a stored grid of ``model`` may hold: the bench's and the retired ones."""
    return {**RETIRED_ABLATIONS.get(model, {}), **ABLATIONS[model]}


def parse_settings(items: list[str]) -> dict[str, str]:
    """``key=value`` strings -> ``{key: value}`` (values stay strings: RecBole parses them as command-line values)."""
    settings = {}
    for item in items:
        key, sep, value = item.partition("=")
        if not sep or not key:
            raise SystemExit(f"error: --set takes key=value items, got {item!r}")
        settings[key.lstrip("-")] = value
    return settings


def variant_settings(model: str, common: dict[str, str], variant: str) -> dict[str, str]:
    """The common settings with the variant's overrides on top (as command-line values)."""
    return {**common, **{key: repr(value) for key, value in ABLATIONS[model][variant].items()}}


def dataset_folders(model: str, dataset: str, variants: list[str], common: dict[str, str]) -> list[Path]:
    """The atomic-file folders of the target and of every pretraining source of ``variants`` (checked to exist; a
    variant without ``pretrain_datasets`` pretrains on the pool's domains that are under ``data_path``)."""
    def arguments(settings: dict[str, str]) -> list[str]:
        return [f"--{key}={value}" for key, value in settings.items()]

    sources = {name for variant in variants for name in pretrain_dataset_names(
        build_config(model, dataset, cmd_args=arguments(variant_settings(model, common, variant))))}
    configs = [build_config(model, name, cmd_args=arguments(common)) for name in [dataset, *sorted(sources)]]
    return [ensure_atomic_files(config).parent for config in configs]


def recorded_result(model: str, dataset: str, arguments: list[str]) -> dict[str, Any] | None:
    """The latest record of the run ``arguments`` describe (with its ``results_dir``) with the same settings, data and
    code, as ``compare`` finds the runs it skips."""
    run, = plan([model], [dataset], 1, [], arguments, compare_id="")
    return recorded_runs([run]).get(run)


def run_variant(model: str, variant: str, dataset: str, common: dict[str, str], folders: list[Path], work: Path,
                rerun: bool = False) -> dict[str, Any]:
    """Train and test one variant on its own copy of the atomic files, without the model's own semantic-ID artefacts,
    which the variant builds (unless its folder already holds its result of the same settings, data and code, and not
    ``rerun``); its result record with ``variant`` added, or ``{variant, error}``."""
    folder = work / variant
    for source in folders:
        shutil.copytree(source, folder / "dataset" / source.name, dirs_exist_ok=True,
                        ignore=shutil.ignore_patterns(f"*.{model}.{SID_SUFFIX}*"))
    settings = {**variant_settings(model, common, variant), "checkpoint_dir": str(folder / "saved"),
                "data_path": str(folder / "dataset")}
    arguments = [f"--{key}={value}" for key, value in settings.items()]
    if not rerun and (record := recorded_result(model, dataset, [*arguments, f"--results_dir={folder / model}"])):
        print(f"{variant}: recorded {record['finished_at']}, skipped", flush=True)
        return {**record, "variant": variant}
    try:
        record = run_model(model, dataset, arguments, folder, folder)
    except RuntimeError as err:
        return {"variant": variant, "error": str(err)}
    return {**record, "variant": variant}


# The bench table's columns plus the seed and the validation NDCG@10 that picks the checkpoint; QBert4Rec's add the
# items per injection depth.
ABLATION_COLUMNS = [COLUMNS[0], "seed", *COLUMNS[1:], "valid_ndcg@10"]
DEPTH_COLUMN = "injection_depths"


def ablation_columns(model: str) -> list[str]:
    """The columns of ``model``'s table."""
    return [*ABLATION_COLUMNS, DEPTH_COLUMN] if model == "QBert4Rec" else ABLATION_COLUMNS


# The summary's metrics over seeds: test HR@10 and NDCG@10, and the validation NDCG@10 that selects among variants.
SUMMARY_METRICS = [("hit@10", "test"), ("ndcg@10", "test"), ("ndcg@10", "valid")]


def finished_rows(results: list[dict]) -> list[dict]:
    """Table rows of the variants that finished, the variant in the ``model`` column, with the seed, the validation
    NDCG@10 and QBert4Rec's items per injection depth ``1 .. injection_layers`` (stage 1's histogram; empty when the
    stage did not run)."""
    finished = [result for result in results if "error" not in result]
    rows = table_rows([{**result, "model": result["variant"]} for result in finished])
    for row, result in zip(rows, finished):
        depths = result.get("injection_depth_histogram") or []
        row["seed"] = result["seed"]
        row["valid_ndcg@10"] = result["valid"]["ndcg@10"]
        row[DEPTH_COLUMN] = "/".join(map(str, depths[1:]))
    return rows


def summary(results: list[dict]) -> str:
    """Markdown of each variant's test HR@10 / NDCG@10 and validation NDCG@10, mean ± std over its seeds (variants in
    the order they first appear)."""
    by_variant: dict[str, list[dict]] = {}
    for result in results:
        if "error" not in result:
            by_variant.setdefault(result["variant"], []).append(result)
    columns = ["variant", "seeds", *(f"{split} {metric}" for metric, split in SUMMARY_METRICS)]
    lines = ["| " + " | ".join(columns) + " |", "|" + "---|" * len(columns)]
    for variant, runs in by_variant.items():
        cells = [value_text(Cell({run["seed"]: run[split][metric] for run in runs})) for metric, split in SUMMARY_METRICS]
        lines.append(f"| {variant} | {', '.join(str(run['seed']) for run in runs)} | " + " | ".join(cells) + " |")
    return "\n".join(lines) + "\n"


def report(payload: dict) -> str:
    """Markdown of a payload of one or more grids of one dataset: each grid's provenance, every variant's overrides,
    the metrics table, with several seeds of a variant their mean ± std, and any failures."""
    results, grids = payload["results"], payload["grids"]
    commits = sorted({result["git_commit"][:7] for result in results if "git_commit" in result})
    provenance = "".join(
        f"- command: `{grid['command']}`\n- machine: {grid['machine']}\n- date: {grid['date']}\n"
        f"- common settings: {grid['common'] or 'harness defaults'}\n" for grid in grids)
    variants = dict.fromkeys(result["variant"] for result in results)
    model = payload["model"]
    depths = ("; injection_depths: items that went through 1, 2, ... injection blocks"
              if DEPTH_COLUMN in ablation_columns(model) else "")
    header = (f"# {model} ablations on {payload['dataset']}: test metrics (leave-one-out, full ranking)\n\n"
              + provenance + f"- commit: {', '.join(commits) or 'none finished'}\n"
              + "".join(f"- {variant}: {reported_variants(model)[variant] or 'no overrides'}\n" for variant in variants)
              + "- epochs and train_seconds_per_epoch count fine-tuning epochs, pretrain_epochs the pretraining epochs; "
                "valid_ndcg@10: the best validation NDCG@10 (the checkpoint tested)" + depths)
    seeds = {result["seed"] for result in results if "error" not in result}
    means = (f"\n## Mean ± std over seeds (sample std)\n\n{summary(results)}" if len(seeds) > 1 else "")
    stopped = [result["variant"] for result in results if result.get("train_time_limit_reached")]
    warning = (f"\nStopped by the training budget (train_time_limit, pretraining included) before early stopping: "
               f"{', '.join(stopped)}: their fine-tuning was cut short, so their rows measure the budget, not the variant.\n"
               if stopped else "")
    discarded = [result["variant"] for result in results if result.get("pretraining_discarded")]
    warning += (f"\nPretraining stalled and was discarded (discard_stalled_pretraining): {', '.join(discarded)}: "
                "fine-tuned from the initial weights, as without pretraining.\n" if discarded else "")
    failures = [f"\n## {result['variant']} failed\n\n```\n{result['error']}\n```\n" for result in results if "error" in result]
    return markdown(finished_rows(results), header, ablation_columns(model)) + means + warning + "".join(failures)


def write_report(out: Path, payload: dict) -> None:
    """Print the grid's table and write ``<out>.md``/``.csv``/``.json`` from its payload."""
    table = report(payload)
    print(table)
    write_outputs(out, payload, finished_rows(payload["results"]), table, ablation_columns(payload["model"]))


def grid_payload(model: str, dataset: str, grids: list[dict], results: list[dict]) -> dict:
    """What ``<out>.json`` holds: the model, the dataset, each grid's provenance (command, machine, date, common
    settings) and every variant's result record (or error)."""
    return {"model": model, "dataset": dataset, "grids": grids, "results": results}


def read_grid(path: str) -> dict:
    """The payload of a grid's ``<out>.json`` (one grid's, or several's); exits with one line when the file is missing
    or is not one."""
    try:
        payload = json.loads(Path(path).read_text(encoding="utf-8"))
        results = payload["results"]
        # a grid written before its payload listed its grids: one grid, its provenance at the top level
        grids = payload.get("grids") or [{key: payload[key] for key in ("command", "machine", "date", "common")}]
        # a grid written before its payload named the model was QBert4Rec's
        model = payload.get("model", "QBert4Rec")
        unknown = sorted({result["variant"] for result in results} - reported_variants(model).keys())
        # a grid written before its payload named the dataset: its first result's
        payload = grid_payload(model, payload.get("dataset") or results[0]["dataset"], grids, results)
    except (OSError, ValueError, KeyError, IndexError, TypeError) as err:  # KeyError: a model the bench lacks too
        sys.exit(f"error: --report {path} is not the .json of a finished ablation grid ({type(err).__name__}: {err}) "
                 "— pass the <out>.json this bench wrote")
    if unknown:
        sys.exit(f"error: --report {path} has results of {model} variants this bench does not know "
                 f"({', '.join(unknown)}) — pass the <out>.json this bench wrote")
    return payload


def merged_grids(paths: list[str]) -> dict:
    """One payload of the grids in ``paths`` (e.g. one per seed), all of one model and dataset; exits with one line
    when they are of several."""
    payloads = [read_grid(path) for path in paths]
    for key, plural in (("model", "models"), ("dataset", "datasets")):
        values = sorted({payload[key] for payload in payloads})
        if len(values) > 1:
            sys.exit(f"error: --report files are of several {plural} ({', '.join(values)}) — report one {key} at "
                     "a time")
    return grid_payload(payloads[0]["model"], payloads[0]["dataset"],
                        [grid for payload in payloads for grid in payload["grids"]],
                        [result for payload in payloads for result in payload["results"]])


def parse_args() -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--model", choices=list(ABLATIONS), default="QBert4Rec")
    parser.add_argument("--dataset", default="Instruments")
    parser.add_argument("--variants", nargs="+", help="the model's variants to run (default: all of them; the "
                        "module's docstring lists them); image_only needs a target with image content, "
                        "cross_domain_games one other than Games, cross_domain_pretrain one other than Arts and Games")
    parser.add_argument("--parallel", type=int, help="variants trained at once (one GPU; default: all)")
    parser.add_argument("--set", nargs="*", default=[], metavar="KEY=VALUE",
                        help="config overrides for every variant, e.g. epochs=10 pretrain_epochs=4")
    parser.add_argument("--work-dir", help="keep per-variant logs, results and checkpoints here (default: temporary); "
                        "a variant whose result of the same settings, data and code is there is not run again")
    parser.add_argument("--rerun", action="store_true", help="run again the variants already recorded in --work-dir")
    parser.add_argument("--out", required=True, help="output path without extension")
    parser.add_argument("--report", nargs="+", metavar="JSON", help="train nothing: write the report of finished grids "
                        "from their <out>.json: one again (e.g. after the table's columns changed), or several of one "
                        "dataset (e.g. one per seed) as one report with each variant's mean ± std over seeds")
    args = parser.parse_args()
    known = ABLATIONS[args.model]
    args.variants = args.variants or list(known)
    unknown = [variant for variant in args.variants if variant not in known]
    if unknown:
        parser.exit(2, f"error: {args.model} has no variant {', '.join(unknown)} — choose among {', '.join(known)}\n")
    if args.parallel is not None and args.parallel < 1:
        parser.exit(2, f"error: --parallel {args.parallel} must be at least 1 (variants trained at once)\n")
    args.parallel = args.parallel or len(args.variants)
    return args


def main() -> None:
    args = parse_args()
    if args.report:
        write_report(Path(args.out).resolve(), merged_grids(args.report))
        return
    common = parse_settings(args.set)
    command = "python " + " ".join(shlex.quote(arg) for arg in sys.argv)
    out = Path(args.out).resolve()
    work_dir = args.work_dir and Path(args.work_dir).resolve()
    os.chdir(REPO_ROOT)  # relative paths (data_path, ...) mean the same here as in the runs, which start there
    # Parallel runs share the CPU too: split its cores between them unless told otherwise.
    os.environ.setdefault("OMP_NUM_THREADS", str(max(1, (os.cpu_count() or 1) // args.parallel)))
    folders = dataset_folders(args.model, args.dataset, args.variants, common)
    with tempfile.TemporaryDirectory() as tmp:
        work = work_dir or Path(tmp)
        with ThreadPoolExecutor(args.parallel) as pool:
            results = list(pool.map(lambda variant: run_variant(args.model, variant, args.dataset, common, folders,
                                                                work, args.rerun), args.variants))
    date = datetime.now(timezone.utc).strftime("%Y-%m-%d %H:%M UTC")
    payload = grid_payload(args.model, args.dataset, [{"command": command, "machine": machine_name(), "date": date,
                                                       "common": common}], results)
    write_report(out, payload)
    if any("error" in result for result in results):
        sys.exit(1)


if __name__ == "__main__":
    main()
