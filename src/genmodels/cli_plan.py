"""``genmodels plan PRESET``: the scale planner's command line (a few lines over genmodels.arena.plan)."""
from __future__ import annotations

import argparse
import json
import math

_SUFFIX = {"k": 1e3, "m": 1e6, "b": 1e9, "g": 1e9, "t": 1e12}


def token_count(text: str) -> float:
    """An argparse ``type``: a positive token count, plain (``2e12``) or with a suffix (``300B``, ``2T``)."""
    t = text.strip()
    scale = _SUFFIX.get(t[-1:].lower(), 1.0)
    try:
        x = float(t[:-1] if scale != 1.0 else t) * scale
    except ValueError:
        raise argparse.ArgumentTypeError(f"{text!r} is not a token count; give e.g. 2e12, 300B or 2T") from None
    if not math.isfinite(x) or x <= 0:
        raise argparse.ArgumentTypeError(f"{text!r}: give a positive, finite token count")
    return x


def cmd_plan(args: argparse.Namespace) -> int:
    import genmodels
    from genmodels.arena.plan import format_plan, plan
    cfg = genmodels.preset(args.preset)
    pl = plan(cfg, gpus=args.gpus, seq=args.seq, batch=args.batch, zero=args.zero,
              checkpointing=args.checkpointing, tokens=args.tokens, mfu=args.mfu, gpu=args.gpu,
              precision=args.precision, name=args.preset)
    print(json.dumps(pl.to_dict(), indent=2) if args.json else format_plan(pl))
    return 0


def add_plan_parser(sub, finite_float) -> None:
    from genmodels.arena.plan import DEFAULT_MFU, GPUS, PRECISIONS, ZERO
    p = sub.add_parser("plan", help="scale planner: parameters, FLOPs/token, memory per GPU, time for a token budget")
    p.add_argument("preset", help="a decoder preset, e.g. llama2-7b, llama2-70b, mixtral-8x7b")
    p.add_argument("--gpus", type=int, required=True, help="number of devices (data parallel)")
    p.add_argument("--seq", type=int, default=None, help="sequence length (default: the model's context)")
    p.add_argument("--batch", type=int, default=1, help="sequences per device per step (micro-batch)")
    p.add_argument("--zero", choices=ZERO, default="fsdp",
                   help="fsdp: weights, gradients, optimizer state sharded over the devices; ddp: replicated")
    p.add_argument("--checkpointing", action="store_true", help="full activation checkpointing (per block)")
    p.add_argument("--tokens", type=token_count, default=1e9, help="token budget, e.g. 2T, 300B (default 1B)")
    p.add_argument("--mfu", type=finite_float, default=DEFAULT_MFU,
                   help=f"model FLOPs utilisation (default {DEFAULT_MFU})")
    p.add_argument("--gpu", choices=tuple(GPUS), default="a100")
    p.add_argument("--precision", choices=tuple(PRECISIONS), default="bf16")
    p.add_argument("--json", action="store_true")
    p.set_defaults(func=cmd_plan)
