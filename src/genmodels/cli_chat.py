"""``genmodels chat PATH``: a conversation with a model through its chat template (genmodels.chat).

    genmodels chat model.gguf [--system TEXT] [--max-new-tokens N --temperature T --top-k K --top-p P
                               --repetition-penalty R --seed S] [--stop TEXT ...]
    genmodels chat model.gguf --prompt "What is the capital of France?"   # one answer, for scripts
    echo "What is the capital of France?" | genmodels chat model.gguf     # the same, from stdin

Interactive (stdin a terminal, no ``--prompt``): each line is a message; the reply is printed as it
decodes. ``/reset`` starts the conversation over (the system message stays), Ctrl-C stops a reply
and keeps the conversation (the part said so far stays in it), Ctrl-D (or ``/exit``) leaves. The
conversation's KV cache is kept between turns; when the context fills, the oldest turns are dropped,
said once on stderr. Sampling flags are ``genmodels generate``'s, checked the same way.
"""
from __future__ import annotations

import argparse
import sys
from typing import Callable, Iterator, TextIO

RESET, EXITS = "/reset", ("/exit", "/quit")


def add_chat_parser(sub) -> None:
    from .cli_common import add_sampling_args
    c = sub.add_parser("chat", help="chat with a model through its chat template (interactive, or --prompt once)")
    c.add_argument("path", help="a .gguf file, a Hugging Face or genmodels folder, or a training run")
    c.add_argument("--system", help="the system message (kept through /reset and when old turns are dropped)")
    c.add_argument("--prompt", help="answer this one message and exit (so does a message on stdin when stdin "
                                    "is not a terminal)")
    add_sampling_args(c, max_new_tokens=256)
    c.add_argument("--stop", action="append", help="a string that ends the reply, not printed (repeatable)")
    c.set_defaults(func=cmd_chat)


def cmd_chat(args: argparse.Namespace, stdin: TextIO | None = None, stdout: TextIO | None = None,
             stderr: TextIO | None = None, read: Callable[[], str] | None = None) -> int:
    """Run the command; the streams (and ``read``, a line reader raising EOFError at the end) can be
    injected, so the interactive loop runs without a terminal."""
    import genmodels
    from genmodels.chat import Conversation
    from genmodels.registry import GENERATES, require

    from .cli_common import model_dir, sampling_kwargs
    stdin, stdout, stderr = stdin or sys.stdin, stdout or sys.stdout, stderr or sys.stderr
    options = sampling_kwargs(args)  # every flag refused (named) before the model loads
    if args.stop and "" in args.stop:
        raise ValueError("--stop '' is empty; give the text that ends a reply")
    once = args.prompt is not None or (read is None and not stdin.isatty())
    message = None
    if once:
        message = (args.prompt if args.prompt is not None else stdin.read()).rstrip()
        if not message.strip():
            where = "--prompt" if args.prompt is not None else "stdin"
            raise ValueError(f"{where} holds no message; give the text to answer")
    model = genmodels.load(model_dir(args.path))
    require(model, GENERATES, "`genmodels chat`", args.path)
    if getattr(model, "tokenizer", None) is None:
        raise ValueError(f"{args.path} has no tokenizer (tokenizer.json, or a GGUF file's tokenizer.ggml.* metadata), "
                         "so messages cannot be encoded")
    conversation = Conversation(model, system=args.system, stop=args.stop, **options)
    if once:
        show(conversation.say(message), stdout)
        return 0
    if read is None:
        try:
            import readline  # noqa: F401  (input() then edits the line and keeps a history)
        except ImportError:  # not on every platform
            pass
    return interactive(conversation, read or (lambda: input("> ")), stdout, stderr, args.path)


def show(pieces: Iterator[str], out: TextIO) -> None:
    """Print a reply's pieces as they come, then a newline; the stream is closed even when the printing
    is interrupted (so the conversation keeps what was said)."""
    try:
        for piece in pieces:
            out.write(piece)
            out.flush()
    finally:
        pieces.close()
        out.write("\n")
        out.flush()


def interactive(conversation, read: Callable[[], str], out: TextIO, err: TextIO, path: str = "the model") -> int:
    """The read-reply loop (module doc). Returns 0 when the input ends (Ctrl-D) or on ``/exit``."""
    err.write(f"chatting with {path} (context {conversation.context} tokens): {RESET} starts over, "
              "Ctrl-C stops a reply, Ctrl-D leaves\n")
    err.flush()
    while True:
        try:
            line = read()
        except EOFError:  # Ctrl-D
            out.write("\n")
            return 0
        except KeyboardInterrupt:  # Ctrl-C at the prompt: a fresh prompt, as a shell does
            out.write("\n")
            continue
        command = line.strip()
        if not command:
            continue
        if command in EXITS:
            return 0
        if command == RESET:
            conversation.reset()
            err.write("(conversation cleared)\n")
            continue
        try:
            show(conversation.say(line), out)
        except KeyboardInterrupt:
            err.write("(reply stopped)\n")
        except ValueError as e:  # a message too long for the context: refused, the session goes on
            err.write(f"error: {e}\n")
        err.flush()
