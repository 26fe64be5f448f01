"""Generation: logit processors and decode loops."""
from .decode import generate
from .sampling import choose_next, process_logits, repetition_penalty, top_k_filter, top_p_filter

__all__ = ["generate", "choose_next", "process_logits", "repetition_penalty", "top_k_filter", "top_p_filter"]
