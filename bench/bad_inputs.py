"""Try every kind of bad input a user can give and tabulate what recbole-qrec answers.

Each case runs the real command line in a fresh working folder (a 500-user subset of Instruments, converted
under a new dataset name, plus whatever broken file the case writes), then records the exit status, the
message, whether a traceback was printed and which files the failed run left behind. Writes
``<out>.md`` and ``<out>.json``:

    QREC_DATA_DIR=../shared/data/amazon python bench/bad_inputs.py --out docs/results/bad_inputs
"""

from __future__ import annotations

import argparse
import gzip
import json
import os
import platform
import shutil
import subprocess
import sys
import tempfile
from collections.abc import Callable
from dataclasses import dataclass
from datetime import datetime, timezone
from pathlib import Path

import numpy as np

from recbole_qrec.fileio import atomic_open, write_json_atomic

DATASET = "Mini"  # the subset's name: no bundled YAML, so its content fields are read from its .item header
SUBSET_USERS = 500
SMALL = ["--train_batch_size=256", "--eval_batch_size=256", "--use_gpu=False"]
FAST = ["--epochs=1", *SMALL]


@dataclass
class Case:
    """One bad input: the files it breaks (``prepare`` gets the working folder) and the command it runs."""

    name: str
    command: list[str]
    prepare: Callable[[Path], None] = lambda work: None
    notes: str = ""
    module: str = "recbole_qrec"


ITEM_JSON = '{"0": {"title": "Red acoustic guitar"}, "1": {"title": "Guitar strings"}}'  # a dataset_prep item file


def inter_file(work: Path, name: str = DATASET) -> Path:
    return work / "dataset" / name / f"{name}.inter"


def item_rows(work: Path) -> int:
    """Rows a feature file of the subset needs: one per item id up to the largest."""
    lines = inter_file(work).read_text(encoding="utf-8").splitlines()[1:]
    return max(int(line.split("\t")[1]) for line in lines) + 1


def edit_line(path: Path, index: int, transform: Callable[[str], str]) -> None:
    lines = path.read_text(encoding="utf-8").splitlines(keepends=True)
    lines[index] = transform(lines[index])
    path.write_text("".join(lines), encoding="utf-8")


def append_line(path: Path, line: str) -> None:
    with open(path, "a", encoding="utf-8") as handle:
        handle.write(line + "\n")


def write_new(path: Path, text: str) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(text, encoding="utf-8")


def write(path: Path, text: str) -> Callable[[Path], None]:
    return lambda work: (work / path).write_text(text, encoding="utf-8")


def checkpoint_variant(work: Path, name: str, change: Callable[[dict], object]) -> None:
    """Write ``name`` as a copy of the trained SASRec checkpoint transformed by ``change``."""
    import torch

    state = torch.load(work / "trained.pth", map_location="cpu", weights_only=True)
    torch.save(change(state), work / name)


def item_file(work: Path) -> Path:
    return work / "dataset" / DATASET / f"{DATASET}.item"


def drop_item_column(name: str) -> Callable[[Path], None]:
    """Remove the column of field ``name`` (e.g. ``image_codes``) from the subset's ``.item``: a dataset without it."""
    def prepare(work: Path) -> None:
        rows = [line.rstrip("\n").split("\t") for line in item_file(work).read_text(encoding="utf-8").splitlines()]
        column = next(index for index, header in enumerate(rows[0]) if header.split(":")[0] == name)
        item_file(work).write_text("".join("\t".join(row[:column] + row[column + 1:]) + "\n" for row in rows),
                                   encoding="utf-8")
    return prepare


def edit_codes(change: Callable[[list[str]], None]) -> Callable[[str], str]:
    """A line transform of ``<dataset>.item``: ``change`` edits the code tokens of the row's last column in place."""
    def transform(line: str) -> str:
        *fields, codes = line.rstrip("\n").split("\t")
        tokens = codes.split()
        change(tokens)
        return "\t".join([*fields, " ".join(tokens)]) + "\n"
    return transform


def swap_first_levels(tokens: list[str]) -> None:
    tokens[0], tokens[1] = tokens[1], tokens[0]


def huge_first_code(tokens: list[str]) -> None:
    tokens[0] = tokens[0].split("_")[0] + "_99999"


def not_installed(module: str) -> Callable[[Path], None]:
    """A ``<module>.py`` in the working folder (first on ``sys.path`` under ``python -m``) that fails to import, as
    the module does when it is not installed; a file named ``__pycache__`` keeps Python from writing its bytecode."""
    return lambda work: (write_new(work / f"{module}.py", f"raise ImportError('No module named {module}')\n"),
                         write_new(work / "__pycache__", ""))


def recbole_pickled(state: dict) -> dict:
    """The same checkpoint as plain RecBole writes it: its ``Config`` object pickled inside."""
    from recbole_qrec.config import build_config

    return {**state, "config": build_config("SASRec", DATASET)}


RAW = ["--domain", "Musical_Instruments", "--name", "Raw", "--raw-dir", "raw", "--out", "data", "--k", "2"]


def review_line(user: object, item: object, time: object = 1) -> str:
    return json.dumps({"reviewerID": user, "asin": item, "unixReviewTime": time})


def raw_files(reviews: list[str], meta: list[str], cut: bool = False, compress: bool = True) -> Callable[[Path], None]:
    """Write the raw Amazon 2018 reviews and meta files of ``RAW`` (gzip JSON lines; ``cut``: the reviews file loses
    its second half; ``compress=False``: the reviews file is plain text under the .gz name)."""
    def prepare(work: Path) -> None:
        (work / "raw").mkdir()
        data = "\n".join(reviews).encode() + b"\n"
        data = gzip.compress(data) if compress else data
        (work / "raw" / "Musical_Instruments.json.gz").write_bytes(data[: len(data) // 2] if cut else data)
        (work / "raw" / "meta_Musical_Instruments.json.gz").write_bytes(gzip.compress("\n".join(meta).encode()))
    return prepare


REVIEWS = [review_line(f"U{user}", f"I{item}", user + item) for user in range(40) for item in range(5)]
META = [json.dumps({"asin": f"I{item}", "title": f"Guitar part {item}"}) for item in range(5)]


def cases() -> list[Case]:
    model = ["--model=SASRec", f"--dataset={DATASET}"]
    resume = [*model, *SMALL, "--epochs=3"]  # more epochs than the checkpoint's one
    return [
        Case("model name in the wrong case", ["--model=tiger", f"--dataset={DATASET}"]),
        Case("unknown model", ["--model=SASRek", f"--dataset={DATASET}"]),
        Case("unknown dataset", ["--model=SASRec", "--dataset=Nope"]),
        Case("unknown config key", [*model, "--learing_rate=0.1"]),
        Case("non-numeric learning rate", [*model, "--learning_rate=abc"]),
        Case("non-numeric epochs", [*model, "--epochs=abc"]),
        Case("negative epochs", [*model, "--epochs=-5"]),
        Case("zero batch size", [*model, "--train_batch_size=0"]),
        Case("probability above 1", [*model, "--hidden_dropout_prob=1.5"]),
        Case("topk with a zero", [*model, "--topk=[0,10]"]),
        Case("key given twice", [*model, "--epochs=2", "--epochs=3"]),
        Case("missing config file", [*model, "--config_files", "absent.yaml"]),
        Case("empty config file", [*model, "--config_files", "empty.yaml"], write(Path("empty.yaml"), "")),
        Case("comment-only config file", [*model, "--config_files", "c.yaml"], write(Path("c.yaml"), "# nothing\n")),
        Case("malformed YAML", [*model, "--config_files", "bad.yaml"], write(Path("bad.yaml"), "epochs: [1, 2\n")),
        Case("YAML that is not a mapping", [*model, "--config_files", "list.yaml"], write(Path("list.yaml"), "- 1\n- 2\n")),
        Case("non-numeric field in .inter", model,
             lambda work: edit_line(inter_file(work), 5, lambda line: "\t".join([*line.split("\t")[:2], "soon"]) + "\n")),
        Case(".inter line missing a field", model,
             lambda work: edit_line(inter_file(work), 5, lambda line: "\t".join(line.split("\t")[:2]) + "\n")),
        Case("truncated last line of .inter", model,
             lambda work: inter_file(work).write_bytes(inter_file(work).read_bytes()[:-4])),
        Case(".inter saved with a byte-order mark", model,
             lambda work: inter_file(work).write_bytes(b"\xef\xbb\xbf" + inter_file(work).read_bytes())),
        Case(".inter header with an unknown column type", model,
             lambda work: edit_line(inter_file(work), 0, lambda line: line.replace("timestamp:float", "timestamp:date"))),
        Case(".inter with a repeated row", model, lambda work: edit_line(inter_file(work), -1, lambda line: line * 2)),
        Case(".inter user with two interactions", model,
             lambda work: (append_line(inter_file(work), "99999\t0\t0"), append_line(inter_file(work), "99999\t1\t1"))),
        Case(".item rows for items that do not exist", ["--model=TIGER", f"--dataset={DATASET}"],
             lambda work: append_line(item_file(work), "999999\ta_1 b_2 c_3 d_4\tA_1 B_2 C_3 D_4")),
        Case("code tokens out of level order in .item", ["--model=TIGER", f"--dataset={DATASET}"],
             lambda work: edit_line(item_file(work), 1, edit_codes(swap_first_levels))),
        Case("a code far beyond any codebook in .item", ["--model=TIGER", f"--dataset={DATASET}"],
             lambda work: edit_line(item_file(work), 1, edit_codes(huge_first_code))),
        Case("validation metric the evaluation does not compute", [*model, "--valid_metric=NDCG@20"]),
        Case("unknown loss type", [*model, "--loss_type=FOO"]),
        Case("random-order split for a sequential model", [*model, "--eval_args={'order':'RO'}"]),
        Case("hidden size the attention heads do not split", [*model, "--hidden_size=30", "--n_heads=4"]),
        Case("unknown optimizer", [*model, "--learner=adamm"]),
        Case("unknown data path mode", [*model, "--data_path_mode=cuda"]),
        Case("unknown matmul precision", [*model, "--float32_matmul_precision=tf32"]),
        Case("gradient clipping as a bare number", [*model, "--clip_grad_norm=5"]),
        Case("BERT4Rec history too short to mask an item", ["--model=BERT4Rec", f"--dataset={DATASET}",
                                                            "--MAX_ITEM_LIST_LENGTH=4"]),
        Case("unknown QBert4Rec scoring (before its tokenize stage)", ["--model=QBert4Rec", f"--dataset={DATASET}",
                                                                      "--scoring=foo"]),
        Case("unknown pretraining domain order (before QBert4Rec's tokenize stage)",
             ["--model=QBert4Rec", f"--dataset={DATASET}", "--pretrain_domain_order=mixed"]),
        Case("unknown injection gate objective (before QBert4Rec's tokenize stage)",
             ["--model=QBert4Rec", f"--dataset={DATASET}", "--gate_objective=act"]),
        Case("injection depth target deeper than the blocks", ["--model=QBert4Rec", f"--dataset={DATASET}",
                                                               "--depth_target=6"]),
        Case("unknown MQL4GRec evaluation rule", ["--model=MQL4GRec", f"--dataset={DATASET}", "--eval_rule=loose"]),
        Case("MACRec on a dataset without image codes", ["--model=MACRec", f"--dataset={DATASET}", *FAST],
             drop_item_column("image_codes")),
        Case("QBert4Rec ID input without an item table", ["--model=QBert4Rec", f"--dataset={DATASET}",
                                                            "--scoring=levels", "--item_id_input=True"]),
        Case("beam wider than the catalogue", ["--model=TIGER", f"--dataset={DATASET}", *FAST, "--beam_size=100000"]),
        Case("pretraining domain pool given as one name", ["--model=QBert4Rec", f"--dataset={DATASET}", *FAST,
                                                            f"--pretrain_domain_pool={DATASET}"]),
        Case("results folder that is a file", [*model, "--results_dir=afile"], write(Path("afile"), "x\n")),
        Case("checkpoint folder under a file", [*model, "--checkpoint_dir=afile/saved"], write(Path("afile"), "x\n")),
        Case("text features that are all zeros", ["--model=QBert4Rec", f"--dataset={DATASET}", "--text_feature_file=zeros.npy"],
             lambda work: np.save(work / "zeros.npy", np.zeros((item_rows(work), 8), dtype=np.float32))),
        Case("text encoder given an empty model folder",
             ["text", "--item-json", "items.json", "--model", "empty_model", "--device", "cpu", "--out", "t.npy"],
             lambda work: ((work / "empty_model").mkdir(), write_new(work / "items.json", ITEM_JSON)),
             module="dataset_prep.features"),
        Case("truncated full dataset under a bundled name", ["--model=SASRec", "--dataset=Instruments"],
             notes="Instruments.inter cut to its first 60,000 lines (a partial copy)"),
        Case("resume checkpoint that does not exist", [*resume, "--resume_checkpoint=absent.pth"]),
        Case("resume checkpoint of random bytes", [*resume, "--resume_checkpoint=random.pth"],
             write(Path("random.pth"), "not a checkpoint at all\n")),
        Case("resume checkpoint cut short", [*resume, "--resume_checkpoint=short.pth"],
             lambda work: (work / "short.pth").write_bytes((work / "trained.pth").read_bytes()[:5000]),),
        Case("checkpoint of another kind (no config)", [*resume, "--resume_checkpoint=other.pth"],
             lambda work: checkpoint_variant(work, "other.pth", lambda state: {"weights": state["state_dict"]})),
        Case("checkpoint written by plain RecBole (pickled Config)", [*resume, "--resume_checkpoint=recbole.pth"],
             lambda work: checkpoint_variant(work, "recbole.pth", recbole_pickled)),
        Case("checkpoint of another model", ["--model=GRU4Rec", f"--dataset={DATASET}", *SMALL, "--epochs=3",
                                              "--resume_checkpoint=trained.pth"]),
        Case("checkpoint with another hidden size", [*resume, "--hidden_size=32", "--resume_checkpoint=trained.pth"]),
        Case("checkpoint of another dataset", ["--model=SASRec", "--dataset=Other", *SMALL, "--epochs=3",
                                               "--resume_checkpoint=trained.pth"]),
        Case("tokenizer features with NaN", ["--dataset", DATASET, "--features", "nan.npy"],
             lambda work: np.save(work / "nan.npy", np.full((item_rows(work), 8), np.nan, dtype=np.float32)),
             module="recbole_qrec.tokenize"),
        Case("tokenizer features with extra rows", ["--dataset", DATASET, "--features", "extra.npy"],
             lambda work: np.save(work / "extra.npy", np.ones((item_rows(work) + 5, 8), dtype=np.float32)),
             module="recbole_qrec.tokenize"),
        Case("tokenizer features with missing rows", ["--dataset", DATASET, "--features", "few.npy"],
             lambda work: np.save(work / "few.npy", np.ones((10, 8), dtype=np.float32)),
             module="recbole_qrec.tokenize"),
        Case("tokenizer features saved as .npz", ["--dataset", DATASET, "--features", "f.npz"],
             lambda work: np.savez(work / "f.npz", features=np.ones((item_rows(work), 8), dtype=np.float32)),
             module="recbole_qrec.tokenize"),
        Case("tokenizer on a CUDA device that is not there", ["--dataset", DATASET, "--features", "ok.npy",
                                                               "--device", "cuda:7"],
             lambda work: np.save(work / "ok.npy", np.ones((item_rows(work), 8), dtype=np.float32)),
             module="recbole_qrec.tokenize"),
        Case("compare naming a model twice", ["compare", "--models", "SASRec", "SASRec", "--datasets", DATASET, *FAST]),
        Case("table --format png without matplotlib", ["table", "absent.jsonl", "--format", "md,png", "--out", "t"],
             not_installed("matplotlib"), notes="matplotlib.py in the working folder raises ImportError"),
        Case("sweep without optuna", ["sweep", "SASRec.yaml", "--out", "sweep"], not_installed("optuna"),
             notes="optuna.py in the working folder raises ImportError"),
        Case("text features without transformers", ["text", "--item-json", "items.json", "--out", "t.npy"],
             lambda work: (not_installed("transformers")(work), write_new(work / "items.json", ITEM_JSON)),
             notes="transformers.py in the working folder raises ImportError", module="dataset_prep.features"),
        Case("converter given malformed JSON", ["--dataset", "Broken", "--src", "broken", "--out", "dataset"],
             lambda work: write_new(work / "broken" / "Broken" / "Broken.inter.json", '{"0": [1, 2'),
             module="dataset_prep.convert"),
        Case("raw reviews file cut short (truncated gzip)", RAW, raw_files(REVIEWS, META, cut=True),
             module="dataset_prep.amazon18"),
        Case("raw reviews file left uncompressed under .json.gz", RAW, raw_files(REVIEWS, META, compress=False),
             module="dataset_prep.amazon18"),
        Case("raw reviews with a null reviewerID or a list asin", RAW,
             raw_files([review_line(None, "I1"), review_line("U1", ["I1"])] * 20, META),
             module="dataset_prep.amazon18"),
        Case("raw meta file of another category (no reviewed item has a title)", RAW,
             raw_files(REVIEWS, [json.dumps({"asin": "B0", "title": "Paint"})]), module="dataset_prep.amazon18"),
    ]


def rename_subset(source: Path, out: Path, name: str, users: int) -> Path:
    """The first ``users`` users of the processed dataset in ``source`` (and its code files) as dataset ``name``."""
    target = out / name
    target.mkdir(parents=True, exist_ok=True)
    original = source.name
    sequences = json.loads((source / f"{original}.inter.json").read_text(encoding="utf-8"))
    (target / f"{name}.inter.json").write_text(json.dumps(dict(list(sequences.items())[:users])), encoding="utf-8")
    for code_file in source.glob(f"{original}.index*.json"):
        shutil.copy(code_file, target / code_file.name.replace(original, name, 1))
    return out


def run(module: str, args: list[str], cwd: Path) -> subprocess.CompletedProcess:
    env = {key: value for key, value in os.environ.items() if key != "QREC_DEBUG"}
    return subprocess.run([sys.executable, "-m", module, *args], cwd=cwd, env=env, capture_output=True, text=True,
                          timeout=900)


def prepare_base(base: Path, data_root: Path) -> None:
    """Converted subsets (``Mini``, ``Other``), the full Instruments cut short, and one trained checkpoint."""
    rename_subset(data_root / "Instruments", base / "processed", DATASET, SUBSET_USERS)
    rename_subset(data_root / "Instruments", base / "processed", "Other", SUBSET_USERS // 2)
    for name in (DATASET, "Other"):
        done = run("dataset_prep.convert", ["--dataset", name, "--src", "processed", "--out", "dataset"], base)
        if done.returncode:
            raise SystemExit(f"converting {name} failed: {done.stderr.strip()}")
    done = run("dataset_prep.convert", ["--dataset", "Instruments", "--src", str(data_root), "--out", "dataset"], base)
    if done.returncode:
        raise SystemExit(f"converting Instruments failed: {done.stderr.strip()}")
    full = inter_file(base, "Instruments")
    full.write_text("".join(full.read_text(encoding="utf-8").splitlines(keepends=True)[:60000]), encoding="utf-8")
    done = run("recbole_qrec", ["--model=SASRec", f"--dataset={DATASET}", *FAST, "--checkpoint_dir=ckpt",
                                "--results_dir=ckpt"], base)
    if done.returncode:
        raise SystemExit(f"training the reference checkpoint failed: {done.stderr.strip()[-2000:]}")
    shutil.copy(next((base / "ckpt").glob("SASRec-*.pth")), base / "trained.pth")
    shutil.rmtree(base / "ckpt")
    shutil.rmtree(base / "log", ignore_errors=True)


def snapshot(folder: Path) -> dict[str, tuple[int, int]]:
    """Size and time of every file under ``folder`` but the empty ``.lock`` files that runs on one data_path share
    (a lock file stays after every run, as flock's files do)."""
    return {str(path.relative_to(folder)): (path.stat().st_size, path.stat().st_mtime_ns)
            for path in folder.rglob("*") if path.is_file() and path.suffix != ".lock"}


def try_case(case: Case, base: Path, scratch: Path) -> dict:
    work = scratch / case.name.replace(" ", "_").replace("/", "_")
    shutil.copytree(base, work)
    case.prepare(work)
    before = snapshot(work)
    done = run(case.module, case.command, work)
    after = snapshot(work)
    written = sorted(path for path, stamp in after.items() if before.get(path) != stamp)
    lines = [line for line in done.stderr.splitlines() if line.strip()]
    return {
        "case": case.name,
        "command": f"python -m {case.module} " + " ".join(case.command),
        "exit_status": done.returncode,
        "message": lines[-1] if lines else "",
        "stderr_lines": len(lines),
        "traceback": "Traceback" in done.stderr,
        "written": written,
        "notes": case.notes,
    }


def commit() -> str:
    out = subprocess.run(["git", "rev-parse", "--short", "HEAD"], cwd=Path(__file__).resolve().parents[1],
                         capture_output=True, text=True, check=False)
    return out.stdout.strip() or "unknown"


def markdown(rows: list[dict], command: str) -> str:
    clear = sum(row["exit_status"] == 2 and not row["traceback"] and not row["written"] for row in rows)
    lines = [
        "# Bad inputs: what a user sees",
        "",
        f"Command: `{command}`  ",
        f"Commit: {commit()}; machine: {os.cpu_count()} CPU cores ({platform.machine()}, no GPU), "
        f"Python {platform.python_version()}; date: {datetime.now(timezone.utc).isoformat(timespec='seconds')}",
        "",
        f"{clear} of {len(rows)} cases end in one clear line with exit status 2, no traceback and no file written "
        "(the empty `.lock` files that runs on one data_path share are not counted).",
        "Each case runs in a copy of one working folder (a 500-user subset of Instruments converted as dataset "
        f"`{DATASET}`, a second subset `Other`, Instruments cut to 60,000 interactions, and a SASRec checkpoint "
        "`trained.pth` trained for one epoch on `Mini`).",
        "",
        "| case | command | exit | traceback | files written | message |",
        "|---|---|---|---|---|---|",
    ]
    for row in rows:
        message = row["message"].replace("|", "\\|")
        lines.append(f"| {row['case']} | `{row['command']}` | {row['exit_status']} | "
                     f"{'yes' if row['traceback'] else 'no'} | {', '.join(row['written']) or 'none'} | {message} |")
    return "\n".join(lines) + "\n"


def main() -> None:
    parser = argparse.ArgumentParser(prog="python bench/bad_inputs.py", description="Tabulate answers to bad inputs.")
    parser.add_argument("--out", type=Path, default=Path("docs/results/bad_inputs"), help="output prefix")
    parser.add_argument("--data_path", type=Path, default=os.environ.get("QREC_DATA_DIR"),
                        help="processed Amazon data (default: $QREC_DATA_DIR)")
    args = parser.parse_args()
    if args.data_path is None:
        parser.error("give --data_path or set QREC_DATA_DIR to the processed Amazon data")
    with tempfile.TemporaryDirectory() as tmp:
        base, scratch = Path(tmp) / "base", Path(tmp) / "cases"
        base.mkdir()
        prepare_base(base, args.data_path.resolve())
        rows = []
        for case in cases():
            rows.append(try_case(case, base, scratch))
            print(f"{case.name}: exit {rows[-1]['exit_status']} — {rows[-1]['message']}", flush=True)
    command = "python bench/bad_inputs.py " + " ".join(sys.argv[1:])
    with atomic_open(args.out.with_suffix(".md"), "w", encoding="utf-8") as handle:
        handle.write(markdown(rows, command))
    write_json_atomic(args.out.with_suffix(".json"), {"command": command, "commit": commit(), "cases": rows})


if __name__ == "__main__":
    main()
