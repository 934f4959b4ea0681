"""What a run shows on the console, RecBole-style but short.

Progress bars (RecBole's ``show_progress``, tqdm on stderr) are on when stderr is a terminal and off
otherwise, unless ``show_progress`` is set to True or False. The console lists only the settings that
differ from the defaults (RecBole's, then recbole-qrec's ``properties/``); the full configuration
goes to the run's log file only.
"""

from __future__ import annotations

import logging
import sys
from typing import Any

from recbole.config import Config
from recbole.utils import set_color

from recbole_qrec.errors import ConfigError

FILE_ONLY = {"file_only": True}  # ``extra=`` for a log record that the console leaves out
UNSET = object()


class HideFileOnlyRecords(logging.Filter):
    """Drops log records logged with ``extra=FILE_ONLY`` (attached to console handlers)."""

    def filter(self, record: logging.LogRecord) -> bool:
        return not getattr(record, "file_only", False)


HIDE_FILE_ONLY = HideFileOnlyRecords()


def resolve_show_progress(value: Any) -> bool:
    """``show_progress`` as given (True/False), or, when unset (``~``), whether stderr is a terminal."""
    if value is None:
        return sys.stderr.isatty()
    if not isinstance(value, bool):
        raise ConfigError(f"show_progress must be True, False or ~ (on when stderr is a terminal), got {value!r} — "
                          "e.g. --show_progress=False")
    return value


def changed_settings(config: Config) -> dict[str, Any]:
    """``{key: final value}`` of the user's settings (files, ``config_dict``, overrides) that differ from the
    defaults (RecBole's and recbole-qrec's YAMLs, ``Config.internal_config_dict``)."""
    return {key: config[key] for key, value in config.external_config_dict.items()
            if config.internal_config_dict.get(key, UNSET) != value}


def log_settings(config: Config) -> None:
    """Log the changed settings to every handler and the full configuration to the log file only."""
    root = logging.getLogger()
    for handler in root.handlers:
        if isinstance(handler, logging.StreamHandler) and not isinstance(handler, logging.FileHandler):
            handler.addFilter(HIDE_FILE_ONLY)
    log_file = next((handler.baseFilename for handler in root.handlers if isinstance(handler, logging.FileHandler)),
                    "the log file")
    changed = changed_settings(config)
    lines = [set_color(key, "cyan") + " = " + set_color(str(value), "yellow") for key, value in changed.items()]
    root.info(set_color(f"{config['model']} on {config['dataset']}, settings that differ from the defaults", "pink")
              + f" (full configuration in {log_file}):\n" + ("\n".join(lines) or "none"))
    root.info(config, extra=FILE_ONLY)
