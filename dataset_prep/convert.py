"""Convert a processed LC-Rec/MQL4GRec dataset into RecBole atomic files.

Input (``<src>/<name>/``): ``<name>.inter.json`` (``{"user": [item, ...]}`` in time order) and,
when present, semantic-code files ``<name>.index*.json`` (``{"item": ["<a_12>", ...]}``).

Output (``<out>/<name>/``):

* ``<name>.inter`` -- ``user_id:token item_id:token timestamp:float``; ``timestamp`` is the
  item's position in the user's sequence, so RecBole's time-ordered leave-one-out split
  (``eval_args: {split: {LS: valid_and_test}, order: TO}``) reproduces the papers' split:
  last item test, second to last validation, the rest training.
* ``<name>.item`` -- ``item_id:token`` plus one ``token_seq`` column per code file
  (``text_codes`` / ``image_codes``), tokens like ``a_12 b_7 c_201 d_3``.

Usage: ``python -m dataset_prep.convert --dataset Instruments [--src DIR] [--out dataset]``
"""

from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path

from dataset_prep.locate import find_processed_dataset
from dataset_prep.stats import format_stats, sequence_stats
from recbole_qrec.errors import MalformedDataError, QRecError
from recbole_qrec.fileio import atomic_open

# Code file suffix -> item feature field. LLaMA text codes are lower-case levels, CLIP image codes upper-case.
CODE_FILES = {
    "index_lemb": "text_codes",
    "index": "text_codes",
    "index_vitemb": "image_codes",
}
MIN_SEQUENCE_LENGTH = 3  # one training target, one validation target, one test target


def load_sequences(folder: Path, name: str) -> dict[str, list[int]]:
    """Read and validate ``<name>.inter.json``: user -> time-ordered item ids."""
    path = folder / f"{name}.inter.json"
    try:
        raw = json.loads(path.read_text(encoding="utf-8"))
    except json.JSONDecodeError as err:
        raise MalformedDataError(f"{path} is not valid JSON ({err}); re-create it with dataset_prep.amazon18.") from err
    if not isinstance(raw, dict) or not raw:
        raise MalformedDataError(f"{path} must be a non-empty JSON object {{user_id: [item_id, ...]}}.")
    for user, items in raw.items():
        if not isinstance(items, list) or not all(isinstance(i, int) and not isinstance(i, bool) for i in items):
            raise MalformedDataError(f"{path}: user {user!r} must map to a list of integer item ids, got {items!r:.80}.")
        if len(items) < MIN_SEQUENCE_LENGTH:
            raise MalformedDataError(
                f"{path}: user {user!r} has {len(items)} interactions; leave-one-out needs at least "
                f"{MIN_SEQUENCE_LENGTH}. Filter the data (e.g. 5-core) before converting."
            )
    return raw


def load_code_files(folder: Path, name: str) -> dict[str, dict[str, list[str]]]:
    """Read every known ``<name>.index*.json`` as ``field -> {item: [token, ...]}``."""
    fields: dict[str, dict[str, list[str]]] = {}
    for suffix, field in CODE_FILES.items():
        path = folder / f"{name}.{suffix}.json"
        if not path.is_file() or field in fields:
            continue
        raw = json.loads(path.read_text(encoding="utf-8"))
        if not isinstance(raw, dict) or not all(isinstance(v, list) for v in raw.values()):
            raise MalformedDataError(f"{path} must be a JSON object {{item_id: [\"<a_1>\", ...]}}.")
        fields[field] = {item: [token.strip("<>") for token in codes] for item, codes in raw.items()}
    return fields


def write_inter_file(sequences: dict[str, list[int]], path: Path) -> None:
    """Write the interactions with the sequence position as timestamp."""
    with atomic_open(path, "w", encoding="utf-8") as handle:
        handle.write("user_id:token\titem_id:token\ttimestamp:float\n")
        for user, items in sequences.items():
            handle.writelines(f"{user}\t{item}\t{position}\n" for position, item in enumerate(items))


def write_item_file(codes: dict[str, dict[str, list[str]]], items: list[str], path: Path) -> None:
    """Write one ``token_seq`` column per code field for every item."""
    fields = sorted(codes)
    with atomic_open(path, "w", encoding="utf-8") as handle:
        handle.write("\t".join(["item_id:token", *(f"{field}:token_seq" for field in fields)]) + "\n")
        for item in items:
            handle.write("\t".join([item, *(" ".join(codes[field].get(item, [])) for field in fields)]) + "\n")


def convert(name: str, src: str | Path | None = None, out: str | Path = "dataset") -> dict[str, float]:
    """Convert dataset ``name`` and return its statistics."""
    folder = find_processed_dataset(name, src)
    sequences = load_sequences(folder, name)
    codes = load_code_files(folder, name)
    target = Path(out) / name
    items = sorted({str(item) for seq in sequences.values() for item in seq}, key=int)
    if codes:
        write_item_file(codes, items, target / f"{name}.item")
    write_inter_file(sequences, target / f"{name}.inter")
    return sequence_stats(sequences)


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--dataset", required=True, help="dataset name, e.g. Instruments")
    parser.add_argument("--src", help="folder with <dataset>/<dataset>.inter.json (default: $QREC_DATA_DIR, then ../shared/data/amazon)")
    parser.add_argument("--out", default="dataset", help="RecBole data_path to write <dataset>/<dataset>.inter into")
    args = parser.parse_args(argv)
    try:
        stats = convert(args.dataset, args.src, args.out)
    except QRecError as err:
        sys.exit(f"error: {err}")
    print(format_stats(args.dataset, stats))
    print(f"wrote {Path(args.out) / args.dataset}")


if __name__ == "__main__":
    main()
