"""``genmodels serve``: an OpenAI-compatible HTTP server with continuous batching (docs/serve.md).

    from genmodels.serve import Service, build_app, ServerThread
    service = Service(genmodels.load("model.gguf"), "smollm2")
    with ServerThread(build_app(service)) as server:      # server.url: http://127.0.0.1:<free port>
        ...                                                # openai.OpenAI(base_url=server.url + "/v1")

Modules: :mod:`.protocol` (request fields, checked), :mod:`.engine` (the batching thread over a
DecodeSession), :mod:`.responses` (OpenAI's response shapes), :mod:`.app` (routes, streaming, keys),
:mod:`.errors` (OpenAI's error bodies), :mod:`.runner` (uvicorn). Needs the ``serve`` extra.
"""
from .app import Service, build_app
from .errors import APIError
from .runner import ServerThread

__all__ = ["APIError", "ServerThread", "Service", "build_app"]
