"""Command line: ``recbole-qrec``, ``python -m recbole_qrec`` and ``python run_recbole_qrec.py``; ``table`` as the
first argument builds tables and plots of result records (:mod:`recbole_qrec.table`), ``compare`` trains a grid of
models, datasets and seeds and tables it (:mod:`recbole_qrec.compare`), ``sweep`` (or ``--sweep FILE``) runs a
hyper-parameter sweep (:mod:`recbole_qrec.sweep`).

One error path: a user error (:class:`~recbole_qrec.errors.QRecError`) prints ``error: <message>`` to stderr
and exits with status 2; Ctrl-C (or SIGTERM, SIGHUP) prints ``error: interrupted ...`` and exits with 130 (SIGTERM:
143, SIGHUP: 129, the shell's 128 + signal number); any other exception prints one ``error: unexpected ...`` line
and exits with 1.
``--debug`` (or ``QREC_DEBUG=1``) lets the exception through, with its traceback.
"""

from __future__ import annotations

import argparse
import os
import re
import shlex
import signal
import sys
import textwrap
import threading
from collections.abc import Callable, Iterator, Sequence
from contextlib import ExitStack, contextmanager
from pathlib import Path
from typing import Any, NoReturn

import torch

from recbole_qrec import compare, sweep, table
from recbole_qrec.config import RECBOLE_PROPERTIES_DIR, QRecConfig, as_argument, build_config
from recbole_qrec.data import available_datasets, check_dataset
from recbole_qrec.distributed import launch
from recbole_qrec.errors import (DEBUG_ENV, ConfigError, QRecError, Terminated, debug_requested, interrupted_status,
                                 single_line, user_errors)
from recbole_qrec.quick_start import run_recbole_qrec
from recbole_qrec.resources import PROPERTIES_DIR
from recbole_qrec.utils import qrec_model_names, recbole_model_names

DEFAULT_MODEL = "SASRec"
DEFAULT_DATASET = "Instruments"
# Bare flags that stand for a config override.
FLAG_OVERRIDES = {"--allow_data_mismatch": "--allow_data_mismatch=True"}
WIDTH = 100
# Signals that end a run as Ctrl-C does (:func:`terminate_as_interrupt`): kill / a job scheduler, the terminal closed.
STOP_SIGNALS = (signal.SIGTERM, signal.SIGHUP)

LAYERING = (
    "Config layering (later wins): RecBole's defaults < recbole-qrec's properties/overall.yaml < "
    "properties/model/<model>.yaml < properties/dataset/<dataset>.yaml < --config_files (in the order given) "
    "< --key=value."
)
OVERRIDES = (
    "Overrides: any RecBole or recbole-qrec config key as --key=value, read as a Python literal as RecBole does, "
    'e.g. --epochs=50 --learning_rate=1e-4 --topk="[5,10]" --data_path=/data/recbole. '
    "--allow_data_mismatch is --allow_data_mismatch=True: run although the dataset's files differ from its "
    "expected counts (the result records it). --model=<model> --help lists a model's keys with their defaults."
)


class ArgumentParser(argparse.ArgumentParser):
    """argparse whose usage errors take the one error path (``error: ...``, status 2)."""

    def error(self, message: str) -> NoReturn:
        raise ConfigError(f"{message} — see {self.prog} --help")


def build_parser(prog: str) -> ArgumentParser:
    """Our own options; every other ``--key=value`` goes to the config as a command-line override."""
    parser = ArgumentParser(
        prog=prog,
        usage=f"{prog} [--model=MODEL] [--dataset=DATASET] [--config_files FILE ...] [--key=value ...] "
        "[--allow_data_mismatch] [--nproc=N] [--debug] [--help]",
        description="Train and evaluate one model on one dataset, RecBole-style, and append the result to "
        f"<results_dir>/results.jsonl. Tables and plots of results: {prog} table --help; a grid of models, datasets "
        f"and seeds: {prog} compare --help; a hyper-parameter sweep: {prog} sweep --help.",
        add_help=False,
        allow_abbrev=False,
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    parser.add_argument("--model", "-m", help=f"recbole-qrec or RecBole model name, case-sensitive (default {DEFAULT_MODEL})")
    parser.add_argument("--dataset", "-d", default=DEFAULT_DATASET, help=f"dataset name (default {DEFAULT_DATASET})")
    parser.add_argument("--config_files", nargs="+", default=[], metavar="FILE",
                        help="YAML files layered over the defaults, later files win (also one space-separated string)")
    parser.add_argument("--nproc", type=int, default=1, metavar="N",
                        help="train on N processes of this machine with DistributedDataParallel: one per GPU (NCCL), "
                        "or gloo on the CPU (default 1; torchrun --nproc_per_node=N starts them as well)")
    parser.add_argument("--debug", action="store_true",
                        help=f"show the traceback of an error instead of one line (or set {DEBUG_ENV}=1)")
    parser.add_argument("--help", "-h", action="store_true", help="show this help; with --model, that model's keys")
    return parser


def wrapped(title: str, names: Sequence[str]) -> str:
    """``title: a, b, c`` wrapped to the help's width."""
    return textwrap.fill(", ".join(names), WIDTH, initial_indent=f"{title}: ", subsequent_indent="  ")


def datasets_line(config: QRecConfig) -> str:
    """The datasets found under the configured data_path and how to add one."""
    root = Path(config["data_path"]).parent
    shown = root.as_posix().rstrip("/") + "/"
    found = available_datasets(root)
    how = f"add one with: python -m dataset_prep.convert --dataset NAME --src DIR --out {shown}"
    listed = wrapped(f"Datasets under {shown}", found) if found else f"Datasets under {shown}: none found"
    return f"{listed}\n  ({how})"


def general_help(parser: ArgumentParser, config: QRecConfig) -> str:
    sections = [
        parser.format_help().rstrip(),
        textwrap.fill(OVERRIDES, WIDTH),
        textwrap.fill(LAYERING, WIDTH),
        wrapped("recbole-qrec models", qrec_model_names()),
        wrapped("RecBole models", sorted(recbole_model_names(), key=str.lower)),
        datasets_line(config),
    ]
    return "\n\n".join(sections)


TOP_LEVEL_KEY = re.compile(r"^(?P<key>[A-Za-z_]\w*)\s*:(?P<rest>.*)$")
INLINE_COMMENT = re.compile(r"\s#\s?(?P<text>.*)$")
TYPE_TAG = re.compile(r"^\((int|float|str|bool|list|dict)\b")
SENTENCE_END = re.compile(r"(?<!e\.g)(?<!i\.e)\.\s+(?=[A-Z(])")


def key_comments(path: Path) -> dict[str, str]:
    """The top-level keys of a YAML file, in order, each with the comment explaining it: its inline comment
    (with the indented comment lines continuing it), else the comment lines right above it from the one that
    starts with a type, ``(int) ...`` (an untyped comment block heads a section, not a key)."""
    comments: dict[str, str] = {}
    above: list[str] = []
    continued: str | None = None  # key whose inline comment an indented comment line continues
    for line in path.read_text(encoding="utf-8").splitlines():
        stripped = line.strip()
        key_line = TOP_LEVEL_KEY.match(line)
        if key_line:
            inline = INLINE_COMMENT.search(key_line["rest"])
            typed = [i for i, text in enumerate(above) if TYPE_TAG.match(text)]
            comments[key_line["key"]] = inline["text"] if inline else " ".join(above[typed[0]:] if typed else [])
            continued = key_line["key"] if inline else None
            above = []
        elif stripped.startswith("#") and line[0].isspace() and continued:
            comments[continued] += " " + stripped.lstrip("#").strip()
        elif stripped.startswith("#") and not line[0].isspace():
            above.append(stripped.lstrip("#").strip())
            continued = None
        else:
            above, continued = [], None
    return comments


def meaning(comment: str, limit: int = 150) -> str:
    """A YAML comment as a one-line meaning: its first sentence, at most ``limit`` characters."""
    text = " ".join(comment.split())
    end = SENTENCE_END.search(text)
    text = text[: end.start() + 1] if end else text
    return text if len(text) <= limit else text[:limit].rsplit(" ", 1)[0] + " ..."


def model_help(config: QRecConfig) -> str:
    """The model's config keys with their defaults (after layering) and meanings, grouped by the YAML setting them."""
    model, dataset = config["model"], config["dataset"]
    ours = PROPERTIES_DIR / "model" / f"{model}.yaml"
    recboles = RECBOLE_PROPERTIES_DIR / "model" / f"{model}.yaml"
    groups = [
        (f"{model}'s keys (properties/model/{model}.yaml)", ours),
        (f"{model}'s keys from RecBole (recbole/properties/model/{model}.yaml)", recboles),
        (f"Keys of dataset {dataset} (properties/dataset/{dataset}.yaml)", PROPERTIES_DIR / "dataset" / f"{dataset}.yaml"),
        ("Keys of every model (properties/overall.yaml)", PROPERTIES_DIR / "overall.yaml"),
    ]
    explained_by = [ours, PROPERTIES_DIR / "overall.yaml", recboles, RECBOLE_PROPERTIES_DIR / "overall.yaml",
                    RECBOLE_PROPERTIES_DIR / "dataset" / "sample.yaml"]
    meanings: dict[str, str] = {}
    for path in reversed([path for path in explained_by if path.is_file()]):  # the first file's comment wins
        meanings.update({key: text for key, text in key_comments(path).items() if text})

    kind = "a recbole-qrec model" if model in qrec_model_names() else "a RecBole model"
    lines = [f"{model} ({kind}): configuration keys and defaults on {dataset} (RecBole's and recbole-qrec's "
             "YAMLs layered); override any with --key=value."]
    listed: set[str] = set()
    for title, path in groups:
        keys = [key for key in key_comments(path) if key not in listed] if path.is_file() else []
        if not keys:
            continue
        lines += ["", f"{title}:"]
        for key in keys:
            setting = f"  {key} = {as_argument(config.internal_config_dict.get(key))}"
            lines.append(f"{setting:<40} {meaning(meanings.get(key, ''))}".rstrip())
        listed |= set(keys)
    lines += ["", textwrap.fill("RecBole's other keys (gpu_id, use_gpu, weight_decay, clip_grad_norm, ...) are set "
                                "the same way; see recbole/properties/overall.yaml.", WIDTH),
              "", textwrap.fill(LAYERING, WIDTH)]
    return "\n".join(lines)


def run_command(argv: Sequence[str], prog: str) -> None:
    """Parse ``argv``; print the help it asks for, or run the model."""
    parser = build_parser(prog)
    args, overrides = parser.parse_known_args([FLAG_OVERRIDES.get(arg, arg) for arg in argv])
    config_files = [name for group in args.config_files for name in group.split()]
    for option, value, default in (("--model", args.model, DEFAULT_MODEL), ("--dataset", args.dataset, DEFAULT_DATASET)):
        if value is not None and not value.strip():
            raise ConfigError(f"{option} is empty — give a name, e.g. {option}={default}, or leave {option} out for "
                              f"{default}")
    model = args.model or DEFAULT_MODEL
    if args.help:
        config = build_config(model, args.dataset, config_files, cmd_args=overrides)
        print(model_help(config) if args.model else general_help(parser, config))
        return
    if args.nproc != 1:
        if args.nproc >= 1 and "WORLD_SIZE" not in os.environ:
            # A wrong setting or dataset, met by every process alike, stops the run here before any process starts.
            check_dataset(build_config(model, args.dataset, config_files, cmd_args=overrides))
        launch(args.nproc, process_main, [*argv, "--nproc=1"], prog)  # the last --nproc counts
        return
    run_recbole_qrec(model, args.dataset, config_files, cmd_args=overrides)


def process_main(argv: Sequence[str], prog: str) -> None:
    """:func:`main` in one process of an ``--nproc`` run; a user error, which every process meets alike, is printed
    by rank 0 alone."""
    if os.environ["RANK"] == "0" or debug_requested(argv):
        main(argv, prog)
        return
    try:
        run_command(argv, prog)
    except QRecError:
        sys.exit(2)


def build_table_parser(prog: str) -> ArgumentParser:
    """Options of ``table`` (see :mod:`recbole_qrec.table`)."""
    parser = ArgumentParser(
        prog=f"{prog} table",
        description="Side-by-side table of result records: one row per model, datasets side by side, mean ± std "
        "over seeds, best in bold and second underlined, relative improvement over the best baseline.",
        allow_abbrev=False,
    )
    parser.add_argument("results", nargs="*", type=Path, default=[Path("results/results.jsonl")],
                        help="results.jsonl files (or JSON lists of records); default results/results.jsonl")
    table.add_output_arguments(parser)
    parser.add_argument("--debug", action="store_true", help="show the traceback of an error")
    return parser


def invocation(parser: argparse.ArgumentParser, argv: Sequence[str]) -> str:
    """The command line of a subcommand, as shown under the tables it writes."""
    return f"{parser.prog} {shlex.join(argv)}"


def table_command(argv: Sequence[str], prog: str) -> None:
    """``table``: build the table of result records and write it in the formats asked for."""
    parser = build_table_parser(prog)
    args = parser.parse_args(argv)
    args.command = invocation(parser, argv)
    request = table.table_request(args)
    table.publish(table.load_records(args.results), request)


def compare_command(argv: Sequence[str], prog: str) -> None:
    """``compare``: train the grid of models, datasets and seeds (other ``--key=value`` go to every run), then table it."""
    parser = ArgumentParser(prog=f"{prog} compare", description=compare.DESCRIPTION, allow_abbrev=False)
    compare.add_arguments(parser)
    args, overrides = parser.parse_known_args([FLAG_OVERRIDES.get(arg, arg) for arg in argv])
    args.command = invocation(parser, argv)
    compare.compare(args, overrides)


def sweep_command(argv: Sequence[str], prog: str) -> None:
    """``sweep``: run the hyper-parameter sweep of a YAML file (:mod:`recbole_qrec.sweep`)."""
    parser = ArgumentParser(prog=f"{prog} sweep", description=sweep.DESCRIPTION, allow_abbrev=False)
    sweep.add_arguments(parser)
    args = parser.parse_args(argv)
    args.command = invocation(parser, argv)
    sweep.run_command(args)


@contextmanager
def handling_signal(signum: int, handler: Callable[[int, Any], None]) -> Iterator[None]:
    """Inside the block ``handler`` answers signal ``signum``; outside the main thread, where Python cannot set a
    handler, nothing changes."""
    if threading.current_thread() is not threading.main_thread():
        yield
        return
    previous = signal.signal(signum, handler)
    try:
        yield
    finally:
        signal.signal(signum, previous)


@contextmanager
def terminate_as_interrupt() -> Iterator[None]:
    """Inside the block SIGTERM (``kill``, a job scheduler stopping the run) and SIGHUP (the terminal closed; unless
    ignored, as under ``nohup``) end the run as Ctrl-C does: what it wrote is removed and it exits with 143 (SIGHUP:
    129); another such signal does not interrupt that clean-up."""
    caught = [signum for signum in STOP_SIGNALS if signal.getsignal(signum) is not signal.SIG_IGN]

    def interrupt(signum: int, frame: object) -> None:
        for each in caught:
            signal.signal(each, signal.SIG_IGN)
        raise Terminated(signum)

    with ExitStack() as handlers:
        for signum in caught:
            handlers.enter_context(handling_signal(signum, interrupt))
        yield


def main(argv: Sequence[str] | None = None, prog: str = "recbole-qrec") -> None:
    """Run the command line ``argv`` (default ``sys.argv[1:]``) through the one error path."""
    argv = sys.argv[1:] if argv is None else list(argv)
    debug = debug_requested(argv)
    try:
        with terminate_as_interrupt(), user_errors(debug):
            if argv[:1] == ["table"]:
                table_command(argv[1:], prog)
            elif argv[:1] == ["compare"]:
                compare_command(argv[1:], prog)
            elif argv[:1] == ["sweep"] or any(arg == "--sweep" or arg.startswith("--sweep=") for arg in argv):
                sweep_command(argv[1:] if argv[:1] == ["sweep"] else argv, prog)
            else:
                run_command(argv, prog)
    except KeyboardInterrupt as interrupt:
        if debug:
            raise
        print("error: interrupted — no result was recorded and the run's checkpoints were removed; run the command "
              "again to start over", file=sys.stderr)
        sys.exit(interrupted_status(interrupt))
    except Exception as err:  # noqa: BLE001  (the one line for a bug; --debug shows the traceback)
        if debug:
            raise
        print(unexpected_error_line(err), file=sys.stderr)
        sys.exit(1)


def unexpected_error_line(err: Exception) -> str:
    """The one line for an exception that is not a user error: what the GPU lacked and which keys lower it for an
    out-of-memory error, else the exception itself."""
    if isinstance(err, torch.OutOfMemoryError):
        allocation = ". ".join(str(err).split(". ")[:2])  # "CUDA out of memory. Tried to allocate 29.36 GiB"
        return (f"error: {allocation}: the run needs more GPU memory than is free — lower train_batch_size (training) "
                "or eval_batch_size (evaluation scores each of its rows against every item), e.g. "
                "--eval_batch_size=1024, or free the GPU of other processes")
    return f"error: unexpected {type(err).__name__}: {single_line(err)} — rerun with --debug for the traceback"
