"""The settings of QBert4Rec's stage 1 (cross-modal injection) that are checked before a run starts."""

from __future__ import annotations

from recbole.config import Config

from recbole_qrec.errors import ConfigError, checked_choice
from recbole_qrec.model.qbert4rec_modules.injection import GATE_OBJECTIVES

FUSIONS = ("dynamic", "static")  # injection depth: gated per item, or every block for every item
PROJECTIONS = ("learned", "fixed")  # modality projections: trained, or kept at their initialisation


def check_injection_settings(config: Config) -> None:
    """Stage 1's choice-valued keys and ``depth_target`` (also checked with the model's settings, before a run logs
    anything or its tokenize stage starts)."""
    checked_choice("fusion", config["fusion"], FUSIONS)
    checked_choice("injection_projection", config["injection_projection"], PROJECTIONS)
    checked_choice("gate_objective", config["gate_objective"], GATE_OBJECTIVES)
    if config["depth_target"] > config["injection_layers"]:
        raise ConfigError(f"depth_target is {config['depth_target']}, deeper than the {config['injection_layers']} "
                          "injection_layers — set it between 1 and injection_layers")
