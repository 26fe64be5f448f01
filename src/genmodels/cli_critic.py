"""The Shepherd-style critic's commands (:mod:`genmodels.critic`; docs/alignment.md "Critic (Shepherd)").

    genmodels critique-data --tasks DIR --out FILE.jsonl [--split seen-train] [--limit N] [--seed 0]
    genmodels critique PATH --question Q --answer A [--max-new-tokens 48]
    genmodels critic-agreement PATH --tasks DIR [--split seen-test] [--limit N] [--batch 16] [--seed 0]

``critique-data`` writes the (question, answer, critique) triples of a split of a written task set as messages
JSONL (never replacing a file it did not write); ``critique`` prints a model's greedy critique;
``critic-agreement`` prints how often a model's verdicts agree with the checker on a split's right and wrong
answers, and how many could not be read.
"""
from __future__ import annotations

import argparse
import sys

from .cli_tasks import _non_negative


def add_critic_parsers(sub) -> None:
    from .data.tasks import SPLITS
    d = sub.add_parser("critique-data", help="(question, answer, critique) triples from the task set, as SFT JSONL")
    d.add_argument("--tasks", required=True, help="a folder genmodels tasks wrote")
    d.add_argument("--out", required=True, help="a .jsonl file (new, or one critique-data wrote)")
    d.add_argument("--split", choices=SPLITS, default="seen-train")
    d.add_argument("--limit", type=_non_negative, help="at most this many records per task")
    d.add_argument("--seed", type=_non_negative, default=0, help="shuffles the triples' order")
    d.set_defaults(func=cmd_critique_data)

    c = sub.add_parser("critique", help="a critic's greedy critique of an answer to a question")
    c.add_argument("path", help="a .gguf file, a Hugging Face or genmodels folder, or a training run")
    c.add_argument("--question", required=True)
    c.add_argument("--answer", required=True)
    c.add_argument("--max-new-tokens", type=_non_negative, default=48)
    c.set_defaults(func=cmd_critique)

    a = sub.add_parser("critic-agreement", help="how often a critic's verdicts agree with the task checker")
    a.add_argument("path", help="a .gguf file, a Hugging Face or genmodels folder, or a training run")
    a.add_argument("--tasks", required=True, help="a folder genmodels tasks wrote")
    a.add_argument("--split", choices=SPLITS, default="seen-test")
    a.add_argument("--limit", type=_non_negative, help="at most this many records per task")
    a.add_argument("--batch", type=_non_negative, default=16)
    a.add_argument("--max-new-tokens", type=_non_negative, default=48)
    a.add_argument("--seed", type=_non_negative, default=0)
    a.set_defaults(func=cmd_critic_agreement)


def _records(args: argparse.Namespace) -> list:
    """The split's records of ``--tasks`` (the first ``--limit`` of each task), refused when none."""
    from .cli_tasks import _records as task_records
    records = task_records(argparse.Namespace(**{**vars(args), "seed": 0, "per_task": 0}))
    if not records:
        raise ValueError(f"--split {args.split}: no records (--limit {args.limit})")
    return records


def _positive(args: argparse.Namespace, *names: str) -> None:
    for name in names:
        if getattr(args, name) < 1:
            raise ValueError(f"--{name.replace('_', '-')} {getattr(args, name)}: give at least 1")


def cmd_critique_data(args: argparse.Namespace) -> int:
    from .critic import write_critique_data
    record = write_critique_data(_records(args), args.out, seed=args.seed, source=f"{args.tasks} {args.split}")
    print(f"wrote {record['triples']} triples ({record['right']} right answers) to {args.out}")
    return 0


def _load(path: str):
    import genmodels
    from .cli_common import model_dir
    from .registry import GENERATES, require
    model = genmodels.load(model_dir(path))
    require(model, GENERATES, "the critic", path)
    return model


def cmd_critique(args: argparse.Namespace) -> int:
    from .critic import critique
    _positive(args, "max_new_tokens")
    print(critique(_load(args.path), args.question, args.answer, max_new_tokens=args.max_new_tokens))
    return 0


def cmd_critic_agreement(args: argparse.Namespace) -> int:
    from .critic import agreement
    _positive(args, "batch", "max_new_tokens")
    records = _records(args)  # refused (named) before the model loads
    report = agreement(_load(args.path), records, batch=args.batch, seed=args.seed,
                       max_new_tokens=args.max_new_tokens, say=lambda line: print(line, file=sys.stderr))
    print(f"agreement {report['agree']}/{report['pairs']} = {report['agreement']:.3f} "
          f"({report['right_answers']} right answers; {report['unparsable']} verdicts unreadable)")
    return 0
