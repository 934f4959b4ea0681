"""Q-Bert4Rec's semantic IDs per domain: what each domain's items get from stages 1-2 run over the union of the domains.

Stage 1 (cross-modal injection) runs once over the target's and its pretraining sources' items, as a run builds them
(``recbole_qrec.tokenize.model_stage_configs``); stage 2 (the RQ-VAE) then runs on its fused embeddings once per
``sid_l2_normalize`` setting given. For each setting and domain the report gives the items' injection-depth histogram,
their mean fused-embedding norm, and the per-level utilisation and perplexity of their codes, plus the union's
collision rate before de-duplication and the RQ-VAE's reconstruction loss. Writes nothing into ``--data_path``: the
atomic files are copied to a temporary folder. Output: ``<out>.md``, ``<out>.json`` (every figure, command, commit,
machine and date) and ``<out>.csv``.

    python bench/qbert4rec_stage_codes.py --dataset Instruments --data_path DIR --normalize False True \\
        --out docs/results/qbert4rec_stage_codes
"""

from __future__ import annotations

import argparse
import shlex
import shutil
import sys
import tempfile
import time
from datetime import datetime, timezone
from pathlib import Path

import torch
from common import machine_name, markdown, write_outputs
from recbole_qrec.data.item_features import concat_features
from recbole_qrec.qbert4rec_stage import STAGE, domain_figures, inject, quantize
from recbole_qrec.results import git_state
from recbole_qrec.stage_cache import stage_inputs
from recbole_qrec.tokenize import model_stage_configs

COLUMNS = ["sid_l2_normalize", "domain", "items", "fused_norm", "depths", "perplexity", "utilisation",
           "collisions_before", "reconstruction_loss"]


def parse_args() -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--dataset", default="Instruments", help="the target; its sources follow pretrain_datasets")
    parser.add_argument("--data_path", required=True, help="folder of the atomic files of the target and its sources")
    parser.add_argument("--normalize", nargs="+", choices=["False", "True"], default=["False", "True"],
                        help="the sid_l2_normalize settings to quantize with")
    parser.add_argument("--set", nargs="*", default=[], metavar="KEY=VALUE", help="config overrides, e.g. device=cuda")
    parser.add_argument("--out", required=True, help="output path without extension")
    return parser.parse_args()


def rows_of(setting: str, figures: dict[str, dict], sizes: dict[str, int], report: dict) -> list[dict]:
    return [{"sid_l2_normalize": setting, "domain": name, "items": sizes[name],
             "fused_norm": round(domain["fused_norm"], 2), "depths": "/".join(map(str, domain["depth_histogram"][1:])),
             "perplexity": "/".join(f"{value:.1f}" for value in domain["perplexity"]),
             "utilisation": "/".join(f"{value:.2f}" for value in domain["utilisation"]),
             "collisions_before": round(report["collision_rate_before"], 4),
             "reconstruction_loss": round(report["reconstruction_loss"], 4)}
            for name, domain in figures.items()]


def main() -> None:
    args = parse_args()
    command = "python " + " ".join(shlex.quote(arg) for arg in sys.argv)
    commit, dirty = git_state()
    rows, settings = [], {}
    with tempfile.TemporaryDirectory() as tmp:
        data = Path(tmp) / "dataset"
        shutil.copytree(args.data_path, data)
        overrides = [f"--data_path={data}/", *(f"--{setting}" for setting in args.set)]
        config, sources = model_stage_configs("QBert4Rec", args.dataset, [], overrides)
        inputs = stage_inputs(STAGE, config, sources)
        sizes = {name: len(tokens) for name, tokens in inputs.item_tokens.items()}
        started = time.perf_counter()
        fused, depths, losses = inject(config, concat_features(list(inputs.features.values())))
        stage1_seconds = time.perf_counter() - started
        print(f"stage 1: loss {losses[0]:.4f} -> {losses[-1]:.4f} in {stage1_seconds:.0f} s", flush=True)
        for setting in args.normalize:
            config["sid_l2_normalize"] = setting == "True"
            tokenized = quantize(config, fused)
            figures = domain_figures(config, inputs.item_tokens, fused, torch.from_numpy(tokenized.codes), depths)
            settings[setting] = {"domains": figures, "tokenizer": {key: value for key, value in tokenized.report.items()
                                                                   if key != "reconstruction_loss_per_epoch"}}
            rows += rows_of(setting, figures, sizes, tokenized.report)
            print(f"sid_l2_normalize {setting}: done", flush=True)
    date = datetime.now(timezone.utc).isoformat(timespec="seconds")
    header = (f"# QBert4Rec's semantic IDs per domain: {args.dataset} and its pretraining sources\n\n"
              f"- command: `{command}`\n- commit: {commit}{' (uncommitted changes)' if dirty else ''}\n"
              f"- machine: {machine_name()}\n- date: {date}\n"
              f"- stage 1 (once, shared by the rows): injection loss {losses[0]:.4f} -> {losses[-1]:.4f}, "
              f"{stage1_seconds:.0f} s\n"
              "- fused_norm: mean L2 norm of the domain's fused embeddings; depths: items through 1, 2, ... injection "
              "blocks; perplexity, utilisation: per code level over the domain's items; collisions_before and "
              "reconstruction_loss: the RQ-VAE over the union")
    table = markdown(rows, header, COLUMNS)
    print(table)
    payload = {"command": command, "git_commit": commit, "git_dirty": dirty, "machine": machine_name(), "date": date,
               "dataset": args.dataset, "stage1_loss": losses, "stage1_seconds": stage1_seconds, "settings": settings}
    write_outputs(Path(args.out), payload, rows, table, COLUMNS)


if __name__ == "__main__":
    main()
