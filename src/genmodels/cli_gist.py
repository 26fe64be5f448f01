"""``genmodels compress``: an instruction compressed into its gist tokens' keys and values (docs/gist.md).

    genmodels compress PATH --prompt INSTRUCTION [--k 1] --out FILE
    genmodels generate PATH --gist FILE --prompt INPUT     (the input decoded after the cached gist)
"""
from __future__ import annotations

import argparse


def add_compress_parser(sub) -> None:
    c = sub.add_parser("compress", help="compress an instruction into gist tokens (a gist cache file for "
                                        "`genmodels generate --gist`)")
    c.add_argument("path", help="a model trained with gist tokens (train.objective: gist), or its run folder")
    c.add_argument("--prompt", required=True, help="the instruction text")
    c.add_argument("--k", type=int, default=1, help="gist tokens (as many as the model was trained with; default 1)")
    c.add_argument("--out", required=True, help="the gist cache file to write (safetensors)")
    c.set_defaults(func=cmd_compress)


def cmd_compress(args: argparse.Namespace) -> int:
    import genmodels
    from .cli_common import model_dir
    from .gist import check_gist_target
    if args.k < 1:
        raise ValueError(f"--k {args.k}: expected an integer >= 1 (gist tokens)")
    check_gist_target(args.out, "--out")  # a folder or a file genmodels did not write: refused before any work
    model = genmodels.load(model_dir(args.path))
    gist = genmodels.compress(model, args.prompt, k=args.k)
    out = gist.save(args.out)
    n = int(gist.next_pos[0]) - gist.k
    print(f"wrote {out}: {n} instruction tokens + {gist.k} gist -> {gist.k} cached position(s) per layer "
          f"({(n + gist.k) / gist.k:.1f}x fewer)")
    return 0


def gist_for(args: argparse.Namespace, model):
    """The ``--gist FILE`` of ``genmodels generate`` loaded for ``model`` (None without the flag); refused in one
    line for another model or with beam search."""
    if getattr(args, "gist", None) is None:
        return None
    if args.num_beams > 1:
        raise ValueError(f"--gist with --num-beams {args.num_beams}: beam search does not continue a cache; "
                         "use --num-beams 1")
    from pathlib import Path

    from genmodels.gist import GistCache
    if not Path(args.gist).is_file():
        what = "a folder, not a gist cache file" if Path(args.gist).is_dir() else "no such file"
        raise ValueError(f"--gist {args.gist}: {what} (make one with `genmodels compress PATH --prompt TEXT "
                         "--out FILE`)")
    return GistCache.load(args.gist, model)
