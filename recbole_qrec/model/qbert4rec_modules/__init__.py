"""Building blocks of :class:`recbole_qrec.model.qbert4rec.QBert4Rec`, one concept per module:

``item_features`` (modality features per item), ``cross_attention_block``, ``contrastive``,
``injection`` (stage 1 module), ``injection_training``, ``semantic_ids`` (stages 1-2 and the
codes cache), ``masking`` (multi-mask pretraining), ``level_heads`` (per-level code classifiers).
"""
