"""Trainers: RecBole's trainers with checkpoints that load under ``torch.load(weights_only=True)``.

``get_trainer`` picks ``<Model>Trainer`` from this module when it exists, RecBole's choice otherwise.
"""

from recbole_qrec.trainer.checkpoint import SafeCheckpointMixin, get_trainer, plain_config, with_safe_checkpoint
from recbole_qrec.trainer.pretrain_trainer import PretrainFineTuneTrainer

QBert4RecTrainer = MQL4GRecTrainer = MACRecTrainer = with_safe_checkpoint(PretrainFineTuneTrainer)

__all__ = ["MACRecTrainer", "MQL4GRecTrainer", "PretrainFineTuneTrainer", "QBert4RecTrainer", "SafeCheckpointMixin",
           "get_trainer", "plain_config", "with_safe_checkpoint"]
