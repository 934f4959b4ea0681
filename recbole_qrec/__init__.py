"""recbole-qrec: semantic-ID multimodal sequential recommenders as a RecBole plugin.

Importing the package loads nothing heavy: torch, RecBole and the models are imported by the modules
that use them (:mod:`recbole_qrec.config`, :func:`recbole_qrec.utils.get_model`, ...).
"""

__version__ = "0.1.0"
