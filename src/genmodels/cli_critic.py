"""The Shepherd-style critic's commands (:mod:`genmodels.critic`; docs/alignment.md "Critic (Shepherd)").

    genmodels critique-data --tasks DIR --out FILE.jsonl [--split seen-train] [--limit N] [--seed 0]
    genmodels critique PATH --question Q --answer A [--max-new-tokens 80]
    genmodels critic-agreement PATH --tasks DIR [--split seen-test] [--limit N] [--batch 16] [--seed 0]
        [--max-new-tokens 80]
    genmodels sample-pairs PATH --tasks DIR --out FILE.jsonl [--split seen-train] [--limit N] [--n 4]
        [--temperature 1.0] [--top-p P] [--seed 0] [--batch 16] [--max-new-tokens 48] [--form messages|prompt]
        [--no-gold] [--best] [--critic PATH] [--threads N]

``critique-data`` writes the (question, answer, critique) triples of a split of a written task set as messages
JSONL (never replacing a file it did not write); ``critique`` prints a model's greedy critique;
``critic-agreement`` prints how often a model's verdicts agree with the checker on a split's right and wrong
answers, how many could not be read, how often it separates a question's right answer from its wrong one, states
the right answer, or copies a wrong one as the right one; ``sample-pairs`` samples ``--n`` replies per question of a
split from a (tuned) chat model, ranks them with the task checker or ``--critic``, and writes DPO pairs best against
worst (or, ``--best``, the best reply per question as SFT examples: Baize's self-distillation with feedback), never
replacing a file it did not write (:mod:`genmodels.sampled_pairs`).
"""
from __future__ import annotations

import argparse
import sys

from .cli_tasks import _non_negative

CRITIQUE_TOKENS = 80  # critic.DEFAULT_MAX_NEW_TOKENS (tests/test_critic.py holds them equal; critic.py loads torch)


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
    c.add_argument("--max-new-tokens", type=_non_negative, default=CRITIQUE_TOKENS)
    c.set_defaults(func=cmd_critique)

    a = sub.add_parser("critic-agreement", help="how often a critic's verdicts agree with the task checker")
    a.add_argument("path", help="a .gguf file, a Hugging Face or genmodels folder, or a training run")
    a.add_argument("--tasks", required=True, help="a folder genmodels tasks wrote")
    a.add_argument("--split", choices=SPLITS, default="seen-test")
    a.add_argument("--limit", type=_non_negative, help="at most this many records per task")
    a.add_argument("--batch", type=_non_negative, default=16)
    a.add_argument("--max-new-tokens", type=_non_negative, default=CRITIQUE_TOKENS)
    a.add_argument("--seed", type=_non_negative, default=0)
    a.set_defaults(func=cmd_critic_agreement)
    _add_sample_pairs(sub, SPLITS)


def _add_sample_pairs(sub, splits) -> None:
    from .cli_common import finite_float
    s = sub.add_parser("sample-pairs", help="DPO pairs (or SFT examples) from a model's sampled answers, ranked")
    s.add_argument("path", help="the model that answers: a .gguf file, a Hugging Face or genmodels folder, or a run")
    s.add_argument("--tasks", required=True, help="a folder genmodels tasks wrote")
    s.add_argument("--out", required=True, help="a .jsonl file (new, or one sample-pairs wrote)")
    s.add_argument("--split", choices=splits, default="seen-train")
    s.add_argument("--limit", type=_non_negative, help="at most this many records per task")
    s.add_argument("--n", type=_non_negative, default=4, help="replies sampled per question")
    s.add_argument("--temperature", type=finite_float, default=1.0)
    s.add_argument("--top-p", type=finite_float)
    s.add_argument("--seed", type=_non_negative, default=0)
    s.add_argument("--batch", type=_non_negative, default=16, help="rows decoded together (left-padded)")
    s.add_argument("--max-new-tokens", type=_non_negative, default=48)
    s.add_argument("--form", choices=("messages", "prompt"), default="messages")
    s.add_argument("--no-gold", dest="gold", action="store_false",
                   help="no pair (or example) from the true answer where no sampled reply is judged right")
    s.add_argument("--best", action="store_true", help="write the best reply per question as SFT examples")
    s.add_argument("--critic", help="rank with this critic's verdicts instead of the task checker")
    s.add_argument("--threads", type=_non_negative, help="CPU threads (default: torch's)")
    s.set_defaults(func=cmd_sample_pairs)


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
    if not args.question.strip():  # (an empty --answer is a reply to judge: the critic says it is wrong)
        raise ValueError("--question is empty: give the question the answer replies to")
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
    wrong = report["pairs"] - report["right_answers"]
    print(f"separates right from wrong in {report['separated']}/{report['questions']} questions "
          f"(same verdict for both in {report['same']}); right answer stated {report['solved']}/{report['pairs']}; "
          f"wrong answers copied as the right one {report['copied']}/{wrong}")
    return 0


SAMPLE_FORMAT = "genmodels-sample-pairs"  # the record beside a sample-pairs file


def cmd_sample_pairs(args: argparse.Namespace) -> int:
    from .sampled_pairs import sampled_best, sampled_pairs
    from .selfchat_files import check_out, write_owned
    _positive(args, "n", "batch", "max_new_tokens", *(["threads"] if args.threads is not None else []))
    if args.n < 2 and not args.gold and not args.best:
        raise ValueError(f"--n {args.n} with --no-gold: sample at least 2 replies per question to pair them")
    if args.temperature <= 0:
        raise ValueError(f"--temperature {args.temperature}: sampling needs a positive temperature")
    if args.top_p is not None and not 0 < args.top_p <= 1:
        raise ValueError(f"--top-p {args.top_p}: give a value in (0, 1]")
    check_out(args.out, SAMPLE_FORMAT)
    records = _records(args)  # refused (named) before any model loads
    if args.threads is not None:
        import torch
        torch.set_num_threads(args.threads)
    say = lambda line: print(line, file=sys.stderr)  # noqa: E731
    judge = None
    if args.critic is not None:
        from .critic import critic_judge
        judge = critic_judge(_load(args.critic), args.batch, say=say)
    make = sampled_best if args.best else sampled_pairs
    rows, counts = make(_load(args.path), records, args.n, temperature=args.temperature, top_p=args.top_p,
                        seed=args.seed, form=args.form, gold=args.gold, batch=args.batch,
                        max_new_tokens=args.max_new_tokens, judge=judge, say=say)
    if not rows:
        raise ValueError(f"--out {args.out}: nothing to write (counts: {counts}); try more --n or --temperature")
    info = {"model": args.path, "tasks": args.tasks, "split": args.split, "limit": args.limit, "n": args.n,
            "temperature": args.temperature, "top_p": args.top_p, "seed": args.seed, "form": args.form,
            "gold": args.gold, "written": "best" if args.best else "pairs", "judge": args.critic or "checker",
            "counts": counts}
    write_owned(args.out, rows, info, SAMPLE_FORMAT)
    print(f"wrote {len(rows)} {'examples' if args.best else 'pairs'} to {args.out} ({counts})")
    return 0
