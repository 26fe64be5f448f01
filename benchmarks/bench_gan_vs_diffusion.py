"""DCGAN vs diffusion on digits (issue #14, deliverable 5): the same time budget and seed, side by side.

    .venv/bin/python benchmarks/bench_gan_vs_diffusion.py [--gan configs/dcgan-digits.yaml]
        [--diffusion configs/ddpm-digits.yaml] [--minutes 2.5] [--n 500] [--out docs/img/gan_vs_diffusion.png]
        [--runs /tmp/bench-gan-vs-diffusion] [--reuse] [--threads 1] [--rounds 3]

Each recipe is trained as ``genmodels train`` runs it (``genmodels.training.train``), one after the other,
with ``train.max_minutes`` = ``--minutes`` and ``train.seed`` 0 (everything else as the recipe says). Then,
from each run's ``final/`` (the EMA weights for both):

- **quality**: ``--n`` class-conditional samples (classes in turn, seed 0; the diffusion recipe's own sampler
  settings, e.g. DDIM-25 with guidance) scored by :func:`genmodels.metrics.evaluate_images` against the
  digits training split: class accuracy, classifier-KID, precision/recall (k = 3), classifier-FID;
- **training images/s**: the median of the per-step ``images_s`` in metrics.jsonl (first 10 steps left out);
- **sampling images/s**: ``--n`` images per call with ``--threads`` threads (default 1: on a shared CPU a busy
  core stalls every multi-threaded kernel), the fastest of ``--rounds`` rounds in which the samplers take turns
  (the same load for each): the GAN (one generator pass), the diffusion recipe's sampler (DDIM-25 with
  guidance) and DDIM-25 without guidance, the issue's yardstick.

One PNG holds both sample grids (10 per class, one class per row). The CPU is shared with other processes:
the load average is printed with the figures; compare the ratios.
"""
from __future__ import annotations

import argparse
import json
import os
import statistics
import sys
import time
from pathlib import Path

import torch

sys.path.insert(0, os.path.dirname(__file__))
from common import cpu_name  # noqa: E402  (what the benchmarks share)


def train_recipe(path: str, run_dir: Path, minutes: float, reuse: bool) -> tuple[Path, dict]:
    """Train ``path`` into ``run_dir`` (``reuse``: a finished run there is read instead)."""
    import shutil

    from genmodels.training import load_config, train
    cfg = load_config(path, [f"run_dir={run_dir}", f"train.max_minutes={minutes}", "train.seed=0"])
    t0 = time.monotonic()
    if not (reuse and (run_dir / "final").is_dir()):
        shutil.rmtree(run_dir, ignore_errors=True)
        train(cfg, progress=False, log=lambda s: print("   ", s, flush=True) if not s.startswith(" ") else None)
    records = [json.loads(line) for line in (run_dir / "metrics.jsonl").read_text().splitlines()]
    rates = [r["images_s"] for r in records if "images_s" in r][10:]
    return run_dir / "final", {"steps": records[-1]["step"], "images": records[-1]["images"],
                               "wall_s": time.monotonic() - t0 if not reuse else records[-1]["time_s"],
                               "train_images_s": statistics.median(rates), "sample": cfg.sample}


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--gan", default="configs/dcgan-digits.yaml")
    p.add_argument("--diffusion", default="configs/ddpm-digits.yaml")
    p.add_argument("--minutes", type=float, default=2.5)
    p.add_argument("--n", type=int, default=500)
    p.add_argument("--runs", default="/tmp/bench-gan-vs-diffusion")
    p.add_argument("--out", default="docs/img/gan_vs_diffusion.png")
    p.add_argument("--reuse", action="store_true", help="measure the finished runs in --runs instead of training")
    p.add_argument("--threads", type=int, default=1, help="threads while sampling is timed (default 1)")
    p.add_argument("--rounds", type=int, default=3, help="interleaved timing rounds (default 3)")
    a = p.parse_args()

    import genmodels
    from genmodels.generation.images import sample
    from genmodels.metrics import evaluate_images
    print(f"torch {torch.__version__}, CPU: {cpu_name()}, {os.cpu_count()} cores, load average "
          f"{' '.join(f'{x:.1f}' for x in os.getloadavg())} (shared machine)", flush=True)
    rows, grids, samplers = {}, {}, {}
    for name, recipe in (("DCGAN", a.gan), ("diffusion", a.diffusion)):
        print(f"== {'reading' if a.reuse else 'training'} {recipe} ({a.minutes} min)", flush=True)
        final, info = train_recipe(recipe, Path(a.runs) / Path(recipe).stem, a.minutes, a.reuse)
        model = genmodels.load(final)
        opts = {k: getattr(info["sample"], k) for k in ("steps", "scheduler", "guidance")
                if getattr(info["sample"], k, None) is not None}
        labels = torch.arange(a.n) % model.config.num_classes
        images = sample(model, n=a.n, labels=labels, seed=0, **opts)
        scores = evaluate_images(images, labels, seed=0)
        rows[name] = {**{k: v for k, v in info.items() if k != "sample"}, "sampler": opts or "one generator pass",
                      **{k: scores[k] for k in ("accuracy", "kid", "kid_std", "precision", "recall", "fid")}}
        grids[name] = sample(model, n=100, labels=torch.arange(100) // 10, seed=0, **opts)
        samplers[name] = (model, labels, opts)
        if opts:  # the yardstick besides the recipe's sampler: DDIM-25 without guidance
            samplers["DDIM-25"] = (model, labels, {"steps": 25, "scheduler": "ddim", "guidance": 1.0})
        print(f"   {name}: " + ", ".join(f"{k} {v:.4g}" if isinstance(v, float) else f"{k} {v}"
                                          for k, v in rows[name].items()), flush=True)
    # sampling speed: the samplers interleaved (the same load for each), a fixed thread count, fastest of the rounds
    torch.set_num_threads(a.threads)
    best = dict.fromkeys(samplers, float("inf"))
    for _ in range(a.rounds):
        for name, (model, labels, opts) in samplers.items():
            t0 = time.perf_counter()
            sample(model, n=a.n, labels=labels, seed=1, **opts)
            best[name] = min(best[name], time.perf_counter() - t0)
    rate = {name: a.n / t for name, t in best.items()}
    rows["DCGAN"]["sample_images_s"], rows["diffusion"]["sample_images_s"] = rate["DCGAN"], rate["diffusion"]
    g, d = rows["DCGAN"], rows["diffusion"]
    print(f"load average now {' '.join(f'{x:.1f}' for x in os.getloadavg())}; sampling with {a.threads} thread(s), "
          f"{a.n} images per call, fastest of {a.rounds} interleaved rounds:")
    print(f"  DCGAN {rate['DCGAN']:,.0f} images/s; diffusion ({d['sampler']}) {rate['diffusion']:.1f} images/s -> "
          f"{rate['DCGAN'] / rate['diffusion']:.0f}x; DDIM-25 unguided {rate['DDIM-25']:.1f} images/s -> "
          f"{rate['DCGAN'] / rate['DDIM-25']:.0f}x")
    print(f"training images/s: DCGAN {g['train_images_s']:.0f}, diffusion {d['train_images_s']:.0f} "
          f"-> {g['train_images_s'] / d['train_images_s']:.1f}x")
    print(f"targets: DCGAN accuracy {g['accuracy']:.3f} (>= 0.9), recall {g['recall']:.3f} (>= 0.5), sampling "
          f"{rate['DCGAN'] / rate['DDIM-25']:.0f}x DDIM-25 (>= 100x)")
    plot(grids, rows, a.out, a.minutes)
    print(f"wrote {a.out} ({os.path.getsize(a.out) / 1024:.0f} KB)")


def plot(grids: dict, rows: dict, out: str, minutes: float) -> None:
    import matplotlib
    matplotlib.use("Agg")
    import matplotlib.pyplot as plt
    fig, axes = plt.subplots(1, 2, figsize=(8, 4.6))
    for ax, (name, images) in zip(axes, grids.items()):
        x = torch.nn.functional.pad((images.clamp(-1, 1) + 1) / 2, (1, 0, 1, 0), value=1.0)[:, 0]  # (100, 9, 9)
        tiles = x.view(10, 10, 9, 9).permute(0, 2, 1, 3).reshape(90, 90)  # row = class, 1-pixel white gaps
        ax.imshow(tiles.numpy(), cmap="gray", vmin=0, vmax=1, interpolation="nearest")
        r = rows[name]
        ax.set_title(f"{name}: acc {r['accuracy']:.3f}, KID {r['kid']:.3f}, recall {r['recall']:.2f}\n"
                     f"{r['steps']:,} training steps", fontsize=9)
        ax.axis("off")
    fig.suptitle(f"digits, {minutes} min of training each, seed 0 (rows: classes 0-9)", fontsize=10)
    fig.tight_layout(rect=(0, 0, 1, 0.95))
    Path(out).parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(out, dpi=80)
    plt.close(fig)


if __name__ == "__main__":
    main()
