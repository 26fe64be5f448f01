"""``genmodels train CONFIG.yaml [--set key.sub=value ...] [--resume]`` — a few lines over
:func:`genmodels.training.train`.

``cli.py`` calls :func:`add_train_parser` and runs :func:`train_command` through its shared error handler;
``python -m genmodels.cli_train CONFIG ...`` runs the same without it (and under torchrun:
``torchrun --nproc_per_node 2 -m genmodels.cli_train CONFIG --set train.distributed=fsdp``).
"""
from __future__ import annotations

import argparse
import os
import sys


def add_train_parser(subparsers) -> argparse.ArgumentParser:
    p = subparsers.add_parser("train", help="train a model from a YAML recipe (configs/*.yaml)",
                              description="Train a model (causal LM, masked LM or span corruption) from a YAML recipe. "
                                          "See docs/training.md.")
    _add_arguments(p)
    p.set_defaults(func=train_command)
    return p


def _add_arguments(p: argparse.ArgumentParser) -> None:
    p.add_argument("config", help="YAML recipe, e.g. configs/llama-tiny.yaml")
    p.add_argument("--set", dest="overrides", action="append", default=[], metavar="KEY=VALUE",
                   help="override a config value, e.g. --set train.lr=1e-3 --set run_dir=runs/x (repeatable)")
    p.add_argument("--resume", action="store_true",
                   help="continue from the latest checkpoint in run_dir (exactly: same losses as an unbroken run)")
    p.add_argument("--no-progress", action="store_true", help="no progress bar (logs only)")


def train_command(args: argparse.Namespace) -> int:
    """Load, validate and run the recipe (failures propagate to the shared handler)."""
    from .training import load_config, train
    cfg = load_config(args.config, args.overrides)
    train(cfg, resume=args.resume, progress=not args.no_progress)
    return 0


def run_train(args: argparse.Namespace) -> int:
    """Run the recipe; a bad recipe, run dir, file or a diverged run prints ONE ``error: ...`` line and
    returns 2 (the handler of ``genmodels.cli_common``: one source of truth for both entry points)."""
    from .cli_common import run_command
    return run_command(train_command, args)


def main(argv: list[str] | None = None) -> int:
    from .cli_common import ArgumentParser
    p = ArgumentParser(prog="genmodels train")
    _add_arguments(p)
    p.set_defaults(command="train")
    return run_train(p.parse_args(argv))


def _exit_process(status: int) -> None:
    """End a torchrun worker without interpreter finalisation, once its process group is destroyed and
    its output flushed: gloo's worker threads can otherwise abort the process while Python tears down
    (``terminate called without an active exception``, SIGABRT) after a run that completed — turning
    a finished, checkpointed run into a failed one (pytorch/pytorch#179291 describes the mechanism)."""
    sys.stdout.flush()
    sys.stderr.flush()
    os._exit(status)


if __name__ == "__main__":
    status = main()
    if "LOCAL_RANK" in os.environ:  # launched by torchrun
        _exit_process(status)
    sys.exit(status)
