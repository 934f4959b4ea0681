"""recbole-qrec: semantic-ID multimodal sequential recommenders as a RecBole plugin."""

from recbole_qrec.compat import patch_numpy_aliases

patch_numpy_aliases()

__version__ = "0.1.0"
