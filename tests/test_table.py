"""``recbole-qrec table``: hand-made result records with known numbers, rendered as md, CSV, TeX and PNG."""

from __future__ import annotations

import csv
import io
import json
import subprocess
import sys
from contextlib import redirect_stderr, redirect_stdout
from pathlib import Path

import pytest

from recbole_qrec import table
from recbole_qrec.cli import main

# (model, dataset, config_hash, seed, hit@10, ndcg@10)
RUNS = [
    ("SASRec", "Instruments", "s1", 1, 0.20, 0.10),
    ("SASRec", "Instruments", "s1", 2, 0.21, 0.11),
    ("SASRec", "Instruments", "s1", 3, 0.22, 0.12),
    ("GRU4Rec", "Instruments", "g1", 1, 0.18, 0.080),
    ("GRU4Rec", "Instruments", "g1", 2, 0.20, 0.095),
    ("GRU4Rec", "Instruments", "g1", 3, 0.19, 0.100),
    ("QBert4Rec", "Instruments", "q1", 1, 0.25, 0.130),
    ("QBert4Rec", "Instruments", "q1", 2, 0.27, 0.141),
    ("QBert4Rec", "Instruments", "q1", 3, 0.26, 0.152),
    ("SASRec", "Arts", "s2", 1, 0.10, 0.050),
    ("GRU4Rec", "Arts", "g-old", 1, 0.01, 0.010),  # a configuration with fewer seeds: not shown
    ("GRU4Rec", "Arts", "g2", 1, 0.09, 0.040),
    ("GRU4Rec", "Arts", "g2", 2, 0.09, 0.042),
    ("QBert4Rec", "Arts", "q2", 1, 0.12, 0.060),
]
PAPER = """\
QBert4Rec:
  source: "Q-Bert4Rec, arXiv 2512.02474"
  results:
    Instruments: {hit@10: 0.1418, ndcg@10: 0.1077}
    Games: {hit@10: 0.1, ndcg@10: 0.05}
MACRec:
  source: "MACRec, arXiv 2511.15122"
  results:
    Arts: {hit@10: 0.1329, ndcg@10: 0.0953}
"""


def record(model: str, dataset: str, config_hash: str, seed: int, hit: float, ndcg: float) -> dict:
    return {"model": model, "dataset": dataset, "config_hash": config_hash, "seed": seed,
            "finished_at": f"2026-01-01T00:00:{seed:02d}+00:00", "test": {"hit@10": hit, "ndcg@10": ndcg}}


@pytest.fixture()
def results(tmp_path: Path) -> Path:
    path = tmp_path / "results.jsonl"
    path.write_text("".join(json.dumps(record(*run)) + "\n" for run in RUNS), encoding="utf-8")
    return path


def run_table(args: list[str]) -> tuple[str, str]:
    out, err = io.StringIO(), io.StringIO()
    with redirect_stdout(out), redirect_stderr(err):
        main(["table", *args])
    return out.getvalue(), err.getvalue()


def md_rows(md: str) -> dict[str, list[str]]:
    rows = [line.strip("|").split(" | ") for line in md.splitlines() if line.startswith("| ")]
    header = [cell.strip() for cell in rows[0]]
    return {row[0].strip(): dict(zip(header, (cell.strip() for cell in row))) for row in rows[1:]}


def test_markdown_marks_means_and_improvement(results: Path) -> None:
    md, _ = run_table([str(results), "--metrics", "hr@10,ndcg@10"])
    rows = md_rows(md)
    assert list(rows) == ["SASRec", "GRU4Rec", "QBert4Rec"]
    qbert, sasrec, gru = rows["QBert4Rec"], rows["SASRec"], rows["GRU4Rec"]
    assert qbert["Instruments NDCG@10"] == "**0.1410 ± 0.0110**†"
    assert sasrec["Instruments NDCG@10"] == "<u>0.1100 ± 0.0100</u>"
    assert gru["Instruments NDCG@10"].startswith("0.0917 ± 0.0104")
    assert qbert["Instruments HR@10"] == "**0.2600 ± 0.0100**†"
    assert sasrec["Instruments n"] == "3"
    assert (qbert["Instruments Δ"], gru["Instruments Δ"], sasrec["Instruments Δ"]) == ("+28.2%", "-16.7%", "baseline")
    # one seed: no std; the configuration with the most seeds wins
    assert qbert["Arts NDCG@10"] == "**0.0600**"
    assert sasrec["Arts NDCG@10"] == "<u>0.0500</u>"
    assert (gru["Arts n"], gru["Arts NDCG@10"]) == ("2", "0.0410 ± 0.0014")
    assert qbert["Arts Δ"] == "+20.0%"
    assert "SASRec on Instruments, SASRec on Arts" in md


def test_named_baseline_and_significance(results: Path) -> None:
    built = table.build_table(table.load_records([results]), ["hit@10", "ndcg@10"], baseline="GRU4Rec")
    assert built.baselines == {"Instruments": "GRU4Rec", "Arts": "GRU4Rec"}
    assert built.improvement("SASRec", "Instruments") == pytest.approx(100 * (0.11 - 0.275 / 3) / (0.275 / 3))
    assert built.p_value("QBert4Rec", "Instruments", "ndcg@10") < 0.05
    assert built.p_value("GRU4Rec", "Instruments", "ndcg@10") is None  # the baseline itself
    assert built.p_value("QBert4Rec", "Arts", "ndcg@10") is None  # shares one seed with the baseline


def test_paper_columns_csv_and_tex(results: Path, tmp_path: Path) -> None:
    paper = tmp_path / "paper.yaml"
    paper.write_text(PAPER, encoding="utf-8")
    prefix = tmp_path / "out" / "main"
    md, err = run_table([str(results), "--metrics", "hr@10,ndcg@10", "--paper", str(paper),
                         "--format", "md,csv,tex", "--out", str(prefix)])
    rows = md_rows(md)
    assert rows["QBert4Rec"]["Instruments paper NDCG@10"] == "0.1077"
    assert rows["MACRec"]["Arts paper HR@10"] == "0.1329"
    assert rows["MACRec"]["Instruments NDCG@10"] == ""
    assert "Games" not in md.splitlines()[0]  # datasets without results are left out
    assert "Paper (MACRec): MACRec, arXiv 2511.15122" in md
    assert prefix.with_suffix(".md").read_text(encoding="utf-8") == md
    assert f"wrote {prefix}.tex" in err

    csv_rows = {row["model"]: row for row in csv.DictReader(io.StringIO(prefix.with_suffix(".csv").read_text()))}
    assert float(csv_rows["QBert4Rec"]["Instruments ndcg@10 mean"]) == pytest.approx(0.141)
    assert float(csv_rows["QBert4Rec"]["Instruments ndcg@10 std"]) == pytest.approx(0.011)
    assert float(csv_rows["QBert4Rec"]["Instruments ndcg@10 p"]) < 0.05
    assert float(csv_rows["QBert4Rec"]["Instruments improvement %"]) == pytest.approx(28.18, abs=0.01)
    assert csv_rows["SASRec"]["Arts ndcg@10 std"] == ""

    tex = prefix.with_suffix(".tex").read_text(encoding="utf-8")
    assert "\\multicolumn{6}{c}{Instruments} & \\multicolumn{6}{c}{Arts}" in tex
    assert "\\textbf{0.1410{\\scriptsize$\\pm$0.0110}}$^\\dagger$" in tex
    assert "\\underline{0.1100{\\scriptsize$\\pm$0.0100}}" in tex
    assert "+28.2\\%" in tex
    assert tex.startswith("\\begin{tabular}{lrrrrrrrrrrrr}") and "\\end{tabular}" in tex


def test_long_layout_beside_the_papers(results: Path, tmp_path: Path) -> None:
    paper = tmp_path / "paper.yaml"
    paper.write_text(PAPER, encoding="utf-8")
    prefix = tmp_path / "out" / "paper_comparison"
    md, _ = run_table([str(results), "--by", "model+dataset", "--metrics", "hr@10,ndcg@10", "--paper", str(paper),
                       "--format", "md,csv,tex", "--out", str(prefix)])
    rows = [[cell.strip() for cell in line.strip("|").split(" | ")] for line in md.splitlines() if line.startswith("| ")]
    header, body = rows[0], rows[1:]
    assert header[:5] == ["Model", "Dataset", "n", "HR@10", "NDCG@10"] and "vs paper NDCG@10" in header
    assert [row[:2] for row in body] == [["SASRec", "Instruments"], ["SASRec", "Arts"], ["GRU4Rec", "Instruments"],
                                         ["GRU4Rec", "Arts"], ["QBert4Rec", "Instruments"], ["QBert4Rec", "Arts"],
                                         ["MACRec", "Arts"]]  # a published cell without results has its row too
    qbert = dict(zip(header, body[4]))
    assert (qbert["NDCG@10"], qbert["paper NDCG@10"], qbert["Δ"]) == ("**0.1410 ± 0.0110**†", "0.1077", "+28.2%")  # as in the wide layout
    assert qbert["vs paper NDCG@10"] == f"{100 * (0.141 - 0.1077) / 0.1077:+.1f}%"

    csv_rows = list(csv.DictReader(io.StringIO(prefix.with_suffix(".csv").read_text(encoding="utf-8"))))
    assert list(csv_rows[0])[:9] == ["model", "dataset", "seeds", "hr@10", "hr@10 std", "hr@10 p", "ndcg@10",
                                     "ndcg@10 std", "ndcg@10 p"]
    row = next(r for r in csv_rows if (r["model"], r["dataset"]) == ("QBert4Rec", "Instruments"))
    assert (row["seeds"], float(row["ndcg@10"]), row["paper_ndcg@10"]) == ("3", pytest.approx(0.141), "0.1077")
    assert float(row["vs paper %"]) == pytest.approx(100 * (0.141 - 0.1077) / 0.1077, abs=0.01)
    assert "\\begin{tabular}{llrrrrrrrrrr}" in prefix.with_suffix(".tex").read_text(encoding="utf-8")


def test_configurations_get_a_row_each_named_by_their_differences(tmp_path: Path) -> None:
    """With ``--configurations`` an ablation's configurations of one model are rows of their own, named by the
    settings that differ between them (not by those the datasets set), one row per configuration across datasets;
    without it the model shows its configuration with the most seeds."""
    def ablation(config_hash: str, seed: int, dataset: str, buckets: int, ndcg: float) -> dict:
        settings = {"user_buckets": buckets, "learning_rate": 0.001, "dataset": dataset, "epochs": 300}
        return {**record("TIGER", dataset, config_hash, seed, 0.1, ndcg), "settings": settings}

    path = tmp_path / "results.jsonl"
    records = [ablation("t-user", 1, "Instruments", 2000, 0.09), ablation("t-user", 2, "Instruments", 2000, 0.10),
               ablation("t-none", 1, "Instruments", 0, 0.08), ablation("a-user", 1, "Arts", 2000, 0.07),
               ablation("a-none", 1, "Arts", 0, 0.06), record("SASRec", "Instruments", "s", 1, 0.1, 0.05),
               {**record("TIGER", "Instruments", "t-old", 1, 0.1, 0.01)}]  # recorded before records held settings
    path.write_text("".join(json.dumps(r) + "\n" for r in records), encoding="utf-8")
    rows = md_rows(run_table([str(path), "--configurations", "--metrics", "ndcg@10"])[0])
    assert set(rows) == {"TIGER (user_buckets=2000)", "TIGER (user_buckets=0)", "TIGER (config t-old)", "SASRec"}
    assert rows["TIGER (user_buckets=2000)"]["Instruments NDCG@10"] == "**0.0950 ± 0.0071**"  # its two seeds
    assert rows["TIGER (user_buckets=0)"]["Arts NDCG@10"] == "<u>0.0600</u>"
    assert set(md_rows(run_table([str(path), "--metrics", "ndcg@10"])[0])) == {"TIGER", "SASRec"}


def test_a_key_added_unset_later_keeps_the_seeds_in_one_configuration(tmp_path: Path) -> None:
    """Seeds recorded before and after a new setting joined the defaults as ~ are one configuration (their
    config_hash differs, as it hashes every key); a setting that is set, or set differently, is another."""
    def run(config_hash: str, seed: int, ndcg: float, **added) -> dict:
        settings = {"epochs": 36, "learning_rate": 0.0005, "valid_sample_users": None, **added}
        return {**record("MQL4GRec", "Instruments", config_hash, seed, 0.1, ndcg), "settings": settings}

    path = tmp_path / "results.jsonl"
    records = [run("before", 1, 0.09), run("after", 2, 0.10, length_buckets=None),
               run("after", 3, 0.11, length_buckets=None), *(run("buckets", seed, 0.05, length_buckets=[3, 8])
                                                             for seed in (4, 5))]
    path.write_text("".join(json.dumps(r) + "\n" for r in records), encoding="utf-8")
    rows = md_rows(run_table([str(path), "--metrics", "ndcg@10"])[0])
    cell = rows["MQL4GRec"]
    assert cell["Instruments n"] == "3" and cell["Instruments NDCG@10"] == "**0.1000 ± 0.0100**"
    named = md_rows(run_table([str(path), "--configurations", "--metrics", "ndcg@10"])[0])
    assert set(named) == {"MQL4GRec (length_buckets=null)", "MQL4GRec (length_buckets=[3, 8])"}


def test_shipped_paper_yaml() -> None:
    values, sources = table.load_paper(table.PAPER_FILE)
    assert values[("QBert4Rec", "Arts")] == {"hit@10": 0.1419, "ndcg@10": 0.1039}
    assert values[("TIGER", "Games")] == {"hit@10": 0.0857, "ndcg@10": 0.0453}
    assert values[("MACRec", "Instruments")] == {"hit@10": 0.1363, "ndcg@10": 0.1046}
    assert "2512.02474" in sources["QBert4Rec"] and "ICLR 2025" in sources["MQL4GRec"]


def test_png_size(results: Path, tmp_path: Path) -> None:
    import matplotlib.image

    prefix = tmp_path / "bars"
    run_table([str(results), "--format", "png", "--out", str(prefix), "--metrics", "hr@10,ndcg@10"])
    png = prefix.with_suffix(".png")
    assert png.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    assert matplotlib.image.imread(png).shape[:2] == (600, 1200)


@pytest.mark.parametrize(("content", "args", "message"), [
    (None, [], "not found — pass results.jsonl"),
    ('{"model": "SASRec"\n', [], "is not valid JSON"),
    (json.dumps(record(*RUNS[0])) + "\n\n" + '{"model": "SASRec", "dataset"\n', [], "results.jsonl line 3 is not valid JSON"),
    (b"\x00\x9c\xff binary", [], "is not UTF-8 text"),
    (json.dumps({**record(*RUNS[0]), "test": {"hit@10": 0.2, "ndcg@10": "abc"}}) + "\n", ["--metrics", "ndcg@10"],
     "line 1 has test metric ndcg@10 = 'abc', not a finite number"),
    ('{"model": "SASRec", "dataset": "Arts", "test": {"ndcg@10": NaN}}\n', ["--metrics", "ndcg@10"],
     "line 1 has test metric ndcg@10 = nan, not a finite number"),
    ('{"model": ["SASRec"], "dataset": "Arts", "test": {"ndcg@10": 0.1}}\n', ["--metrics", "ndcg@10"],
     "line 1 has model ['SASRec'] and dataset 'Arts', not names"),
    ('{"model": "SASRec", "dataset": "Arts"}\n', [], "line 1 is not a result record"),
    ("", [], "no result records"),
    (json.dumps(record(*RUNS[0])) + "\n", ["--metrics", "hr@20"], "has no test metric hit@20"),
    (json.dumps(record(*RUNS[0])) + "\n", ["--metrics", "recall"], "is not of the form name@k"),
    (json.dumps(record(*RUNS[0])) + "\n", ["--metrics", ","], "--metrics ',' names no metric — give comma-separated"),
    (json.dumps(record(*RUNS[0])) + "\n", ["--metrics", "ndcg@10,hr@10,hit@10"],
     "--metrics ndcg@10,hr@10,hit@10 names hit@10 more than once (hr is hit) — name each metric once"),
    (json.dumps(record(*RUNS[0])) + "\n", ["--format", "png"], "add --out PREFIX"),
    (json.dumps(record(*RUNS[0])) + "\n", ["--metrics", "ndcg@10", "--baseline", "FDSA"], "baseline FDSA has no results"),
    (json.dumps(record(*RUNS[0])) + "\n", ["--metrics", "ndcg@10", "--by", "dataset,model"],
     "invalid choice: 'dataset,model'"),
    (json.dumps(record(*RUNS[0])) + "\n", ["--metrics", "ndcg@10", "--paper", "missing.yaml"], "paper file"),
    (json.dumps(record(*RUNS[0])) + "\n", ["--metrics", "ndcg@10", "--format", "curves", "--out", "c"],
     "no record has a validation curve of ndcg@10"),
])
def test_bad_input_is_one_line(tmp_path: Path, content: str | bytes | None, args: list[str], message: str) -> None:
    path = tmp_path / "results.jsonl"
    if content is not None:
        path.write_bytes(content if isinstance(content, bytes) else content.encode("utf-8"))
    with pytest.raises(SystemExit) as exit_info:
        out, err = io.StringIO(), io.StringIO()
        with redirect_stdout(out), redirect_stderr(err):
            main(["table", str(path), *args])
    assert exit_info.value.code == 2
    lines = err.getvalue().splitlines()
    assert len(lines) == 1 and lines[0].startswith("error: ") and " — " in lines[0] and message in lines[0]
    assert out.getvalue() == ""


def test_shipped_paper_by_name(results: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.chdir(tmp_path)  # no paper.yaml here: the shipped one is read
    md, _ = run_table([str(results), "--metrics", "hr@10,ndcg@10", "--paper", "paper.yaml"])
    assert md_rows(md)["MACRec"]["Arts paper NDCG@10"] == "0.0953"


def test_python_m_entry_point(results: Path, tmp_path: Path) -> None:
    done = subprocess.run([sys.executable, "-m", "recbole_qrec", "table", str(results), "--metrics", "ndcg@10"],
                          cwd=tmp_path, capture_output=True, text=True, check=False)
    assert done.returncode == 0 and "| QBert4Rec |" in done.stdout
    bad = subprocess.run([sys.executable, "-m", "recbole_qrec", "table", str(tmp_path / "none.jsonl")],
                         cwd=tmp_path, capture_output=True, text=True, check=False)
    assert bad.returncode == 2 and bad.stderr.startswith("error: results file") and bad.stderr.count("\n") == 1


def curve_record(model: str, dataset: str, seed: int, ndcg: list[float]) -> dict:
    """A record whose validation NDCG@10 after epoch i (RecBole's index, from 0) is ``ndcg[i]``."""
    curve = [{"epoch": epoch, "ndcg@10": value, "hit@10": 2 * value} for epoch, value in enumerate(ndcg)]
    return {**record(model, dataset, "c", seed, 2 * ndcg[-1], ndcg[-1]), "valid_curve": curve}


def test_validation_curves(tmp_path: Path) -> None:
    import matplotlib.image

    runs = [curve_record("SASRec", "Instruments", 1, [0.05, 0.08, 0.09]),
            curve_record("SASRec", "Instruments", 2, [0.07, 0.10]),  # stopped one epoch earlier
            curve_record("GRU4Rec", "Instruments", 1, [0.04, 0.06, 0.07, 0.07]),
            curve_record("SASRec", "Arts", 1, [0.02, 0.03]),
            curve_record("GRU4Rec", "Games", 1, [0.01])]
    path = tmp_path / "results.jsonl"
    path.write_text("".join(json.dumps(r) + "\n" for r in runs), encoding="utf-8")
    built = table.build_table(table.load_records([path]), ["ndcg@10"])
    epochs, means, stds = table.valid_curve(built.runs[("SASRec", "Instruments")], "ndcg@10")
    assert epochs == [1, 2, 3] and means == pytest.approx([0.06, 0.09, 0.09])
    assert stds == pytest.approx([0.02 ** 0.5 / 10, 0.02 ** 0.5 / 10, 0.0])

    prefix = tmp_path / "out" / "main"
    _, err = run_table([str(path), "--metrics", "ndcg@10", "--format", "png,curves", "--out", str(prefix)])
    png = tmp_path / "out" / "main.curves.png"
    assert f"wrote {png}" in err and prefix.with_suffix(".png").is_file()
    image = matplotlib.image.imread(png)
    assert image.shape[:2] == (600, 1800)  # three datasets side by side
    assert len({tuple(pixel) for pixel in image[::7, ::7].reshape(-1, image.shape[2])}) > 20  # lines, not a blank



def test_the_markdown_says_where_its_numbers_come_from(tmp_path: Path) -> None:
    records = [{**record("TIGER", "Arts", "c", seed, 0.1, 0.05), "git_commit": "0123456789abcdef", "git_dirty": False,
                "machine": "NVIDIA H200", "content_sources": {"Arts": {"text_codes": "id-embedding:SASRec"}},
                "train_time_limit_reached": True, "epochs": 9 - 2 * seed}  # one budget, the seeds' epochs differ
               for seed in (1, 2)]
    records.append({**record("MQL4GRec", "Arts", "d", 1, 0.1, 0.05), "git_commit": "fedcba9876543210",
                    "git_dirty": True, "machine": "NVIDIA H200",
                    "content_sources": {"Arts": {"text_codes": "id-embedding:SASRec", "image_codes": "missing"}},
                    "eval_rule": "group", "eval_mode": "exact", "train_time_limit_reached": True, "epochs": 3,
                    "pretraining_discarded": True})
    path = tmp_path / "results.jsonl"
    path.write_text("".join(json.dumps(r) + "\n" for r in records), encoding="utf-8")
    md, _ = run_table([str(path), "--metrics", "hr@10,ndcg@10"])
    assert "Runs: 3 records; commit 0123456, fedcba9 (uncommitted changes); machine NVIDIA H200; finished 2026-01-01." in md
    assert "Content: Arts: no image_codes; Arts: text_codes from id-embedding:SASRec." in md
    assert f"Command: `recbole-qrec table {path} --metrics hr@10,ndcg@10`" in md and "only the target's own ID): MQL4GRec group." in md
    assert "every item by its semantic ID's log-probability): MQL4GRec exact." in md
    assert ("(train_time_limit) before early stopping, so not converged: MQL4GRec on Arts (3 epochs), TIGER on Arts "
            "(5/7 epochs).") in md
    assert "as without pretraining: MQL4GRec on Arts (seed 1)." in md and md.count("discard_stalled_pretraining") == 1
