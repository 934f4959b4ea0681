"""Build a RecBole ``Config`` with recbole-qrec's ``properties/`` layered under the user's settings.

Order (later wins), exactly RecBole's own layering with our files inserted first among the
external files: RecBole's internal defaults < ``properties/overall.yaml`` <
``properties/model/<model>.yaml`` < ``properties/dataset/<dataset>.yaml`` < the user's
config files < ``config_dict`` < ``--key=value`` command-line arguments.
"""

from __future__ import annotations

import difflib
import sys
from collections.abc import Iterator, Sequence
from contextlib import contextmanager
from functools import cache
from pathlib import Path
from typing import Any

import yaml
from recbole.config import Config
from recbole.utils import argument_list

import recbole
from recbole_qrec.errors import ConfigError
from recbole_qrec.utils import get_model

PROPERTIES_DIR = Path(__file__).resolve().parents[1] / "properties"
RECBOLE_PROPERTIES_DIR = Path(recbole.__file__).resolve().parent / "properties"


def default_config_files(model_name: str, dataset: str) -> list[str]:
    """recbole-qrec's YAML defaults that exist for this model and dataset, lowest priority first."""
    candidates = [
        PROPERTIES_DIR / "overall.yaml",
        PROPERTIES_DIR / "model" / f"{model_name}.yaml",
        PROPERTIES_DIR / "dataset" / f"{dataset}.yaml",
    ]
    return [str(path) for path in candidates if path.is_file()]


@cache
def known_config_keys() -> frozenset[str]:
    """Keys of RecBole's YAMLs and argument lists and of our harness YAMLs (not the tokenizer's own file)."""
    keys = set(argument_list.general_arguments + argument_list.training_arguments)
    keys |= set(argument_list.evaluation_arguments + argument_list.dataset_arguments)
    harness_files = [PROPERTIES_DIR / "overall.yaml", *PROPERTIES_DIR.glob("model/*.yaml"), *PROPERTIES_DIR.glob("dataset/*.yaml")]
    for path in [*RECBOLE_PROPERTIES_DIR.rglob("*.yaml"), *harness_files]:
        keys |= set(yaml.safe_load(path.read_text(encoding="utf-8")) or {})
    return frozenset(keys)


def check_config_keys(keys: Sequence[str]) -> None:
    """Raise :class:`ConfigError` for a key no RecBole or recbole-qrec component reads."""
    known = known_config_keys()
    for key in keys:
        if key not in known:
            close = difflib.get_close_matches(key, known, n=1)
            hint = f" Did you mean '{close[0]}'?" if close else ""
            raise ConfigError(f"Unknown config key '{key}': no RecBole or recbole-qrec component reads it.{hint}")


def check_time_field_loaded(config: Config) -> None:
    """A time-ordered split needs the timestamp column in ``load_col``."""
    load_col = config["load_col"]
    if config["eval_args"]["order"] != "TO" or load_col is None:
        return
    if config["TIME_FIELD"] not in load_col.get("inter", []):
        raise ConfigError(
            f"eval_args.order is TO (time order) but load_col.inter {load_col.get('inter')} lacks "
            f"'{config['TIME_FIELD']}': add it, e.g. load_col: {{inter: [user_id, item_id, {config['TIME_FIELD']}]}}."
        )


MATMUL_PRECISIONS = ("highest", "high", "medium")


def check_matmul_precision(config: Config) -> None:
    """``float32_matmul_precision`` must be one of torch's settings."""
    value = config["float32_matmul_precision"]
    if value not in MATMUL_PRECISIONS:
        raise ConfigError(f"float32_matmul_precision must be one of {', '.join(MATMUL_PRECISIONS)} "
                          f"(torch.set_float32_matmul_precision), got {value!r}.")


def check_user_files_exist(config_file_list: Sequence[str]) -> None:
    for path in config_file_list:
        if not Path(path).is_file():
            raise ConfigError(f"Config file '{path}' does not exist (given in --config_files).")


@contextmanager
def command_line(args: Sequence[str]) -> Iterator[None]:
    """Show RecBole's ``Config`` exactly ``args`` as the command line (it parses ``sys.argv``)."""
    saved = sys.argv
    sys.argv = [saved[0], *args]
    try:
        yield
    finally:
        sys.argv = saved


def build_config(
    model: str,
    dataset: str,
    config_file_list: Sequence[str] = (),
    config_dict: dict[str, Any] | None = None,
    cmd_args: Sequence[str] = (),
) -> Config:
    """Resolve ``model`` and build its RecBole ``Config`` with recbole-qrec's defaults underneath."""
    model_class = get_model(model)
    check_user_files_exist(config_file_list)
    files = default_config_files(model_class.__name__, dataset) + list(config_file_list)
    with command_line(cmd_args):
        try:
            config = Config(model=model_class, dataset=dataset, config_file_list=files, config_dict=config_dict)
        except SyntaxError as err:  # RecBole's report of a command-line key given twice with different values
            raise ConfigError(f"RecBole rejected the command line: {err.msg} Give each --key=value once.") from err
    check_config_keys(list(config.external_config_dict))
    check_time_field_loaded(config)
    check_matmul_precision(config)
    return config
