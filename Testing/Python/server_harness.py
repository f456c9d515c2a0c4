"""Running the real engine server in tests: uvicorn on a free loopback port, in a
thread (:class:`LiveServer`) or as a ``medsegr serve`` subprocess
(:class:`ServeProcess`); and hooks that shape what the tiny random model does."""

from __future__ import annotations

import contextlib
import json
import os
import socket
import subprocess
import sys
import threading
import time
from pathlib import Path
from typing import Any, Iterator

import numpy as np

REPO = Path(__file__).resolve().parents[2]
TOKEN = "test-token-0123456789abcdef"


class LiveServer:
    """A FastAPI app served by real uvicorn on 127.0.0.1 (a free port) in a thread."""

    def __init__(self, app: Any) -> None:
        import uvicorn

        self.app = app
        self.sock = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
        self.sock.bind(("127.0.0.1", 0))
        self.sock.listen(128)
        self.port = self.sock.getsockname()[1]
        self.url = f"http://127.0.0.1:{self.port}"
        self.server = uvicorn.Server(uvicorn.Config(app, log_level="warning", access_log=True))
        self.thread = threading.Thread(target=self.server.run, kwargs={"sockets": [self.sock]},
                                       name="uvicorn-test", daemon=True)

    @property
    def engine(self) -> Any:
        return self.app.state.engine

    def __enter__(self) -> "LiveServer":
        self.thread.start()
        deadline = time.monotonic() + 30
        while not self.server.started:
            if time.monotonic() > deadline or not self.thread.is_alive():
                raise RuntimeError("the test server did not start")
            time.sleep(0.02)
        return self

    def __exit__(self, *exc: Any) -> None:
        self.server.should_exit = True
        self.thread.join(timeout=30)
        self.sock.close()


def live_server(pipeline: Any, **settings: Any) -> LiveServer:
    from medsegr.server.app import create_app
    from medsegr.server.settings import ServerSettings

    return LiveServer(create_app(pipeline, ServerSettings(**settings)))


def tiny_config_file(folder: Path) -> Path:
    """A model config for ``medsegr serve --base --config``: the tiny random model."""
    path = folder / "tiny.json"
    path.write_text(json.dumps({"llm": {"source": "tiny-random"},
                                "vision": {"source": "tiny-random"},
                                "model": {"visual_grid": 4},
                                "generation": {"max_new_tokens": 12}}), encoding="utf-8")
    return path


class ServeProcess:
    """``medsegr serve`` in a subprocess; ``url`` is read from its "listening on" line."""

    def __init__(self, args: list[str], env: dict[str, str] | None = None) -> None:
        self.args = args
        self.env = {**os.environ, "HF_HUB_OFFLINE": "1", "TRANSFORMERS_OFFLINE": "1",
                    **(env or {})}
        self.proc: subprocess.Popen[str] | None = None
        self.url = ""
        self.lines: list[str] = []

    def start(self, timeout: float = 120.0) -> "ServeProcess":
        self.proc = subprocess.Popen([sys.executable, "-m", "medsegr.cli", "serve", *self.args],
                                     stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True,
                                     encoding="utf-8", errors="replace", env=self.env, cwd=REPO)
        deadline = time.monotonic() + timeout
        assert self.proc.stdout is not None
        while time.monotonic() < deadline:
            line = self.proc.stdout.readline()
            if not line:
                break
            self.lines.append(line)
            if "listening on " in line:
                self.url = line.split("listening on ", 1)[1].split()[0]
                threading.Thread(target=self._drain, daemon=True).start()
                return self
        self.kill()
        raise RuntimeError("medsegr serve did not start:\n" + "".join(self.lines))

    def _drain(self) -> None:
        assert self.proc is not None and self.proc.stdout is not None
        for line in self.proc.stdout:
            self.lines.append(line)

    def kill(self) -> None:
        if self.proc is not None and self.proc.poll() is None:
            self.proc.kill()
            self.proc.wait(timeout=30)


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


# --------------------------------------------------------------------------- model hooks


class DecodingHook:
    """A forward hook on the LM head of a (random) model: optionally sleeps ``delay`` s
    per call (a slow model), keeps end-of-sequence tokens from being chosen (answers
    run to ``max_new_tokens``), and with ``always_seg`` makes every token ``[SEG]``."""

    def __init__(self, model: Any, delay: float = 0.0, always_seg: bool = False) -> None:
        self.model, self.delay, self.always_seg = model, delay, always_seg
        self.calls = 0

    def __call__(self, module: Any, args: Any, output: Any) -> Any:
        self.calls += 1
        if self.delay:
            time.sleep(self.delay)
        output = output.clone()
        for token in self.model.eos_token_ids:
            output[..., -1, token] -= 1e4
        if self.always_seg:
            output[..., -1, self.model.seg_token_id] += 1e4
        return output


@contextlib.contextmanager
def decoding_hook(model: Any, **kwargs: Any) -> Iterator[DecodingHook]:
    hook = DecodingHook(model, **kwargs)
    handle = model.llm.get_output_embeddings().register_forward_hook(hook)
    try:
        yield hook
    finally:
        handle.remove()


def oblique_volume(shape: tuple[int, int, int] = (6, 40, 48), seed: int = 0,
                   origin: tuple[float, float, float] = (-10.0, 25.0, 40.0)
                   ) -> tuple[np.ndarray, tuple, tuple, tuple]:
    """An MR-like volume with anisotropic spacing and an oblique direction:
    ``(array, spacing, origin, direction)`` in the client's conventions."""
    a = np.deg2rad(20.0)
    rot = np.array([[1, 0, 0], [0, np.cos(a), -np.sin(a)], [0, np.sin(a), np.cos(a)]])
    z, y, x = np.mgrid[0:shape[0], 0:shape[1], 0:shape[2]]
    organ = (((z - shape[0] / 2) / (shape[0] / 2.5)) ** 2 + ((y - shape[1] / 2) / (shape[1] / 4)) ** 2
             + ((x - shape[2] / 2) / (shape[2] / 4)) ** 2) <= 1
    rng = np.random.default_rng(seed)
    arr = (np.where(organ, 300.0, 20.0) + rng.normal(0, 5, shape)).astype(np.float32)
    return arr, (0.8, 1.1, 3.0), origin, tuple(float(v) for v in rot.ravel())
