"""Command line: thin wrappers over the public API.

    genmodels generate PATH --prompt TEXT [--max-new-tokens N --temperature T --top-k K --top-p P ...]
    genmodels chat PATH [--system TEXT] [--prompt TEXT] [sampling flags as generate's]
    genmodels convert SRC DST --to {hf,diffusers,genmodels}
    genmodels info PATH
    genmodels train CONFIG.yaml [--set key.sub=value ...]
    genmodels embed PATH TEXT...
    genmodels plan PRESET --gpus N [--seq L --batch B --zero fsdp|ddp --checkpointing --tokens T --mfu M --gpu G]
    genmodels arena SPEC.yaml [--out DIR] [--resume]
"""
from __future__ import annotations

import argparse
import json
import math
import os
import sys
import warnings
from pathlib import Path
from typing import Callable


def model_dir(path: str) -> Path:
    """A model folder, or a training run folder (its final model lives in ``final/``)."""
    p = Path(path)
    if (p / "final" / "config.json").is_file() and not (p / "config.json").is_file():
        return p / "final"
    return p


def cmd_generate(args: argparse.Namespace) -> int:
    import torch

    import genmodels
    from genmodels.generation.stop import StopStream, StopStrings
    from genmodels.registry import GENERATES, SEQ2SEQ, capabilities, require
    model = genmodels.load(model_dir(args.path))
    require(model, GENERATES, "`genmodels generate`", args.path)  # refuse before the prompt is echoed
    tok = getattr(model, "tokenizer", None)
    if tok is None:
        raise ValueError(f"{args.path} has no tokenizer.json, so a text prompt cannot be encoded")
    prompts = args.prompt or ["def "]
    texts = args.stop or []  # stop strings, matched on the text; one that is a single token also stops by id
    if "" in texts:
        raise ValueError("--stop '' is empty; give the text that ends generation (e.g. --stop $'\\n\\n')")
    stops = [i for i in (tok.token_to_id(s) for s in texts) if i is not None]
    kw = dict(sampling_kwargs(args), stop_tokens=stops)  # every argument before any echo, named as its flag
    encoded = [tok.encode(prompt).ids for prompt in prompts]
    for prompt, ids in zip(prompts, encoded):
        if not ids:
            raise ValueError(f"--prompt {prompt!r} encodes to no tokens; give a non-empty prompt")
    cut = StopStrings(texts)  # the stop string and what follows are not printed
    for prompt, ids in zip(prompts, encoded):
        if args.num_beams > 1 and SEQ2SEQ not in capabilities(model):  # beams settle at the end: no streaming
            out = genmodels.generate(model, torch.tensor([ids]), **kw)
            print(prompt + cut.before(tok.decode(out[0, len(ids):].tolist())))
            continue
        if SEQ2SEQ in capabilities(model):  # the prompt is the source; print the target
            out = genmodels.generate(model, torch.tensor([ids]), **kw)
            print(cut.before(tok.decode(out[0].tolist(), skip_special_tokens=True)))
            continue
        sys.stdout.write(prompt)
        sys.stdout.flush()
        text = StopStream(tok, texts)  # never half a character, nothing of a stop string

        def stream(new: torch.Tensor) -> None:  # print each token as soon as its text is final
            sys.stdout.write(text.push(int(new[0])))
            sys.stdout.flush()

        genmodels.generate(model, torch.tensor([ids]), streamer=stream, stop=texts or None, **kw)
        sys.stdout.write(text.finish() + "\n")  # whatever was held back
    return 0


def sampling_kwargs(args: argparse.Namespace) -> dict:
    """The sampling flags of :func:`add_sampling_args` as ``generate`` keywords, each checked
    (``check_generation_args``) and a bad one refused naming its flag (``--top-p=…``). ``--temperature``
    defaults to 0.8, or 0 (greedy) with ``--num-beams`` > 1."""
    from genmodels.generation.checks import check_generation_args
    beams = getattr(args, "num_beams", 1)
    temperature = args.temperature if args.temperature is not None else (0.0 if beams > 1 else 0.8)
    kw = dict(max_new_tokens=args.max_new_tokens, temperature=temperature, top_k=args.top_k,
              top_p=args.top_p, repetition_penalty=args.repetition_penalty, seed=args.seed)
    try:
        check_generation_args(temperature, args.top_k, args.top_p, args.repetition_penalty, args.max_new_tokens,
                              seed=args.seed, num_beams=beams)
    except ValueError as e:
        name = str(e).split("=", 1)[0]
        raise ValueError(f"--{name.replace('_', '-')}={str(e).split('=', 1)[1]}" if name.isidentifier() else str(e)) \
            from None
    return {**kw, "num_beams": beams} if hasattr(args, "num_beams") else kw


def cmd_convert(args: argparse.Namespace) -> int:
    import genmodels
    model = genmodels.load(model_dir(args.src))
    write = {"hf": genmodels.export_hf, "diffusers": genmodels.export_diffusers, "genmodels": genmodels.save}[args.to]
    out = write(model, args.dst, overwrite=args.overwrite)
    print(f"wrote {args.to} model to {out}")
    return 0


def cmd_info(args: argparse.Namespace) -> int:
    import genmodels
    from genmodels.models.flops import count_parameters, flops_per_token
    from genmodels.registry import get_family, presets
    if not Path(args.path).exists() and args.path in presets():  # a preset: described without building it
        model, c = None, genmodels.preset(args.path)
    else:
        model = genmodels.load(model_dir(args.path))
        c = model.config
    counts = get_family(c.family).counts  # FLOPs per token for families that declare them
    flops = ({f"context {t}": flops_per_token(c, t) for t in (1, c.max_seq_len)}
             if hasattr(counts, "matmul_parameters") else {})
    info = {"family": c.family, "parameters": counts.parameter_count(c) if model is None else count_parameters(model),
            "forward_flops_per_token": flops,
            "tokenizer": getattr(model, "tokenizer", None) is not None,
            "cpu_inference": "(a preset: no weights)" if model is None else _cpu_path(model), "config": c.to_dict()}
    if hasattr(counts, "forward_flops_per_image"):  # image families (diffusion): one image's forward pass
        info["forward_flops_per_image"] = counts.forward_flops_per_image(c)
    if args.json:
        print(json.dumps(info, indent=2))
        return 0
    print(f"family      {c.family}  ({getattr(c, 'extra', {}).get('hf_architecture', 'genmodels')})")
    print(f"parameters  {info['parameters']:,}")
    for k, v in info["forward_flops_per_token"].items():
        print(f"FLOPs/token {v / 1e6:,.1f} M  (forward, {k})")
    if "forward_flops_per_image" in info:
        print(f"FLOPs/image {info['forward_flops_per_image'] / 1e6:,.1f} M  (forward)")
    if hasattr(counts, "describe"):  # a family's own layout line
        print(counts.describe(c))
    if isinstance(c, genmodels.ModelConfig):  # the transformer families' layout line
        print(f"layers {c.n_layers}  d_model {c.d_model}  heads {c.n_heads}/{c.kv_heads} kv  d_ff {c.d_ff}  "
              f"vocab {c.vocab_size}  positions {c.position}  norm {c.norm}  mlp {c.mlp}  tied {c.tie_embeddings}")
        if getattr(c, "n_experts", 0):  # sparse MoE (#11)
            from genmodels.models.flops import active_parameter_count
            print(f"experts {c.n_experts} (top-{c.experts_per_token}, width {c.expert_width}) in {c.n_moe_layers} "
                  f"layers  active parameters {active_parameter_count(c):,}")
    print(f"CPU inference  {info['cpu_inference']}")
    return 0


def _cpu_path(model) -> str:
    """Which path CPU generation / embedding takes for this model (genmodels.native or PyTorch)."""
    from genmodels.native import decoder, encoder
    from genmodels.registry import GENERATES, capabilities
    if GENERATES not in capabilities(model):  # encoders: the embed path
        reason, what = encoder.unsupported(model), "native encoder (embed)"
    else:
        reason, what = decoder.unsupported(model), "native decode step (generate)"
    return what if reason is None else f"PyTorch ({reason})"


def cmd_embed(args: argparse.Namespace) -> int:
    import genmodels
    from genmodels.registry import EMBEDS, require
    model = genmodels.load(model_dir(args.path))
    require(model, EMBEDS, "`genmodels embed`", args.path)
    vecs = genmodels.embed(model, args.texts)
    for text, v in zip(args.texts, vecs.tolist()):
        print(json.dumps({"text": text, "embedding": [round(x, 6) for x in v]}))
    return 0


# ---- arguments ----------------------------------------------------------------------------------
class ArgumentParser(argparse.ArgumentParser):
    """argparse whose usage errors are one ``error:`` line and exit status 2, like every other refusal
    (subcommand parsers inherit the class)."""

    def error(self, message: str):
        self.exit(2, f"error: {self.prog}: {message} (see {self.prog} --help)\n")


def finite_float(text: str) -> float:
    """An argparse ``type``: a float that is not NaN or ±inf (argparse names the option)."""
    try:
        x = float(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"{text!r} is not a number; give a finite float") from None
    if not math.isfinite(x):
        raise argparse.ArgumentTypeError(f"{text!r} is not a finite number; give a finite float")
    return x


def add_sampling_args(p: argparse.ArgumentParser, max_new_tokens: int = 128) -> None:
    """The sampling flags ``generate`` and ``chat`` share (read back by :func:`sampling_kwargs`)."""
    p.add_argument("--max-new-tokens", type=int, default=max_new_tokens)
    p.add_argument("--temperature", type=finite_float, default=None,
                   help="0 = greedy; default 0.8, or 0 with --num-beams > 1")
    p.add_argument("--top-k", type=int, default=50)
    p.add_argument("--top-p", type=finite_float, default=None)
    p.add_argument("--repetition-penalty", type=finite_float, default=None)
    p.add_argument("--seed", type=int, default=None)


def build_parser() -> argparse.ArgumentParser:
    p = ArgumentParser(prog="genmodels", description=__doc__.split("\n")[0])
    sub = p.add_subparsers(dest="command", required=True)

    g = sub.add_parser("generate", help="sample text from a model folder or training run")
    g.add_argument("path")
    g.add_argument("--prompt", action="append", help="prompt text (repeatable); default 'def '")
    add_sampling_args(g)
    g.add_argument("--num-beams", type=int, default=1, help="beam search with this many beams (1 = none)")
    g.add_argument("--stop", action="append",
                   help="text that ends generation, not printed (repeatable; matched on the decoded text)")
    g.set_defaults(func=cmd_generate)

    c = sub.add_parser("convert", help="convert between Hugging Face and genmodels folders")
    c.add_argument("src")
    c.add_argument("dst")
    c.add_argument("--to", choices=("hf", "diffusers", "genmodels"), required=True)
    c.add_argument("--overwrite", action="store_true",
                   help="replace a model of another family or architecture already in DST (files that are "
                        "not model files are never replaced)")
    c.set_defaults(func=cmd_convert)

    i = sub.add_parser("info", help="family, parameter count, config, FLOPs per token")
    i.add_argument("path", help="a model folder, a training run, or a preset name (e.g. llama-tiny)")
    i.add_argument("--json", action="store_true")
    i.set_defaults(func=cmd_info)

    e = sub.add_parser("embed", help="sentence embeddings from an encoder (e.g. all-MiniLM-L6-v2)")
    e.add_argument("path")
    e.add_argument("texts", nargs="+")
    e.set_defaults(func=cmd_embed)

    from .cli_train import add_train_parser  # a broken import is a bug to see, not a missing command
    add_train_parser(sub)
    from .cli_images import add_image_parsers
    add_image_parsers(sub, finite_float)
    from .cli_arena import add_arena_parser
    add_arena_parser(sub)
    from .cli_plan import add_plan_parser
    add_plan_parser(sub, finite_float)
    from .cli_chat import add_chat_parser
    add_chat_parser(sub)
    return p


# ---- failures: one line for what a user can fix, a traceback for a bug ---------------------------
ALLOCATION_FAILURES = ("can't allocate memory", "not enough memory", "out of memory")
# command-line arguments that name files or folders, as the usage line spells them
PATH_ARGUMENTS = {"path": "PATH", "src": "SRC", "dst": "DST", "config": "CONFIG", "out": "--out"}


def _one_line_warning(message, category, filename, lineno, line=None) -> str:
    """Warnings on the command line read like errors: ``warning: <message>``, one line, no source."""
    return f"warning: {' '.join(str(message).split())}\n"


def run_command(func: Callable[[argparse.Namespace], int | None], args: argparse.Namespace) -> int:
    """Run one command: ``func(args)``'s status, or 2 with ONE ``error: <message>`` line on stderr for
    every expected failure (see :func:`expected_failure`), 130 on Ctrl-C. Anything else is a bug in
    genmodels and keeps its traceback. Both entry points (``genmodels``, ``genmodels.cli_train``) use it."""
    warnings.formatwarning = _one_line_warning
    try:
        status = func(args) or 0
        sys.stdout.flush()  # a closed pipe must fail here, inside the handler, not at interpreter exit
        return status
    except KeyboardInterrupt:
        print("error: interrupted", file=sys.stderr)
        return 130
    except BrokenPipeError:  # the reader went away (`genmodels ... | head -1`)
        _stdout_to_devnull()
        print("error: stdout was closed before the output was complete (broken pipe)", file=sys.stderr)
        return 2
    except Exception as e:
        message = expected_failure(e, args)
        if message is None:
            raise
        print(f"error: {message}", file=sys.stderr)
        return 2


def _stdout_to_devnull() -> None:
    """Point stdout at /dev/null so the interpreter's final flush does not fail again (the Python
    docs' recipe for SIGPIPE); a no-op where stdout has no file descriptor (tests capture it)."""
    try:
        fd = sys.stdout.fileno()
    except (AttributeError, OSError, ValueError):
        return
    devnull = os.open(os.devnull, os.O_WRONLY)
    os.dup2(devnull, fd)
    os.close(devnull)


def one_line(e: BaseException) -> str:
    """An exception's message on one line (its lines joined), or its type name when it has none."""
    lines = [s.strip() for s in str(e).splitlines() if s.strip()]
    return " ".join(lines) or type(e).__name__


def _arguments(args: argparse.Namespace) -> list[tuple[str, str]]:
    """The (name, value) pairs of the file or folder arguments this command was given."""
    return [(name, str(getattr(args, dest))) for dest, name in PATH_ARGUMENTS.items()
            if isinstance(getattr(args, dest, None), str) and getattr(args, dest)]  # "" names nothing


def _source(args: argparse.Namespace) -> str:
    """Which command arguments a failure came from, e.g. ``SRC models/a, DST out``."""
    return ", ".join(f"{name} {value}" for name, value in _arguments(args)) or "the command's arguments"


def _names_an_argument(message: str, args: argparse.Namespace) -> bool:
    return any(value in message for _, value in _arguments(args))


def _bad_json_file(args: argparse.Namespace) -> Path | None:
    """The first ``*.json`` directly in a folder argument (or its ``final/``) that does not parse."""
    for _, value in _arguments(args):
        p = Path(value)
        for folder in (p, model_dir(value)):
            files = sorted(folder.glob("*.json")) if folder.is_dir() else []
            for f in files:
                try:
                    json.loads(f.read_text(encoding="utf-8"))
                except (OSError, ValueError):
                    return f
    return None


def _is(e: BaseException, module: str, name: str) -> bool:
    """``isinstance(e, module.name)`` without importing ``module`` (an error from it means it is loaded)."""
    cls = getattr(sys.modules.get(module), name, None)
    return isinstance(cls, type) and isinstance(e, cls)


def expected_failure(e: Exception, args: argparse.Namespace) -> str | None:
    """The one-line message for a failure the user can fix, naming the file or argument it concerns;
    ``None`` for a bug (which must keep its traceback).

    Expected: bad values and configs (ValueError: ConfigError, ConversionError, JSON and text
    decoding), files and disks (OSError: missing, unreadable, a folder instead of a file, permission,
    disk full, a refused save target), run-folder refusals and locks (RunDirError), a diverged run
    (FloatingPointError), the libraries that read our inputs (PyYAML, safetensors, and tokenizers,
    which raises a bare Exception), and allocator failures."""
    source = _source(args)
    msg = one_line(e)
    if isinstance(e, json.JSONDecodeError):
        f = _bad_json_file(args)
        return f"{f or 'a JSON file read for ' + source}: not valid JSON ({e.msg} at line {e.lineno}, column {e.colno})"
    if isinstance(e, UnicodeDecodeError):
        return f"a file read for {source} is not UTF-8 text ({msg})"
    if _is(e, "yaml", "YAMLError"):
        return f"{source}: not valid YAML ({msg})"
    if _is(e, "safetensors", "SafetensorError"):
        if "while serializing" in msg:  # a write (files.write_safetensors names the file where it can)
            return f"a .safetensors file written for {source} could not be written ({msg})"
        return f"a .safetensors file read for {source} is truncated or not safetensors ({msg})"
    if isinstance(e, MemoryError) or (isinstance(e, RuntimeError) and
                                      any(s in str(e).lower() for s in ALLOCATION_FAILURES)):
        return f"out of memory while running {getattr(args, 'command', None) or 'the command'} on {source} ({msg})"
    if _is(e, "genmodels.training.rundir", "RunDirError"):
        return msg
    if isinstance(e, OSError):
        if e.filename is not None:  # the OS's own error: strerror and the file(s)
            files = f"{e.filename}" + (f" -> {e.filename2}" if e.filename2 is not None else "")
            return f"{files}: {e.strerror or msg}"
        return msg if _names_an_argument(msg, args) else f"{msg} (while reading or writing {source})"
    if isinstance(e, (ValueError, FloatingPointError)):  # ConfigError, ConversionError, NonFiniteError
        return msg
    if type(e) is Exception:  # tokenizers (and other Rust extensions) raise a bare Exception
        return f"a file read for {source} could not be parsed ({msg})"
    return None


def main(argv: list[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    return run_command(args.func, args)


if __name__ == "__main__":
    sys.exit(main())
