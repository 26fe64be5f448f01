"""``genmodels arena SPEC.yaml [--out DIR] [--resume]`` — a few lines over :func:`genmodels.arena.run_arena`
(docs/arena.md). ``cli.py`` calls :func:`add_arena_parser`; failures go through its shared handler (one
``error:`` line, status 2)."""
from __future__ import annotations

import argparse


def add_arena_parser(subparsers) -> argparse.ArgumentParser:
    p = subparsers.add_parser("arena", help="train architectures on the same data, budget and seeds, measure "
                                            "them alike, and write a ranked report",
                              description="Run an arena spec (see docs/arena.md and arena/*.yaml): every contestant "
                                          "trains through `genmodels train` in its own process, then all are "
                                          "measured on the same held-out data; OUT/report.md, report.html, "
                                          "results.json.")
    p.add_argument("spec", help="an arena spec (YAML), e.g. arena/text-tiny.yaml")
    p.add_argument("--out", default=None, help="the arena folder (default runs/arena/<spec file name>)")
    p.add_argument("--resume", action="store_true",
                   help="continue an interrupted arena in --out: finished contestants are not retrained")
    p.set_defaults(func=cmd_arena)
    return p


def cmd_arena(args: argparse.Namespace) -> int:
    from .arena import run_arena
    run_arena(args.spec, args.out, resume=args.resume)
    return 0
