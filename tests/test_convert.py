"""dataset_prep.convert on the real Instruments data, and RecBole's split of the converted files."""

from __future__ import annotations

import json
import re
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
from recbole.data import create_dataset, data_preparation

from dataset_prep.convert import convert, main as convert_main
from dataset_prep.locate import find_processed_dataset
from dataset_prep.subset import write_user_subset
from recbole_qrec.config import build_config
from recbole_qrec.data.features import content_sources
from recbole_qrec.data.item_features import run_content_sources
from recbole_qrec.errors import DatasetNotFoundError

MAX_LEN = 20
REPO_ROOT = Path(__file__).resolve().parents[1]


@pytest.fixture(scope="module")
def converted(amazon_dir: Path, tmp_path_factory: pytest.TempPathFactory) -> tuple[Path, dict]:
    out = tmp_path_factory.mktemp("converted")
    stats = convert("Instruments", src=amazon_dir, out=out)
    return out, stats


def read_shipped_split(path: Path) -> list[tuple[str, tuple[str, ...], str]]:
    """(user, last MAX_LEN history items, target) rows of a shipped ``Instruments.<split>.inter``."""
    rows = []
    for line in path.read_text().splitlines()[1:]:
        user, history, target = line.split("\t")
        rows.append((user, tuple(history.split()[-MAX_LEN:]), target))
    return rows


def recbole_rows(dataset) -> list[tuple[str, tuple[str, ...], str]]:
    """(user, history, target) rows of a RecBole sequential split, as original tokens."""
    feat = dataset.inter_feat
    users = dataset.id2token("user_id", feat["user_id"].numpy())
    targets = dataset.id2token("item_id", feat["item_id"].numpy())
    histories = feat["item_id_list"].numpy()
    lengths = feat["item_length"].numpy()
    return [
        (user, tuple(dataset.id2token("item_id", histories[i, : lengths[i]])), target)
        for i, (user, target) in enumerate(zip(users, targets))
    ]


def test_statistics_match_the_papers(converted):
    _, stats = converted
    assert (stats["users"], stats["items"], stats["interactions"]) == (17112, 6250, 136226)
    assert stats["avg_length"] == pytest.approx(136226 / 17112)
    assert stats["sparsity"] == pytest.approx(1 - 136226 / (17112 * 6250))


def test_inter_file_keeps_sequence_order(converted, amazon_dir):
    out, _ = converted
    lines = (out / "Instruments" / "Instruments.inter").read_text().splitlines()
    assert lines[0] == "user_id:token\titem_id:token\ttimestamp:float"
    sequences = json.loads((amazon_dir / "Instruments" / "Instruments.inter.json").read_text())
    rebuilt: dict[str, list[tuple[float, str]]] = {}
    for line in lines[1:]:
        user, item, timestamp = line.split("\t")
        rebuilt.setdefault(user, []).append((float(timestamp), item))
    assert {u: [i for _, i in sorted(rows)] for u, rows in rebuilt.items()} == {
        u: [str(i) for i in seq] for u, seq in sequences.items()
    }


def test_item_file_holds_both_code_languages(converted):
    out, _ = converted
    lines = (out / "Instruments" / "Instruments.item").read_text().splitlines()
    assert lines[0] == "item_id:token\timage_codes:token_seq\ttext_codes:token_seq"
    assert len(lines) == 1 + 6250
    item, image, text = lines[1].split("\t")
    assert item == "0" and text == "a_170 b_224 c_251 d_151" and image == "A_154 B_106 C_221 D_144"


def test_content_sources_follow_the_code_files_into_the_runs_record(converted, amazon_dir, tmp_path, caplog):
    out, _ = converted
    assert content_sources(out / "Instruments", "Instruments") == {"text_codes": "text:llama", "image_codes": "image:vit"}
    write_user_subset("Games", amazon_dir / "Games", tmp_path, 50)  # Games ships text codes only
    convert("Games", src=tmp_path, out=out)
    assert content_sources(out / "Games", "Games") == {"text_codes": "text:llama"}
    config = build_config("MQL4GRec", "Instruments", config_dict={"data_path": str(out), "pretrain_datasets": ["Games"],
                                                                   "pretrain_epochs": 1, "allow_data_mismatch": True})
    with caplog.at_level("WARNING"):
        sources = run_content_sources(config)
    assert sources == {"Instruments": {"text_codes": "text:llama", "image_codes": "image:vit"},
                       "Games": {"text_codes": "text:llama", "image_codes": "missing"}}
    assert "MQL4GRec on Games: no image_codes in the dataset" in caplog.text
    fdsa = build_config("FDSA", "Instruments", config_dict={"data_path": str(out)})
    assert run_content_sources(fdsa) == {"Instruments": {"text_codes": "text:llama"}}


def test_recbole_split_equals_the_shipped_leave_one_out_split(converted, amazon_dir):
    out, _ = converted
    config = build_config("SASRec", "Instruments", cmd_args=[f"--data_path={out}"])
    train, valid, test = data_preparation(config, create_dataset(config))
    shipped = amazon_dir / "Instruments"
    for name, loader in (("valid", valid), ("test", test)):
        expected = read_shipped_split(shipped / f"Instruments.{name}.inter")
        assert len(expected) == 17112
        assert sorted(recbole_rows(loader._dataset)) == sorted(expected), name
    expected_train = read_shipped_split(shipped / "Instruments.train.inter")
    assert len(expected_train) == 136226 - 3 * 17112
    assert sorted(recbole_rows(train._dataset)) == sorted(expected_train)


def test_cli_prints_statistics(amazon_dir, tmp_path, capsys):
    convert_main(["--dataset", "Instruments", "--src", str(amazon_dir), "--out", str(tmp_path)])
    printed = capsys.readouterr().out
    assert "users 17,112" in printed and "items 6,250" in printed and "interactions 136,226" in printed
    assert not list(tmp_path.rglob("*.tmp")), "temporary files left behind"


def test_missing_dataset_names_the_command_that_creates_it(tmp_path):
    with pytest.raises(DatasetNotFoundError) as err:
        find_processed_dataset("Instruments", src=tmp_path)
    message = str(err.value)
    assert str(tmp_path / "Instruments") in message
    assert "python -m dataset_prep.amazon18 --domain Musical_Instruments" in message


@pytest.mark.parametrize(
    ("files", "fragment"),
    [
        ({"Toy.inter.json": "{not json"}, r"Toy.inter.json is not valid JSON \(Expecting property name"),
        ({"Toy.inter.json": "[1, 2, 3]"}, r"Toy.inter.json is not a non-empty JSON object — write it as"),
        ({"Toy.inter.json": '{"0": [1, "x", 3]}'}, r"user '0' maps to \[1, 'x', 3\] — each user needs a list of "
                                                   "non-negative integer item ids"),
        ({"Toy.inter.json": '{"0": [1, -2, 3]}'}, r"user '0' maps to \[1, -2, 3\]"),
        ({"Toy.inter.json": '{"0": [1, 2]}'}, r"user '0' has 2 interactions; leave-one-out needs at least 3 — "),
        ({"Toy.inter.json": '{"0": [1, 2, 3]}', "Toy.index.json": '{"1": ["<a_1>", "b_2"]}'},
         r"Toy.index.json: item '1', level 1: token 'b_2' is not of the form <a_12> — "),
        ({"Toy.inter.json": '{"0": [1, 2, 3]}', "Toy.index.json": '{"1": ["<x_1>", "<b_2>"]}'},
         r"Toy.index.json: item '1', level 0: token '<x_1>' does not have its level's letter \(levels go a, b, c, "
         r"...\) — list each item's level tokens in order"),
        ({"Toy.inter.json": '{"0": [1, 2, 3]}', "Toy.index_vitemb.json": "{"}, r"Toy.index_vitemb.json is not valid JSON"),
        ({"Toy.inter.json": '{"0": [1, 2, 3]}', "Toy.index.json": '{"1": ["<a_1>"], "7": ["<a_2>"]}'},
         r"Toy.index.json: 2 of the 3 items of Toy.inter.json have no codes \(e.g. items 2, 3\) — the code file belongs "),
        ({"Toy.inter.json": '{"0": [1, 2, 3]}',
          "Toy.index_lemb.json": '{"1": ["<a_1>", "<b_1>"], "2": ["<a_2>"], "3": ["<a_3>", "<b_3>"]}'},
         r"Toy.index_lemb.json: items have different numbers of code levels \[1, 2\] \(e.g. item '2' has 1\) — "),
    ],
)
def test_a_bad_processed_file_is_one_error_line_with_status_2_and_writes_nothing(tmp_path, capsys, files, fragment):
    folder = tmp_path / "Toy"
    folder.mkdir()
    for name, content in files.items():
        (folder / name).write_text(content)
    with pytest.raises(SystemExit) as exit_:
        convert_main(["--dataset", "Toy", "--src", str(tmp_path), "--out", str(tmp_path / "out")])
    err = capsys.readouterr().err
    assert exit_.value.code == 2 and err.startswith("error: ") and err.count("\n") == 1
    assert re.search(fragment, err), err
    assert not (tmp_path / "out").exists()


@pytest.mark.parametrize("command", [["dataset_prep.convert"], ["dataset_prep.amazon18"], ["dataset_prep.features"],
                                     ["dataset_prep.features", "text"], ["dataset_prep.features", "image"],
                                     ["dataset_prep.features", "codes"]])
def test_each_command_has_its_own_usage_line_and_plain_text_help(command):
    done = subprocess.run([sys.executable, "-m", *command, "--help"], cwd=REPO_ROOT, capture_output=True, text=True,
                          timeout=120)
    assert done.returncode == 0, done.stderr
    assert done.stdout.startswith(f"usage: python -m {' '.join(command)} ")
    assert not re.search(r"``|:(func|mod|class):`", done.stdout), "reStructuredText markup in --help"


def test_converted_timestamps_are_positions(converted):
    out, _ = converted
    rows = np.loadtxt(out / "Instruments" / "Instruments.inter", skiprows=1, dtype=np.int64, max_rows=8)
    assert rows[:, 2].tolist() == list(range(8)) and set(rows[:, 0]) == {0}


@pytest.mark.parametrize("out", ["afile", "afile/sub"])
def test_out_that_is_a_file_is_one_error_line(instruments_subset, tmp_path, capsys, out):
    """The converter stopped with NotADirectoryError (exit 1) after reading its input."""
    (tmp_path / "afile").write_text("x")
    with pytest.raises(SystemExit) as exit_:
        convert_main(["--dataset", "Instruments", "--src", str(instruments_subset), "--out", str(tmp_path / out)])
    err = capsys.readouterr().err
    assert exit_.value.code == 2 and err.count("\n") == 1
    assert err.startswith("error: --out cannot hold ") and "afile is a file, not a folder — give --out a folder" in err
