"""Constrained generation of semantic IDs shared by the generative recommenders (TIGER, MQL4GRec; MMESID's
decoder-only language model: :mod:`~recbole_qrec.generation.causal`)."""

from recbole_qrec.generation.beam_search import constrained_beam_search
from recbole_qrec.generation.causal import causal_beam_search, causal_exact_scores, prompt_positions
from recbole_qrec.generation.exact_scores import EVAL_MODES, checked_eval_mode, exact_score_matrix
from recbole_qrec.generation.masks import additive_causal_mask, additive_padding_mask
from recbole_qrec.generation.prefix_index import PrefixIndex
from recbole_qrec.generation.reference import TokenTrie, generate_with_trie
from recbole_qrec.generation.scores import admit_unseen_items, beam_score_matrix, code_groups, credit_target_group
from recbole_qrec.generation.vocab import SemanticIdVocab

__all__ = ["EVAL_MODES", "PrefixIndex", "SemanticIdVocab", "TokenTrie", "additive_causal_mask", "additive_padding_mask",
           "admit_unseen_items", "beam_score_matrix", "causal_beam_search", "causal_exact_scores", "checked_eval_mode",
           "code_groups", "constrained_beam_search", "credit_target_group", "exact_score_matrix", "generate_with_trie",
           "prompt_positions"]
