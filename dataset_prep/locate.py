"""Find a processed dataset: in ``--src`` when given, else in ``$QREC_DATA_DIR``."""

from __future__ import annotations

import os
from pathlib import Path

from recbole_qrec.errors import DatasetNotFoundError

ENV_VAR = "QREC_DATA_DIR"

# Short dataset names used by the semantic-ID papers -> Amazon 2018 category file names.
AMAZON18_DOMAINS = {
    "Instruments": "Musical_Instruments",
    "Arts": "Arts_Crafts_and_Sewing",
    "Games": "Video_Games",
}


def search_roots(src: str | os.PathLike | None = None) -> list[Path]:
    """Folders searched for ``<name>/<name>.inter.json``: ``src`` if given, else ``$QREC_DATA_DIR`` if set."""
    if src is not None:
        return [Path(src)]
    return [Path(os.environ[ENV_VAR])] if os.environ.get(ENV_VAR) else []


def how_to_get(name: str) -> str:
    """One sentence: where to point the search, or the command that builds ``name`` from raw Amazon 2018 files."""
    domain = AMAZON18_DOMAINS.get(name, "<Amazon_2018_category>")
    return (f"give --src (or set {ENV_VAR}) to a folder holding {name}/{name}.inter.json (the processed "
            f"LC-Rec/MQL4GRec format), or build it from the raw Amazon 2018 files with "
            f"'python -m dataset_prep.amazon18 --domain {domain} --name {name} --raw-dir raw --out data --download' "
            "and pass --src data")


def find_processed_dataset(name: str, src: str | os.PathLike | None = None) -> Path:
    """Return the folder holding ``<name>.inter.json``.

    ``src`` may be that folder itself or its parent. Raises :class:`DatasetNotFoundError`
    naming every place searched and how to get the files.
    """
    roots = search_roots(src)
    for root in roots:
        for folder in (root / name, root):
            if (folder / f"{name}.inter.json").is_file():
                return folder
    searched = f"searched {', '.join(str(root / name) for root in roots)}" if roots else f"no --src given and {ENV_VAR} is not set"
    raise DatasetNotFoundError(f"Processed dataset '{name}' not found ({searched}) — {how_to_get(name)}")
