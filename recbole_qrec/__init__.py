"""recbole-qrec: semantic-ID multimodal sequential recommenders as a RecBole plugin."""

from recbole_qrec.compat import import_recbole_models, patch_numpy_aliases

patch_numpy_aliases()
import_recbole_models()

__version__ = "0.1.0"
