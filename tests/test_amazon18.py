"""dataset_prep.amazon18 on small hand-made Amazon 2018 files (gzip fixtures written per test)."""

from __future__ import annotations

import gzip
import json
from collections import Counter
from pathlib import Path

import pytest
from PIL import Image

from dataset_prep.amazon18 import download_images, ensure_raw_files, main, raw_file_urls
from dataset_prep.stats import sequence_stats

DOMAIN = "Musical_Instruments"
NAME = "Instruments"
K = 2

# (user, item, unixReviewTime), in file order. With k=2 and the title filter, by hand:
# * duplicates: (UA, I1) at 150 and later at 90 -> keep 90, so I1 opens UA's sequence;
#   (UB, I2) twice at 300 -> keep the first line.
# * I6 (meta with an empty title) and I7 (no meta) are dropped by --require-title.
# * k-core cascade: UD has 1 item -> I4 left with UC only -> UC left with I3 only -> I3 left with UB only.
# * tie: UA's I5 (line 1) and I2 (line 12) both at 100 -> file order, I5 first (not alphabetical).
REVIEWS = [
    ("UA", "I1", 150),
    ("UA", "I5", 100),
    ("UB", "I1", 50),
    ("UB", "I2", 300),
    ("UA", "I1", 90),
    ("UB", "I3", 200),
    ("UC", "I3", "60"),  # a time written as digits or as a whole float is read as that integer
    ("UC", "I4", 70.0),
    ("UD", "I4", 80),
    ("UE", "I5", 10),
    ("UE", "I1", 20),
    ("UE", "I6", 20),
    ("UA", "I2", 100),
    ("UB", "I2", 300),
    ("UB", "I7", 400),
]
# Incomplete, unparseable, or with an id or time of another type (a null user, a list asin, a boolean time).
BAD_REVIEW_LINES = ['{"reviewerID": "UA", "asin": "I1"}', "not a review",
                    '{"reviewerID": null, "asin": "I1", "unixReviewTime": 5}',
                    '{"reviewerID": "UB", "asin": ["I1"], "unixReviewTime": 5}',
                    '{"reviewerID": "UE", "asin": "I2", "unixReviewTime": true}']

# Survivors: UA I1(90) I5(100) I2(100); UB I1(50) I2(300); UE I5(10) I1(20).
# Users by first interaction time: UE (10), UB (50), UA (90). Items by first appearance: I5, I1, I2.
EXPECTED_USER2ID = {"UE": 0, "UB": 1, "UA": 2}
EXPECTED_ITEM2ID = {"I5": 0, "I1": 1, "I2": 2}
EXPECTED_SEQUENCES = {"0": [0, 1], "1": [1, 2], "2": [1, 0, 2]}
# time of each surviving (user, item), for the time-order check
TIMES = {("UA", "I1"): 90, ("UA", "I5"): 100, ("UA", "I2"): 100, ("UB", "I1"): 50, ("UB", "I2"): 300,
         ("UE", "I5"): 10, ("UE", "I1"): 20}


def image_url(images: Path, name: str) -> str:
    return (images / name).as_uri()


def meta_lines(images: Path) -> list[str]:
    """Meta of I1..I6 plus noise: a byte-order mark, a Python-literal line, an unparseable line, a repeated asin; the
    title of I5 is a number."""
    return [
        "\ufeff" + json.dumps({
            "asin": "I1", "title": "Guitar <b>Strings</b>", "brand": "Acme",
            "description": ["Bright &amp; loud.", "<p>Nickel</p>"],
            "category": ["Musical Instruments", "Strings"],
            "imageURL": [image_url(images, "small1.jpg")], "imageURLHighRes": [image_url(images, "big1.jpg")],
        }),
        (
            "{'asin': 'I2', 'title': 'Drum Sticks', 'description': 'Maple', 'category': ['Musical Instruments'], "
            f"'imageURL': ['{image_url(images, 'img2.jpg')}'], 'imageURLHighRes': []}}"
        ),
        "this line is neither JSON nor a Python literal",
        json.dumps({"asin": "I3", "title": "Capo"}),
        json.dumps({"asin": "I4", "title": "Strap"}),
        json.dumps({"asin": "I5", "title": 440, "category": ["Musical Instruments"]}),
        json.dumps({"asin": "I6", "title": "  <br> "}),
        json.dumps({"asin": "I1", "title": "A later duplicate that must be ignored"}),
        json.dumps({"asin": "I99", "title": "Never reviewed"}),
    ]


EXPECTED_ITEMS = {
    "0": {"title": "440", "description": "", "categories": ["Musical Instruments"], "brand": "", "image_url": None},
    "1": {"title": "Guitar Strings", "description": "Bright & loud. Nickel",
          "categories": ["Musical Instruments", "Strings"], "brand": "Acme", "image_url": "big1.jpg"},
    "2": {"title": "Drum Sticks", "description": "Maple", "categories": ["Musical Instruments"], "brand": "",
          "image_url": "img2.jpg"},
}


def write_gzip_lines(path: Path, lines: list[str]) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    with gzip.open(path, "wt", encoding="utf-8") as handle:
        handle.write("\n".join(lines) + "\n")


def review_lines() -> list[str]:
    rows = [json.dumps({"reviewerID": u, "asin": i, "unixReviewTime": t, "overall": 5.0}) for u, i, t in REVIEWS]
    return rows + BAD_REVIEW_LINES


@pytest.fixture
def images(tmp_path: Path) -> Path:
    folder = tmp_path / "images_src"
    folder.mkdir()
    Image.new("RGB", (4, 3), (200, 10, 10)).save(folder / "big1.jpg")
    return folder


@pytest.fixture
def raw(tmp_path: Path, images: Path) -> Path:
    folder = tmp_path / "raw"
    write_gzip_lines(folder / f"{DOMAIN}.json.gz", review_lines())
    write_gzip_lines(folder / f"meta_{DOMAIN}.json.gz", meta_lines(images))
    return folder


def run_cli(raw: Path, out: Path, *extra: str) -> None:
    main(["--domain", DOMAIN, "--name", NAME, "--raw-dir", str(raw), "--out", str(out), "--k", str(K), *extra])


def read_id_map(path: Path) -> dict[str, int]:
    return {original: int(index) for original, index in (line.split("\t") for line in path.read_text().splitlines())}


def temp_files(folder: Path) -> list[Path]:
    return [path for path in folder.rglob("*") if path.name.endswith(".tmp")]


def test_builds_expected_dataset(raw: Path, images: Path, tmp_path: Path, capsys: pytest.CaptureFixture) -> None:
    out = tmp_path / "out"
    run_cli(raw, out)
    folder = out / NAME
    sequences = json.loads((folder / f"{NAME}.inter.json").read_text())
    user2id = read_id_map(folder / f"{NAME}.user2id")
    item2id = read_id_map(folder / f"{NAME}.item2id")

    assert sequences == EXPECTED_SEQUENCES
    assert list(sequences) == ["0", "1", "2"]
    assert user2id == EXPECTED_USER2ID
    assert item2id == EXPECTED_ITEM2ID
    assert list(item2id.values()) == [0, 1, 2]  # written in id order

    items = json.loads((folder / f"{NAME}.item.json").read_text())
    for record in EXPECTED_ITEMS.values():
        if record["image_url"]:
            record["image_url"] = image_url(images, record["image_url"])
    assert items == EXPECTED_ITEMS
    assert temp_files(tmp_path) == []

    printed = capsys.readouterr().out
    assert f"{NAME}: users 3 | items 3 | interactions 7 | sparsity 22.2222% | avg length 2.33" in printed
    assert "dropped 2 duplicate (user, item) reviews, 2 interactions with items without a title, 4 by the 2-core" in (
        printed
    )
    assert "skipped 5 unparseable line(s)" in printed  # the five bad review lines
    assert "skipped 1 unparseable line(s)" in printed  # the one bad meta line


def test_output_is_k_core_and_time_ordered(raw: Path, tmp_path: Path) -> None:
    out = tmp_path / "out"
    run_cli(raw, out)
    folder = out / NAME
    sequences = json.loads((folder / f"{NAME}.inter.json").read_text())
    users = {index: user for user, index in read_id_map(folder / f"{NAME}.user2id").items()}
    items = {index: item for item, index in read_id_map(folder / f"{NAME}.item2id").items()}

    item_counts = Counter(item for seq in sequences.values() for item in seq)
    assert min(len(seq) for seq in sequences.values()) >= K
    assert min(item_counts.values()) >= K
    assert all(len(set(seq)) == len(seq) for seq in sequences.values())
    for user, seq in sequences.items():
        times = [TIMES[(users[int(user)], items[item])] for item in seq]
        assert times == sorted(times)


def test_sequence_stats() -> None:
    stats = sequence_stats(EXPECTED_SEQUENCES)
    assert stats == pytest.approx({"users": 3, "items": 3, "interactions": 7, "sparsity": 2 / 9, "avg_length": 7 / 3})


def test_without_title_filter_keeps_items_without_meta(raw: Path, tmp_path: Path) -> None:
    out = tmp_path / "out"
    run_cli(raw, out, "--no-require-title", "--k", "1")
    folder = out / NAME
    item2id = read_id_map(folder / f"{NAME}.item2id")
    items = json.loads((folder / f"{NAME}.item.json").read_text())
    assert set(item2id) == {"I1", "I2", "I3", "I4", "I5", "I6", "I7"}
    assert len(read_id_map(folder / f"{NAME}.user2id")) == 5
    empty = {"title": "", "description": "", "categories": [], "brand": "", "image_url": None}
    assert items[str(item2id["I7"])] == empty  # no meta line at all
    assert items[str(item2id["I6"])] == empty  # title is only markup


def cli_error(capsys: pytest.CaptureFixture[str], raw: Path, out: Path, *extra: str) -> str:
    """The one-line error of a failing run (exit status 2)."""
    with pytest.raises(SystemExit) as exc:
        run_cli(raw, out, *extra)
    err = capsys.readouterr().err
    assert exc.value.code == 2 and err.startswith("error: ") and err.count("\n") == 1
    return err


def test_missing_raw_file_names_it_and_download(tmp_path: Path, capsys) -> None:
    raw = tmp_path / "raw"
    write_gzip_lines(raw / f"{DOMAIN}.json.gz", review_lines())
    message = cli_error(capsys, raw, tmp_path / "out")
    assert str(raw / f"meta_{DOMAIN}.json.gz") in message
    assert str(raw / f"{DOMAIN}.json.gz") not in message  # the present reviews file is not reported
    assert "--download" in message
    assert "metaFiles2/meta_Musical_Instruments.json.gz" in message


@pytest.mark.parametrize(("broken", "fragment"), [
    ("not gzip", f"is not gzip-compressed (Not a gzipped file (b'{{\"')) — if it holds the JSON lines as plain text, "
                 f"rename it to {DOMAIN}.json and run `gzip "),
    ("truncated gzip", "is not a readable gzip JSON-lines file (Compressed file ended"),
])
def test_malformed_gzip_names_the_file(raw: Path, tmp_path: Path, broken: str, fragment: str, capsys) -> None:
    reviews = raw / f"{DOMAIN}.json.gz"
    data = reviews.read_bytes()
    reviews.write_bytes(b'{"reviewerID": "UA"}\n' if broken == "not gzip" else data[: len(data) // 2])
    out = tmp_path / "out"
    message = cli_error(capsys, raw, out)
    assert str(reviews) in message and fragment in message
    assert not out.exists()



@pytest.mark.parametrize(("swap", "fragment"), [
    ("reviews", "holds no review: none of its 9 line(s) has reviewerID, asin and an integer unixReviewTime — it is "
                "not an Amazon 2018 review file"),
    ("meta", "gives none of the 7 reviewed items a title (7 have a record there) — it is not the meta file of these "
             "reviews"),
])
def test_a_raw_file_in_the_others_place_is_named_not_blamed_on_the_k_core(raw: Path, tmp_path: Path, swap: str,
                                                                         fragment: str, capsys) -> None:
    reviews, meta = raw / f"{DOMAIN}.json.gz", raw / f"meta_{DOMAIN}.json.gz"
    source, target = (meta, reviews) if swap == "reviews" else (reviews, meta)
    target.write_bytes(source.read_bytes())
    out = tmp_path / "out"
    message = cli_error(capsys, raw, out)
    assert str(target) in message and fragment in message and "lower --k" not in message
    assert not out.exists()

def test_raw_file_urls() -> None:
    base = "https://datarepo.eng.ucsd.edu/mcauley_group/data/amazon_v2"
    assert raw_file_urls(DOMAIN, five_core=True) == {
        f"{DOMAIN}_5.json.gz": f"{base}/categoryFilesSmall/{DOMAIN}_5.json.gz",
        f"meta_{DOMAIN}.json.gz": f"{base}/metaFiles2/meta_{DOMAIN}.json.gz",
    }
    assert raw_file_urls(DOMAIN, five_core=False, base_url="file:///m/")[f"{DOMAIN}.json.gz"] == (
        f"file:///m/categoryFiles/{DOMAIN}.json.gz"
    )


def test_download_fetches_missing_files_only(raw: Path, tmp_path: Path) -> None:
    mirror = tmp_path / "mirror"
    (mirror / "categoryFilesSmall").mkdir(parents=True)
    five_core = mirror / "categoryFilesSmall" / f"{DOMAIN}_5.json.gz"
    five_core.write_bytes((raw / f"{DOMAIN}.json.gz").read_bytes())
    target = tmp_path / "target_raw"
    target.mkdir()
    present_meta = target / f"meta_{DOMAIN}.json.gz"
    # the mirror has no meta file: the present one must not be fetched again
    present_meta.write_bytes((raw / f"meta_{DOMAIN}.json.gz").read_bytes())

    out = tmp_path / "out"
    run_cli(target, out, "--five-core-file", "--download", "--base-url", mirror.as_uri())
    assert (target / f"{DOMAIN}_5.json.gz").read_bytes() == five_core.read_bytes()
    assert json.loads((out / NAME / f"{NAME}.inter.json").read_text()) == EXPECTED_SEQUENCES
    assert temp_files(tmp_path) == []

    urls = raw_file_urls(DOMAIN, five_core=True, base_url=mirror.as_uri())
    five_core.unlink()  # both files are present now: nothing is fetched
    assert ensure_raw_files(urls, target, download=True) == [target / f"{DOMAIN}_5.json.gz", present_meta]


def test_failed_download_is_clear_and_leaves_nothing(tmp_path: Path, capsys) -> None:
    raw = tmp_path / "raw"
    message = cli_error(capsys, raw, tmp_path / "out", "--download", "--base-url", (tmp_path / "empty_mirror").as_uri())
    assert "Could not download" in message
    assert not raw.exists() or list(raw.iterdir()) == []


def test_image_download_and_skip_if_present(raw: Path, images: Path, tmp_path: Path, capsys) -> None:
    out, image_dir = tmp_path / "out", tmp_path / "item_images"
    run_cli(raw, out, "--download-images", "--image-dir", str(image_dir))
    assert "1 downloaded, 0 already present, 1 without URL, 1 failed" in capsys.readouterr().out
    assert (image_dir / "1.jpg").read_bytes() == (images / "big1.jpg").read_bytes()  # high-res preferred
    assert Image.open(image_dir / "1.jpg").size == (4, 3)
    assert sorted(path.name for path in image_dir.iterdir()) == ["1.jpg"]  # no partial 2.jpg, no temp file

    (image_dir / "1.jpg").write_bytes(b"kept")
    Image.new("RGB", (2, 2)).save(images / "img2.jpg")
    items = json.loads((out / NAME / f"{NAME}.item.json").read_text())
    report = download_images({int(k): v["image_url"] for k, v in items.items()}, image_dir, progress=False)
    assert (report.downloaded, report.present, report.no_url, report.failures) == (1, 1, 1, [])
    assert (image_dir / "1.jpg").read_bytes() == b"kept"
    assert (image_dir / "2.jpg").read_bytes() == (images / "img2.jpg").read_bytes()


def test_out_that_is_a_file_is_one_error_line(raw: Path, tmp_path: Path, capsys) -> None:
    (tmp_path / "afile").write_text("x")
    with pytest.raises(SystemExit) as exit_:
        run_cli(raw, tmp_path / "afile")
    err = capsys.readouterr().err
    assert exit_.value.code == 2 and err.count("\n") == 1 and "afile is a file, not a folder" in err
