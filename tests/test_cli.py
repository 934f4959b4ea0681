"""The command line as a user runs it: help, and one clear line for every bad input.

Every bad input must exit with status 2 and print exactly one line ``error: <what> — <fix>`` (no traceback),
without writing anything in the working folder. These cases fail before any data is read.
"""

from __future__ import annotations

import io
import os
import subprocess
import sys
from collections.abc import Iterator
from contextlib import contextmanager, redirect_stderr, redirect_stdout
from pathlib import Path

import pytest
import torch

from dataset_prep.convert import convert
from recbole_qrec.cli import main

REPO_ROOT = Path(__file__).resolve().parents[1]
COMMANDS = {
    "recbole-qrec": [str(Path(sys.executable).parent / "recbole-qrec")],
    "python -m recbole_qrec": [sys.executable, "-m", "recbole_qrec"],
    "python run_recbole_qrec.py": [sys.executable, str(REPO_ROOT / "run_recbole_qrec.py")],
}
CONFIG_FILES = {
    "empty.yaml": "",
    "comments.yaml": "# only a comment\n\n# and another\n",
    "malformed.yaml": "epochs: 3\nlearning_rate: [0.1\nstopping_step: 2\n",
    "list.yaml": "- epochs\n- 3\n",
    "zero_epochs.yaml": "epochs: 0\n",
}


def run_cli(args: list[str], cwd: Path, command: str = "python -m recbole_qrec",
            env: dict[str, str] | None = None) -> subprocess.CompletedProcess:
    environment = {key: value for key, value in os.environ.items() if key != "QREC_DEBUG"}
    return subprocess.run([*COMMANDS[command], *args], cwd=cwd, env={**environment, **(env or {})},
                          capture_output=True, text=True, timeout=300)


def folder_listing(folder: Path) -> list[str]:
    return sorted(str(path.relative_to(folder)) for path in folder.rglob("*"))


@pytest.fixture
def cwd(tmp_path: Path) -> Path:
    """A working folder holding the config files of the cases."""
    for name, text in CONFIG_FILES.items():
        (tmp_path / name).write_text(text)
    return tmp_path


def assert_one_error_line(args: list[str], cwd: Path, fragment: str) -> None:
    """Run ``main(args)`` in ``cwd`` (in this process: the same code path as the commands, without a Python start
    per case) and check the one error line, the status and that nothing was written."""
    before = folder_listing(cwd)
    with working_folder(cwd), pytest.raises(SystemExit) as exited, redirect_stderr(io.StringIO()) as stderr:
        main(args)
    assert exited.value.code == 2, stderr.getvalue()
    lines = stderr.getvalue().strip().splitlines()
    assert len(lines) == 1 and lines[0].startswith("error: ") and " — " in lines[0], stderr.getvalue()
    assert fragment in lines[0]
    assert folder_listing(cwd) == before, "a failed run wrote files"


def help_text(args: list[str], cwd: Path) -> str:
    """What ``main(args)`` prints in ``cwd`` for a help request (in this process; the commands themselves are run by
    test_help_lists_models_datasets_overrides_and_layering), checking that it ends normally and writes nothing."""
    before = folder_listing(cwd)
    with working_folder(cwd), redirect_stdout(io.StringIO()) as stdout:
        main(args)
    assert folder_listing(cwd) == before
    return stdout.getvalue()


@contextmanager
def working_folder(folder: Path) -> Iterator[None]:
    previous, debug = Path.cwd(), os.environ.pop("QREC_DEBUG", None)
    os.chdir(folder)
    try:
        yield
    finally:
        os.chdir(previous)
        if debug is not None:
            os.environ["QREC_DEBUG"] = debug


@pytest.mark.parametrize(
    ("args", "fragment"),
    [
        (["--model=tiger"], "Unknown model 'tiger' — did you mean 'TIGER'?"),
        (["--model=NoSuchModel"], "Unknown model 'NoSuchModel'"),
        (["--model="], "--model is empty — give a name, e.g. --model=SASRec, or leave --model out for SASRec"),
        (["--dataset= "], "--dataset is empty — give a name, e.g. --dataset=Instruments, or leave --dataset out for "
                          "Instruments"),
        (["--learing_rate=0.1"], "Unknown config key 'learing_rate': no RecBole or recbole-qrec component reads it — "
                                 "did you mean 'learning_rate'?"),
        (["--epochs=abc"], "epochs must be an integer >= 1, got 'abc' — e.g. --epochs=300 (the default)"),
        (["--epochs=-5"], "epochs must be an integer >= 1, got -5"),
        (["--learning_rate=abc"], "learning_rate must be a number > 0, got 'abc'"),
        (["--learning_rate=0"], "learning_rate must be a number > 0, got 0"),
        (["--train_batch_size=0"], "train_batch_size must be an integer >= 1, got 0"),
        (["--hidden_size=0"], "hidden_size must be an integer >= 1, got 0"),
        (["--topk=[0,5]"], "topk must be a non-empty list of integers >= 1 (or an integer >= 1), got [0, 5]"),
        (["--hidden_dropout_prob=1.5"], "hidden_dropout_prob must be a number in [0, 1], got 1.5"),
        (["--stopping_step=0"], "stopping_step must be an integer >= 1, got 0"),
        (["--model=QBert4Rec", "--pretrain_epochs=-1"], "pretrain_epochs must be an integer >= 0, got -1"),
        (["--model=TIGER", "--d_model=abc"], "d_model must be an integer >= 1, got 'abc'"),
        (["--reproducibility=maybe"], "reproducibility must be True or False, got 'maybe'"),
        (["--hidden_size=30", "--n_heads=4"], "hidden_size (30) is not a multiple of n_heads (4): each attention head "
                                              "takes an equal share — e.g. --hidden_size=28 or --n_heads=1"),
        (["--model=QBert4Rec", "--injection_dim=30"], "injection_dim (30) is not a multiple of injection_heads (4)"),
        (["--hidden_act=foo"], "hidden_act must be one of gelu, relu, swish, tanh, sigmoid, got 'foo' — "
                               "e.g. --hidden_act=gelu (the default)"),
        (["--learner=foo"], "learner must be one of adam, adamw, sgd, adagrad, rmsprop, sparse_adam, got 'foo'"),
        (["--clip_grad_norm=5"], "clip_grad_norm must be ~ or a mapping with max_norm (a number > 0) and optionally "
                                 "norm_type (a number), got 5 — e.g. --clip_grad_norm=\"{'max_norm': 5.0}\""),
        (["--clip_grad_norm={'max': 5}"], "clip_grad_norm must be ~ or a mapping with max_norm"),
        (["--clip_grad_norm={'max_norm': -1}"], "clip_grad_norm must be ~ or a mapping with max_norm"),
        (["--model=QBert4Rec", "--mask_prob=1"], "mask_prob 1 or mask_regions 3 is out of range — set mask_prob in "
                                                 "(0, 1) and mask_regions >= 1"),
        (["--model=QBert4Rec", "--loss_type=BPR"], "QBert4Rec needs loss_type CE"),
        (["--model=MMESID", "--sid_codebook_size=1"], "sid_codebook_size must be an integer >= 2, got 1 — "
                                                      "e.g. --sid_codebook_size=256 (the default)"),
        (["--model=MMESID", "--lora_rank=-1"], "lora_rank must be an int >= 0, got -1"),
        (["--model=MMESID", "--sid_hidden_dims=abc"], "sid_hidden_dims must be a list of integers >= 1 (the MM-RQ-VAE's "
                                                      "encoder widths, [] for none), got 'abc' — e.g. "
                                                      "--sid_hidden_dims=[512,256,128] (the default)"),
        (["--model=MMESID", "--sid_hidden_dims=[256, 0]"], "sid_hidden_dims must be a list of integers >= 1"),
        (["--model=BERT4Rec", "--MAX_ITEM_LIST_LENGTH=4"], "mask_ratio 0.2 x MAX_ITEM_LIST_LENGTH 4 leaves no item to "
                                                           "mask (the BERT4Rec transform masks int(mask_ratio * "
                                                           "MAX_ITEM_LIST_LENGTH) items) — raise mask_ratio or "
                                                           "MAX_ITEM_LIST_LENGTH, e.g. --mask_ratio=0.25"),
        (["--model=BERT4Rec", "--mask_ratio=0"], "mask_ratio 0 x MAX_ITEM_LIST_LENGTH 20 leaves no item to mask"),
        (["--model=TIGER", "--feed_forward_proj=foo"], "feed_forward_proj must be an activation of transformers' ACT2FN "
                                                       "(relu, gelu, silu, ...) or gated-<activation>, got 'foo'"),
        (["--model=MACRec", "--feed_forward_proj=fast-gelu"], "feed_forward_proj must be an activation"),
        (["--model=MMESID", "--llm_config={'model_type': 'llama', 'hidden_size': 30, 'num_attention_heads': 4}"],
         "llm_config does not make a llama causal LM (Class validation error for validator 'validate_architecture': "
         "ValueError: The hidden size (30) is not a multiple of the number of attention heads (4).) — fix its fields"),
        (["--epochs=2", "--epochs=3"], "--epochs is given twice with different values ('2' and '3') — give each "
                                       "--key=value once"),
        (["--epochs", "3"], "'--epochs' is not of the form --key=value — write --epochs=<value>"),
        (["--config_files"], "argument --config_files: expected at least one argument"),
        (["--config_files", "absent.yaml"], "Config file 'absent.yaml' does not exist"),
        (["--config_files", "empty.yaml"], "Config file 'empty.yaml' is empty or holds only comments"),
        (["--config_files", "comments.yaml"], "Config file 'comments.yaml' is empty or holds only comments"),
        (["--config_files", "malformed.yaml"], "Config file 'malformed.yaml' is not valid YAML at line 3"),
        (["--config_files", "list.yaml"], "Config file 'list.yaml' holds a YAML list, not a mapping"),
        (["--config_files", "zero_epochs.yaml"], "epochs must be an integer >= 1, got 0"),
    ],
)
def test_bad_input_is_one_line_with_status_2_and_writes_nothing(args, fragment, cwd):
    assert_one_error_line(args, cwd, fragment)


@pytest.mark.parametrize(
    ("args", "fragment"),
    [
        (["--model=SASRec", "--dataset=Beauty"], "python -m dataset_prep.convert --dataset Beauty"),
        (["--model=FDSA", "--dataset=Arts"], "dataset 'Arts' not found under data_path 'dataset/' (found: Instruments)"),
        (["--model=SASRec", "--allow_data_mismatch", "--resume_checkpoint=absent.pth"],
         "resume_checkpoint 'absent.pth' does not exist"),
        # settings the model reads, refused before its tokenize stage writes the dataset's semantic IDs
        (["--model=QBert4Rec", "--scoring=foo"], "scoring must be one of item, levels, got 'foo' — "
                                                 "e.g. --scoring=item"),
        (["--model=QBert4Rec", "--scoring=levels", "--item_id_input=True"], "item_id_input needs the item embedding "
                                                                            "table of scoring: item"),
        (["--model=QBert4Rec", "--item_id_input=yes"], "item_id_input must be one of True, False, ~, got 'yes' — "
                                                       "~: True with scoring item"),
        (["--model=QBert4Rec", "--mask_strategy=[span, bert]"], "mask_strategy ['span', 'bert'] is not a list of known "
                                                                "strategies"),
        (["--model=MMESID", "--eval_mode=foo"], "eval_mode must be one of beam, exact, got 'foo'"),
        (["--model=QBert4Rec", "--gate_objective=act"], "gate_objective must be one of ponder, halting, capacity, got "
                                                        "'act' — e.g. --gate_objective=ponder"),
        (["--model=QBert4Rec", "--fusion=gated"], "fusion must be one of dynamic, static, got 'gated'"),
        (["--model=QBert4Rec", "--depth_target=9"], "depth_target is 9, deeper than the 4 injection_layers"),
        (["--model=QBert4Rec", "--pretrain_sequences=users"], "pretrain_sequences must be one of prefix, user, got "
                                                              "'users' — e.g. --pretrain_sequences=prefix"),
        (["--model=QBert4Rec", "--pretrain_domain_pool=Instruments", "--epochs=1", "--injection_epochs=1",
          "--sid_epochs=1", "--pretrain_epochs=1", "--use_gpu=False", "--allow_data_mismatch=True"],
         "pretrain_domain_pool must be a list of dataset names, got 'Instruments' — write e.g. [Arts, Games]"),
    ],
)
def test_bad_input_about_the_data_is_one_line_and_writes_nothing(args, fragment, instruments_subset, tmp_path):
    convert("Instruments", src=instruments_subset, out=tmp_path / "dataset")
    assert_one_error_line(args, tmp_path, fragment)


def test_the_suggested_model_name_works(cwd):
    assert_one_error_line(["--model=mql4grec"], cwd, "did you mean 'MQL4GRec'?")
    assert "MQL4GRec (a recbole-qrec model)" in help_text(["--model=MQL4GRec", "--help"], cwd)


def test_allow_data_mismatch_is_a_bare_flag_for_the_config_key(cwd):
    assert_one_error_line(["--allow_data_mismatch", "--allow_data_mismatch=False"], cwd,
                          "--allow_data_mismatch is given twice with different values ('True' and 'False')")
    assert help_text(["--allow_data_mismatch", "--debug", "--help"], cwd).startswith("usage: ")


@pytest.mark.parametrize("env", [{}, {"QREC_DEBUG": "1"}])
def test_debug_shows_the_traceback(env, cwd):
    args = ["--epochs=abc"] if env else ["--epochs=abc", "--debug"]
    done = run_cli(args, cwd, env=env)
    assert done.returncode == 1
    assert "Traceback" in done.stderr and "ConfigError: epochs must be an integer >= 1" in done.stderr
    assert folder_listing(cwd) == sorted(CONFIG_FILES)


def test_an_unexpected_exception_is_one_line_with_status_1(cwd):
    call = "from recbole_qrec.cli import main; main(['--model=SASRec', 5])"  # not a string: a caller's bug
    done = subprocess.run([sys.executable, "-c", call], cwd=cwd, capture_output=True, text=True, timeout=300)
    assert done.returncode == 1
    message = done.stderr.strip()
    assert "\n" not in message and message.startswith("error: unexpected AttributeError: 'int' object")
    assert message.endswith(" — rerun with --debug for the traceback")


def test_out_of_gpu_memory_is_one_line_naming_the_batch_sizes():
    """torch's out-of-memory error (its message as a CUDA allocator raises it) is one line that keeps the allocation
    and says which keys lower the memory a run needs."""
    from recbole_qrec.cli import unexpected_error_line

    err = torch.OutOfMemoryError("CUDA out of memory. Tried to allocate 29.36 GiB. GPU 0 has a total capacity of 79.18 "
                                 "GiB of which 18.60 GiB is free. Including non-PyTorch memory, this process has 60.57 "
                                 "GiB memory in use.\nSee documentation for Memory Management")
    line = unexpected_error_line(err)
    assert "\n" not in line and line.startswith("error: CUDA out of memory. Tried to allocate 29.36 GiB: ")
    assert "--eval_batch_size=" in line and "train_batch_size" in line
    assert unexpected_error_line(ValueError("x")).startswith("error: unexpected ValueError: x")


@pytest.mark.parametrize("command", sorted(COMMANDS))
def test_help_lists_models_datasets_overrides_and_layering(command, cwd):
    (cwd / "data" / "Toy").mkdir(parents=True)
    (cwd / "data" / "Toy" / "Toy.inter").write_text("user_id:token\titem_id:token\ttimestamp:float\n")
    before = folder_listing(cwd)
    done = run_cli(["--help", "--data_path=data/"], cwd, command)
    assert done.returncode == 0, done.stderr
    text = done.stdout
    assert text.startswith(f"usage: {command} [--model=MODEL]")
    assert "recbole-qrec models: MACRec, MMESID, MQL4GRec, QBert4Rec, TIGER" in text
    assert all(name in text for name in ("SASRec", "GRU4Rec", "BERT4Rec", "FDSA", "LightGCN"))
    assert "Datasets under data/: Toy" in text and "python -m dataset_prep.convert" in text
    assert "--key=value" in text and "--config_files" in text and "--debug" in text and "--allow_data_mismatch" in text
    assert "Config layering (later wins): RecBole's defaults < recbole-qrec's properties/overall.yaml" in text
    assert folder_listing(cwd) == before


@pytest.mark.parametrize(
    ("model", "lines"),
    [
        ("TIGER", ["beam_size = 20", "(int) candidates per user", "epochs = 300", "(int) The number of training epochs."]),
        ("SASRec", ["hidden_size = 64", "(int) The number of features in the hidden state.", "layer_norm_eps = 1e-12"]),
        ("NARM", ["NARM (a RecBole model)", "embedding_size = 64"]),
    ],
)
def test_model_help_lists_its_keys_defaults_and_meanings(model, lines, cwd):
    text = help_text([f"--model={model}", "--help"], cwd)
    assert all(line in text for line in lines), text


@pytest.mark.parametrize(
    ("missing", "command", "args", "fragment"),
    [
        ("matplotlib", "recbole_qrec", ["table", "absent.jsonl", "--format", "md,png", "--out", "t"],
         "--format png and curves needs matplotlib, which is not installed — pip install 'matplotlib>=3.7'"),
        ("optuna", "recbole_qrec", ["sweep", "SASRec.yaml", "--out", "sweep"],
         "recbole-qrec sweep needs optuna, which is not installed — pip install 'recbole-qrec[sweep]'"),
        ("transformers", "dataset_prep.features", ["text", "--item-json", "items.json", "--out", "t.npy"],
         "text features needs transformers, which is not installed — pip install 'transformers>=5.17,<6'"),
    ],
)
def test_a_missing_dependency_is_one_line_naming_what_to_install(missing, command, args, fragment, cwd):
    (cwd / "items.json").write_text('{"0": {"title": "Red acoustic guitar"}}', encoding="utf-8")
    before = folder_listing(cwd)
    call = (f"import runpy, sys; sys.modules[{missing!r}] = None; sys.argv = ['{command}', *{args!r}]; "
            f"runpy.run_module({command!r}, run_name='__main__')")  # as if the package were not installed
    done = subprocess.run([sys.executable, "-c", call], cwd=cwd, capture_output=True, text=True, timeout=300)
    assert done.returncode == 2 and done.stderr.startswith("error: ") and done.stderr.count("\n") == 1
    assert fragment in done.stderr
    assert folder_listing(cwd) == before
