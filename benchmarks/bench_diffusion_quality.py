"""Diffusion quality on the digits (#13, deliverable 6): classifier accuracy of guided samples against
training steps, our recipe vs diffusers' UNet2DModel + DDPMScheduler, same data, batches, noise and seed.

    .venv/bin/python benchmarks/bench_diffusion_quality.py [--config configs/ddpm-digits.yaml]
        [--set train.min_snr_gamma=5 ...] [--steps 250,500,1000,2000] [--guidance 1,1.5]
        [--sweep 1,1.5,2,3] [--sweep-at 1000,2000] [--sides ours,diffusers] [--n 500]
        [--png docs/img/diffusion_quality.png] [--json /tmp/K/quality.json] [--replot JSON]

**Ours**: the recipe's model (``model:``, e.g. unet-digits) and objective (``objectives/diffusion.py``:
prediction type, label dropout, EMA, min-SNR from ``train:``), trained as the trainer does it — seed,
init, AdamW (``build_optimizer``: recipe lr, betas, weight decay), warm-up + cosine schedule over the
largest ``--steps`` (``lr_at``), gradient clipping ``train.grad_clip``, EMA after each step — and sampled
from the EMA weights with ``genmodels.sample`` (DDIM, classifier-free guidance w).

**diffusers** (the reference recipe, ../shared/reference/diffusion.md §5): ``UNet2DModel`` with widths
32/64, one resnet per level, no attention (``add_attention=False``), 11 class embeddings (null label 10),
``DDPMScheduler`` (squaredcos_cap_v2, T = 1000, ε), label dropout 0.1, ``torch.optim.AdamW(lr=1e-3)`` (its defaults:
constant lr, weight decay 0.01, no clipping), ``diffusers.training_utils.EMAModel(decay=0.999)``;
sampled with ``DDIMScheduler.from_config`` and the same guidance formula ε̃ = ε_u + w(ε_c − ε_u).

Both sides see the same batches (``BatchSampler(seed)`` over the same 1,437 training digits) and the same
t, ε and dropout draws (torch's global RNG seeded ``train.seed``, drawn in the same order), and sample from
the same initial noise (``--n`` images, classes in turn, seed 0). Scores: ``genmodels.metrics.
evaluate_images`` (the cached CNN classifier: accuracy of the asked class, classifier-KID, recall).
The sides train in two processes, one thread each (``--sides`` picks). Times are the process's CPU time
for training (a loaded machine inflates wall time, not this) — they are reported, never compared.
"""
from __future__ import annotations

import argparse
import concurrent.futures as cf
import copy
import json
import multiprocessing
import os
import sys
import time
from pathlib import Path

import torch

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
from common import cpu_name  # noqa: E402  (what the benchmarks share)

ROOT = Path(__file__).resolve().parent.parent
REFERENCE_W1 = {250: 0.880, 500: 0.936, 1000: 0.960, 2000: 0.970, 3000: 0.960, 4000: 0.976}  # diffusion.md §5
METRICS = ("accuracy", "kid", "recall", "precision")
_PRED = {"epsilon": "ε-pred.", "v_prediction": "v-pred.", "sample": "x0-pred."}  # plot labels


def _floats(text: str) -> list[float]:
    return [float(v) for v in text.split(",") if v]


def _ints(text: str) -> list[int]:
    return [int(v) for v in text.split(",") if v]


def parse_args(argv=None) -> argparse.Namespace:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--config", default=str(ROOT / "configs" / "ddpm-digits.yaml"))
    p.add_argument("--set", dest="overrides", action="append", default=[],
                   help="recipe override for OUR side, e.g. train.min_snr_gamma=5 (repeatable)")
    p.add_argument("--steps", type=_ints, default=[250, 500, 1000, 2000], help="evaluation points (training steps)")
    p.add_argument("--guidance", type=_floats, default=[1.0, 1.5], help="w evaluated at every point")
    p.add_argument("--sweep", type=_floats, default=[1.0, 1.5, 2.0, 3.0], help="w evaluated at --sweep-at")
    p.add_argument("--sweep-at", type=_ints, default=[1000, 2000])
    p.add_argument("--sides", default="ours,diffusers")
    p.add_argument("--n", type=int, default=500, help="samples per evaluation (classes in turn)")
    p.add_argument("--sample-steps", type=int, default=25, help="DDIM steps")
    p.add_argument("--png", default=None, help="write the accuracy curves here (e.g. docs/img/diffusion_quality.png)")
    p.add_argument("--json", default=None, help="write every figure here")
    p.add_argument("--replot", default=None, help="redraw --png (and the tables) from a --json file; no training")
    p.add_argument("--extra", action="append", default=[], metavar="LABEL=JSON",
                   help="with --replot: also plot an ours-only run's --json (a lever), as 'ours LABEL'")
    a = p.parse_args(argv)
    a.sides = [s for s in a.sides.split(",") if s]
    bad = [s for s in a.sides if s not in ("ours", "diffusers")]
    if bad or not a.sides:
        p.error(f"--sides: choose from ours, diffusers; got {a.sides}")
    if not a.steps or min(a.steps) < 1:
        p.error("--steps: positive integers, comma-separated")
    if a.n < 10:
        p.error("--n must be >= 10 (one per class at least)")
    if any(w < 0 for w in a.guidance + a.sweep):
        p.error("--guidance / --sweep: values >= 0")
    return a


# ---- the shared pieces ----------------------------------------------------------------------------
def _setup(args):
    from genmodels.data.images import load_images
    from genmodels.metrics import load_or_train_classifier
    from genmodels.training.recipe import load_config
    cfg = load_config(args.config, args.overrides)
    data = load_images(cfg.data)
    classifier, _ = load_or_train_classifier(data.train, data.val)
    return cfg, data, classifier


def _score(images, labels, data, classifier) -> dict:
    from genmodels.metrics import evaluate_images
    s = evaluate_images(images, labels, data, classifier=classifier, fid=False, seed=0)
    return {k: s[k] for k in METRICS}


def _points(args) -> dict[int, list[float]]:
    """{step: the guidance values to evaluate there}."""
    points = {s: list(args.guidance) for s in args.steps}
    for s in args.sweep_at:
        if s in points:
            points[s] = sorted(set(points[s]) | set(args.sweep))
    return points


def _train(side: str, args) -> dict:
    """Train one side, evaluating at every point; returns {"evals": {step: {w: scores}}, ...}."""
    torch.set_num_threads(1)
    cfg, data, classifier = _setup(args)
    make = _ours if side == "ours" else _diffusers
    step_fn, sample_fn, info = make(cfg, max(args.steps))
    from genmodels.data import BatchSampler
    tc = cfg.train
    sampler = BatchSampler(len(data.train), tc.batch_size, seed=tc.seed)
    labels = torch.arange(args.n) % data.train.num_classes
    points, evals, train_cpu, sample_cpu = _points(args), {}, 0.0, 0.0
    torch.manual_seed(tc.seed + 1)  # the noise / timestep / dropout stream (the same draws on both sides)
    for step in range(1, max(args.steps) + 1):
        idx = torch.from_numpy(next(sampler))
        t0 = time.thread_time()
        loss = step_fn(step, data.train.images[idx], data.train.labels[idx])
        train_cpu += time.thread_time() - t0
        if step in points:
            t0 = time.thread_time()
            evals[step] = {w: _score(sample_fn(labels, w, args.sample_steps), labels, data, classifier)
                           for w in points[step]}
            sample_cpu += time.thread_time() - t0
            shown = "  ".join(f"w={w:g}: {e['accuracy']:.3f}" for w, e in evals[step].items())
            print(f"[{side}] step {step}: loss {loss:.4f}  accuracy {shown}", flush=True)
    return {"side": side, "evals": evals, "train_cpu_s": train_cpu, "sample_cpu_s": sample_cpu,
            "steps": max(args.steps), **info}


def _ours(cfg, max_steps: int):
    from genmodels.generation.images import sample
    from genmodels.models import build_model
    from genmodels.objectives import build_objective
    from genmodels.training.optim import build_optimizer, lr_at, set_lr
    tc = cfg.train
    torch.manual_seed(tc.seed)
    model = build_model(cfg.model_config())
    objective = build_objective("diffusion", model, tc.objective).train()
    opt = build_optimizer(objective, tc.lr, tc.weight_decay, tc.betas, tc.eps)
    params = [p for p in objective.parameters() if p.requires_grad]

    def step_fn(step: int, x, y) -> float:
        set_lr(opt, lr_at(step - 1, tc.lr, tc.min_lr, tc.warmup_steps, max_steps))
        loss, _ = objective({"images": x, "labels": y})
        opt.zero_grad(set_to_none=True)
        loss.backward()
        if tc.grad_clip:
            torch.nn.utils.clip_grad_norm_(params, tc.grad_clip)
        opt.step()
        objective.after_step(step)
        return loss.item()

    def sample_fn(labels, w: float, steps: int):
        return sample(objective.sampling_model(), n=len(labels), labels=labels, steps=steps, scheduler="ddim",
                      guidance=w, seed=0)

    mc = cfg.model_config()
    recipe = {"prediction_type": mc.prediction_type, "min_snr_gamma": objective.min_snr_gamma,
              "ema_decay": objective.ema_decay, "class_dropout": objective.class_dropout, "lr": tc.lr,
              "min_lr": tc.min_lr, "warmup_steps": tc.warmup_steps, "weight_decay": tc.weight_decay,
              "grad_clip": tc.grad_clip, "batch_size": tc.batch_size}
    return step_fn, sample_fn, {"params": sum(p.numel() for p in model.parameters()), "recipe": recipe}


def _diffusers(cfg, max_steps: int):
    from diffusers import DDIMScheduler, DDPMScheduler, UNet2DModel
    from diffusers.training_utils import EMAModel
    tc, null = cfg.train, 10
    torch.manual_seed(tc.seed)
    unet = UNet2DModel(sample_size=8, in_channels=1, out_channels=1, block_out_channels=(32, 64), layers_per_block=1,
                       down_block_types=("DownBlock2D", "DownBlock2D"), up_block_types=("UpBlock2D", "UpBlock2D"),
                       add_attention=False, num_class_embeds=null + 1)  # 635,681 parameters
    train_sched = DDPMScheduler(num_train_timesteps=1000, beta_schedule="squaredcos_cap_v2")
    opt = torch.optim.AdamW(unet.parameters(), lr=1e-3)
    ema = EMAModel(unet.parameters(), decay=0.999)
    ema_unet = copy.deepcopy(unet).requires_grad_(False)

    def step_fn(step: int, x0, y) -> float:
        b = x0.shape[0]  # the draws of objectives/diffusion.py, in its order: t, ε, dropout
        t = torch.randint(0, 1000, (b,))
        noise = torch.randn(x0.shape)
        y = torch.where(torch.rand(b) < 0.1, torch.full_like(y, null), y)
        pred = unet(train_sched.add_noise(x0, noise, t), t, class_labels=y).sample
        loss = torch.nn.functional.mse_loss(pred, noise)
        opt.zero_grad(set_to_none=True)
        loss.backward()
        opt.step()
        ema.step(unet.parameters())
        return loss.item()

    @torch.inference_mode()
    def sample_fn(labels, w: float, steps: int):
        ema.copy_to(ema_unet.parameters())
        ema_unet.eval()
        sched = DDIMScheduler.from_config(train_sched.config)
        sched.set_timesteps(steps)
        g = torch.Generator().manual_seed(0)
        x = torch.randn((len(labels), 1, 8, 8), generator=g) * sched.init_noise_sigma
        y = labels if w == 1 else torch.cat([labels, torch.full_like(labels, null)])
        for t in sched.timesteps:
            out = ema_unet(x if w == 1 else torch.cat([x, x]), t, class_labels=y).sample
            if w != 1:
                cond, uncond = out.chunk(2)
                out = uncond + w * (cond - uncond)
            x = sched.step(out, t, x, generator=g).prev_sample
        return x.clamp(-1, 1)

    recipe = {"prediction_type": "epsilon", "ema_decay": 0.999, "class_dropout": 0.1, "lr": 1e-3,
              "weight_decay": 0.01, "grad_clip": None, "batch_size": tc.batch_size}
    return step_fn, sample_fn, {"params": sum(p.numel() for p in unet.parameters()), "recipe": recipe}


# ---- the report ---------------------------------------------------------------------------------------
def _fmt(e: dict | None) -> str:
    return "—" if e is None else f"{e['accuracy']:.3f} / {e['kid']:.3f} / {e['recall']:.2f}"


def _get(res: dict, step: int, w: float) -> dict | None:
    """The scores at ``step`` and guidance ``w`` (JSON keys: strings), or None if not evaluated."""
    return res["evals"].get(str(step), {}).get(str(float(w)))


def report(results: dict, args) -> None:
    sides = [s for s in ("ours", "diffusers") if s in results]
    for s in sides:
        r = results[s]
        print(f"{s}: {r['params']:,} params, recipe {r['recipe']}; training {r['train_cpu_s']:.0f} s CPU "
              f"({r['train_cpu_s'] / r['steps']:.3f} s/step), sampling + scoring {r['sample_cpu_s']:.0f} s CPU")
    for w in args.guidance:
        print(f"\nguidance w={w:g}: accuracy / KID / recall ({args.n} samples, DDIM-{args.sample_steps})")
        print(f"{'steps':>6s} " + " ".join(f"{s:>22s}" for s in sides) + "   reference w=1 (diffusion.md §5)")
        for step in args.steps:
            ref = REFERENCE_W1.get(step)
            print(f"{step:6d} " + " ".join(f"{_fmt(_get(results[s], step, w)):>22s}" for s in sides)
                  + (f"   {ref:.3f}" if ref is not None else ""))
    for step in args.sweep_at:
        if step not in args.steps:
            continue
        print(f"\nguidance sweep at {step} steps: accuracy / KID / recall")
        for w in args.sweep:
            print(f"  w={w:<4g} " + " ".join(f"{s}: {_fmt(_get(results[s], step, w)):22s}" for s in sides))


def plot(results: dict, args, path: str, extra: dict) -> None:
    """Accuracy against steps: ours solid, diffusers dashed, a colour per guidance w; ``extra``
    ({label: results of an ours-only run}) adds lever runs; the §5 reference run (its own scorer) in grey."""
    import matplotlib
    import matplotlib.ticker
    matplotlib.use("Agg")
    import matplotlib.pyplot as plt
    fig, ax = plt.subplots(figsize=(6.4, 4.0), dpi=90)
    colours = ["tab:blue", "tab:orange", "tab:green", "tab:red"]
    for i, w in enumerate(args.guidance):
        for side, style in (("ours", "-o"), ("diffusers", "--s")):
            if side not in results:
                continue
            pts = [(s, _get(results[side], s, w)) for s in args.steps]
            pts = [(s, e["accuracy"]) for s, e in pts if e is not None]
            name = side if side == "diffusers" else f"ours {_PRED[results[side]['recipe']['prediction_type']]}"
            if pts:
                ax.plot(*zip(*pts), style, color=colours[i % 4], label=f"{name}, w={w:g}")
    ref = sorted(REFERENCE_W1.items())
    ax.plot(*zip(*ref), ":x", color="grey", label="diffusers reference run, w=1 (§5, LogReg scorer)")
    ax.axhline(0.975, color="grey", lw=0.5)
    for (label, res), colour in zip(extra.items(), ("tab:green", "tab:purple", "tab:brown")):
        pts = [(s, _get(res, s, 1.0)) for s in args.steps]  # w = 1 only (guided, every run is near 1.0)
        pts = [(s, e["accuracy"]) for s, e in pts if e is not None]
        if pts:
            ax.plot(*zip(*pts), "-^", color=colour, label=f"ours {label}, w=1")
    ax.set_xscale("log")
    ax.xaxis.set_minor_formatter(matplotlib.ticker.NullFormatter())
    ax.set_xticks(sorted(set(args.steps) | {4000}))
    ax.set_xticklabels([f"{s:g}" for s in sorted(set(args.steps) | {4000})])
    ax.set_xlabel("training steps (batch 128)")
    ax.set_ylabel(f"classifier accuracy ({args.n} samples, DDIM-{args.sample_steps})")
    ax.set_ylim(0.7, 1.0)
    ax.grid(alpha=0.3)
    ax.legend(fontsize=7, loc="lower right")
    ax.set_title("guided samples of the 8×8 digits: ours vs diffusers", fontsize=9)
    fig.tight_layout()
    Path(path).parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(path)
    plt.close(fig)
    print(f"\nwrote {path} ({Path(path).stat().st_size / 1024:.0f} KB)")


def main(argv=None) -> None:
    args = parse_args(argv)
    import diffusers
    print(f"CPU: {cpu_name()} ({os.cpu_count()} cores), load average {os.getloadavg()[0]:.1f} at start; "
          f"torch {torch.__version__}, diffusers {diffusers.__version__}; one thread per side")
    print(f"ours: {args.config} {' '.join(args.overrides)}")
    if args.replot:
        results = json.loads(Path(args.replot).read_text())
    else:
        _setup(args)  # the scoring classifier, trained and cached once before the sides start
        t0 = time.time()
        ctx = multiprocessing.get_context("spawn")
        with cf.ProcessPoolExecutor(max_workers=len(args.sides), mp_context=ctx) as pool:
            futures = {s: pool.submit(_train, s, args) for s in args.sides}
            results = {s: f.result() for s, f in futures.items()}
        print(f"wall {time.time() - t0:.0f} s; load average {os.getloadavg()[0]:.1f} at the end")
        if args.json:
            Path(args.json).parent.mkdir(parents=True, exist_ok=True)
            Path(args.json).write_text(json.dumps(results, indent=1))
        results = json.loads(json.dumps(results))  # one key form (strings) for fresh and replotted results
    report(results, args)
    extra = {}
    for item in args.extra:
        label, _, path = item.partition("=")
        extra[label] = json.loads(Path(path).read_text())["ours"]
        print(f"\nours {label}:")
        report({"ours": extra[label]}, args)
    if args.png:
        plot(results, args, args.png, extra)


if __name__ == "__main__":
    main()
