"""``genmodels selfchat PATH``: Baize's self-chat — a chat model writes dialogues with itself from seed
questions (genmodels.selfchat; docs/selfchat.md).

    genmodels selfchat model.gguf --seeds tasks/seen-train.messages.jsonl --turns 2 --out data.jsonl
                       [--include tasks/seen-train.messages.jsonl] [--limit N] [--batch 8]
                       [--form roles|transcript] [--max-new-tokens 64]
                       [--temperature 0.8 --top-k 50 --top-p P --repetition-penalty R --seed 0] [--threads N]

It prints the counts (kept, cut short, dropped; messages filtered as empty, looping, over-long) and
writes ``--out`` (``{"messages": …}`` JSONL) with its record ``<out>.selfchat.json`` beside it; an
``--out`` genmodels did not write is refused before the model loads. A bar on stderr shows the
messages done, their rate and the ETA.
"""
from __future__ import annotations

import argparse


def add_selfchat_parser(sub) -> None:
    from .cli_common import add_sampling_args
    from .selfchat import FORMS
    c = sub.add_parser("selfchat", help="Baize's self-chat: a chat model writes dialogues with itself from seeds")
    c.add_argument("path", help="a .gguf file, a Hugging Face or genmodels folder, or a training run")
    c.add_argument("--seeds", required=True, help="seed questions: a text file (one a line) or examples JSONL "
                                                  "(e.g. genmodels tasks' seen-train.messages.jsonl)")
    c.add_argument("--turns", type=int, required=True, help="assistant replies per conversation (the seed is the "
                                                            "first user message)")
    c.add_argument("--out", required=True, help="the .jsonl file to write (new, or one genmodels selfchat wrote)")
    c.add_argument("--include", action="append", default=[],
                   help="an examples JSONL file whose records follow the dialogues in --out (repeatable; the recipe "
                        "adds the task set's seen-train.messages.jsonl)")
    c.add_argument("--limit", type=int, help="use only the first N seeds")
    c.add_argument("--batch", type=int, default=8, help="conversations decoding together")
    c.add_argument("--form", choices=FORMS, default="roles",
                   help="roles: each turn through the model's chat template, the roles swapped for the user's "
                        "(default); transcript: Baize's [Human]/[AI] transcript as raw text")
    add_sampling_args(c, max_new_tokens=64)
    c.add_argument("--threads", type=int, help="CPU threads (default: torch's); 1 on a machine whose other cores "
                                               "are busy, where threads wait on each other at every step")
    c.set_defaults(func=cmd_selfchat)


def cmd_selfchat(args: argparse.Namespace) -> int:
    import genmodels
    from genmodels.registry import GENERATES, require

    from .cli_common import model_dir, sampling_kwargs
    from .selfchat import self_chat, summary
    from .selfchat_files import check_out, included, read_seeds, write_dialogues
    options = sampling_kwargs(args)  # every flag refused (named) before the model loads
    options["seed"] = 0 if options["seed"] is None else options["seed"]
    for name in ("turns", "batch", "limit", "threads"):
        value = getattr(args, name)
        if value is not None and value < 1:
            raise ValueError(f"--{name} {value}: give at least 1")
    check_out(args.out)
    extra = len(included(args.include))  # a bad record is refused (file, line) before the model loads
    seeds = read_seeds(args.seeds)[:args.limit]
    if args.threads is not None:
        import torch
        torch.set_num_threads(args.threads)
    model = genmodels.load(model_dir(args.path))
    require(model, GENERATES, "`genmodels selfchat`", args.path)
    result = self_chat(model, seeds, args.turns, batch=args.batch, form=args.form, progress=True, **options)
    print(summary(result.counts))
    info = {"model": args.path, "seeds": args.seeds, "limit": args.limit, "turns": args.turns, "form": args.form,
            "batch": args.batch, "sampling": options, "counts": result.counts}
    write_dialogues(args.out, result.conversations, info, args.include)
    print(f"wrote {len(result.conversations)} conversations" + (f" and {extra} included records" if extra else "")
          + f" to {args.out}")
    return 0
