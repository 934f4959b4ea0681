"""Q-Bert4Rec's semantic IDs per domain: what each domain's items get from stages 1-2 run over the union of the domains.

Per variant given (``default``, or stage settings such as ``code_proxy_level_decay=0.5,injection_projection=fixed``),
stage 1 (cross-modal injection) runs once over the target's and its pretraining sources' items, as a run builds them
(``recbole_qrec.tokenize.model_stage_configs``); stage 2 (the RQ-VAE) then runs on its fused embeddings once per
``sid_l2_normalize`` setting given. For each setting and domain the report gives the items' injection-depth histogram,
their mean fused-embedding norm, the per-level utilisation and perplexity of their codes, the union's collision rate
before de-duplication and the RQ-VAE's reconstruction loss, and how much sequential signal the codes keep: the
sequence lift (:func:`recbole_qrec.quantization.metrics.sequence_code_lift`) at depths 1 and 2 over the domain's
training sequences (each user's items in time order without the last two, the validation and test targets), of the
stage's codes and of the content codes the features came from; per variant, it gives stage 1's items per injection
depth in its training epochs. ``--rqvae-on-features`` leaves stage 1 out: the RQ-VAE
quantizes the item features themselves (the modalities side by side), which shows what stage 1 adds or takes away.
Writes nothing into ``--data_path``: the atomic files
are copied to a temporary folder. Output: ``<out>.md``, ``<out>.json`` (every figure, command, commit, machine and
date) and ``<out>.csv``.

    python bench/qbert4rec_stage_codes.py --dataset Arts --data_path DIR --normalize False \\
        --variants default code_proxy_level_decay=0.5,injection_projection=fixed \\
        --out docs/results/qbert4rec_stage_codes_arts
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

import numpy as np
import pandas as pd
import torch
from common import machine_name, markdown, write_outputs
from recbole.config import Config
from recbole_qrec.data.atomic_files import atomic_file, resolve_item_content_fields
from recbole_qrec.data.item_features import concat_features
from recbole_qrec.data.sid import read_code_column
from recbole_qrec.qbert4rec_stage import STAGE, domain_figures, inject, quantize
from recbole_qrec.quantization.metrics import sequence_code_lift
from recbole_qrec.results import git_state
from recbole_qrec.stage_cache import stage_inputs
from recbole_qrec.tokenize import model_stage_configs

COLUMNS = ["variant", "sid_l2_normalize", "domain", "items", "fused_norm", "depths", "perplexity",
           "utilisation", "collisions_before", "reconstruction_loss", "lift@1", "lift@2", "content_lift@1",
           "content_lift@2"]
LIFT_DEPTHS = (1, 2)
HELD_OUT = 2  # each user's last items: the validation and test targets


def parse_args() -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--dataset", default="Instruments", help="the target; its sources follow pretrain_datasets")
    parser.add_argument("--data_path", required=True, help="folder of the atomic files of the target and its sources")
    parser.add_argument("--variants", nargs="+", default=["default"],
                        help="stage settings to run stage 1 with, each 'default' or KEY=VALUE[,KEY=VALUE...]")
    parser.add_argument("--rqvae-on-features", action="store_true",
                        help="no stage 1: quantize the item features themselves (depths are then 0)")
    parser.add_argument("--normalize", nargs="+", choices=["False", "True"], default=["False", "True"],
                        help="the sid_l2_normalize settings to quantize with")
    parser.add_argument("--set", nargs="*", default=[], metavar="KEY=VALUE", help="config overrides, e.g. device=cuda")
    parser.add_argument("--out", required=True, help="output path without extension")
    return parser.parse_args()


def training_sequences(folder: Path, tokens: list[str]) -> list[np.ndarray]:
    """Each user's training items in time order (the last :data:`HELD_OUT` left out) as rows of ``tokens``."""
    frame = pd.read_csv(folder / f"{folder.name}.inter", sep="\t", dtype=str)
    frame.columns = [column.split(":")[0] for column in frame.columns]
    frame["row"] = frame["item_id"].map({token: row for row, token in enumerate(tokens)})
    frame = frame.assign(time=frame["timestamp"].astype(float)).sort_values(["user_id", "time"], kind="stable")
    return [group.to_numpy()[:-HELD_OUT] for _, group in frame.groupby("user_id", sort=False)["row"]]


def content_codes(config: Config, tokens: list[str]) -> np.ndarray | None:
    """The domain's first content-code field (``text_codes``, ...) as ``[items, levels]`` rows of ``tokens``."""
    fields = [field for field in resolve_item_content_fields(config) if field.endswith("_codes")]
    if not fields:
        return None
    column = read_code_column(atomic_file(config, "item"), fields[0])
    return np.array([column[token] for token in tokens], dtype=np.int64)


def lifts(sequences: list[np.ndarray], codes: np.ndarray | None, prefix: str = "") -> dict[str, float | None]:
    return {f"{prefix}lift@{depth}": None if codes is None else round(sequence_code_lift(sequences, codes, depth), 2)
            for depth in LIFT_DEPTHS}


def depth_course(stage1: dict[str, dict], every: int = 5) -> str:
    """Markdown: per variant, the union's items per injection depth in stage 1's training batches after epoch 1 and
    every ``every``-th epoch (and the last), with the mean depth."""
    lines = ["| variant | epoch | items per depth 1, 2, ... | mean depth |", "|---|---|---|---|"]
    for variant, run in stage1.items():
        epochs = run["depths_per_epoch"]
        for epoch in sorted({1, len(epochs), *range(every, len(epochs) + 1, every)}):
            counts = epochs[epoch - 1]
            mean = sum(depth * count for depth, count in enumerate(counts)) / max(1, sum(counts))
            lines.append(f"| {variant} | {epoch} | {'/'.join(map(str, counts[1:]))} | {mean:.2f} |")
    return "\n".join(lines)


def variant_overrides(variant: str) -> list[str]:
    """``--key=value`` arguments of a variant (none for ``default``)."""
    return [] if variant == "default" else [f"--{setting}" for setting in variant.split(",")]


def rows_of(variant: str, setting: str, figures: dict[str, dict], sizes: dict[str, int], report: dict,
            signal: dict[str, dict]) -> list[dict]:
    return [{"variant": variant, "sid_l2_normalize": setting, "domain": name, "items": sizes[name],
             "fused_norm": round(domain["fused_norm"], 2), "depths": "/".join(map(str, domain["depth_histogram"][1:])),
             "perplexity": "/".join(f"{value:.1f}" for value in domain["perplexity"]),
             "utilisation": "/".join(f"{value:.2f}" for value in domain["utilisation"]),
             "collisions_before": round(report["collision_rate_before"], 4),
             "reconstruction_loss": round(report["reconstruction_loss"], 4), **signal[name]}
            for name, domain in figures.items()]


def main() -> None:
    args = parse_args()
    command = "python " + " ".join(shlex.quote(arg) for arg in sys.argv)
    commit, dirty = git_state()
    rows, settings, stage1 = [], {}, {}
    with tempfile.TemporaryDirectory() as tmp:
        data = Path(tmp) / "dataset"
        shutil.copytree(args.data_path, data)
        for variant in args.variants:
            overrides = [f"--data_path={data}/", *variant_overrides(variant), *(f"--{setting}" for setting in args.set)]
            config, sources = model_stage_configs("QBert4Rec", args.dataset, [], overrides)
            inputs = stage_inputs(STAGE, config, sources)
            sizes = {name: len(tokens) for name, tokens in inputs.item_tokens.items()}
            domain_configs = {domain_config["dataset"]: domain_config for domain_config in [config, *sources]}
            sequences = {name: training_sequences(inputs.folders[name], tokens)
                         for name, tokens in inputs.item_tokens.items()}
            content = {name: lifts(sequences[name], content_codes(domain_configs[name], tokens), "content_")
                       for name, tokens in inputs.item_tokens.items()}
            started = time.perf_counter()
            union = concat_features(list(inputs.features.values()))
            if args.rqvae_on_features:
                fused, depths = torch.cat(union.matrices, 1), torch.zeros(len(union.present), dtype=torch.long)
            else:
                fused, depths, curve = inject(config, union)
                losses = curve.losses
                stage1[variant] = {"loss": losses, "depths_per_epoch": curve.depths,
                                   "seconds": time.perf_counter() - started}
                print(f"{variant}, stage 1: loss {losses[0]:.4f} -> {losses[-1]:.4f} in "
                      f"{stage1[variant]['seconds']:.0f} s", flush=True)
            for setting in args.normalize:
                config["sid_l2_normalize"] = setting == "True"
                tokenized = quantize(config, fused)
                codes = torch.from_numpy(tokenized.codes)
                figures = domain_figures(config, inputs.item_tokens, fused, codes, depths)
                signal = {name: {**lifts(sequences[name], domain_codes.numpy()), **content[name]}
                          for name, domain_codes in zip(sizes, codes.split(list(sizes.values())))}
                settings[f"{variant}/{setting}"] = {
                    "domains": figures, "sequence_lift": signal,
                    "tokenizer": {key: value for key, value in tokenized.report.items()
                                  if key != "reconstruction_loss_per_epoch"}}
                rows += rows_of(variant, setting, figures, sizes, tokenized.report, signal)
                print(f"{variant}, sid_l2_normalize {setting}: done", flush=True)
    date = datetime.now(timezone.utc).isoformat(timespec="seconds")
    stage1_lines = "; ".join(f"{variant}: injection loss {run['loss'][0]:.4f} -> {run['loss'][-1]:.4f}, "
                             f"{run['seconds']:.0f} s" for variant, run in stage1.items())
    header = (f"# QBert4Rec's semantic IDs per domain: {args.dataset} and its pretraining sources\n\n"
              f"- command: `{command}`\n- commit: {commit}{' (uncommitted changes)' if dirty else ''}\n"
              f"- machine: {machine_name()}\n- date: {date}\n"
              + ("- no stage 1: the RQ-VAE quantized the item features themselves\n" if args.rqvae_on_features else
                 f"- stage 1 (once per variant, shared by its rows): {stage1_lines}\n")
              + "- fused_norm: mean L2 norm of the domain's fused embeddings; depths: items through 1, 2, ... injection "
              "blocks; perplexity, utilisation: per code level over the domain's items; collisions_before and "
              "reconstruction_loss: the RQ-VAE over the union; lift@d: how much more often two consecutive items of "
              "the domain's training sequences share their first d codes than chance (1: none of the sequences' "
              "order is in the codes), of the stage's codes and (content_) of the content codes the features came from")
    table = markdown(rows, header, COLUMNS)
    if stage1:
        table += f"\n## Stage 1's training depths per epoch (the union's items)\n\n{depth_course(stage1)}\n"
    print(table)
    payload = {"command": command, "git_commit": commit, "git_dirty": dirty, "machine": machine_name(), "date": date,
               "dataset": args.dataset, "stage1": stage1, "settings": settings}
    write_outputs(Path(args.out), payload, rows, table, COLUMNS)


if __name__ == "__main__":
    main()
