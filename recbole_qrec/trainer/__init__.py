"""Trainers: RecBole's trainers with checkpoints that load under ``torch.load(weights_only=True)``."""

from recbole_qrec.trainer.checkpoint import SafeCheckpointMixin, get_trainer, plain_config
from recbole_qrec.trainer.qbert4rec_trainer import QBert4RecTrainer

__all__ = ["QBert4RecTrainer", "SafeCheckpointMixin", "get_trainer", "plain_config"]
