"""In-context image generation with a frozen LM through SPAE's words (Yu et al. 2023, §4.2, at digit scale).

A prompt is ``shots`` examples, each a class word, a colon and the image's pyramid words (the first ``depth``
layers, as the LM's own tokens), one example a line, then the query class word and a colon::

    four: the one seven … (21 words)
    seven: the one four … (21 words)
    seven:

The frozen LM continues greedily with exactly as many tokens as the examples' images hold, each step restricted
to the codebook's tokens (the decode session's per-row ``allowed`` set: :class:`genmodels.generation.session.
Sampling`); the SPAE decoder renders them and the offline digit classifier (metrics/classifier.py) says which
digit it sees. Accuracy = the share rendered as the requested class (chance: 1 / classes).

The examples of a query of class c with s ≥ 1 shots are s training images of s different classes, one of them c,
in random order (so copying the example labelled c is one way to succeed; the LM must find it); 0 shots is the
class word alone. The label lines are encoded by the LM's tokenizer; the image words are the codebook entries'
LM token ids (``model.codebook.lm_ids``), so a prompt holds exactly the tokens the LM would write.
"""
from __future__ import annotations

from dataclasses import dataclass

import torch

from .generation.session import DecodeSession, Sampling


@dataclass
class InContextResult:
    shots: int
    accuracy: float  # the share of generated images the classifier reads as the requested class
    top_word_named: float  # the share whose first generated word is the requested class word
    queries: int
    images: torch.Tensor  # (N, C, H, W) the rendered generations, requested classes 0, 1, … in turn
    words: list[list[str]]  # each generation's words


def allowed_tokens(spae, vocab: int) -> torch.Tensor:
    """(V,) bool: the LM tokens that are codebook entries."""
    mask = torch.zeros(vocab, dtype=torch.bool)
    mask[spae.codebook.lm_ids.cpu()] = True
    return mask


def example_ids(tokenizer, class_word: str, image_lm_ids: list[int] | None) -> list[int]:
    """``class_word:`` then the image's LM token ids and a newline (None: the query line, ending at the colon)."""
    head = tokenizer.encode(f"{class_word}:", add_special_tokens=False).ids
    if image_lm_ids is None:
        return head
    return head + list(image_lm_ids) + tokenizer.encode("\n", add_special_tokens=False).ids


def _pick_examples(labels: torch.Tensor, c: int, shots: int, classes: int, g: torch.Generator) -> list[int]:
    """Indices of ``shots`` training images of distinct classes, one of class ``c``, shuffled."""
    if shots == 0:
        return []
    others = [k for k in torch.randperm(classes, generator=g).tolist() if k != c][:shots - 1]
    picks = []
    for k in [c] + others:
        pool = (labels == k).nonzero().flatten()
        picks.append(int(pool[torch.randint(len(pool), (1,), generator=g)]))
    return [picks[i] for i in torch.randperm(len(picks), generator=g).tolist()]


@torch.no_grad()
def generate_images(lm, spae, prompts: list[list[int]], n_words: int, depth: int) -> tuple[torch.Tensor, torch.Tensor]:
    """Continue each prompt with ``n_words`` codebook tokens (greedy, constrained) -> (codebook ids (P, n_words),
    images (P, C, H, W))."""
    mask = allowed_tokens(spae, lm.config.vocab_size)
    session = DecodeSession(lm)
    reqs = [session.add(torch.tensor([p]), Sampling(max_new_tokens=n_words, allowed=mask)) for p in prompts]
    session.run()
    lm_to_entry = {int(t): k for k, t in enumerate(spae.codebook.lm_ids.tolist())}
    ids = torch.tensor([[lm_to_entry[int(t)] for t in r.output[0, -n_words:].tolist()] for r in reqs])
    grids = spae.config.levels[:depth]
    layers, at = [], 0
    for g in grids:
        layers.append(ids[:, at:at + g * g].to(spae.codebook.lm_ids.device))
        at += g * g
    return ids, spae.decode(layers, depth).cpu()


def in_context_accuracy(lm, spae, train_images: torch.Tensor, train_labels: torch.Tensor, classifier,
                        class_words: list[str], shots: int, queries_per_class: int = 5, depth: int | None = None,
                        seed: int = 0) -> InContextResult:
    """Generate ``queries_per_class`` images of each class with ``shots`` examples per prompt; score them."""
    from .data.words import words_of
    from .metrics.classifier import classifier_accuracy
    depth = len(spae.config.levels) if depth is None else depth
    n_words = sum(g * g for g in spae.config.levels[:depth])
    classes = len(class_words)
    g = torch.Generator().manual_seed(seed)
    codes = torch.cat([t for t in spae.encode(train_images.to(spae.codebook.vectors.device))[:depth]], dim=1).cpu()
    lm_ids = spae.codebook.lm_ids.cpu()
    prompts, wanted = [], []
    for q in range(queries_per_class * classes):
        c = q % classes
        ids = []
        for i in _pick_examples(train_labels, c, shots, classes, g):
            ids += example_ids(lm.tokenizer, class_words[int(train_labels[i])], lm_ids[codes[i]].tolist())
        prompts.append(ids + example_ids(lm.tokenizer, class_words[c], None))
        wanted.append(c)
    entry_ids, images = generate_images(lm, spae, prompts, n_words, depth)
    wanted_t = torch.tensor(wanted)
    vocab = words_of(spae.tokenizer)
    words = [[vocab[k] for k in row.tolist()] for row in entry_ids]
    named = sum(w[0] == class_words[c] for w, c in zip(words, wanted)) / len(wanted)
    return InContextResult(shots, classifier_accuracy(classifier, images, wanted_t), named, len(wanted), images, words)
