"""Model lookup: recbole-qrec's own models first, then RecBole's.

Model names are read from the source files without importing them, so listing and checking a name
is cheap; :func:`get_model` imports only the module of the requested model (for a RecBole model,
RecBole's own ``get_model`` imports its model family's package).
"""

from __future__ import annotations

import ast
import difflib
import importlib
import importlib.util
from functools import cache
from pathlib import Path
from typing import TYPE_CHECKING

import recbole_qrec.model
from recbole_qrec.compat import undo_sine_anomaly_detection
from recbole_qrec.errors import ConfigError, UnknownModelError

if TYPE_CHECKING:
    from recbole.model.abstract_recommender import AbstractRecommender

RECBOLE_MODEL_FAMILIES = (
    "general_recommender",
    "context_aware_recommender",
    "sequential_recommender",
    "knowledge_aware_recommender",
    "exlib_recommender",
)


@cache
def qrec_model_names() -> tuple[str, ...]:
    """Class names of the models recbole-qrec ships (file ``<name lower>.py`` defines class ``<Name>``)."""
    names = []
    for path in sorted(Path(recbole_qrec.model.__path__[0]).glob("*.py")):
        tree = ast.parse(path.read_text(encoding="utf-8"))
        names += [node.name for node in tree.body if isinstance(node, ast.ClassDef) and node.name.lower() == path.stem]
    return tuple(names)


@cache
def recbole_model_names() -> tuple[str, ...]:
    """Class names of RecBole's models, read from its model families' ``__init__.py`` (nothing imported)."""
    spec = importlib.util.find_spec("recbole")
    if spec is None or not spec.submodule_search_locations:
        return ()
    model_dir = Path(spec.submodule_search_locations[0]) / "model"
    names = []
    for family in RECBOLE_MODEL_FAMILIES:
        tree = ast.parse((model_dir / family / "__init__.py").read_text(encoding="utf-8"))
        names += [alias.name for node in tree.body if isinstance(node, ast.ImportFrom) for alias in node.names]
    return tuple(names)


def get_model(model_name: str) -> type[AbstractRecommender]:
    """Return the model class called ``model_name``: ``recbole_qrec.model`` first, then ``recbole.model``."""
    if model_name not in qrec_model_names() and model_name not in recbole_model_names():
        raise UnknownModelError(unknown_model_message(model_name))
    try:
        with undo_sine_anomaly_detection():
            if model_name in qrec_model_names():
                return getattr(importlib.import_module(f"recbole_qrec.model.{model_name.lower()}"), model_name)
            from recbole.utils import get_model as get_recbole_model

            return get_recbole_model(model_name)
    except ModuleNotFoundError as err:  # e.g. RecBole's exlib models need lightgbm/xgboost
        raise ConfigError(f"Model '{model_name}' needs the package '{err.name}', which is not installed — "
                          f"install it (pip install {err.name}) or choose another model") from None


def unknown_model_message(model_name: str) -> str:
    """One line: the unknown name and the model meant (same name in another case, or a close spelling)."""
    known = [*qrec_model_names(), *recbole_model_names()]
    same_letters = [name for name in known if name.lower() == model_name.lower()]
    close = same_letters or difflib.get_close_matches(model_name, known, n=1)
    if close:
        return f"Unknown model '{model_name}' — did you mean '{close[0]}'? Model names are case-sensitive."
    return (f"Unknown model '{model_name}' — choose a recbole-qrec model ({', '.join(qrec_model_names())}) or a "
            "RecBole model (e.g. SASRec, GRU4Rec, BERT4Rec, FDSA); model names are case-sensitive.")
