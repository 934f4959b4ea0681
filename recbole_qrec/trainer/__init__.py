"""Trainers: RecBole's trainers with checkpoints that load under ``torch.load(weights_only=True)``."""

from recbole_qrec.trainer.checkpoint import SafeCheckpointMixin, get_trainer, plain_config

__all__ = ["SafeCheckpointMixin", "get_trainer", "plain_config"]
