"""Dataset plumbing between the atomic files (written by ``dataset_prep``) and RecBole's ``create_dataset``.

``create_dataset`` and ``data_preparation`` import RecBole on first use, so the light modules of this
package (``features``, ``atomic_files``, ``checks``) load in milliseconds for ``dataset_prep``.
"""

from typing import Any

from recbole_qrec.data.atomic_files import available_datasets, check_item_features, ensure_atomic_files
from recbole_qrec.data.checks import check_dataset

__all__ = ["available_datasets", "check_dataset", "check_item_features", "create_dataset", "data_preparation",
           "ensure_atomic_files"]
RECBOLE_BUILDERS = ("create_dataset", "data_preparation")


def __getattr__(name: str) -> Any:
    if name in RECBOLE_BUILDERS:
        from recbole_qrec.data import utils

        return getattr(utils, name)
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")
