"""Cross-modal alignment in the semantic-ID tokenizer: collisions and codebook use with and without it.

MACRec quantizes an item's text and image features with cross-modal contrastive learning (``alignment:
contrastive``: per-level InfoNCE between the two modalities' residuals, weight ``contrastive_weight``, plus
``recon_align_weight`` between their quantized vectors: the paper's L_RQ-VAE + 0.1 * sum L_con + 0.001 * L_align);
MME-SID aligns them by MMD (``alignment: mmd``). This bench fits the joint RQ-VAE (4 levels x 256 codes) on the same
two modalities of Instruments with each alignment and each seed, and reports per fit the collision rate before
de-duplication, the mean codebook utilisation and perplexity over the levels, and the reconstruction loss.
Features: the one-hot of Instruments' LLaMA text codes (``Instruments.index_lemb.json``) and ViT image codes
(``Instruments.index_vitemb.json``), 1024 dimensions each, found under ``--data_path``, else ``$QREC_DATA_DIR``.
Writes ``<out>.json`` (every figure, the command, commit, machine and date), ``<out>.csv`` and ``<out>.md``.

    python bench/tokenizer_alignment.py --device cpu --epochs 50 --seeds 2020 2021 --out docs/results/tokenizer_alignment
"""

from __future__ import annotations

import argparse
import shlex
import statistics
import sys
import time
from datetime import datetime, timezone
from pathlib import Path

from common import machine_name, markdown, processed_file, write_outputs
from dataset_prep.features import code_file_features
from recbole_qrec.quantization import TokenizerConfig, fit_tokenizer
from recbole_qrec.results import git_state

ALIGNMENTS = ("none", "contrastive", "mmd")
COLUMNS = ["alignment", "fits", "collision_rate_before", "utilisation", "perplexity", "reconstruction_loss",
           "seconds_per_fit"]
FIGURES = COLUMNS[2:]


def fit_row(alignment: str, seed: int, features: list, args: argparse.Namespace) -> dict:
    """One fit's figures (means over the levels for utilisation and perplexity)."""
    started = time.perf_counter()
    report = fit_tokenizer(features, TokenizerConfig(alignment=alignment, epochs=args.epochs, seed=seed),
                           device=args.device).report
    return {"alignment": alignment, "seed": seed, "collision_rate_before": report["collision_rate_before"],
            "utilisation": statistics.mean(report["utilisation"]), "perplexity": statistics.mean(report["perplexity"]),
            "reconstruction_loss": report["reconstruction_loss"], "seconds_per_fit": time.perf_counter() - started}


def summary(alignment: str, fits: list[dict]) -> dict:
    """Mean ± std over the seeds of each figure, as table text."""
    row = {"alignment": alignment, "fits": len(fits)}
    for figure in FIGURES:
        values = [fit[figure] for fit in fits]
        spread = f" ± {statistics.stdev(values):.4f}" if len(values) > 1 else ""
        row[figure] = f"{statistics.mean(values):.4f}{spread}"
    return row


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--data_path", help="processed datasets (default: $QREC_DATA_DIR)")
    parser.add_argument("--alignments", nargs="+", default=list(ALIGNMENTS), choices=ALIGNMENTS)
    parser.add_argument("--seeds", nargs="+", type=int, default=[2020, 2021, 2022])
    parser.add_argument("--epochs", type=int, default=100, help="RQ-VAE training epochs per fit")
    parser.add_argument("--device", default=None, help="cpu, cuda or cuda:N (default: cuda when available)")
    parser.add_argument("--commit", help="this checkout's commit, where git cannot tell (a copied tree)")
    parser.add_argument("--out", type=Path, required=True, help="output prefix, e.g. docs/results/tokenizer_alignment")
    args = parser.parse_args(argv)
    paths = [processed_file(args.data_path, "Instruments", f"Instruments.{name}.json")
             for name in ("index_lemb", "index_vitemb")]
    if None in paths:
        raise SystemExit("error: Instruments/Instruments.index_lemb.json and .index_vitemb.json are not under "
                         "--data_path or $QREC_DATA_DIR — point one of them at the processed Amazon data")
    features = [code_file_features(path) for path in paths]
    fits = []
    for alignment in args.alignments:
        for seed in args.seeds:
            fits.append(fit_row(alignment, seed, features, args))
            print(", ".join(f"{key} {value:.4f}" if isinstance(value, float) else f"{key} {value}"
                            for key, value in fits[-1].items()), flush=True)
    rows = [summary(alignment, [fit for fit in fits if fit["alignment"] == alignment]) for alignment in args.alignments]
    command = shlex.join(["python", "bench/tokenizer_alignment.py", *(sys.argv[1:] if argv is None else argv)])
    commit = args.commit or git_state()[0]
    date = datetime.now(timezone.utc).isoformat(timespec="seconds")
    header = (f"# Tokenizer with and without cross-modal alignment (Instruments, text + image)\n\n`{command}`  \n"
              f"commit {commit}; {machine_name()}; {date}; {args.epochs} epochs per fit; mean ± std over the seeds "
              f"{', '.join(map(str, args.seeds))}")
    table = markdown(rows, header, COLUMNS)
    write_outputs(args.out, {"command": command, "commit": commit, "machine": machine_name(), "date": date,
                             "epochs": args.epochs, "fits": fits, "rows": rows}, rows, table, COLUMNS)
    print(table)


if __name__ == "__main__":
    main()
