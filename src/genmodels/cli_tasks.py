"""``genmodels tasks`` (write the task set) and ``genmodels eval-tasks`` (exact match of a model on it).

    genmodels tasks --out DIR [--seed 0] [--per-task 100]
    genmodels eval-tasks PATH --split unseen|seen-test|seen-val|seen-train [--limit N] [--batch 16]
                         [--max-new-tokens 48] [--form messages|prompt] [--tasks DIR] [--seed 0] [--per-task 100]
                         [--out REPORT.json]

``eval-tasks`` reads the split from ``--tasks DIR`` (a folder ``genmodels tasks`` wrote), or builds it
in memory from ``--seed`` / ``--per-task`` (the default set unless told otherwise). ``--limit N`` keeps
the first N records of each task. It prints one line per task and the overall exact match, and with
``--out`` writes the whole report (every reply) as JSON. docs/tasks.md describes both.
"""
from __future__ import annotations

import argparse
import json
import sys

from .files import check_out_name

REPORT_FORMAT = "genmodels-eval-tasks"  # an --out file holding this "format" is ours to replace


def _non_negative(text: str) -> int:
    try:
        n = int(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"{text!r} is not an integer") from None
    if n < 0:
        raise argparse.ArgumentTypeError(f"{n} is negative")
    return n


def add_tasks_parsers(sub) -> None:
    from .data.tasks import DEFAULT_PER_TASK, DEFAULT_SEED, SPLITS
    t = sub.add_parser("tasks", help="write the task set (checkable answers; issue 22) as example JSONL")
    t.add_argument("--out", required=True, help="folder to write (new, or one genmodels tasks wrote)")
    t.add_argument("--seed", type=_non_negative, default=DEFAULT_SEED)
    t.add_argument("--per-task", type=_non_negative, default=DEFAULT_PER_TASK,
                   help="instances per seen task (80%% train, 10%% val, 10%% test); unseen tasks get a fifth")
    t.set_defaults(func=cmd_tasks)

    e = sub.add_parser("eval-tasks", help="exact match per task of a model's greedy replies on the task set")
    e.add_argument("path", help="a .gguf file, a Hugging Face or genmodels folder, or a training run")
    e.add_argument("--split", required=True, choices=SPLITS)
    e.add_argument("--limit", type=_non_negative, help="at most this many records per task")
    e.add_argument("--batch", type=_non_negative, default=16, help="prompts decoded together (left-padded)")
    e.add_argument("--max-new-tokens", type=_non_negative, default=48)
    e.add_argument("--form", choices=("messages", "prompt"), default="messages",
                   help="messages: the question through the model's chat template (default); prompt: the "
                        "'<question>\\nAnswer:' text a model tuned on the prompt form saw")
    e.add_argument("--tasks", help="a folder genmodels tasks wrote (default: the set built from --seed/--per-task)")
    e.add_argument("--seed", type=_non_negative, default=DEFAULT_SEED)
    e.add_argument("--per-task", type=_non_negative, default=DEFAULT_PER_TASK)
    e.add_argument("--out", help="write the report (every reply) to this JSON file")
    e.set_defaults(func=cmd_eval_tasks)


def cmd_tasks(args: argparse.Namespace) -> int:
    from .data.task_files import write_taskset
    manifest = write_taskset(args.out, seed=args.seed, per_task=args.per_task)
    counts = ", ".join(f"{k} {v}" for k, v in manifest["counts"].items())
    print(f"wrote task set v{manifest['version']} (seed {manifest['seed']}, {counts}) to {args.out}; "
          f"checksum {manifest['checksum']}")
    return 0


def _records(args: argparse.Namespace) -> list:
    """The split's records (``--tasks`` or built), the first ``--limit`` of each task."""
    from .data.task_files import read_taskset
    from .data.tasks import build_taskset
    if args.tasks is not None:
        records = read_taskset(args.tasks, args.split)
    else:
        records = [r for r in build_taskset(args.seed, args.per_task) if r.split == args.split]
    if args.limit is None:
        return records
    kept, taken = [], {}
    for r in records:
        if taken.get(r.task, 0) < args.limit:
            kept.append(r)
            taken[r.task] = taken.get(r.task, 0) + 1
    return kept


def _check_out(out: str | None) -> None:
    """--out before any work: a JSON file name whose folder exists; an existing file must be a report."""
    if out is None:
        return
    p = check_out_name(out, ".json")
    if p.exists():
        try:
            ours = json.loads(p.read_text(encoding="utf-8")).get("format") == REPORT_FORMAT
        except (OSError, ValueError, AttributeError):
            ours = False
        if not ours:
            raise FileExistsError(f"--out {out} exists and is not an eval-tasks report; it is never replaced: "
                                  "choose another name")


def cmd_eval_tasks(args: argparse.Namespace) -> int:
    import genmodels
    from genmodels.registry import GENERATES, require

    from .cli_common import model_dir
    from .files import atomic_write_bytes
    if args.batch < 1:
        raise ValueError(f"--batch {args.batch}: give at least 1")
    if args.max_new_tokens < 1:
        raise ValueError(f"--max-new-tokens {args.max_new_tokens}: give at least 1")
    _check_out(args.out)
    records = _records(args)  # refused (named) before the model loads
    if not records:
        raise ValueError(f"--split {args.split}: no records (--limit {args.limit})")
    model = genmodels.load(model_dir(args.path))
    require(model, GENERATES, "`genmodels eval-tasks`", args.path)
    report = genmodels.eval_tasks(model, records, batch=args.batch, max_new_tokens=args.max_new_tokens,
                                  form=args.form, say=lambda line: print(line, file=sys.stderr))
    for task, t in report["tasks"].items():
        print(f"{task:<20} {t['correct']:>4}/{t['n']:<4} {t['exact_match']:.3f}")
    print(f"{'overall':<20} {report['correct']:>4}/{report['records']:<4} {report['exact_match']:.3f}  "
          f"(macro over tasks {report['macro_exact_match']:.3f}; answer inside the reply {report['contains']:.3f})")
    if args.out is not None:
        full = {"format": REPORT_FORMAT, "model": args.path, "split": args.split, "form": args.form,
                "limit": args.limit,
                "tasks_from": args.tasks or f"build_taskset(seed={args.seed}, per_task={args.per_task})", **report}
        atomic_write_bytes(args.out, (json.dumps(full, indent=2, ensure_ascii=False) + "\n").encode())
        print(f"wrote {args.out}")
    return 0
