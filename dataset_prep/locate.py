"""Find a processed dataset: ``--src``, then ``$QREC_DATA_DIR``, then ``../shared/data/amazon``."""

from __future__ import annotations

import os
from pathlib import Path

from recbole_qrec.errors import DatasetNotFoundError

ENV_VAR = "QREC_DATA_DIR"
REPO_ROOT = Path(__file__).resolve().parents[1]
SHARED_DATA_DIR = REPO_ROOT.parent / "shared" / "data" / "amazon"

# Short dataset names used by the semantic-ID papers -> Amazon 2018 category file names.
AMAZON18_DOMAINS = {
    "Instruments": "Musical_Instruments",
    "Arts": "Arts_Crafts_and_Sewing",
    "Games": "Video_Games",
}


def search_roots(src: str | os.PathLike | None = None) -> list[Path]:
    """Folders searched for ``<name>/<name>.inter.json``, in priority order."""
    if src is not None:
        return [Path(src)]
    roots = []
    if os.environ.get(ENV_VAR):
        roots.append(Path(os.environ[ENV_VAR]))
    if SHARED_DATA_DIR.is_dir():
        roots.append(SHARED_DATA_DIR)
    return roots


def how_to_get(name: str) -> str:
    """The commands that produce the processed files of ``name``."""
    domain = AMAZON18_DOMAINS.get(name, "<Amazon_2018_category>")
    return (
        f"Either point {ENV_VAR} (or --src) at a folder holding {name}/{name}.inter.json "
        f"(the processed LC-Rec/MQL4GRec format), or build it from the raw Amazon 2018 files:\n"
        f"  python -m dataset_prep.amazon18 --domain {domain} --name {name} --raw-dir raw --out data --download\n"
        f"  export {ENV_VAR}=$PWD/data"
    )


def find_processed_dataset(name: str, src: str | os.PathLike | None = None) -> Path:
    """Return the folder holding ``<name>.inter.json``.

    ``src`` may be that folder itself or its parent. Raises :class:`DatasetNotFoundError`
    naming every place searched and the command that creates the files.
    """
    roots = search_roots(src)
    for root in roots:
        for folder in (root / name, root):
            if (folder / f"{name}.inter.json").is_file():
                return folder
    searched = ", ".join(str(root / name) for root in roots) or f"nothing (no --src, no ${ENV_VAR}, no {SHARED_DATA_DIR})"
    raise DatasetNotFoundError(f"Dataset '{name}' not found: searched {searched}.\n{how_to_get(name)}")
