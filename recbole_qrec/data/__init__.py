"""Dataset plumbing between ``dataset_prep`` and RecBole's ``create_dataset``."""

from recbole_qrec.data.atomic_files import check_item_features, ensure_atomic_files

__all__ = ["check_item_features", "ensure_atomic_files"]
