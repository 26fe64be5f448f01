"""What the arena measures, in its own process: ``python -m genmodels.arena.measure OUT ID...``.

Every entry is measured in this one process, with ``torch.set_num_threads(spec.threads)`` (stated in
each result), one after the other:

- **from the run** (``metrics.jsonl``): the validation-loss curve against tokens (images) and against the
  training loop's wall-clock seconds; training throughput (median of the logged step rates after the
  first 3 steps, which pay one-off costs) and MFU (the trainer's: tokens/s × training FLOPs per token ÷
  the fp32 matmul peak measured at its start);
- **parameters**: total (distinct tensors) and active per token (a sparse MoE's router and its k picked
  experts; equal to the total for dense models), and forward FLOPs per token at the training context
  (models/flops.py);
- **text**: the loss and perplexity on the first ``measure.eval_windows`` validation windows, the same for
  every contestant (the shared data section); decode speed — per-token latency and tokens/s, batch 1,
  greedy, no end token — and prefill speed (prompt tokens ÷ time to the first token), each the median of
  ``measure.repeats`` runs, at the contexts ``measure.contexts``, the contestant's own context, and
  ``measure.long_context`` for families whose context has no limit (:func:`unbounded_context`: RetNet's
  recurrent state, a sliding window); ``max_seq_len`` is raised for that measurement, and the result says so;
- **images**: ``measure.image_samples`` images sampled as the recipe's ``sample:`` section says (images/s),
  scored by :func:`genmodels.metrics.evaluate_images` (accuracy, KID, precision/recall, FID), and a grid.
"""
from __future__ import annotations

import dataclasses
import json
import math
import statistics
import sys
import time
import traceback
from pathlib import Path

import torch

from ..files import atomic_write_bytes
from .spec import ArenaSpec

SKIP_STEPS = 3  # the first logged steps fault memory in and warm kernels: left out of the rates


def unbounded_context(cfg) -> bool:
    """Whether a decoder's context has no limit by construction, as generation treats it: a recurrent state
    (RetNet's retention) or a sliding window (Mistral). Learned/sinusoidal tables and full-attention RoPE or
    ALiBi decoders stop at ``max_seq_len``."""
    return getattr(cfg, "position", None) == "retention" or getattr(cfg, "sliding_window", None) is not None


def run_records(run_dir: Path) -> dict:
    """What the run logged: its validation curve, throughput and MFU, steps and units trained."""
    from ..training.metrics import MetricsLog
    records = MetricsLog(Path(run_dir) / "metrics.jsonl").read()
    unit = "images" if any("images" in r for r in records) else "tokens"
    rate_key = "tok_s" if unit == "tokens" else f"{unit}_s"
    steps = [r for r in records if rate_key in r]
    rates = [r[rate_key] for r in steps[SKIP_STEPS:] or steps]
    mfus = [r["mfu"] for r in steps[SKIP_STEPS:] or steps if r.get("mfu") is not None]
    curve = [[r[unit], r["time_s"], r["val_loss"]] for r in records if r.get("val_loss") is not None]
    last = max(records, key=lambda r: r.get("step", 0)) if records else {}
    return {"unit": unit, "steps": last.get("step"), "trained": last.get(unit), "train_time_s": last.get("time_s"),
            "train_rate": statistics.median(rates) if rates else None,
            "mfu": statistics.median(mfus) if mfus else None,
            "final_val_loss": curve[-1][2] if curve else None, "curve": curve}


def parameter_counts(model, cfg, seq_len: int | None) -> dict:
    """Total and active parameters, and forward FLOPs per token at ``seq_len`` (text families)."""
    from ..models.flops import active_parameter_count, count_parameters, flops_per_token
    total = count_parameters(model)
    active = active_parameter_count(model.config) if getattr(model.config, "n_experts", 0) else total
    out = {"params": total, "active_params": active}
    if seq_len is not None:
        out["forward_flops_per_token"] = flops_per_token(model.config, seq_len)
    return out


def held_out(model, cfg, run_dir: Path, m) -> tuple[dict, object]:
    """Loss and perplexity on the first ``m.eval_windows`` validation windows (objective's own loss: the
    cross-entropy alone for a sparse MoE); returns them and the prepared data."""
    from ..objectives import build_objective
    from ..training.data import prepare_data
    from ..training.distributed import DistInfo
    from ..training.steps import evaluate
    data_cfg = dataclasses.replace(cfg.data, tokenizer=str(Path(run_dir) / "tokenizer.json"))
    data = prepare_data(data_cfg, log=lambda s: None)
    tc = cfg.train
    n_tokens = cfg.min_model_vocab(data.tokenizer.get_vocab_size())[0]
    objective = build_objective(cfg.objective(), model, tc.objective, n_tokens=n_tokens, eos_id=data.eos_id,
                                loss_chunk=tc.loss_chunk)
    batches = -(-m.eval_windows // m.eval_batch)
    loss = evaluate(lambda b: objective(b)[0], data.val, m.eval_batch, batches,
                    DistInfo(), None, module=objective, seed=0)
    windows = min(batches, max(1, len(data.val) // m.eval_batch)) * m.eval_batch
    return {"held_out_loss": loss, "held_out_ppl": math.exp(min(loss, 50.0)), "held_out_windows": windows,
            "held_out_tokens": windows * cfg.data.seq_len}, data


def _time_decode(model, prompt: torch.Tensor, n: int, repeats: int) -> dict:
    """Batch 1, greedy, no end token: median time to the first token and per later token."""
    import genmodels
    firsts, steps = [], []
    for _ in range(repeats):
        stamps: list[float] = []
        t0 = time.perf_counter()
        genmodels.generate(model, prompt, max_new_tokens=n, temperature=0.0, eos_token_id=[],
                           streamer=lambda new: stamps.append(time.perf_counter()))
        if len(stamps) != n:
            raise RuntimeError(f"decoded {len(stamps)} tokens instead of {n}")
        firsts.append(stamps[0] - t0)
        steps.append((stamps[-1] - stamps[0]) / (n - 1))
    first, step = statistics.median(firsts), statistics.median(steps)
    return {"prompt_tokens": prompt.shape[1], "prefill_s": first, "prefill_tok_s": prompt.shape[1] / first,
            "decode_ms_per_token": 1000 * step, "decode_tok_s": 1 / step}


def speed(model, tokens, m) -> dict:
    """Decode and prefill speed at each context (module docstring); ``tokens`` is the held-out stream the
    prompts are cut from (repeated when a context is longer)."""
    cfg = model.config
    own = cfg.max_seq_len
    contexts = {c for c in m.contexts if c <= own} | ({own} if m.full_context else set())
    notes = [f"context {c} > max_seq_len {own}: not measured" for c in m.contexts if c > own]
    long = m.long_context
    if long is not None and long > own:
        if unbounded_context(cfg):
            contexts.add(long)
            notes.append(f"context {long}: max_seq_len raised {own} -> {long} for this measurement "
                         f"({cfg.family}: the context has no limit by construction)")
        else:
            notes.append(f"context {long}: not reached ({cfg.family}, position {getattr(cfg, 'position', '?')}: "
                         f"max_seq_len {own})")
    short = sorted(c for c in contexts if c <= m.decode_tokens)
    notes += [f"context {c} <= measure.decode_tokens {m.decode_tokens}: not measured" for c in short]
    contexts -= set(short)
    if not contexts:
        return {"speed": [], "speed_notes": notes}
    stream = torch.as_tensor(tokens[: max(contexts)].astype("int64"))
    while stream.numel() < max(contexts):
        stream = torch.cat([stream, stream])
    warm = stream[: min(contexts) - m.decode_tokens][None]
    _time_decode(model, warm, 2, 1)  # native kernels built / loaded, pages faulted in
    points = []
    try:
        cfg.max_seq_len = max(own, max(contexts))
        for c in sorted(contexts):
            prompt = stream[: c - m.decode_tokens][None]  # (1, P): the context is reached at the last token
            points.append({"context": c, **_time_decode(model, prompt, m.decode_tokens, m.repeats)})
    finally:
        cfg.max_seq_len = own
    return {"speed": points, "speed_notes": notes, "decode_tokens": m.decode_tokens, "repeats": m.repeats}


def image_measures(model, cfg, m, grid: Path, seed: int) -> dict:
    """Images/s of the recipe's sampler, the offline metrics of ``m.image_samples`` images, a grid."""
    from ..generation.images import sample, save_grid
    from ..metrics import evaluate_images
    from ..objectives.images import sampler_options
    k = getattr(model.config, "num_classes", 0)
    labels = torch.arange(m.image_samples) % k if k else None
    options = sampler_options(cfg.sample)
    sample(model, n=2, labels=None if labels is None else labels[:2], seed=seed, **options)  # warm-up
    t0 = time.perf_counter()
    images = sample(model, n=m.image_samples, labels=labels, seed=seed, **options)
    seconds = time.perf_counter() - t0
    scores = evaluate_images(images, labels, cfg.data, seed=seed)
    save_grid(images[: min(len(images), 100)], grid)
    return {"images_per_s": m.image_samples / seconds, "sampler": options, "grid": grid.name, **scores}


def measure_run(run_dir: Path, spec: ArenaSpec, grid: Path) -> dict:
    """Every measure of one trained run (module docstring)."""
    import genmodels
    from ..training.recipe import load_config
    cfg = load_config(Path(run_dir) / "config.yaml")
    model = genmodels.load(Path(run_dir) / "final")
    out = {"threads": torch.get_num_threads(), "warmup_steps": cfg.train.warmup_steps, **run_records(run_dir),
           **parameter_counts(model, cfg, getattr(cfg.data, "seq_len", None))}
    if getattr(cfg.data, "seq_len", None) is None:  # image data (no token windows)
        return {**out, **image_measures(model, cfg, spec.measure, grid, cfg.train.seed)}
    scores, data = held_out(model, cfg, run_dir, spec.measure)
    out.update(scores)
    if spec.measure.speed:
        out.update(speed(model, data.val.tokens, spec.measure))
    return out


def main(argv: list[str]) -> int:
    """Measure entries ``argv[1:]`` of the arena in folder ``argv[0]``; one JSON file each, written as taken.
    A failure of one entry is recorded in its file (its traceback goes to stderr) and the others go on."""
    from ..cli_common import one_line
    out, ids = Path(argv[0]), argv[1:]
    state = json.loads((out / "state.json").read_text())
    spec = ArenaSpec.from_dict(state["spec"])
    torch.set_num_threads(spec.threads)
    for eid in ids:
        try:
            result = measure_run(out / "runs" / eid, spec, out / "measure" / f"{eid}-samples.png")
        except Exception as e:  # noqa: BLE001 - one entry's failure is reported; the traceback is in the log
            traceback.print_exc()
            result = {"error": f"{type(e).__name__}: {one_line(e)}"}
        atomic_write_bytes(out / "measure" / f"{eid}.json", (json.dumps(result, indent=2) + "\n").encode())
        print(f"measured {eid}", flush=True)
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
