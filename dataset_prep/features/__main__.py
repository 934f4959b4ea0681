"""Command line of :mod:`dataset_prep.features`.

python -m dataset_prep.features text  --item-json X.item.json --out text.npy [--model NAME_OR_DIR]
    [--pooling mean|cls|pooler] [--max-length 256] [--batch-size 64] [--dtype fp16|bf16|fp32] [--device cuda]
python -m dataset_prep.features image --item-json X.item.json --image-dir DIR --out image.npy
    [--model ViT-L-14] [--pretrained TAG_OR_CHECKPOINT] [--batch-size 64] [--dtype ...] [--device ...]
python -m dataset_prep.features codes --index X.index_lemb.json --n-items N --out text.npy
    [--project-dim D] [--seed 0] [--codebook-size 256]

All: [--overwrite] [--chunk-size 1024] [--max-chunks K] [--no-progress]. Rerunning an interrupted
(or ``--max-chunks``-limited) command continues it.
"""

from __future__ import annotations

import argparse
from pathlib import Path
from typing import Sequence

from dataset_prep.features.codes import DEFAULT_CODEBOOK_SIZE, extract_code_features
from dataset_prep.features.encoding import DTYPES
from dataset_prep.features.image import DEFAULT_IMAGE_MODEL, DEFAULT_PRETRAINED, ImageOptions, extract_image_features
from dataset_prep.features.store import DEFAULT_CHUNK_SIZE
from dataset_prep.features.text import DEFAULT_TEXT_MODEL, POOLINGS, TextOptions, extract_text_features
from recbole_qrec.data.features import DEFAULT_LEVEL_DECAY, FeaturePaths, FeatureProgress, format_ids
from recbole_qrec.errors import DEBUG_EPILOG, user_errors


def positive_int(value: str) -> int:
    number = int(value)
    if number < 1:
        raise argparse.ArgumentTypeError(f"must be a positive integer, got {value}")
    return number


def unit_interval(value: str) -> float:
    number = float(value)
    if not 0 < number <= 1:
        raise argparse.ArgumentTypeError(f"must be a number in (0, 1], got {value}")
    return number


def add_output_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--out", type=Path, required=True, help="feature .npy (mask and progress files go beside it)")
    parser.add_argument("--overwrite", action="store_true", help="discard an existing or unfinished output")
    parser.add_argument("--chunk-size", type=positive_int, default=DEFAULT_CHUNK_SIZE, help="items per saved chunk")
    parser.add_argument("--max-chunks", type=positive_int, help="stop after this many chunks (rerun to continue)")
    parser.add_argument("--no-progress", dest="progress", action="store_false", help="no progress bar")


def add_model_arguments(parser: argparse.ArgumentParser, default_model: str) -> None:
    parser.add_argument("--item-json", type=Path, required=True, help="<name>.item.json of dataset_prep.amazon18")
    parser.add_argument("--model", default=default_model, help=f"default {default_model}")
    parser.add_argument("--batch-size", type=positive_int, default=64)
    parser.add_argument("--dtype", choices=sorted(DTYPES), default="fp16", help="autocast precision on CUDA")
    parser.add_argument("--device", help="cuda / cpu (default: cuda when available)")


def parse_args(argv: Sequence[str] | None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(
        prog="python -m dataset_prep.features",
        description="Write item content features as a .npy matrix (row i = item id i, float32) with a mask "
        "(<out>.mask.npy) and a progress record (<out>.progress.json); an interrupted run continues where it stopped.",
        epilog=f"Run 'python -m dataset_prep.features COMMAND --help' for a command's options. {DEBUG_EPILOG}",
    )
    commands = parser.add_subparsers(dest="command", required=True, metavar="COMMAND")
    text = commands.add_parser("text", help="item texts -> transformers encoder", epilog=DEBUG_EPILOG,
                               description="Encode each item's text (title, description, categories from "
                               "<name>.item.json) with a transformers encoder, pooled to one vector per item.")
    add_model_arguments(text, DEFAULT_TEXT_MODEL)
    text.add_argument("--pooling", choices=POOLINGS, default="mean")
    text.add_argument("--max-length", type=positive_int, default=256, help="tokens per text")
    image = commands.add_parser("image", help="item images -> open_clip image tower", epilog=DEBUG_EPILOG,
                                description="Encode each item's image (<image-dir>/<item id>.jpg|.png|.jpeg) with an "
                                "open_clip image tower; items without an image get a zero row.")
    add_model_arguments(image, DEFAULT_IMAGE_MODEL)
    image.add_argument("--image-dir", type=Path, required=True,
                       help="holds <item_int>.jpg|.png|.jpeg (suffix in any case)")
    image.add_argument("--pretrained", default=DEFAULT_PRETRAINED, help="open_clip tag or checkpoint file")
    codes = commands.add_parser("codes", help="semantic-code file -> one-hot proxy features", epilog=DEBUG_EPILOG,
                                description="One-hot of each item's 4-level semantic codes from a <name>.index*.json "
                                "file, level l weighted by level-decay**l (optionally randomly projected): a proxy for "
                                "the embeddings the codes were made from.")
    codes.add_argument("--index", type=Path, required=True, help="<name>.index_lemb.json / .index_vitemb.json")
    codes.add_argument("--n-items", type=positive_int, required=True, help="items of the dataset (rows)")
    codes.add_argument("--project-dim", type=positive_int, help="random-project the one-hot to this many dims")
    codes.add_argument("--seed", type=int, default=0, help="seed of the projection")
    codes.add_argument("--codebook-size", type=positive_int, default=DEFAULT_CODEBOOK_SIZE)
    codes.add_argument("--level-decay", type=unit_interval, default=DEFAULT_LEVEL_DECAY,
                       help="weight ratio of consecutive code levels, in (0, 1]; 1: every level alike")
    for command in (text, image, codes):
        add_output_arguments(command)
    return parser.parse_args(argv)


def run(args: argparse.Namespace) -> FeatureProgress:
    """Dispatch to the extractor of ``args.command``."""
    common = {"chunk_size": args.chunk_size, "overwrite": args.overwrite, "max_chunks": args.max_chunks,
              "progress": args.progress}
    if args.command == "text":
        options = TextOptions(model=args.model, pooling=args.pooling, max_length=args.max_length,
                              batch_size=args.batch_size, dtype=args.dtype, device=args.device)
        return extract_text_features(args.item_json, args.out, options, **common)
    if args.command == "image":
        options = ImageOptions(model=args.model, pretrained=args.pretrained, batch_size=args.batch_size,
                               dtype=args.dtype, device=args.device)
        return extract_image_features(args.item_json, args.image_dir, args.out, options, **common)
    return extract_code_features(args.index, args.n_items, args.out, codebook_size=args.codebook_size,
                                 project_dim=args.project_dim, seed=args.seed, level_decay=args.level_decay, **common)


def format_result(out: Path, result: FeatureProgress) -> str:
    """One summary line (plus the unreadable inputs, if any)."""
    paths = FeaturePaths.of(out)
    if not result.complete:
        return (f"stopped at {result.rows_done:,} of {result.n_items:,} rows ({paths.progress}); "
                "rerun the same command to continue.")
    lines = [f"wrote {out}: {result.n_items:,} x {result.dim} float32; {result.present:,} items with features, "
             f"{result.n_items - result.present:,} without (zero rows, False in {paths.mask})"]
    if result.unreadable:
        lines.append(f"{len(result.unreadable):,} of them had an unreadable input file: items {format_ids(result.unreadable)}")
    return "\n".join(lines)


def main(argv: Sequence[str] | None = None) -> None:
    args = parse_args(argv)
    with user_errors():
        result = run(args)
    print(format_result(args.out, result))


if __name__ == "__main__":
    main()
