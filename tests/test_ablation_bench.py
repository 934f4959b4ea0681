"""``bench/ablations.py`` on the 500-user Instruments subset: a variant recorded in ``--work-dir`` with the
same settings, data and code is not trained again; another setting is; ``--report`` rewrites the report from the
grid's JSON, and reports grids of several seeds as one, with each variant's mean over its seeds; a stored grid of a
variant whose setting became the default still reports, one of a variant the bench never had is one error line; a
MQL4GRec grid trains each variant with its overrides and reports it, and another model's variant is one error line."""

from __future__ import annotations

import json
import os
import re
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


TINY_T5 = {
    "d_model": 32, "d_kv": 16, "d_ff": 64, "num_layers": 1, "num_decoder_layers": 1, "num_heads": 2, "beam_size": 10,
    "MAX_ITEM_LIST_LENGTH": 8, "epochs": 1, "use_gpu": False, "allow_data_mismatch": True,
}


def run_grid(work, folder, model="QBert4Rec", variants=("no_pretrain",), tiny=None,
             **settings) -> subprocess.CompletedProcess:
    given = {**(tiny or TINY), "data_path": work / "dataset", **settings}
    command = [sys.executable, "bench/ablations.py", "--model", model, "--variants", *variants, "--parallel", "1",
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

    report = [sys.executable, "bench/ablations.py", "--report", str(tmp_path / "table.json"),
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
    """Each model's variants' overrides are its keys with accepted values, and each changes a default (a misspelt key
    or a value the model refuses would only show on the GPU, one run later)."""
    monkeypatch.syspath_prepend(str(REPO_ROOT / "bench"))
    from ablations import ABLATIONS

    assert set(ABLATIONS) == {"QBert4Rec", "TIGER", "MQL4GRec"}
    for model, variants in ABLATIONS.items():
        defaults = build_config(model, "Instruments")
        for variant, overrides in variants.items():
            config = build_config(model, "Instruments", config_dict=dict(overrides))
            assert all(config[key] == value for key, value in overrides.items()), (model, variant)
            assert variant == "default" or any(defaults[key] != value for key, value in overrides.items()), variant


def test_a_stored_grid_of_a_retired_variant_still_reports_and_an_unknown_variant_is_one_line(tmp_path):
    """A variant whose setting became the default leaves stored grids that ``--report`` must still describe (their
    overrides come from the bench's retired variants); a result of a variant the bench never had is refused. The
    stored grid: the no_pretrain result of the Instruments grid in docs/results."""
    stored = json.loads((REPO_ROOT / "docs" / "results" / "qbert4rec_ablations_instruments.json").read_text())
    stored["results"] = [result for result in stored["results"] if result["variant"] == "no_pretrain"]
    report = [sys.executable, "bench/ablations.py", "--report"]
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


def test_a_mql4grec_grid_trains_each_variant_with_its_overrides_and_reports_it(work, tmp_path):
    done = run_grid(work, tmp_path, model="MQL4GRec", variants=("default", "per_row_task_mix"), tiny=TINY_T5)
    payload = json.loads((tmp_path / "table.json").read_text())
    assert payload["model"] == "MQL4GRec"
    by_variant = {result["variant"]: result for result in payload["results"]}
    assert {variant: (result["model"], result["settings"]["task_mix"]) for variant, result in by_variant.items()} == {
        "default": ("MQL4GRec", "official"), "per_row_task_mix": ("MQL4GRec", "per_row")}
    losses = {variant: re.findall(r"train loss: ([\d.]+)", (tmp_path / "grid" / variant / "MQL4GRec.log").read_text())
              for variant in by_variant}
    assert all(len(loss) == 1 for loss in losses.values()) and losses["default"] != losses["per_row_task_mix"]
    text = (tmp_path / "table.md").read_text()
    assert text.startswith("# MQL4GRec ablations on Instruments") and "injection_depths" not in text
    assert "- per_row_task_mix: {'task_mix': 'per_row'}" in text and done.stdout.strip() == text.strip()
    for variant, result in by_variant.items():
        assert f"| {variant} | 2020 | 0 | 1 | no |" in text and f"{result['test']['ndcg@10']:.4f}" in text

    report = [sys.executable, "bench/ablations.py", "--report", str(tmp_path / "table.json"), "--out",
              str(tmp_path / "again")]
    subprocess.run(report, cwd=REPO_ROOT, capture_output=True, text=True, timeout=120, check=True)
    assert (tmp_path / "again.md").read_text() == text

    wrong = subprocess.run([sys.executable, "bench/ablations.py", "--model", "TIGER", "--variants", "static_fusion",
                            "--out", str(tmp_path / "wrong")], cwd=REPO_ROOT, capture_output=True, text=True,
                           timeout=120, check=False)
    assert wrong.returncode == 2 and "Traceback" not in wrong.stderr and not (tmp_path / "wrong.md").exists()
    assert wrong.stderr.strip() == ("error: TIGER has no variant static_fusion — choose among default, no_user_token, "
                                    "paper_levels, paper_schedule, constant_lr")
    none_at_once = subprocess.run([sys.executable, "bench/ablations.py", "--model", "TIGER", "--parallel", "0",
                                   "--out", str(tmp_path / "wrong")], cwd=REPO_ROOT, capture_output=True, text=True,
                                  timeout=120, check=False)
    assert none_at_once.returncode == 2 and none_at_once.stderr.strip().splitlines() == [
        "error: --parallel 0 must be at least 1 (variants trained at once)"]
