"""What every command-line module shares: the argument parser class and types, the sampling flags of
``generate`` and ``chat``, model folders, and the one handler of failures (:func:`run_command`: one
``error:`` line and exit status 2 for what a user can fix, a traceback for a bug). ``cli.py`` and the
``cli_*.py`` command modules import it; it imports none of them.
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
    """A model folder, or a training run folder (its final model lives in ``final/``: a model, or a LoRA run's
    adapter over its base)."""
    p = Path(path)
    final = p / "final"
    has_final = (final / "config.json").is_file() or (final / "adapter_config.json").is_file()
    if has_final and not (p / "config.json").is_file():
        return p / "final"
    return p


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
                   help="0 = greedy; default 0.8 (0 with --num-beams > 1, where the command has it)")
    p.add_argument("--top-k", type=int, default=50)
    p.add_argument("--top-p", type=finite_float, default=None)
    p.add_argument("--repetition-penalty", type=finite_float, default=None)
    p.add_argument("--seed", type=int, default=None)


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


# ---- failures: one line for what a user can fix, a traceback for a bug ---------------------------
ALLOCATION_FAILURES = ("can't allocate memory", "not enough memory", "out of memory")
# command-line arguments that name files or folders, as the usage line spells them (by argparse dest)
PATH_ARGUMENTS = {"path": "PATH", "src": "SRC", "dst": "DST", "config": "CONFIG", "spec": "SPEC", "image": "IMAGE",
                  "out": "--out", "tasks": "--tasks", "seeds": "--seeds", "gist": "--gist", "critic": "--critic",
                  "lm": "--lm", "text_file": "--text-file", "save_text": "--save-text", "recon": "--recon"}


def _one_line_warning(message, category, filename, lineno, line=None) -> str:
    """Warnings on the command line read like errors: ``warning: <message>``, one line, no source."""
    return f"warning: {' '.join(str(message).split())}\n"


def run_command(func: Callable[[argparse.Namespace], int | None], args: argparse.Namespace) -> int:
    """Run one command: ``func(args)``'s status, or 2 with ONE ``error: <message>`` line on stderr for
    every expected failure (see :func:`expected_failure`), 130 on Ctrl-C. Anything else is a bug in
    genmodels and keeps its traceback. Both entry points (``genmodels``, ``genmodels.cli_train``) use it."""
    warnings.formatwarning = _one_line_warning
    try:
        check_path_arguments(args)
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


def check_path_arguments(args: argparse.Namespace) -> None:
    """Refuse an empty file or folder argument (``--out ""``, an unset shell variable): it names nothing, and
    read as a path it would be the current folder (``convert SRC ""`` wrote a model there)."""
    for dest, name in PATH_ARGUMENTS.items():
        if getattr(args, dest, None) == "":
            raise ValueError(f"{name} '' names no file or folder: give a path")


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
