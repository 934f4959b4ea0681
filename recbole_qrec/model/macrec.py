"""MACRec (Zhang et al., "Multi-Aspect Cross-modal Quantization for Generative Recommendation", AAAI 2026,
arXiv:2511.15122): MQL4GRec's T5 over text and image semantic IDs with cross-modal alignment in training.

* Implicit alignment: an InfoNCE loss (:func:`~recbole_qrec.quantization.alignment.info_nce`, in-batch
  negatives, ``implicit_align_temperature``) in the encoder's latent space between the text ID and the image ID of
  each row's target item, each encoded alone and mean-pooled over its ``L`` code tokens; weighted by
  ``implicit_align_weight`` and added to the task loss in both phases, on every domain that has both languages.
* Explicit alignment: MQL4GRec's tasks (:mod:`~recbole_qrec.model.mql4grec_modules.tasks`), item level
  (``text_to_image``, ``image_to_text``) and sequence level (``text_to_image_next``, ``image_to_text_next``), mixed
  with the next-item tasks of both languages by ``task_mix``; ``tasks: [text_next, image_next]`` switches it off.
* Ranking, pretraining, evaluation rules and settings are MQL4GRec's (:class:`~recbole_qrec.model.mql4grec.MQL4GRec`):
  a constrained beam search per language, both lists fused by ``beam_fusion``.

The codes are the items' ``text_sid_source`` and ``image_sid_source`` tables, as for MQL4GRec.
"""

from __future__ import annotations

from recbole.config import Config
from recbole.data.interaction import Interaction
from torch import Tensor

from recbole_qrec.data.dataset import SemanticIdDataset
from recbole_qrec.errors import ConfigError
from recbole_qrec.model.mql4grec import MQL4GRec
from recbole_qrec.model.mql4grec_modules.languages import absent_default, source_key
from recbole_qrec.model.mql4grec_modules.tasks import LANGUAGES, Task
from recbole_qrec.quantization.alignment import info_nce


class MACRec(MQL4GRec):
    """MQL4GRec plus an implicit (encoder-space InfoNCE) alignment of each item's text and image IDs."""

    def __init__(self, config: Config, dataset: SemanticIdDataset) -> None:
        lacking = [config[source_key(language)] for language in LANGUAGES
                   if absent_default(config, dataset.code_tables, language)]
        if lacking:  # MQL4GRec would leave the language out; the alignment pairs the two
            raise ConfigError(f"MACRec aligns the text and image languages, but dataset {config['dataset']} has no "
                              f"{', '.join(lacking)} (its item_content_fields: {config['item_content_fields'] or []})"
                              " — run MACRec on a dataset with both, or MQL4GRec, which runs without a language the "
                              "dataset lacks")
        super().__init__(config, dataset)
        # Numbers the config has checked (``*_weight`` >= 0, ``*temperature`` > 0).
        self.implicit_align_weight = float(config["implicit_align_weight"])
        self.implicit_align_temperature = float(config["implicit_align_temperature"])
        if self.implicit_align_weight and not self.aligns(None):
            raise ConfigError(f"implicit_align_weight is {self.implicit_align_weight} but the target has codes in "
                              f"{list(self.target_codes.languages)} only — set text_sid_source and image_sid_source, "
                              "or --implicit_align_weight=0")

    def aligns(self, domain: str | None) -> bool:
        """Whether the domain (``None``: the target) has both languages, which implicit alignment pairs."""
        return set(LANGUAGES) <= set(self.domain_codes(domain).languages)

    def item_encoding(self, tokens: Tensor) -> Tensor:
        """``[B, d_model]``: the encoder states of items' IDs, ``[B, L]`` code tokens each read alone, averaged."""
        return self.t5.get_encoder()(input_ids=tokens).last_hidden_state.mean(1)

    def implicit_align_loss(self, interaction: Interaction, domain: str | None = None) -> Tensor:
        """Symmetric InfoNCE between the text and the image encodings of the rows' target items (``POS_ITEM_ID``
        ``[B]``); other rows with the same item are no negatives."""
        items, codes = interaction[self.POS_ITEM_ID], self.domain_codes(domain)
        text, image = (self.item_encoding(codes.tokens(language, items, self.vocabs[language]))
                       for language in LANGUAGES)
        return info_nce(text, image, self.implicit_align_temperature, labels=items)

    def task_mixture_loss(self, interaction: Interaction, domain: str | None, tasks: list[Task]) -> Tensor:
        """MQL4GRec's task loss (the explicit alignment among its tasks) plus ``implicit_align_weight`` times the
        implicit alignment loss where the domain has both languages."""
        loss = super().task_mixture_loss(interaction, domain, tasks)
        if self.implicit_align_weight and self.aligns(domain):
            loss = loss + self.implicit_align_weight * self.implicit_align_loss(interaction, domain)
        return loss

