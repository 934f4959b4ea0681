"""Where recbole-qrec's YAML defaults live, installed or in a source checkout.

``setup.py`` maps the top-level ``properties/`` folder into the package as ``recbole_qrec/properties``
(package data), so a non-editable install carries every default. An editable install or a source
checkout reads the same files from ``properties/`` beside the package.
"""

from __future__ import annotations

from pathlib import Path

from recbole_qrec.errors import PackagingError

PACKAGE_DIR = Path(__file__).resolve().parent


def find_properties_dir() -> Path:
    """The folder holding ``overall.yaml``, ``model/`` and ``dataset/``; raises if the install lacks it."""
    for candidate in (PACKAGE_DIR / "properties", PACKAGE_DIR.parent / "properties"):
        if (candidate / "overall.yaml").is_file():
            return candidate
    raise PackagingError(
        f"recbole-qrec's YAML defaults (properties/overall.yaml) are missing from {PACKAGE_DIR} — "
        "reinstall the package (pip install recbole-qrec, or pip install . from a source checkout)"
    )


PROPERTIES_DIR = find_properties_dir()
