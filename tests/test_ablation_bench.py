"""``bench/qbert4rec_ablations.py`` on the 500-user Instruments subset: a variant recorded in ``--work-dir`` with the
same settings, data and code is not trained again; another setting is; ``--report`` rewrites the report from the
grid's JSON, and reports grids of several seeds as one, with each variant's mean over its seeds; a stored grid of a
variant whose setting became the default still reports, one of a variant the bench never had is one error line."""

from __future__ import annotations

import json
import os
import shutil
import statistics
import subprocess
import sys

from conftest import REPO_ROOT
from recbole_qrec.config import build_config

TINY = {
    "injection_dim": 32, "injection_epochs": 2, "sid_levels": 3, "sid_codebook_size": 32, "sid_code_dim": 16,
    "sid_epochs": 3, "hidden_size": 32, "inner_size": 64, "n_layers": 1, "n_heads": 2, "MAX_ITEM_LIST_LENGTH": 8,
    "epochs": 1, "use_gpu": False, "allow_data_mismatch": True,
}


def run_grid(work, folder, **settings) -> subprocess.CompletedProcess:
    given = {**TINY, "data_path": work / "dataset", **settings}
    command = [sys.executable, "bench/qbert4rec_ablations.py", "--variants", "no_pretrain", "--parallel", "1",
               "--set", *(f"{key}={value}" for key, value in given.items()),
               "--work-dir", str(folder / "grid"), "--out", str(folder / "table")]
    done = subprocess.run(command, cwd=REPO_ROOT, env={**os.environ, "OMP_NUM_THREADS": "1"}, capture_output=True,
                          text=True, timeout=600, check=False)
    assert done.returncode == 0, done.stderr[-3000:]
    return done


def test_a_recorded_variant_is_not_trained_again_and_a_changed_one_is(work, tmp_path):
    records = tmp_path / "grid" / "no_pretrain" / "QBert4Rec" / "results.jsonl"
    first = run_grid(work, tmp_path)
    assert len(records.read_text().splitlines()) == 1 and "skipped" not in first.stdout
    table = json.loads((tmp_path / "table.json").read_text())["results"]
    assert "| no_pretrain | 2020 | 0 |" in (tmp_path / "table.md").read_text()

    report = [sys.executable, "bench/qbert4rec_ablations.py", "--report", str(tmp_path / "table.json"),
              "--out", str(tmp_path / "again")]
    subprocess.run(report, cwd=REPO_ROOT, capture_output=True, text=True, timeout=120, check=True)
    assert (tmp_path / "again.md").read_text() == (tmp_path / "table.md").read_text()  # rewritten, trained nothing
    assert (tmp_path / "again.csv").read_text() == (tmp_path / "table.csv").read_text()
    missing = subprocess.run([*report[:3], str(tmp_path / "none.json"), *report[4:]], cwd=REPO_ROOT,
                             capture_output=True, text=True, timeout=120, check=False)
    assert missing.returncode != 0 and "Traceback" not in missing.stderr
    assert len(missing.stderr.strip().splitlines()) == 1 and "none.json" in missing.stderr

    again = run_grid(work, tmp_path)
    assert "no_pretrain: recorded" in again.stdout and len(records.read_text().splitlines()) == 1
    assert json.loads((tmp_path / "table.json").read_text())["results"] == table  # the recorded result, reported

    shutil.copy(tmp_path / "table.json", tmp_path / "seed_2020.json")
    run_grid(work, tmp_path, seed=2021)  # another configuration: trained
    assert len(records.read_text().splitlines()) == 2
    merged = subprocess.run([*report[:3], str(tmp_path / "seed_2020.json"), str(tmp_path / "table.json"), "--out",
                             str(tmp_path / "seeds")], cwd=REPO_ROOT, capture_output=True, text=True, timeout=120,
                            check=True)
    results = json.loads((tmp_path / "seeds.json").read_text())["results"]
    assert [result["seed"] for result in results] == [2020, 2021]
    mean = statistics.fmean(result["test"]["hit@10"] for result in results)
    assert f"| no_pretrain | 2020, 2021 | {mean:.4f} ± " in merged.stdout
    assert merged.stdout == (tmp_path / "seeds.md").read_text() + "\n"


def test_every_variant_is_a_valid_change_of_the_defaults(monkeypatch):
    """Each variant's overrides are QBert4Rec keys with accepted values, and each changes a default (a misspelt key or
    a value the model refuses would only show on the GPU, one run later)."""
    monkeypatch.syspath_prepend(str(REPO_ROOT / "bench"))
    from qbert4rec_ablations import MODEL, VARIANTS

    defaults = build_config(MODEL, "Instruments")
    for variant, overrides in VARIANTS.items():
        config = build_config(MODEL, "Instruments", config_dict=dict(overrides))
        assert all(config[key] == value for key, value in overrides.items()), variant
        assert variant == "default" or any(defaults[key] != value for key, value in overrides.items()), variant


def test_a_stored_grid_of_a_retired_variant_still_reports_and_an_unknown_variant_is_one_line(tmp_path):
    """A variant whose setting became the default leaves stored grids that ``--report`` must still describe (their
    overrides come from the bench's retired variants); a result of a variant the bench never had is refused. The
    stored grid: the no_pretrain result of the Instruments grid in docs/results."""
    stored = json.loads((REPO_ROOT / "docs" / "results" / "qbert4rec_ablations_instruments.json").read_text())
    stored["results"] = [result for result in stored["results"] if result["variant"] == "no_pretrain"]
    report = [sys.executable, "bench/qbert4rec_ablations.py", "--report"]
    for variant in ("interleaved_pretrain", "shuffled_pretrain"):
        for result in stored["results"]:
            result["variant"] = variant
        (tmp_path / f"{variant}.json").write_text(json.dumps(stored))
    subprocess.run([*report, str(tmp_path / "interleaved_pretrain.json"), "--out", str(tmp_path / "retired")],
                   cwd=REPO_ROOT, capture_output=True, text=True, timeout=120, check=True)
    text = (tmp_path / "retired.md").read_text()
    assert "- interleaved_pretrain: {'pretrain_domain_order': 'interleaved'}" in text
    assert "| interleaved_pretrain | 2020 | 0 |" in text
    unknown = subprocess.run([*report, str(tmp_path / "shuffled_pretrain.json"), "--out", str(tmp_path / "unknown")],
                             cwd=REPO_ROOT, capture_output=True, text=True, timeout=120, check=False)
    assert unknown.returncode != 0 and "Traceback" not in unknown.stderr
    assert unknown.stderr.strip().splitlines() == [unknown.stderr.strip()] and "shuffled_pretrain" in unknown.stderr
    assert not (tmp_path / "unknown.md").exists()
