"""Build a processed dataset from the raw Amazon Review Data 2018 files (McAuley lab).

Input (``--raw-dir``): ``<Domain>.json.gz`` (all reviews; ``<Domain>_5.json.gz`` with
``--five-core-file``) and ``meta_<Domain>.json.gz``, gzip JSON lines. Meta lines that are Python
dict literals instead of JSON are read with ``ast.literal_eval``; lines that are neither are
counted, reported and skipped.

Pipeline: read reviews -> drop duplicate (user, item) pairs, keeping the earliest (ties: the first
line) -> with ``--require-title`` (default) keep only items whose meta has a non-empty title ->
iterative k-core (users and items both >= k, repeated until nothing changes) -> per-user
sequences ordered by time (ties keep file order) -> contiguous integer ids.

Id rule: users are numbered in order of their first interaction (time, then file line); items are
numbered in order of first appearance when walking those users' sequences in that user order.

Output (``<out>/<name>/``), every file written atomically:

* ``<name>.inter.json`` -- ``{"<user_int>": [item_int, ...]}`` in time order
* ``<name>.item2id``, ``<name>.user2id`` -- ``original_id<TAB>int_id`` lines
* ``<name>.item.json`` -- ``{"<item_int>": {"title", "description", "categories", "brand", "image_url"}}``

Usage: ``python -m dataset_prep.amazon18 --domain Musical_Instruments --name Instruments --raw-dir raw
--out data [--five-core-file] [--k 5] [--download] [--download-images [--image-dir DIR]]``
"""

from __future__ import annotations

import argparse
import ast
import gzip
import html
import http.client
import json
import re
import shutil
import urllib.request
import zlib
from collections import Counter, defaultdict
from collections.abc import Iterable, Iterator, Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, NamedTuple

from tqdm import tqdm

from dataset_prep.convert import check_out_folder
from dataset_prep.locate import AMAZON18_DOMAINS
from dataset_prep.stats import format_stats, sequence_stats
from recbole_qrec.errors import DEBUG_EPILOG, DatasetNotFoundError, MalformedDataError, QRecError, user_errors
from recbole_qrec.fileio import atomic_open, atomic_path, write_json_atomic

BASE_URL = "https://datarepo.eng.ucsd.edu/mcauley_group/data/amazon_v2/"
CHUNK_BYTES = 1 << 20
TIMEOUT_S = 60
HTML_TAG = re.compile(r"<[^>]*>")
WHITESPACE = re.compile(r"\s+")


class Interaction(NamedTuple):
    """One review: who, what, when, and its line number in the reviews file (the tie-breaker)."""

    user: str
    item: str
    time: int
    line: int


@dataclass
class BuildReport:
    """What :func:`build_dataset` did, for printing."""

    stats: dict[str, float]
    image_urls: dict[int, str | None]
    reviews_read: int = 0
    bad_review_lines: int = 0
    bad_meta_lines: int = 0
    duplicates_dropped: int = 0
    dropped_without_title: int = 0
    dropped_by_k_core: int = 0


@dataclass
class ImageReport:
    """Outcome counts of :func:`download_images`; ``failures`` keeps ``(item, reason)`` pairs."""

    downloaded: int = 0
    present: int = 0
    no_url: int = 0
    failures: list[tuple[int, str]] = field(default_factory=list)


# --------------------------------------------------------------------------- raw files and download


def review_file_name(domain: str, five_core: bool) -> str:
    """``<Domain>_5.json.gz`` (5-core) or ``<Domain>.json.gz`` (all reviews)."""
    return f"{domain}_5.json.gz" if five_core else f"{domain}.json.gz"


def meta_file_name(domain: str) -> str:
    """``meta_<Domain>.json.gz``."""
    return f"meta_{domain}.json.gz"


def raw_file_urls(domain: str, five_core: bool, base_url: str = BASE_URL) -> dict[str, str]:
    """File name -> download URL of the reviews and meta files of ``domain``."""
    base = base_url.rstrip("/")
    reviews_folder = "categoryFilesSmall" if five_core else "categoryFiles"
    reviews, meta = review_file_name(domain, five_core), meta_file_name(domain)
    return {reviews: f"{base}/{reviews_folder}/{reviews}", meta: f"{base}/metaFiles2/{meta}"}


def fetch(url: str, dest: Path, progress: bool = True) -> None:
    """Download ``url`` to ``dest`` through a temporary file renamed on success."""
    with urllib.request.urlopen(url, timeout=TIMEOUT_S) as response, atomic_path(dest) as tmp:
        size = response.headers.get("Content-Length")
        with open(tmp, "wb") as handle, tqdm(
            total=int(size) if size else None, unit="B", unit_scale=True, desc=dest.name, disable=not progress
        ) as bar:
            while chunk := response.read(CHUNK_BYTES):
                handle.write(chunk)
                bar.update(len(chunk))


def ensure_raw_files(urls: Mapping[str, str], raw_dir: Path, download: bool) -> list[Path]:
    """Paths of the raw files in ``raw_dir``, fetching missing ones when ``download`` is set.

    Files already present are never fetched again. Without ``download``, a missing file raises
    :class:`DatasetNotFoundError` naming every missing file and where to get it.
    """
    missing = {name: url for name, url in urls.items() if not (raw_dir / name).is_file()}
    if missing and not download:
        files = "; ".join(f"{raw_dir / name} (from {url})" for name, url in missing.items())
        raise DatasetNotFoundError(f"missing raw Amazon 2018 file(s): {files} — pass --download to fetch them")
    for name, url in missing.items():
        try:
            fetch(url, raw_dir / name)
        except (OSError, ValueError, http.client.HTTPException) as err:
            raise QRecError(f"Could not download {url} to {raw_dir / name} ({err}) — check the address (--base-url) "
                            "and the connection, or put the file there yourself") from err
    return [raw_dir / name for name in urls]


# --------------------------------------------------------------------------- parsing


def parse_record(line: str) -> dict[str, Any] | None:
    """A JSON line, or a Python dict literal line as in some 2018 meta files; None when neither."""
    try:
        record = json.loads(line)
    except json.JSONDecodeError:
        try:
            record = ast.literal_eval(line.strip())
        except (ValueError, TypeError, SyntaxError, MemoryError, RecursionError):
            return None
    return record if isinstance(record, dict) else None


def iter_records(path: Path) -> Iterator[dict[str, Any] | None]:
    """Parsed records of a gzip JSON-lines file (None for an unparseable line); blank lines and a byte-order mark
    skipped."""
    try:
        with gzip.open(path, "rt", encoding="utf-8-sig") as handle:
            for line in handle:
                if line.strip():
                    yield parse_record(line)
    except gzip.BadGzipFile as err:
        raise MalformedDataError(
            f"{path} is not gzip-compressed ({err}) — if it holds the JSON lines as plain text, rename it to "
            f"{path.with_suffix('').name} and run `gzip {path.with_suffix('')}`; otherwise delete it and re-run "
            "with --download"
        ) from err
    except (OSError, EOFError, zlib.error, UnicodeDecodeError) as err:
        raise MalformedDataError(
            f"{path} is not a readable gzip JSON-lines file ({err}) — delete it and re-run with --download"
        ) from err


def review_fields(record: dict[str, Any] | None) -> tuple[str, str, int] | None:
    """``reviewerID``, ``asin`` and ``unixReviewTime`` of a review; None unless the ids are non-empty strings and
    the time an integer (its digits, or a whole float): a null id or a list asin must not become an id ("None")."""
    user, item, time = (record.get(key) for key in ("reviewerID", "asin", "unixReviewTime")) if record else (None,) * 3
    if isinstance(time, str) and time.isdigit() or isinstance(time, float) and time.is_integer():
        time = int(time)
    ids_ok = isinstance(user, str) and isinstance(item, str) and bool(user.strip()) and bool(item.strip())
    return (user, item, time) if ids_ok and isinstance(time, int) and not isinstance(time, bool) else None


def read_reviews(path: Path) -> tuple[list[Interaction], int]:
    """All reviews in file order, and the number of lines without a user, item and integer time."""
    reviews: list[Interaction] = []
    bad = 0
    for line, record in enumerate(iter_records(path)):
        fields = review_fields(record)
        if fields is None:
            bad += 1
            continue
        reviews.append(Interaction(*fields, line))
    return reviews, bad


def read_meta(path: Path, asins: set[str]) -> tuple[dict[str, dict[str, Any]], int]:
    """Item records of ``asins`` (first line wins for a repeated asin), and the number of bad lines."""
    meta: dict[str, dict[str, Any]] = {}
    bad = 0
    for record in iter_records(path):
        if record is None or "asin" not in record:
            bad += 1
            continue
        asin = str(record["asin"])
        if asin in asins and asin not in meta:
            meta[asin] = item_record(record)
    return meta, bad


def clean_text(value: Any) -> str:
    """Text with HTML tags removed, entities decoded and whitespace collapsed; lists are joined and a number is read
    as its text (a title of ``123`` is "123")."""
    if isinstance(value, (list, tuple)):
        value = " ".join(str(part) for part in value)
    if isinstance(value, (int, float)) and not isinstance(value, bool):
        value = str(value)
    if not isinstance(value, str):
        return ""
    return WHITESPACE.sub(" ", html.unescape(HTML_TAG.sub(" ", value))).strip()


def first_url(*candidates: Any) -> str | None:
    """The first non-empty URL among the candidates (each a URL or a list of URLs)."""
    for candidate in candidates:
        urls = candidate if isinstance(candidate, list) else [candidate]
        for url in urls:
            if isinstance(url, str) and url.strip():
                return url.strip()
    return None


def item_record(meta: Mapping[str, Any]) -> dict[str, Any]:
    """The ``item.json`` entry of one meta record: high-resolution image URL preferred."""
    categories = meta.get("category") or []
    return {
        "title": clean_text(meta.get("title")),
        "description": clean_text(meta.get("description")),
        "categories": [text for text in map(clean_text, categories if isinstance(categories, list) else []) if text],
        "brand": clean_text(meta.get("brand")),
        "image_url": first_url(meta.get("imageURLHighRes"), meta.get("imageURL")),
    }


EMPTY_ITEM = item_record({})


# --------------------------------------------------------------------------- filtering and ids


def drop_duplicates(reviews: Iterable[Interaction]) -> list[Interaction]:
    """One interaction per (user, item): the earliest (ties: the first line); file order kept."""
    kept: dict[tuple[str, str], Interaction] = {}
    for review in reviews:
        key = (review.user, review.item)
        if key not in kept or review.time < kept[key].time:
            kept[key] = review
    return sorted(kept.values(), key=lambda review: review.line)


def k_core(interactions: list[Interaction], k: int) -> list[Interaction]:
    """Repeatedly drop interactions of users or items with fewer than ``k`` until none is dropped."""
    while True:
        users = Counter(x.user for x in interactions)
        items = Counter(x.item for x in interactions)
        kept = [x for x in interactions if users[x.user] >= k and items[x.item] >= k]
        if len(kept) == len(interactions):
            return kept
        interactions = kept


def user_sequences(interactions: Iterable[Interaction]) -> dict[str, list[Interaction]]:
    """User -> interactions sorted by (time, line), users ordered by their first interaction."""
    grouped: dict[str, list[Interaction]] = defaultdict(list)
    for interaction in interactions:
        grouped[interaction.user].append(interaction)
    sequences = {user: sorted(seq, key=lambda x: (x.time, x.line)) for user, seq in grouped.items()}
    return dict(sorted(sequences.items(), key=lambda pair: (pair[1][0].time, pair[1][0].line)))


def assign_ids(sequences: Mapping[str, list[Interaction]]) -> tuple[dict[str, int], dict[str, int]]:
    """User and item ids: users in the given order, items in order of first appearance across them."""
    user_ids = {user: index for index, user in enumerate(sequences)}
    item_ids: dict[str, int] = {}
    for seq in sequences.values():
        for interaction in seq:
            item_ids.setdefault(interaction.item, len(item_ids))
    return user_ids, item_ids


# --------------------------------------------------------------------------- output


def write_id_map(ids: Mapping[str, int], path: Path) -> None:
    """``original_id<TAB>int_id`` lines in id order."""
    with atomic_open(path, "w", encoding="utf-8") as handle:
        handle.writelines(f"{original}\t{index}\n" for original, index in sorted(ids.items(), key=lambda p: p[1]))


def build_dataset(
    reviews_path: Path, meta_path: Path, out: Path, name: str, k: int = 5, require_title: bool = True
) -> BuildReport:
    """Run the pipeline on one domain's raw files and write ``<out>/<name>/``."""
    reviews, bad_reviews = read_reviews(reviews_path)
    if not reviews:
        raise MalformedDataError(
            f"{reviews_path} holds no review: none of its {bad_reviews} line(s) has reviewerID, asin and an integer "
            "unixReviewTime — it is not an Amazon 2018 review file (the meta file in its place?): delete it and re-run "
            "with --download"
        )
    unique = drop_duplicates(reviews)
    asins = {x.item for x in unique}
    meta, bad_meta = read_meta(meta_path, asins)
    if require_title and not any(record["title"] for record in meta.values()):
        raise MalformedDataError(
            f"{meta_path} gives none of the {len(asins)} reviewed items a title ({len(meta)} have a record there) — it "
            "is not the meta file of these reviews (another category's, or a review file in its place?): delete it "
            "and re-run with --download, or pass --no-require-title"
        )
    titled = [x for x in unique if meta.get(x.item, EMPTY_ITEM)["title"]] if require_title else unique
    kept = k_core(titled, k)
    if not kept:
        raise MalformedDataError(
            f"No interactions left in {reviews_path} after the {k}-core filter"
            f"{' and dropping items without a title' if require_title else ''} — lower --k or pass --no-require-title"
        )
    sequences = user_sequences(kept)
    user_ids, item_ids = assign_ids(sequences)
    int_sequences = {str(user_ids[user]): [item_ids[x.item] for x in seq] for user, seq in sequences.items()}
    items = {item_ids[asin]: meta.get(asin, EMPTY_ITEM) for asin in item_ids}

    target = out / name
    write_json_atomic(target / f"{name}.inter.json", int_sequences)
    write_id_map(item_ids, target / f"{name}.item2id")
    write_id_map(user_ids, target / f"{name}.user2id")
    write_json_atomic(target / f"{name}.item.json", {str(index): record for index, record in items.items()})
    return BuildReport(
        stats=sequence_stats(int_sequences),
        image_urls={index: record["image_url"] for index, record in items.items()},
        reviews_read=len(reviews),
        bad_review_lines=bad_reviews,
        bad_meta_lines=bad_meta,
        duplicates_dropped=len(reviews) - len(unique),
        dropped_without_title=len(unique) - len(titled),
        dropped_by_k_core=len(titled) - len(kept),
    )


def download_images(image_urls: Mapping[int, str | None], image_dir: Path, progress: bool = True) -> ImageReport:
    """Fetch each item's image to ``<image_dir>/<item>.jpg``; existing files are kept, failures counted."""
    report = ImageReport()
    for item, url in tqdm(image_urls.items(), desc="images", unit="img", disable=not progress):
        dest = image_dir / f"{item}.jpg"
        if dest.is_file():
            report.present += 1
        elif url is None:
            report.no_url += 1
        else:
            try:
                with urllib.request.urlopen(url, timeout=TIMEOUT_S) as response, atomic_open(dest, "wb") as handle:
                    shutil.copyfileobj(response, handle, CHUNK_BYTES)
                report.downloaded += 1
            except (OSError, ValueError, http.client.HTTPException) as err:
                report.failures.append((item, f"{url}: {err}"))
    return report


# --------------------------------------------------------------------------- command line


def format_report(report: BuildReport, reviews_path: Path, meta_path: Path, k: int) -> str:
    """Filtering summary lines."""
    lines = [
        f"read {report.reviews_read:,} reviews from {reviews_path}",
        (
            f"dropped {report.duplicates_dropped:,} duplicate (user, item) reviews, "
            f"{report.dropped_without_title:,} interactions with items without a title, "
            f"{report.dropped_by_k_core:,} by the {k}-core filter"
        ),
    ]
    for count, path in ((report.bad_review_lines, reviews_path), (report.bad_meta_lines, meta_path)):
        if count:
            lines.append(f"skipped {count:,} unparseable line(s) in {path}")
    return "\n".join(lines)


def format_image_report(report: ImageReport, image_dir: Path) -> str:
    """Image download summary, with the first few failures."""
    text = (
        f"images in {image_dir}: {report.downloaded:,} downloaded, {report.present:,} already present, "
        f"{report.no_url:,} without URL, {len(report.failures):,} failed"
    )
    return "\n".join([text, *(f"  item {item}: {reason}" for item, reason in report.failures[:10])])


def parse_args(argv: list[str] | None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(
        prog="python -m dataset_prep.amazon18",
        description="Build a processed dataset (<name>.inter.json, item2id, user2id, item.json) from the raw Amazon "
        "Review Data 2018 files of one category: earliest review per user and item, items with a title, iterative "
        "k-core, per-user sequences in time order, contiguous integer ids.",
        epilog=f"Then: python -m dataset_prep.convert --dataset NAME --src OUT. {DEBUG_EPILOG}",
    )
    parser.add_argument("--domain", required=True, help="Amazon 2018 category file name, e.g. Musical_Instruments")
    parser.add_argument("--name", help="output dataset name (default: Instruments/Arts/Games or the domain)")
    parser.add_argument("--raw-dir", type=Path, default=Path("raw"), help="raw .json.gz folder (default: raw)")
    parser.add_argument("--out", type=Path, default=Path("data"), help="writes <out>/<name>/ (default: data)")
    parser.add_argument("--five-core-file", action="store_true", help="read <Domain>_5.json.gz, not <Domain>.json.gz")
    parser.add_argument("--k", type=int, default=5, help="k of the iterative k-core filter (default 5)")
    parser.add_argument(
        "--require-title", action=argparse.BooleanOptionalAction, default=True,
        help="keep only items whose meta has a non-empty title (default on)",
    )
    parser.add_argument("--download", action="store_true", help="fetch missing raw files into --raw-dir")
    parser.add_argument("--base-url", default=BASE_URL, help="where --download fetches from")
    parser.add_argument("--download-images", action="store_true", help="fetch item images to --image-dir")
    parser.add_argument("--image-dir", type=Path, help="image folder (default: <out>/<name>/images)")
    args = parser.parse_args(argv)
    if args.k < 1:
        parser.error(f"--k must be at least 1, got {args.k}")
    if args.image_dir is not None and not args.download_images:
        parser.error("--image-dir needs --download-images")
    short_names = {domain: name for name, domain in AMAZON18_DOMAINS.items()}
    args.name = args.name or short_names.get(args.domain, args.domain)
    args.image_dir = args.image_dir or args.out / args.name / "images"
    return args


def main(argv: list[str] | None = None) -> None:
    args = parse_args(argv)
    urls = raw_file_urls(args.domain, args.five_core_file, args.base_url)
    with user_errors():
        check_out_folder(args.out / args.name)
        reviews_path, meta_path = ensure_raw_files(urls, args.raw_dir, args.download)
        report = build_dataset(reviews_path, meta_path, args.out, args.name, args.k, args.require_title)
        print(format_report(report, reviews_path, meta_path, args.k))
        if args.download_images:
            print(format_image_report(download_images(report.image_urls, args.image_dir), args.image_dir))
    print(format_stats(args.name, report.stats))
    print(f"wrote {args.out / args.name}")


if __name__ == "__main__":
    main()
