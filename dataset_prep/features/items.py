"""Item inputs: ``<name>.item.json`` (ids, text template) and the per-item image files.

Text template (fields that are empty are left out, with their label; brand and image URL are not used)::

    Title: <title>
    Description: <description>
    Categories: <category 1>, <category 2>, ...
"""

from __future__ import annotations

import json
import os
from pathlib import Path
from typing import Any, Iterable

from recbole_qrec.data.features import format_ids
from recbole_qrec.errors import DatasetNotFoundError, MalformedDataError

ITEM_JSON_SOURCE = (
    "it is written by `python -m dataset_prep.amazon18 --domain <Amazon_2018_category> --name <name> "
    "--raw-dir raw --out data --download` as data/<name>/<name>.item.json "
    "(the processed LC-Rec/MQL4GRec downloads do not include it)"
)
IMAGE_DIR_SOURCE = (
    "item images are fetched by `python -m dataset_prep.amazon18 ... --download-images [--image-dir DIR]` "
    "(default folder data/<name>/images)"
)
IMAGE_SUFFIXES = (".jpg", ".png", ".jpeg")


def contiguous_item_count(ids: Iterable[str], source: Path) -> int:
    """Number of items when ``ids`` are exactly ``"0"`` .. ``"n-1"``; otherwise a clear error."""
    ids = list(ids)
    if not ids:
        raise MalformedDataError(f"{source} has no items — it needs one record per item id 0..n-1")
    expected = {str(item) for item in range(len(ids))}
    if set(ids) != expected:
        missing = sorted(expected - set(ids), key=int)
        unexpected = sorted(set(ids) - expected)
        raise MalformedDataError(
            f"{source}: item ids are not the integers 0..{len(ids) - 1} (missing: {format_ids(missing) or 'none'}; "
            f"unexpected: {format_ids(unexpected) or 'none'}) — number the items 0..n-1 (feature row = item id)"
        )
    return len(ids)


def read_item_json(path: str | os.PathLike) -> list[dict[str, Any]]:
    """The records of ``<name>.item.json`` in item-id order (ids checked to be ``0..n-1``)."""
    path = Path(path)
    if not path.is_file():
        raise DatasetNotFoundError(f"item file {path} not found — {ITEM_JSON_SOURCE}")
    try:
        items = json.loads(path.read_text(encoding="utf-8"))
    except ValueError as err:
        raise MalformedDataError(f"{path} is not valid JSON ({err}) — re-create it with dataset_prep.amazon18") from err
    if not isinstance(items, dict) or not all(isinstance(record, dict) for record in items.values()):
        raise MalformedDataError(f"{path} is not a JSON object of item records — write it as "
                                 "{\"<item_int>\": {\"title\": ..., ...}}")
    n_items = contiguous_item_count(items, path)
    return [items[str(item)] for item in range(n_items)]


TEXT_FIELDS = ("title", "description", "categories")


def is_text_value(value: Any) -> bool:
    """A text field's value as amazon18 writes it: null, a string, or a list of such values."""
    return value is None or isinstance(value, str) or (isinstance(value, list) and all(map(is_text_value, value)))


def item_texts(items: list[dict[str, Any]], source: str | os.PathLike) -> list[str]:
    """The encoder input of each item (:func:`item_text`); a text field that is not text, or items that have no
    text at all, are a :class:`MalformedDataError`."""
    for item, record in enumerate(items):
        for name in TEXT_FIELDS:
            if not is_text_value(record.get(name)):
                raise MalformedDataError(
                    f"{source}: item {item} has {name} {record[name]!r} ({type(record[name]).__name__}), not text — "
                    f"write {name} as a string (or a list of strings), or null; re-create the file with dataset_prep.amazon18"
                )
    texts = [item_text(record) for record in items]
    if not any(texts):
        raise MalformedDataError(f"{source}: none of the {len(items):,} items has a title, description or categories, "
                                 "so every text feature row would be zero — give the item file with the texts "
                                 "(dataset_prep.amazon18 writes them)")
    return texts


def field_text(value: Any, separator: str) -> str:
    """A text field as one stripped string (lists are joined with ``separator``)."""
    if isinstance(value, list):
        return separator.join(text for text in (field_text(part, " ") for part in value) if text)
    return value.strip() if isinstance(value, str) else ""


def item_text(record: dict[str, Any]) -> str:
    """The encoder input of one item (see the module docstring); "" when every field is empty."""
    parts = (
        ("Title", field_text(record.get("title"), " ")),
        ("Description", field_text(record.get("description"), " ")),
        ("Categories", field_text(record.get("categories"), ", ")),
    )
    return "\n".join(f"{label}: {text}" for label, text in parts if text)


def check_image_dir(image_dir: str | os.PathLike) -> Path:
    """``image_dir`` as a path, or a clear error when the folder does not exist."""
    image_dir = Path(image_dir)
    if not image_dir.is_dir():
        raise DatasetNotFoundError(f"image folder {image_dir} not found — {IMAGE_DIR_SOURCE}")
    return image_dir


def find_images(image_dir: Path, n_items: int) -> list[Path | None]:
    """The image file of each item ``0..n_items-1`` in ``image_dir``: ``<item>.jpg`` (then ``.png``, ``.jpeg``), the
    suffix in any case (``0.JPG``); None for an item without one."""
    images: dict[str, Path] = {}
    rank = {suffix: position for position, suffix in enumerate(IMAGE_SUFFIXES)}
    candidates = (path for path in image_dir.iterdir() if path.suffix.lower() in rank and path.is_file())
    for path in sorted(candidates, key=lambda path: (rank[path.suffix.lower()], path.name)):
        images.setdefault(path.stem, path)
    return [images.get(str(item)) for item in range(n_items)]
