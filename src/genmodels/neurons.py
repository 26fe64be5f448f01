"""Multimodal neurons in a text-only LM (Schwettmann et al. 2023, "Multimodal Neurons in Pretrained Text-Only
Transformers", arXiv 2308.01544), probed through SPAE's words.

1. Project: each image becomes its SPAE pyramid words, fed to the frozen LM as its own tokens (the codebook
   entries' LM ids; the paper's alternative, a learned linear map into ``inputs_embeds``, is not done here).
2. Record: every MLP neuron's activation — the input of each layer's ``down`` projection (SwiGLU:
   silu(gate·x) ⊙ up·x), averaged over the image's word positions: A (N, layers, d_ff).
3. Rank by class selectivity: with μ_c the neuron's mean activation over images of class c, c* = argmax μ_c,
       s = (μ_{c*} − mean_{c ≠ c*} μ_c) / (σ + 1e-6)          σ: its standard deviation over all images
4. Decode: a neuron's output weights w (d_model: its column of ``down``) through the final norm's gain g and the
   unembedding U, logits = U (g ⊙ w) (the logit lens on the neuron's write direction); its promoted words are the
   top ``words`` tokens. A neuron "names its class" when one of them, stripped of its word-start mark and
   lower-cased, is the class word ("seven") or its digit ("7").

``probe(...)`` returns the ranked neurons; ``write_report`` writes ``neurons.tsv`` and ``neurons.png`` (a row
per neuron: its top-activating images). ``genmodels neurons`` (cli_spae.py) is the command over them.
"""
from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

import torch

MARKS = "Ġ▁ "
HEADER = "rank\tlayer\tneuron\tclass\tselectivity\tnames_class\tpromoted"


@dataclass
class Neuron:
    layer: int
    index: int
    selectivity: float
    klass: int  # c*: the class it fires for most
    promoted: list[str]  # the words its output weights promote most, best first
    names_class: bool
    top_images: list[int]  # indices of the images that activate it most


@torch.no_grad()
def activations(lm, spae, images: torch.Tensor, batch: int = 64) -> torch.Tensor:
    """(N, layers, d_ff): each MLP neuron's mean activation over an image's SPAE-word positions."""
    downs = sorted((p for p in lm.projections() if p.role == "down"), key=lambda p: p.layer)
    seen: list[torch.Tensor] = []
    hooks = [p.module.register_forward_pre_hook(lambda m, args: seen.append(args[0].mean(1))) for p in downs]
    lm_ids = spae.codebook.lm_ids
    out = []
    try:
        for i in range(0, len(images), batch):
            codes = torch.cat(spae.encode(images[i:i + batch].to(lm_ids.device)), dim=1)  # (b, 21) entries
            seen.clear()
            lm(lm_ids[codes].to(next(lm.parameters()).device))
            out.append(torch.stack(seen, 1).float().cpu())  # (b, layers, d_ff)
    finally:
        for h in hooks:
            h.remove()
    return torch.cat(out)


def selectivity(acts: torch.Tensor, labels: torch.Tensor, classes: int) -> tuple[torch.Tensor, torch.Tensor]:
    """``acts`` (N, M) -> (s (M,), c* (M,)): the class-selectivity index above and each neuron's class."""
    mu = torch.stack([acts[labels == c].mean(0) for c in range(classes)])  # (C, M)
    best, klass = mu.max(0)
    rest = (mu.sum(0) - best) / (classes - 1)
    return (best - rest) / (acts.std(0) + 1e-6), klass


def promoted_words(lm, layer: int, index: int, k: int) -> list[str]:
    """The ``k`` tokens U (g ⊙ w) favours most for neuron ``index`` of ``layer``'s MLP."""
    down = next(p for p in lm.projections() if p.role == "down" and p.layer == layer).module
    w = down.weight[:, index].float()  # (d_model,)
    gain = getattr(getattr(lm, "norm", None), "weight", None)
    if gain is not None:
        w = w * gain.float()
    head = lm.output_head()
    table = getattr(head, "weight", None)
    table = lm.embedding().weight if table is None else table  # (V, d_model) (tied: the embedding)
    top = (table.float() @ w).topk(k).indices.tolist()
    return [lm.tokenizer.decode([t]) for t in top]


def _names(words: list[str], class_word: str, digit: str) -> bool:
    return any(w.strip(MARKS).lower() in (class_word, digit) for w in words)


def probe(lm, spae, images: torch.Tensor, labels: torch.Tensor, class_words: list[str], top: int = 20,
          words: int = 20, per_neuron: int = 8) -> tuple[list[Neuron], dict[str, float]]:
    """The ``top`` most class-selective MLP neurons, decoded; with the share of them that name their class and the
    same share for as many neurons drawn at random (seed 0), the baseline."""
    acts = activations(lm, spae, images)  # (N, L, F)
    n, layers, width = acts.shape
    flat = acts.reshape(n, layers * width)
    s, klass = selectivity(flat, labels.cpu(), len(class_words))
    found = []
    for j in s.topk(top).indices.tolist():
        layer, index, c = j // width, j % width, int(klass[j])
        promoted = promoted_words(lm, layer, index, words)
        found.append(Neuron(layer, index, float(s[j]), c, promoted, _names(promoted, class_words[c], str(c)),
                            flat[:, j].topk(min(per_neuron, n)).indices.tolist()))
    g = torch.Generator().manual_seed(0)
    rand = torch.randperm(layers * width, generator=g)[:top].tolist()
    base = sum(_names(promoted_words(lm, j // width, j % width, words), class_words[int(klass[j])], str(int(klass[j])))
               for j in rand) / top
    return found, {"share": sum(x.names_class for x in found) / top, "random_share": base,
                   "neurons": layers * width, "images": n}


def check_report_targets(out: str | Path) -> tuple[Path, Path]:
    """``(out/neurons.tsv, out/neurons.png)``, each new or one genmodels wrote; ``out`` a folder or new. Anything
    else is refused naming it and ``--out`` (checked before any work and before either file is written)."""
    from .generation.image_file import check_image_target
    out = Path(out)
    if out.exists() and not out.is_dir():
        raise FileExistsError(f"--out {out} is a file; give a folder for neurons.tsv and neurons.png")
    tsv, png = out / "neurons.tsv", out / "neurons.png"
    if tsv.exists() and not (tsv.is_file() and tsv.read_text(errors="replace").startswith(HEADER)):
        raise FileExistsError(f"{tsv} exists and genmodels did not write it; choose another --out folder")
    check_image_target(png, flag="--out", overwrite_flag=None)
    return tsv, png


def write_report(neurons: list[Neuron], images: torch.Tensor, class_words: list[str], out: Path) -> tuple[Path, Path]:
    """``out/neurons.tsv`` (rank, layer, neuron, class, selectivity, names_class, promoted words) and
    ``out/neurons.png`` (a row per neuron, its top images left to right)."""
    from .files import atomic_write_bytes
    from .generation.images import save_grid
    tsv, _ = check_report_targets(out)  # both refused before either is written
    out.mkdir(parents=True, exist_ok=True)
    rows = [HEADER]
    for r, x in enumerate(neurons, 1):
        words = " ".join(w.strip() or repr(w) for w in x.promoted)
        rows.append(f"{r}\t{x.layer}\t{x.index}\t{class_words[x.klass]}\t{x.selectivity:.3f}\t{x.names_class}\t{words}")
    atomic_write_bytes(tsv, ("\n".join(rows) + "\n").encode())
    per = max(len(x.top_images) for x in neurons)
    grid = torch.stack([images[x.top_images + x.top_images[-1:] * (per - len(x.top_images))] for x in neurons])
    png = save_grid(grid.flatten(0, 1), out / "neurons.png", nrow=per)  # (replaces only a grid genmodels wrote)
    return tsv, png
