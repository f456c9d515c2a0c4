"""A real MedSegR engine server (FastAPI app on uvicorn) on a loopback port, in a
thread of the test process, serving an already loaded pipeline."""

from __future__ import annotations

import secrets
import socket
import threading
import time
from typing import Any

import uvicorn
from medsegr.server.app import create_app
from medsegr.server.settings import ServerSettings


class LoopbackEngine:
    """``with LoopbackEngine(pipeline) as engine: EngineClient(engine.url, engine.token)``."""

    def __init__(self, pipeline: Any, token: str | None = None, **settings: Any) -> None:
        self.token = token or secrets.token_urlsafe(24)
        self.app = create_app(pipeline, ServerSettings(token=self.token, **settings))
        self._sock = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
        self._sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        self._sock.bind(("127.0.0.1", 0))
        self.port = int(self._sock.getsockname()[1])
        self.url = f"http://127.0.0.1:{self.port}"
        config = uvicorn.Config(self.app, log_level="warning", lifespan="on")
        self.server = uvicorn.Server(config)
        self._thread = threading.Thread(target=self.server.run, kwargs={"sockets": [self._sock]},
                                        name="medsegr-test-engine", daemon=True)

    @property
    def engine(self) -> Any:
        return self.app.state.engine

    def start(self, timeout: float = 30.0) -> "LoopbackEngine":
        self._thread.start()
        deadline = time.monotonic() + timeout
        while not self.server.started:
            if time.monotonic() > deadline or not self._thread.is_alive():
                raise RuntimeError("the test engine server did not start")
            time.sleep(0.02)
        return self

    def stop(self) -> None:
        self.server.should_exit = True
        self._thread.join(timeout=30)
        self._sock.close()

    def __enter__(self) -> "LoopbackEngine":
        return self.start()

    def __exit__(self, *exc: Any) -> None:
        self.stop()


def closed_port() -> int:
    """A loopback port that nothing listens on."""
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])
