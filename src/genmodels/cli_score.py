"""``genmodels score``: a reward model's score of one or more replies to a prompt.

    genmodels score PATH --prompt "2 + 2 =" --response " 4" [--response " 5" …] [--chat]

``PATH``: a genmodels reward folder (``genmodels.reward.save_reward``; a reward run's ``final/``), or a
transformers ``LlamaForSequenceClassification`` folder with one label. Prints one line per reply,
``<score>\\t<reply>``, in the order given. ``--chat``: the prompt is a user message rendered through the
model's chat template (as a pair's ``messages`` form), not the plain ``prompt`` form.
"""
from __future__ import annotations

import argparse


def add_score_parser(sub) -> None:
    s = sub.add_parser("score", help="a reward model's score of replies to a prompt")
    s.add_argument("path", help="a genmodels reward folder (or a run) or a LlamaForSequenceClassification folder")
    s.add_argument("--prompt", required=True)
    s.add_argument("--response", required=True, action="append", help="a reply to score (repeat for several)")
    s.add_argument("--chat", action="store_true", help="render the prompt as a user turn through the chat template")
    s.set_defaults(func=cmd_score)


def cmd_score(args: argparse.Namespace) -> int:
    from .cli_common import model_dir
    from .reward import load_reward, score
    model = load_reward(model_dir(args.path))
    for reply in args.response:
        print(f"{score(model, args.prompt, reply, chat=args.chat):.6f}\t{reply}")
    return 0
