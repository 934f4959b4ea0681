"""Users/second of the batched constrained beam search vs ``generate`` + ``prefix_allowed_tokens_fn``.

A TIGER-sized T5 (random weights) decodes the top-20 items for users with 20-item histories, over
(a) Instruments' semantic IDs (``Instruments.index_lemb.json`` under ``--data_path`` or ``$QREC_DATA_DIR``,
made unique by a 5th level = index within each duplicate group; random codes when the file is absent) and (b) 1,000,000 random unique
4 x 256 code tuples. ``generate`` is timed on fewer users; on those users both result lists are
compared. With several ``--batch-size`` values our search runs at each (one row each, with its peak GPU memory), and
every batch size's top lists are compared with the first's over all users: the batch size of a validation changes its
speed and memory, not its result. Writes ``<out>.json`` and ``<out>.csv`` with the exact command, commit, machine and
date.

    python bench/beam_search.py --device cuda --batch-size 256 1024 --out docs/results/beam_search
"""

from __future__ import annotations

import argparse
import csv
import json
import shlex
import sys
import time
from collections.abc import Callable
from datetime import datetime, timezone

import torch
from transformers import T5Config, T5ForConditionalGeneration

from common import REPO_ROOT, machine_name, processed_file, synchronize
from recbole_qrec.fileio import atomic_open, write_json_atomic
from recbole_qrec.generation import (
    PrefixIndex,
    SemanticIdVocab,
    TokenTrie,
    constrained_beam_search,
    generate_with_trie,
)
from recbole_qrec.results import git_state

CODEBOOK = 256
HISTORY_ITEMS = 20
COLUMNS = ["table", "items", "levels", "beam", "batch", "users", "seconds", "users_per_s", "peak_gpu_mb",
           "same_lists_as_first_batch", "generate_batch", "generate_users", "generate_seconds", "generate_users_per_s",
           "speedup", "identical_lists", "same_item_sets", "max_abs_score_diff", "index_build_s"]


def instruments_codes(seed: int, data_path: str | None) -> tuple[str, torch.Tensor]:
    """Instruments' text codes plus a disambiguation level, or random codes of the same size."""
    path = processed_file(data_path, "Instruments", "Instruments.index_lemb.json")
    if path is None:
        return "instruments-sized random", random_unique_codes(6250, 4, seed)
    tokens = json.loads(path.read_text(encoding="utf-8"))
    codes = torch.tensor([[int(token.strip("<>").rsplit("_", 1)[1]) for token in tokens[key]]
                          for key in sorted(tokens, key=int)])
    return "Instruments index_lemb + level 5", torch.cat([codes, duplicate_rank(codes)[:, None]], dim=1)


def duplicate_rank(codes: torch.Tensor) -> torch.Tensor:
    """Index of each row among the earlier rows with the same code tuple (0 for unique rows)."""
    _, group = torch.unique(codes, dim=0, return_inverse=True)
    order = torch.argsort(group, stable=True)
    ranks = torch.empty_like(group)
    ranks[order] = torch.arange(len(group)) - torch.searchsorted(group[order], group[order])
    return ranks


def random_unique_codes(n_items: int, levels: int, seed: int) -> torch.Tensor:
    """``n_items`` distinct uniformly random code tuples of ``levels`` x ``CODEBOOK``."""
    generator = torch.Generator().manual_seed(seed)
    keys = torch.unique(torch.randint(0, CODEBOOK**levels, (2 * n_items,), generator=generator))
    keys = keys[torch.randperm(len(keys), generator=generator)[:n_items]]
    return torch.stack([keys // CODEBOOK ** (levels - 1 - level) % CODEBOOK for level in range(levels)], dim=1)


def tiger_t5(vocab: SemanticIdVocab, seed: int) -> T5ForConditionalGeneration:
    """4 + 4 layers, d_model 128, 6 heads of 64, d_ff 1024; random weights."""
    torch.manual_seed(seed)
    config = T5Config(vocab_size=vocab.size, d_model=128, d_kv=64, d_ff=1024, num_layers=4, num_decoder_layers=4,
                      num_heads=6, dropout_rate=0.0, decoder_start_token_id=vocab.decoder_start_id)
    return T5ForConditionalGeneration(config).eval()


def user_histories(codes: torch.Tensor, vocab: SemanticIdVocab, users: int, seed: int) -> torch.Tensor:
    """Token ids of ``HISTORY_ITEMS`` random items per user, then EOS."""
    items = torch.randint(0, len(codes), (users, HISTORY_ITEMS), generator=torch.Generator().manual_seed(seed))
    return torch.cat([vocab.encode(codes[items]).flatten(1), torch.full((users, 1), vocab.eos_id)], dim=1)


def timed_batches(decode: Callable[[torch.Tensor], tuple[torch.Tensor, torch.Tensor]], inputs: torch.Tensor,
                  batch_size: int) -> tuple[torch.Tensor, torch.Tensor, float]:
    """Decode ``inputs`` batch by batch after one warm-up batch: ``(items, scores, seconds)``."""
    decode(inputs[:batch_size])
    synchronize(inputs.device)
    start = time.perf_counter()
    results = [decode(inputs[first:first + batch_size]) for first in range(0, len(inputs), batch_size)]
    synchronize(inputs.device)
    seconds = time.perf_counter() - start
    return torch.cat([items.cpu() for items, _ in results]), torch.cat([scores.cpu() for _, scores in results]), seconds


def peak_memory_mb(device: torch.device) -> float | str:
    """The most GPU memory allocated since the last reset, in MiB ('' on a CPU)."""
    return round(torch.cuda.max_memory_allocated(device) / 2**20, 1) if device.type == "cuda" else ""


def bench_table(name: str, codes: torch.Tensor, args: argparse.Namespace) -> list[dict]:
    """One row per ``--batch-size`` of our search over ``codes``, each against ``generate`` on its first users."""
    vocab = SemanticIdVocab(codes.shape[1], CODEBOOK)
    device = torch.device(args.device)
    model = tiger_t5(vocab, args.seed).to(device)
    synchronize(device)
    start = time.perf_counter()
    index = PrefixIndex(codes.to(device), CODEBOOK)
    synchronize(device)
    build_seconds = time.perf_counter() - start
    inputs = user_histories(codes, vocab, args.users, args.seed).to(device)
    ones = torch.ones_like(inputs)
    trie = TokenTrie(codes, vocab)
    reference = inputs[: args.generate_users]
    ref_items, ref_scores, ref_seconds = timed_batches(
        lambda batch: generate_with_trie(model, batch, ones[: len(batch)], trie, args.beam),
        reference, args.generate_batch_size)
    ref_rate = len(reference) / ref_seconds
    rows, first_items = [], None
    for batch_size in args.batch_size:
        if device.type == "cuda":
            torch.cuda.reset_peak_memory_stats(device)
        items, scores, seconds = timed_batches(
            lambda batch: constrained_beam_search(model, batch, ones[: len(batch)], index, vocab, args.beam),
            inputs, batch_size)
        first_items = items if first_items is None else first_items
        ours_items, ours_scores = items[: len(reference)], scores[: len(reference)]
        rate = len(inputs) / seconds
        rows.append({
            "table": name, "items": len(codes), "levels": codes.shape[1], "beam": args.beam, "batch": batch_size,
            "users": len(inputs), "seconds": round(seconds, 4), "users_per_s": round(rate, 1),
            "peak_gpu_mb": peak_memory_mb(device),
            "same_lists_as_first_batch": (items == first_items).all(dim=1).float().mean().item(),
            "generate_batch": args.generate_batch_size, "generate_users": len(reference),
            "generate_seconds": round(ref_seconds, 4), "generate_users_per_s": round(ref_rate, 2),
            "speedup": round(rate / ref_rate, 1),
            "identical_lists": (ours_items == ref_items).all(dim=1).float().mean().item(),
            "same_item_sets": (ours_items.sort(dim=1).values == ref_items.sort(dim=1).values).all(dim=1).float().mean().item(),
            "max_abs_score_diff": (ours_scores - ref_scores).abs().max().item(),
            "index_build_s": round(build_seconds, 4),
        })
    return rows


def write_outputs(out: str, rows: list[dict], args: argparse.Namespace, command: str) -> None:
    record = {"machine": machine_name(), "date": datetime.now(timezone.utc).isoformat(timespec="seconds"),
              "command": command, "commit": args.commit or git_state()[0], "settings": vars(args), "rows": rows}
    write_json_atomic(f"{out}.json", record)
    with atomic_open(f"{out}.csv", "w", encoding="utf-8", newline="") as handle:
        writer = csv.DictWriter(handle, fieldnames=COLUMNS)
        writer.writeheader()
        writer.writerows(rows)


def print_table(rows: list[dict]) -> None:
    widths = [max(len(column), *(len(str(row[column])) for row in rows)) for column in COLUMNS]
    for line in [COLUMNS, *[[str(row[column]) for column in COLUMNS] for row in rows]]:
        print("  ".join(cell.rjust(width) for cell, width in zip(line, widths)))


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--device", default="cuda" if torch.cuda.is_available() else "cpu")
    parser.add_argument("--users", type=int, default=4096, help="users decoded by our search, per table")
    parser.add_argument("--batch-size", type=int, nargs="+", default=[256],
                        help="users per batch of our search; several: one row each")
    parser.add_argument("--generate-users", type=int, default=128, help="users decoded by generate (also compared)")
    parser.add_argument("--generate-batch-size", type=int, default=32)
    parser.add_argument("--beam", type=int, default=20)
    parser.add_argument("--million-items", type=int, default=1_000_000, help="size of the random table (b)")
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--data_path", help="folder of the processed datasets (default: $QREC_DATA_DIR)")
    parser.add_argument("--commit", help="this checkout's commit, where git cannot tell (a copied tree)")
    parser.add_argument("--out", default=str(REPO_ROOT / "docs" / "results" / "beam_search"), help="output path without extension")
    args = parser.parse_args()
    command = "python " + " ".join(shlex.quote(a) for a in sys.argv)
    tables = [instruments_codes(args.seed, args.data_path), ("random 4x256", random_unique_codes(args.million_items, 4, args.seed))]
    rows = [row for name, codes in tables for row in bench_table(name, codes, args)]
    print_table(rows)
    write_outputs(args.out, rows, args, command)
    print(f"wrote {args.out}.json and {args.out}.csv")


if __name__ == "__main__":
    main()
