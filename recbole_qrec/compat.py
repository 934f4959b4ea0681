"""Compatibility shims that let RecBole 1.2.1 run on numpy 2 without editing RecBole.

RecBole's ``Config.compatibility_settings`` re-creates the numpy aliases removed in 1.20
(``np.float = np.float_`` ...), but reads ``np.float_``, ``np.complex_`` and ``np.unicode_``,
which numpy 2 removed as well. Restoring those three names (to the types they always aliased)
before a ``Config`` is built is enough for RecBole's config, data and evaluator code to run.

RecBole's ``recbole/model/sequential_recommender/sine.py`` calls
``torch.autograd.set_detect_anomaly(True)`` at import time, and RecBole's ``get_model`` imports it
with every sequential model. Anomaly detection then stays on for the whole process: every autograd
op records a traceback (training steps several times slower) and any NaN in a backward pass raises.
:func:`import_recbole_models` imports RecBole's sequential models once, up front, and turns it off.

The other known breakages are handled where they belong:

* checkpoints that load under ``torch.load(weights_only=True)``: :mod:`recbole_qrec.trainer`;
* pandas 3 breaks RecBole's atomic-file loading: ``setup.py`` pins ``pandas<3``;
* ``recbole.quick_start`` imports ray (needs numpy<2 and setuptools<81): this package never
  imports it and drives RecBole through ``Config``/``create_dataset``/``data_preparation``.
"""

from __future__ import annotations

import numpy as np
import torch

NUMPY_REMOVED_ALIASES: dict[str, type] = {
    "float_": np.float64,
    "complex_": np.complex128,
    "unicode_": np.str_,
}


def patch_numpy_aliases() -> None:
    """Restore the numpy 1.x aliases RecBole 1.2.1 reads, where numpy no longer has them."""
    for name, target in NUMPY_REMOVED_ALIASES.items():
        if name not in np.__dict__:
            setattr(np, name, target)


def import_recbole_models() -> None:
    """Import RecBole's sequential models now and undo the global anomaly detection that SINE's module turns on."""
    import recbole.model.sequential_recommender  # noqa: F401  (imports sine.py)

    torch.autograd.set_detect_anomaly(False)
