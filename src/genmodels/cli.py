"""Command line: thin wrappers over the public API.

    genmodels generate PATH --prompt TEXT [--max-new-tokens N --temperature T --top-k K --top-p P ...]
    genmodels convert SRC DST --to {hf,genmodels}
    genmodels info PATH
    genmodels train CONFIG.yaml [--set key.sub=value ...]
    genmodels embed PATH TEXT...
"""
from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path


def model_dir(path: str) -> Path:
    """A model folder, or a training run folder (its final model lives in ``final/``)."""
    p = Path(path)
    if (p / "final" / "config.json").is_file() and not (p / "config.json").is_file():
        return p / "final"
    return p


def cmd_generate(args: argparse.Namespace) -> int:
    import torch

    import genmodels
    model = genmodels.load(model_dir(args.path))
    tok = model.__dict__.get("tokenizer")
    if tok is None:
        raise SystemExit(f"error: {args.path} has no tokenizer.json, so a text prompt cannot be encoded")
    prompts = args.prompt or ["def "]
    for prompt in prompts:
        ids = tok.encode(prompt).ids
        if not ids:
            raise SystemExit("error: the prompt encodes to no tokens")
        stops = [tok.token_to_id(s) for s in args.stop or []]
        unknown = [s for s, i in zip(args.stop or [], stops) if i is None]
        if unknown:
            raise ValueError(f"--stop {unknown[0]!r} is not a single token of this tokenizer; "
                             "give a token string (e.g. the EOS token)")
        kw = dict(max_new_tokens=args.max_new_tokens, temperature=args.temperature, top_k=args.top_k,
                  top_p=args.top_p, repetition_penalty=args.repetition_penalty, seed=args.seed,
                  stop_tokens=[s for s in stops if s is not None])
        if model.family == "seq2seq":  # the prompt is the source; print the target
            out = genmodels.generate(model, torch.tensor([ids]), **kw)
            print(tok.decode(out[0].tolist(), skip_special_tokens=True))
            continue
        sys.stdout.write(prompt)
        sys.stdout.flush()
        emitted: list[int] = []
        shown = ""

        def stream(new: torch.Tensor) -> None:  # print each token as soon as it is decoded
            nonlocal shown
            emitted.append(int(new[0]))
            text = tok.decode(emitted)
            if not text.endswith("\ufffd"):  # wait for complete UTF-8 characters
                sys.stdout.write(text[len(shown):])
                sys.stdout.flush()
                shown = text

        genmodels.generate(model, torch.tensor([ids]), streamer=stream, **kw)
        sys.stdout.write(tok.decode(emitted)[len(shown):] + "\n")  # whatever was held back
    return 0


def cmd_convert(args: argparse.Namespace) -> int:
    import genmodels
    model = genmodels.load(model_dir(args.src))
    out = genmodels.export_hf(model, args.dst) if args.to == "hf" else genmodels.save(model, args.dst)
    print(f"wrote {args.to} model to {out}")
    return 0


def cmd_info(args: argparse.Namespace) -> int:
    import genmodels
    from genmodels.models.flops import count_parameters, flops_per_token
    model = genmodels.load(model_dir(args.path))
    c = model.config
    info = {"family": c.family, "parameters": count_parameters(model),
            "forward_flops_per_token": {f"context {t}": flops_per_token(c, t) for t in (1, c.max_seq_len)},
            "tokenizer": model.__dict__.get("tokenizer") is not None, "cpu_inference": _cpu_path(model),
            "config": c.to_dict()}
    if args.json:
        print(json.dumps(info, indent=2))
        return 0
    print(f"family      {c.family}  ({c.extra.get('hf_architecture', 'genmodels')})")
    print(f"parameters  {info['parameters']:,}")
    for k, v in info["forward_flops_per_token"].items():
        print(f"FLOPs/token {v / 1e6:,.1f} M  (forward, {k})")
    print(f"layers {c.n_layers}  d_model {c.d_model}  heads {c.n_heads}/{c.kv_heads} kv  d_ff {c.d_ff}  "
          f"vocab {c.vocab_size}  positions {c.position}  norm {c.norm}  mlp {c.mlp}  tied {c.tie_embeddings}")
    print(f"CPU inference  {info['cpu_inference']}")
    return 0


def _cpu_path(model) -> str:
    """Which path CPU generation / embedding takes for this model (genmodels.native or PyTorch)."""
    from genmodels.native import decoder, encoder
    if model.family == "encoder":
        reason, what = encoder.unsupported(model), "native encoder (embed)"
    else:
        reason, what = decoder.unsupported(model), "native decode step (generate)"
    return what if reason is None else f"PyTorch ({reason})"


def cmd_embed(args: argparse.Namespace) -> int:
    import genmodels
    model = genmodels.load(model_dir(args.path))
    vecs = genmodels.embed(model, args.texts)
    for text, v in zip(args.texts, vecs.tolist()):
        print(json.dumps({"text": text, "embedding": [round(x, 6) for x in v]}))
    return 0


def build_parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(prog="genmodels", description=__doc__.split("\n")[0])
    sub = p.add_subparsers(dest="command", required=True)

    g = sub.add_parser("generate", help="sample text from a model folder or training run")
    g.add_argument("path")
    g.add_argument("--prompt", action="append", help="prompt text (repeatable); default 'def '")
    g.add_argument("--max-new-tokens", type=int, default=128)
    g.add_argument("--temperature", type=float, default=0.8, help="0 = greedy")
    g.add_argument("--top-k", type=int, default=50)
    g.add_argument("--top-p", type=float, default=None)
    g.add_argument("--repetition-penalty", type=float, default=None)
    g.add_argument("--seed", type=int, default=None)
    g.add_argument("--stop", action="append", help="a token string that ends generation (repeatable)")
    g.set_defaults(func=cmd_generate)

    c = sub.add_parser("convert", help="convert between Hugging Face and genmodels folders")
    c.add_argument("src")
    c.add_argument("dst")
    c.add_argument("--to", choices=("hf", "genmodels"), required=True)
    c.set_defaults(func=cmd_convert)

    i = sub.add_parser("info", help="family, parameter count, config, FLOPs per token")
    i.add_argument("path")
    i.add_argument("--json", action="store_true")
    i.set_defaults(func=cmd_info)

    e = sub.add_parser("embed", help="sentence embeddings from an encoder (e.g. all-MiniLM-L6-v2)")
    e.add_argument("path")
    e.add_argument("texts", nargs="+")
    e.set_defaults(func=cmd_embed)

    try:
        from .cli_train import add_train_parser
        add_train_parser(sub)
    except ImportError:
        pass
    return p


def main(argv: list[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    try:
        return args.func(args) or 0
    except (FileNotFoundError, ValueError) as e:  # ConfigError / ConversionError are ValueErrors
        print(f"error: {e}", file=sys.stderr)
        return 2
    except KeyboardInterrupt:
        return 130


if __name__ == "__main__":
    sys.exit(main())
