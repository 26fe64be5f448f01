"""``genmodels serve PATH``: an OpenAI-compatible HTTP server over one model (docs/serve.md).

    genmodels serve model.gguf [--host 127.0.0.1] [--port 8000] [--max-batch 16] [--api-key KEY]
                               [--name NAME] [--max-queue 256] [--prefill-chunk 256] [--quantized] [--threads N]

Text models answer /v1/completions and /v1/chat/completions (continuous batching, streaming),
sentence encoders /v1/embeddings; /v1/models, /health, and the playground at /. It listens on
localhost unless ``--host`` says otherwise. Needs the ``serve`` extra (starlette, uvicorn).
"""
from __future__ import annotations

import argparse
import sys
from pathlib import Path


def add_serve_parser(sub) -> None:
    s = sub.add_parser("serve", help="an OpenAI-compatible HTTP server (completions, chat, embeddings) with a "
                                     "web playground")
    s.add_argument("path", help="a .gguf file, a Hugging Face or genmodels folder, or a training run")
    s.add_argument("--host", default="127.0.0.1", help="the address to listen on (default: localhost only)")
    s.add_argument("--port", type=int, default=8000)
    s.add_argument("--max-batch", type=int, default=16, help="rows decoding together (default 16)")
    s.add_argument("--max-queue", type=int, default=256, help="requests waiting beyond them; more get 429")
    s.add_argument("--prefill-chunk", type=int, default=256,
                   help="prompt tokens prefilled between two decode steps (default 256)")
    s.add_argument("--api-key", help="require 'Authorization: Bearer KEY' on every request (401 otherwise)")
    s.add_argument("--name", help="the model's id in the API (default: PATH's file or folder name)")
    s.add_argument("--quantized", action="store_true",
                   help="a .gguf's Q8_0/Q4_0/Q4_1/Q4_K/Q6_K projections keep their blocks (docs/quantization.md); "
                        "default: fp32 weights")
    s.add_argument("--threads", type=int, help="CPU threads (default: PyTorch's, one per core)")
    s.set_defaults(func=cmd_serve)


def check_serve_args(args: argparse.Namespace) -> None:
    """Every flag refused in one line naming it, before the model loads."""
    if not 0 <= args.port <= 65535:
        raise ValueError(f"--port {args.port} must be in [0, 65535] (0: any free port)")
    for flag in ("max_batch", "max_queue", "prefill_chunk"):
        if getattr(args, flag) < 1:
            raise ValueError(f"--{flag.replace('_', '-')} {getattr(args, flag)} must be an integer >= 1")
    if args.threads is not None and args.threads < 1:
        raise ValueError(f"--threads {args.threads} must be an integer >= 1")
    if args.quantized and not args.path.endswith(".gguf"):
        raise ValueError(f"--quantized keeps a GGUF file's blocks; {args.path} is not a .gguf file")
    if args.api_key is not None and not args.api_key.strip():
        raise ValueError("--api-key is empty; give the key clients must send")
    try:
        import starlette  # noqa: F401
        import uvicorn  # noqa: F401
    except ImportError as e:
        raise ValueError(f"genmodels serve needs the serve extra ({e.name} is not installed): "
                         "pip install 'genmodels[serve]'") from None


def cmd_serve(args: argparse.Namespace) -> int:
    import genmodels
    from genmodels.serve import Service, build_app
    from genmodels.serve.runner import bind, uvicorn_server

    from .cli_common import model_dir
    check_serve_args(args)
    sock = bind(args.host, args.port)  # a taken port is refused before the model loads
    if args.threads is not None:
        import torch
        torch.set_num_threads(args.threads)
    name = args.name or Path(args.path.rstrip("/")).name
    try:
        model = genmodels.load(model_dir(args.path), quantized=args.quantized)
        service = Service(model, name, max_batch=args.max_batch, max_queue=args.max_queue,
                          prefill_chunk=args.prefill_chunk)
    except ValueError as e:  # a model that cannot be served is refused naming PATH (Service knows no path)
        sock.close()
        raise ValueError(f"{args.path}: {e}" if args.path not in str(e) else str(e)) from None
    except BaseException:
        sock.close()
        raise
    host, port = sock.getsockname()[:2]
    shown = f"[{host}]" if ":" in host else host
    print(f"serving {name} at http://{shown}:{port} (OpenAI API under /v1, playground at /); Ctrl-C stops",
          file=sys.stderr, flush=True)
    try:
        uvicorn_server(build_app(service, api_key=args.api_key), log_level="info").run(sockets=[sock])
    except KeyboardInterrupt:  # uvicorn shut down gracefully, then raised the signal again: a normal stop
        pass
    print("stopped", file=sys.stderr)
    return 0
