"""The two quantitative languages: their code tables per domain and their blocks of one T5 vocabulary.

Vocabulary layout (``K`` codes per level, the largest code of any language and domain + 1)::

    0 pad / decoder start | 1 eos | 2..7 task tokens | text: L_text blocks of K | image: L_image blocks of K

Each language has its own :class:`~recbole_qrec.generation.SemanticIdVocab` whose ``n_special`` is
the start of its block, so the shared constrained beam search decodes either language unchanged
and text and image tokens never share an id. The last language's vocab spans the whole vocabulary.
"""

from __future__ import annotations

from collections.abc import Mapping

from recbole.config import Config
from torch import Tensor, nn

from recbole_qrec.data.sid import SID_FILE, content_code_table, item_code_table
from recbole_qrec.errors import MalformedDataError
from recbole_qrec.generation import SemanticIdVocab
from recbole_qrec.model.layers import code_tokens
from recbole_qrec.model.mql4grec_modules.tasks import LANGUAGES, N_SPECIAL


def source_key(language: str) -> str:
    """The config key naming a language's codes (``text_sid_source``, ``image_sid_source``)."""
    return f"{language}_sid_source"


def enabled_languages(config: Config) -> list[str]:
    """The languages whose source key is set (``~`` switches a language off)."""
    return [language for language in LANGUAGES if config[source_key(language)] is not None]


class DomainCodes(nn.Module):
    """A domain's unique code tables ``[n_items, L]``, one buffer per language it has."""

    def __init__(self, tables: Mapping[str, Tensor], persistent: bool) -> None:
        super().__init__()
        self.languages = tuple(tables)
        for language, codes in tables.items():
            self.register_buffer(f"{language}_codes", codes, persistent=persistent)

    def codes(self, language: str) -> Tensor:
        return getattr(self, f"{language}_codes")

    def tokens(self, language: str, items: Tensor, vocab: SemanticIdVocab) -> Tensor:
        """Item ids ``[...]`` -> ``language`` token ids ``[..., L]`` (padding items -> padding tokens)."""
        return code_tokens(self.codes(language), items, vocab)


def absent_default(config: Config, code_tables: Mapping[str, Tensor], language: str) -> bool:
    """Whether ``language``'s source is the model's default, not a user's setting, and names a content field the
    dataset lacks (e.g. ``image_codes`` on a dataset without images)."""
    key = source_key(language)
    return key not in config.external_config_dict and config[key] != SID_FILE and config[key] not in code_tables


def target_codes(config: Config, code_tables: Mapping[str, Tensor], disambiguate: bool) -> DomainCodes:
    """The target's tables of every enabled language, saved with the model; content codes with TIGER's extra level
    when ``disambiguate``, else as they are (items may share an ID). A language whose default source the dataset lacks
    is left out (the run's content sources record that field missing); a source the user names and the dataset lacks
    is a ``ConfigError``."""
    languages = [language for language in enabled_languages(config)
                 if not absent_default(config, code_tables, language)]
    return DomainCodes({language: item_code_table(config, code_tables, source_key(language), disambiguate=disambiguate)
                        for language in languages}, persistent=True)


def source_codes(config: Config, code_tables: Mapping[str, Tensor], languages: tuple[str, ...],
                 disambiguate: bool) -> DomainCodes:
    """A source domain's tables of the target's ``languages`` whose content field it has (not saved: training only),
    with TIGER's extra level when ``disambiguate``.

    A language the target reads from the tokenizer's ``.sid`` file (``file``) is not looked up in sources.
    """
    fields = {language: config[source_key(language)] for language in languages}
    return DomainCodes({language: content_code_table(code_tables[field]) if disambiguate else code_tables[field]
                        for language, field in fields.items() if field != SID_FILE and field in code_tables},
                       persistent=False)


def language_vocabs(domains: list[DomainCodes]) -> dict[str, SemanticIdVocab]:
    """One vocab per language of ``domains[0]`` (the target), in consecutive blocks after the special tokens."""
    levels = {language: domains[0].codes(language).shape[1] for language in domains[0].languages}
    tables = [(language, domain.codes(language)) for domain in domains for language in domain.languages]
    for language, codes in tables:
        if codes.shape[1] != levels[language]:
            raise MalformedDataError(f"{language} codes have {codes.shape[1]} levels in a source domain but "
                                     f"{levels[language]} in the target — give every domain codes of one layout")
    codebook_size = max(int(codes.max()) for _, codes in tables) + 1
    vocabs, start = {}, N_SPECIAL
    for language, n_levels in levels.items():
        vocabs[language] = SemanticIdVocab(levels=n_levels, codebook_size=codebook_size, n_special=start)
        start = vocabs[language].size
    return vocabs
