"""Convert a processed LC-Rec/MQL4GRec dataset into RecBole atomic files.

Input (``<src>/<name>/``): ``<name>.inter.json`` (``{"user": [item, ...]}`` in time order) and,
when present, semantic-code files ``<name>.index*.json`` (``{"item": ["<a_12>", ...]}``).

Output (``<out>/<name>/``):

* ``<name>.inter`` -- ``user_id:token item_id:token timestamp:float``; ``timestamp`` is the
  item's position in the user's sequence, so RecBole's time-ordered leave-one-out split
  (``eval_args: {split: {LS: valid_and_test}, order: TO}``) reproduces the papers' split:
  last item test, second to last validation, the rest training.
* ``<name>.item`` -- ``item_id:token`` plus one ``token_seq`` column per code file
  (``text_codes`` / ``image_codes``), tokens like ``a_12 b_7 c_201 d_3``;
* ``<name>.content.json`` -- beside it, where each field's codes came from (``text:llama``, ``image:vit``).

Usage: ``python -m dataset_prep.convert --dataset Instruments [--src DIR] [--out dataset]``. Runs read
these files from their ``data_path``; nothing converts a dataset automatically.
"""

from __future__ import annotations

import argparse
import json
import re
import string
from pathlib import Path
from typing import Any

from dataset_prep.locate import find_processed_dataset
from dataset_prep.stats import format_stats, sequence_stats
from recbole_qrec.data.features import record_content_sources
from recbole_qrec.errors import DEBUG_EPILOG, MalformedDataError, user_errors
from recbole_qrec.fileio import atomic_open, check_output_folder

# Code file suffix -> item feature field and the content its codes were made from (recorded in
# <name>.content.json). LLaMA text codes are lower-case levels, CLIP ViT-L/14 image codes upper-case.
CODE_FILES = {
    "index_lemb": ("text_codes", "text:llama"),
    "index": ("text_codes", "text:llama"),
    "index_vitemb": ("image_codes", "image:vit"),
}
CODE_TOKEN = re.compile(r"<([A-Za-z]_\d+)>")
MIN_SEQUENCE_LENGTH = 3  # one training target, one validation target, one test target


def load_sequences(folder: Path, name: str) -> dict[str, list[int]]:
    """Read and validate ``<name>.inter.json``: user -> time-ordered item ids."""
    path = folder / f"{name}.inter.json"
    try:
        raw = json.loads(path.read_text(encoding="utf-8"))
    except (json.JSONDecodeError, UnicodeDecodeError) as err:
        raise MalformedDataError(f"{path} is not valid JSON ({err}) — re-create it with dataset_prep.amazon18") from err
    if not isinstance(raw, dict) or not raw:
        raise MalformedDataError(f"{path} is not a non-empty JSON object — write it as {{\"user_id\": [item_id, ...]}}")
    for user, items in raw.items():
        if not isinstance(items, list) or not all(isinstance(i, int) and not isinstance(i, bool) and i >= 0 for i in items):
            raise MalformedDataError(f"{path}: user {user!r} maps to {items!r:.80} — each user needs a list of "
                                     "non-negative integer item ids in time order")
        if len(items) < MIN_SEQUENCE_LENGTH:
            raise MalformedDataError(
                f"{path}: user {user!r} has {len(items)} interactions; leave-one-out needs at least "
                f"{MIN_SEQUENCE_LENGTH} — filter the data (e.g. 5-core) before converting"
            )
    return raw


def code_token(token: Any, path: Path, item: str, level: int) -> str:
    """``"<a_12>"`` -> ``"a_12"``, checking its form and that its letter is its level's (a, b, c, ...)."""
    match = CODE_TOKEN.fullmatch(token) if isinstance(token, str) else None
    if match is None:
        raise MalformedDataError(f"{path}: item {item!r}, level {level}: token {token!r} is not of the form <a_12> — "
                                 "list each item's level tokens in order, e.g. [\"<a_12>\", \"<b_7>\"]")
    letter = match.group(1).split("_")[0].lower()
    if level >= len(string.ascii_lowercase) or letter != string.ascii_lowercase[level]:
        raise MalformedDataError(f"{path}: item {item!r}, level {level}: token {token!r} does not have its level's "
                                 "letter (levels go a, b, c, ...) — list each item's level tokens in order, e.g. "
                                 "[\"<a_12>\", \"<b_7>\"]")
    return match.group(1)


def load_code_files(folder: Path, name: str) -> dict[str, dict[str, list[str]]]:
    """Read every known ``<name>.index*.json`` as ``field -> {item: [token, ...]}``."""
    fields: dict[str, dict[str, list[str]]] = {}
    for suffix, (field, _) in CODE_FILES.items():
        path = folder / f"{name}.{suffix}.json"
        if not path.is_file() or field in fields:
            continue
        try:
            raw = json.loads(path.read_text(encoding="utf-8"))
        except (json.JSONDecodeError, UnicodeDecodeError) as err:
            raise MalformedDataError(f"{path} is not valid JSON ({err}) — re-create or re-download it") from err
        if not isinstance(raw, dict) or not all(isinstance(v, list) for v in raw.values()):
            raise MalformedDataError(f"{path} is not a JSON object of code lists — write it as "
                                     "{\"item_id\": [\"<a_1>\", ...]}")
        fields[field] = {item: [code_token(token, path, item, level) for level, token in enumerate(codes)]
                         for item, codes in raw.items()}
    return fields


def code_file_sources(folder: Path, name: str) -> dict[str, dict[str, str]]:
    """``field -> {"source", "file"}`` of the code files :func:`load_code_files` reads (the first per field)."""
    sources: dict[str, dict[str, str]] = {}
    for suffix, (field, source) in CODE_FILES.items():
        path = folder / f"{name}.{suffix}.json"
        if path.is_file() and field not in sources:
            sources[field] = {"source": source, "file": path.name}
    return sources


def check_code_coverage(codes: dict[str, dict[str, list[str]]], items: list[str], folder: Path, name: str) -> None:
    """Every item of the interactions has codes in each code file, all with the same number of levels (else the
    ``.item`` file would carry empty or ragged code fields, which the models refuse or read as missing content)."""
    files = code_file_sources(folder, name)
    for field, by_item in codes.items():
        path = folder / files[field]["file"]
        missing = [item for item in items if not by_item.get(item)]
        if missing:
            shown = ", ".join(missing[:5]) + (", ..." if len(missing) > 5 else "")
            raise MalformedDataError(f"{path}: {len(missing)} of the {len(items)} items of {name}.inter.json have no codes "
                                     f"(e.g. items {shown}) — the code file belongs to other items: use the one made for "
                                     "this dataset, or remove it to convert without this content")
        levels = sorted({len(by_item[item]) for item in items})
        if len(levels) > 1:
            short = next(item for item in items if len(by_item[item]) == levels[0])
            raise MalformedDataError(f"{path}: items have different numbers of code levels {levels} (e.g. item {short!r} "
                                     f"has {levels[0]}) — every item needs the same number of levels; re-create the file")


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


def check_out_folder(target: Path) -> None:
    """A clear error when the output folder ``<out>/<name>`` is, or lies under, a file."""
    check_output_folder(target, f"--out cannot hold {target}", "give --out a folder")


def convert(name: str, src: str | Path | None = None, out: str | Path = "dataset") -> dict[str, float]:
    """Convert dataset ``name`` and return its statistics."""
    check_out_folder(Path(out) / name)
    folder = find_processed_dataset(name, src)
    sequences = load_sequences(folder, name)
    codes = load_code_files(folder, name)
    target = Path(out) / name
    items = sorted({str(item) for seq in sequences.values() for item in seq}, key=int)
    check_code_coverage(codes, items, folder, name)
    if codes:
        write_item_file(codes, items, target / f"{name}.item")
        record_content_sources(target, name, code_file_sources(folder, name), replace=True)
    write_inter_file(sequences, target / f"{name}.inter")
    return sequence_stats(sequences)


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(
        prog="python -m dataset_prep.convert",
        description="Convert a processed dataset (<name>.inter.json and its <name>.index*.json code files, the "
        "LC-Rec/MQL4GRec format) into RecBole atomic files <out>/<name>/<name>.inter and <name>.item, and print "
        "its statistics.",
        epilog=DEBUG_EPILOG,
    )
    parser.add_argument("--dataset", required=True, help="dataset name, e.g. Instruments")
    parser.add_argument("--src", help="folder holding <dataset>/<dataset>.inter.json (default: $QREC_DATA_DIR)")
    parser.add_argument("--out", default="dataset", help="RecBole data_path to write <dataset>/ into (default: dataset)")
    args = parser.parse_args(argv)
    with user_errors():
        stats = convert(args.dataset, args.src, args.out)
    print(format_stats(args.dataset, stats))
    print(f"wrote {Path(args.out) / args.dataset}")


if __name__ == "__main__":
    main()
