"""Q-Bert4Rec ablations: each variant trained and tested through the real entry point, several at once on one GPU.

Variants (the paper's ablation grid, each a set of config overrides on top of the harness config):
``default`` (the paper's model: item-level scoring, dynamic fusion with the ponder penalty, the target's modalities,
multi-mask pretraining with span + tail + multi on the other domains of ``pretrain_domain_pool`` that are there, their
batches interleaved), ``static_fusion``, ``no_depth_penalty`` (dynamic gates that never close), ``levels_scoring``
(factorised per-level scoring), ``l2_sid_input`` (the RQ-VAE on L2-normalised fused embeddings), ``text_only``,
``image_only``, ``no_pretrain``, ``mlm_pretrain`` (MLM-only pretraining), ``in_domain_pretrain`` (pretrained on the
target's own sequences), ``with_target_pretrain`` (on the sources' and the target's sequences), ``cross_domain_games``
(pretrained on Games alone; stages 1-2 over the union of both domains' items), ``content_kept_codes`` (content-code
proxy levels weighted 0.5 ** level and stage 1's modality projections fixed, which keep the content codes' sequential
signal in the stage's codes: ``docs/results/qbert4rec_stage_codes_arts_decay.md``), ``sequential_pretrain`` (the
sources' pretraining batches one source after the other instead of in one mixed order), ``halting_gates`` (stage
1's gates trained by PonderNet's halting objective instead of the ponder penalty) and ``capacity_gates`` (stage 1's
gates rank the items, as many going deeper as a geometric prior of mean depth 2 lets reach each block).

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

    python bench/qbert4rec_ablations.py --dataset Instruments --parallel 7 \\
        --set epochs=10 pretrain_epochs=4 float32_matmul_precision=high --out docs/results/qbert4rec_ablations_instruments

That command took 7 min 11 s on one H100 (16 cores; the runs are CPU-bound, about 21 s per epoch each with 7 at once).
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

MODEL = "QBert4Rec"
VARIANTS: dict[str, dict[str, Any]] = {
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
}
# Variants of stored grids whose setting has since become the default: ``--report`` still names their overrides.
RETIRED_VARIANTS: dict[str, dict[str, Any]] = {"interleaved_pretrain": {"pretrain_domain_order": "interleaved"}}
REPORTED_VARIANTS = {**RETIRED_VARIANTS, **VARIANTS}  # every variant a stored grid may hold


def parse_settings(items: list[str]) -> dict[str, str]:
    """``key=value`` strings -> ``{key: value}`` (values stay strings: RecBole parses them as command-line values)."""
    settings = {}
    for item in items:
        key, sep, value = item.partition("=")
        if not sep or not key:
            raise SystemExit(f"error: --set takes key=value items, got {item!r}")
        settings[key.lstrip("-")] = value
    return settings


def variant_settings(common: dict[str, str], variant: str) -> dict[str, str]:
    """The common settings with the variant's overrides on top (as command-line values)."""
    return {**common, **{key: repr(value) for key, value in VARIANTS[variant].items()}}


def dataset_folders(dataset: str, variants: list[str], common: dict[str, str]) -> list[Path]:
    """The atomic-file folders of the target and of every pretraining source of ``variants`` (checked to exist; a
    variant without ``pretrain_datasets`` pretrains on the pool's domains that are under ``data_path``)."""
    def arguments(settings: dict[str, str]) -> list[str]:
        return [f"--{key}={value}" for key, value in settings.items()]

    sources = {name for variant in variants for name in
               pretrain_dataset_names(build_config(MODEL, dataset, cmd_args=arguments(variant_settings(common, variant))))}
    configs = [build_config(MODEL, name, cmd_args=arguments(common)) for name in [dataset, *sorted(sources)]]
    return [ensure_atomic_files(config).parent for config in configs]


def recorded_result(dataset: str, arguments: list[str]) -> dict[str, Any] | None:
    """The latest record of the run ``arguments`` describe (with its ``results_dir``) with the same settings, data and
    code, as ``compare`` finds the runs it skips."""
    run, = plan([MODEL], [dataset], 1, [], arguments, compare_id="")
    return recorded_runs([run]).get(run)


def run_variant(variant: str, dataset: str, common: dict[str, str], folders: list[Path], work: Path,
                rerun: bool = False) -> dict[str, Any]:
    """Train and test one variant on its own copy of the atomic files (unless its folder already holds its result of
    the same settings, data and code, and not ``rerun``); its result record with ``variant`` added, or
    ``{variant, error}``."""
    folder = work / variant
    for source in folders:
        shutil.copytree(source, folder / "dataset" / source.name, dirs_exist_ok=True,
                        ignore=shutil.ignore_patterns(f"*.{SID_SUFFIX}*"))
    settings = {**variant_settings(common, variant), "checkpoint_dir": str(folder / "saved"),
                "data_path": str(folder / "dataset")}
    arguments = [f"--{key}={value}" for key, value in settings.items()]
    if not rerun and (record := recorded_result(dataset, [*arguments, f"--results_dir={folder / MODEL}"])):
        print(f"{variant}: recorded {record['finished_at']}, skipped", flush=True)
        return {**record, "variant": variant}
    try:
        record = run_model(MODEL, dataset, arguments, folder, folder)
    except RuntimeError as err:
        return {"variant": variant, "error": str(err)}
    return {**record, "variant": variant}


# The bench table's columns plus the seed, the validation NDCG@10 that picks the checkpoint and the items per injection
# depth.
ABLATION_COLUMNS = [COLUMNS[0], "seed", *COLUMNS[1:], "valid_ndcg@10", "injection_depths"]
# The summary's metrics over seeds: test HR@10 and NDCG@10, and the validation NDCG@10 that selects among variants.
SUMMARY_METRICS = [("hit@10", "test"), ("ndcg@10", "test"), ("ndcg@10", "valid")]


def finished_rows(results: list[dict]) -> list[dict]:
    """Table rows of the variants that finished, the variant in the ``model`` column, with the seed, the validation
    NDCG@10 and the items per injection depth ``1 .. injection_layers`` (stage 1's histogram; empty when the stage did
    not run)."""
    finished = [result for result in results if "error" not in result]
    rows = table_rows([{**result, "model": result["variant"]} for result in finished])
    for row, result in zip(rows, finished):
        depths = result.get("injection_depth_histogram") or []
        row["seed"] = result["seed"]
        row["valid_ndcg@10"] = result["valid"]["ndcg@10"]
        row["injection_depths"] = "/".join(map(str, depths[1:]))
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
    header = (f"# {MODEL} ablations on {payload['dataset']}: test metrics (leave-one-out, full ranking)\n\n"
              + provenance + f"- commit: {', '.join(commits) or 'none finished'}\n"
              + "".join(f"- {variant}: {REPORTED_VARIANTS[variant] or 'no overrides'}\n" for variant in variants)
              + "- epochs and train_seconds_per_epoch count fine-tuning epochs, pretrain_epochs the pretraining epochs; "
                "valid_ndcg@10: the best validation NDCG@10 (the checkpoint tested); injection_depths: items that went "
                "through 1, 2, ... injection blocks")
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
    return markdown(finished_rows(results), header, ABLATION_COLUMNS) + means + warning + "".join(failures)


def write_report(out: Path, payload: dict) -> None:
    """Print the grid's table and write ``<out>.md``/``.csv``/``.json`` from its payload."""
    table = report(payload)
    print(table)
    write_outputs(out, payload, finished_rows(payload["results"]), table, ABLATION_COLUMNS)


def grid_payload(dataset: str, grids: list[dict], results: list[dict]) -> dict:
    """What ``<out>.json`` holds: the dataset, each grid's provenance (command, machine, date, common settings) and
    every variant's result record (or error)."""
    return {"dataset": dataset, "grids": grids, "results": results}


def read_grid(path: str) -> dict:
    """The payload of a grid's ``<out>.json`` (one grid's, or several's); exits with one line when the file is missing
    or is not one."""
    try:
        payload = json.loads(Path(path).read_text(encoding="utf-8"))
        results = payload["results"]
        # a grid written before its payload listed its grids: one grid, its provenance at the top level
        grids = payload.get("grids") or [{key: payload[key] for key in ("command", "machine", "date", "common")}]
        unknown = sorted({result["variant"] for result in results} - REPORTED_VARIANTS.keys())
        # a grid written before its payload named the dataset: its first result's
        payload = grid_payload(payload.get("dataset") or results[0]["dataset"], grids, results)
    except (OSError, ValueError, KeyError, IndexError, TypeError) as err:
        sys.exit(f"error: --report {path} is not the .json of a finished ablation grid ({type(err).__name__}: {err}) "
                 "— pass the <out>.json this bench wrote")
    if unknown:
        sys.exit(f"error: --report {path} has results of variants this bench does not know ({', '.join(unknown)}) — "
                 "pass the <out>.json this bench wrote")
    return payload


def merged_grids(paths: list[str]) -> dict:
    """One payload of the grids in ``paths`` (e.g. one per seed), all of one dataset; exits with one line when they
    are of several datasets."""
    payloads = [read_grid(path) for path in paths]
    datasets = sorted({payload["dataset"] for payload in payloads})
    if len(datasets) > 1:
        sys.exit(f"error: --report files are of several datasets ({', '.join(datasets)}) — report one dataset at a time")
    return grid_payload(datasets[0], [grid for payload in payloads for grid in payload["grids"]],
                        [result for payload in payloads for result in payload["results"]])


def parse_args() -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--dataset", default="Instruments")
    parser.add_argument("--variants", nargs="+", choices=list(VARIANTS), default=list(VARIANTS),
                        help="image_only needs a target with image content, cross_domain_games one other than Games")
    parser.add_argument("--parallel", type=int, default=len(VARIANTS), help="variants trained at once (one GPU)")
    parser.add_argument("--set", nargs="*", default=[], metavar="KEY=VALUE",
                        help="config overrides for every variant, e.g. epochs=10 pretrain_epochs=4")
    parser.add_argument("--work-dir", help="keep per-variant logs, results and checkpoints here (default: temporary); "
                        "a variant whose result of the same settings, data and code is there is not run again")
    parser.add_argument("--rerun", action="store_true", help="run again the variants already recorded in --work-dir")
    parser.add_argument("--out", required=True, help="output path without extension")
    parser.add_argument("--report", nargs="+", metavar="JSON", help="train nothing: write the report of finished grids "
                        "from their <out>.json: one again (e.g. after the table's columns changed), or several of one "
                        "dataset (e.g. one per seed) as one report with each variant's mean ± std over seeds")
    return parser.parse_args()


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
    folders = dataset_folders(args.dataset, args.variants, common)
    with tempfile.TemporaryDirectory() as tmp:
        work = work_dir or Path(tmp)
        with ThreadPoolExecutor(args.parallel) as pool:
            results = list(pool.map(lambda variant: run_variant(variant, args.dataset, common, folders, work, args.rerun),
                                    args.variants))
    date = datetime.now(timezone.utc).strftime("%Y-%m-%d %H:%M UTC")
    payload = grid_payload(args.dataset, [{"command": command, "machine": machine_name(), "date": date,
                                           "common": common}], results)
    write_report(out, payload)
    if any("error" in result for result in results):
        sys.exit(1)


if __name__ == "__main__":
    main()
