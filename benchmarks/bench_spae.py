"""SPAE on the digits (issue #28 d6): what trained SPAE runs reach, one run per seed, as JSON lines and a summary.

    python benchmarks/bench_spae.py RUN [RUN ...] [--shots 0 2 5] [--queries 5] [--top 20] [--probe-images 360]
                                   [--skip-lm] [--out F.json]

Each RUN is a finished ``genmodels train configs/spae-digits.yaml`` run (``--set train.seed=S --set run_dir=RUN``).
For each it measures, on the digits' validation split (360 images):

- reconstruction PSNR and offline-classifier accuracy (metrics/classifier.py) of the reconstructions per depth;
- the top (1-token) layer's word: its MiniLM cosine similarity to the true class word, and the share of images
  whose top word's nearest class word (MiniLM) is the true one;
- in-context generation with the frozen SmolLM2 (genmodels.spae_icl): accuracy by shots, ``--queries`` prompts
  per class (chance 0.1), and how often the first generated word is the requested class word;
- the multimodal-neurons probe (genmodels.neurons): the share of the ``--top`` most class-selective MLP neurons
  whose 20 promoted tokens name their class, and the same share for as many random neurons.

Work is fixed (no timing). ``--skip-lm``: only the first two (no SmolLM2). Prints one JSON line per run, then the
mean ± std over runs; ``--out`` also writes them.
"""
from __future__ import annotations

import argparse
import json
import statistics
import sys
from pathlib import Path

import torch

sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "src"))

import genmodels  # noqa: E402
from genmodels.data.images import load_images  # noqa: E402
from genmodels.data.words import words_of  # noqa: E402
from genmodels.metrics.classifier import load_or_train_classifier  # noqa: E402
from genmodels.semantics import DIGIT_WORDS, nearest_class  # noqa: E402
from genmodels.spae import reconstruction_scores  # noqa: E402


def top_word_scores(spae, images: torch.Tensor, labels: torch.Tensor) -> dict[str, float]:
    """MiniLM similarity of each image's top word to its class word, and the share nearest the true class."""
    vocab = words_of(spae.tokenizer)
    top = [vocab[k] for k in spae.encode(images)[0][:, 0].tolist()]
    nearest, sim = nearest_class(top, DIGIT_WORDS)
    return {"top_similarity": float(sim[torch.arange(len(top)), labels].mean()),
            "top_nearest_true": float((nearest == labels).float().mean()),
            "top_is_class_word": sum(w == DIGIT_WORDS[int(c)] for w, c in zip(top, labels)) / len(top),
            "top_distinct_words": len(set(top))}


def lm_scores(spae, lm, data, clf, shots: list[int], queries: int, top: int, seed: int,
              probe_images: int) -> dict[str, float]:
    from genmodels.neurons import probe
    from genmodels.spae_icl import in_context_accuracy
    out = {}
    for s in shots:
        r = in_context_accuracy(lm, spae, data.train.images, data.train.labels, clf, list(DIGIT_WORDS), s,
                                queries_per_class=queries, seed=seed)
        out[f"icl_accuracy_{s}"], out[f"icl_top_named_{s}"] = r.accuracy, r.top_word_named
    _, share = probe(lm, spae, data.val.images[:probe_images], data.val.labels[:probe_images], list(DIGIT_WORDS),
                     top=top)
    out["probe_share"], out["probe_random_share"] = share["share"], share["random_share"]
    return out


def _seed(run: Path, default: int) -> int:
    """The run's train.seed (its config.yaml), which also seeds its in-context prompts."""
    import yaml
    f = run / "config.yaml"
    return int(yaml.safe_load(f.read_text())["train"]["seed"]) if f.is_file() else default


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("runs", nargs="+")
    ap.add_argument("--shots", type=int, nargs="+", default=[0, 2, 5])
    ap.add_argument("--queries", type=int, default=5, help="prompts per class for each shot count")
    ap.add_argument("--top", type=int, default=20)
    ap.add_argument("--probe-images", type=int, default=360, help="validation images the probe reads")
    ap.add_argument("--skip-lm", action="store_true")
    ap.add_argument("--out", default=None)
    args = ap.parse_args(argv)
    torch.set_num_threads(1)
    data = load_images()
    clf, info = load_or_train_classifier(data.train, data.val)
    lm = None
    if not args.skip_lm:
        from genmodels.interop.lm_vocab import installed_model
        lm = genmodels.load(installed_model("smollm2"))
    rows = []
    for i, run in enumerate(args.runs):
        spae = genmodels.load(Path(run) / "final")
        seed = _seed(Path(run), i)
        row = {"run": run, "quantizer": spae.config.quantizer, "classifier_val_accuracy": info["val_accuracy"]}
        row.update(reconstruction_scores(spae, data.val.images, data.val.labels, clf))
        row.update(top_word_scores(spae, data.val.images, data.val.labels))
        if lm is not None:
            row.update(lm_scores(spae, lm, data, clf, args.shots, args.queries, args.top, seed, args.probe_images))
        print(json.dumps(row), flush=True)
        rows.append(row)
    keys = [k for k in rows[0] if isinstance(rows[0][k], (int, float)) and not isinstance(rows[0][k], bool)]
    summary = {k: (statistics.mean(r[k] for r in rows), statistics.pstdev(r[k] for r in rows)) for k in keys}
    for k, (m, s) in summary.items():
        print(f"{k:24s} {m:.3f} ± {s:.3f}  (n={len(rows)})")
    if args.out:
        Path(args.out).write_text(json.dumps({"runs": rows, "summary": summary}, indent=1))
    return 0


if __name__ == "__main__":
    sys.exit(main())
