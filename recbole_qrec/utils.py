"""Model lookup: recbole-qrec's own models first, then RecBole's."""

from __future__ import annotations

import importlib
import importlib.util
import pkgutil

from recbole.model.abstract_recommender import AbstractRecommender
from recbole.utils import get_model as get_recbole_model

import recbole_qrec.model
from recbole_qrec.errors import UnknownModelError


def qrec_model_names() -> list[str]:
    """Module names of the models recbole-qrec ships (one model per file)."""
    return sorted(info.name for info in pkgutil.iter_modules(recbole_qrec.model.__path__) if not info.ispkg)


def get_model(model_name: str) -> type[AbstractRecommender]:
    """Return the model class called ``model_name``: ``recbole_qrec.model`` first, then ``recbole.model``."""
    module_path = f"recbole_qrec.model.{model_name.lower()}"
    if importlib.util.find_spec(module_path) is not None:
        return getattr(importlib.import_module(module_path), model_name)
    try:
        return get_recbole_model(model_name)
    except (ValueError, ModuleNotFoundError) as err:
        # RecBole's lookup ends in its exlib package, whose import needs lightgbm/xgboost.
        missing = f" (RecBole's lookup also needs '{err.name}' for its external-library models)" if isinstance(err, ModuleNotFoundError) else ""
        raise UnknownModelError(
            f"Unknown model '{model_name}': it is neither a recbole-qrec model "
            f"({', '.join(qrec_model_names()) or 'none yet'}) nor a RecBole model{missing}. "
            "Model names are case-sensitive, e.g. SASRec, GRU4Rec, BERT4Rec, FDSA."
        ) from None
