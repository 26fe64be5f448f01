"""Running the app under uvicorn: in the foreground (``genmodels serve``) or in a thread on a free port
(tests, benchmarks: :class:`ServerThread`)."""
from __future__ import annotations

import socket
import threading
import time


def bind(host: str, port: int) -> socket.socket:
    """A listening socket on ``host:port`` (``port`` 0: a free one); refused in one line when taken."""
    family = socket.AF_INET6 if ":" in host else socket.AF_INET
    sock = socket.socket(family, socket.SOCK_STREAM)
    sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
    try:
        sock.bind((host, port))
    except OSError as e:
        sock.close()
        raise ValueError(f"--host {host} --port {port}: cannot listen there ({e.strerror or e})") from None
    sock.listen(2048)
    return sock


def uvicorn_server(app, log_level: str = "warning"):
    import uvicorn
    config = uvicorn.Config(app, log_level=log_level, lifespan="on", timeout_graceful_shutdown=5)
    return uvicorn.Server(config)


class ServerThread:
    """``app`` served on ``host`` at a free port in a daemon thread: ``url`` (``http://host:port``), ``stop()``
    (a graceful shutdown: the app's lifespan ends, which stops the engine)."""

    def __init__(self, app, host: str = "127.0.0.1", port: int = 0):
        self.sock = bind(host, port)
        self.url = f"http://{host}:{self.sock.getsockname()[1]}"
        self.server = uvicorn_server(app)
        self.thread = threading.Thread(target=self.server.run, kwargs={"sockets": [self.sock]}, daemon=True)
        self.thread.start()
        for _ in range(500):  # until it accepts (bounded; a start that never comes fails the caller's request)
            if self.server.started or not self.thread.is_alive():
                break
            time.sleep(0.01)

    def stop(self) -> None:
        self.server.should_exit = True
        self.thread.join(timeout=30)
        self.sock.close()

    def __enter__(self) -> "ServerThread":
        return self

    def __exit__(self, *exc) -> None:
        self.stop()
