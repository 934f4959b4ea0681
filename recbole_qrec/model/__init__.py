"""recbole-qrec's own models, one per file (``<modelname lower>.py`` defines class ``<ModelName>``).

:func:`recbole_qrec.utils.get_model` looks here before falling back to RecBole's models.
"""
