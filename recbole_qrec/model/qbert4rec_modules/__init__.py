"""Building blocks of Q-Bert4Rec, one concept per module: ``cross_attention_block``, ``contrastive``,
``injection`` (the stage-1 module), ``injection_settings`` (its keys, checked before a run starts),
``injection_training`` (run by the tokenize stage, :mod:`recbole_qrec.qbert4rec_stage`), ``masking`` (multi-mask
pretraining), ``level_heads`` (per-level code classifiers of :class:`recbole_qrec.model.qbert4rec.QBert4Rec`),
``item_output`` (its item-level output layer), ``fused_encoder`` (its transformer: RecBole's encoder through fused
attention kernels).
"""
