"""The contract of models that are pretrained before fine-tuning (QBert4Rec, MQL4GRec).

:class:`~recbole_qrec.trainer.PretrainFineTuneTrainer` runs :meth:`PretrainableRecommender.pretrain_loss`
on the pretraining loaders it gets through ``fit(..., pretrain_data=...)``, then RecBole's usual fit
with ``calculate_loss``.
"""

from __future__ import annotations

from recbole.data.interaction import Interaction
from recbole.model.abstract_recommender import SequentialRecommender
from torch import Tensor


class PretrainableRecommender(SequentialRecommender):
    """A sequential recommender with a pretraining loss on the target's or a source domain's sequences."""

    def pretrain_loss(self, interaction: Interaction, domain: str | None = None) -> Tensor:
        """The pretraining loss (a scalar) of a batch of ``B`` training sequences.

        ``interaction`` holds RecBole's sequential fields: ``ITEM_SEQ`` ``[B, S]`` (left-aligned histories,
        0-padded), ``ITEM_SEQ_LEN`` ``[B]`` and ``POS_ITEM_ID`` ``[B]`` (the next item). ``domain``: the
        pretraining source the batch comes from (its item ids index that source's code tables, found on
        the dataset under this name), ``None`` for the target.
        """
        raise NotImplementedError
