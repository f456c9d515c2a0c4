"""The bundled engine: ``medsegr serve`` as a child process of 3D Slicer.

The module starts the engine with Slicer's own Python (``PythonSlicer``), on a free
loopback port, with a fresh random token that travels in a private token file (never
on the command line, where other users could read it in the process list). The
engine's output is collected line by line for the panel's log. Its owner is
:class:`MedSegRLib.engine_manager.EngineManager` (held by the module's logic), which
stops it when the logic is cleaned up or Slicer exits; an ``atexit`` hook is only the
last resort for an interpreter that ends without either. The engine package is found
through ``PYTHONPATH`` (it lives in the module's folder), so nothing is installed for
it besides its third-party requirements.
"""

from __future__ import annotations

import atexit
import collections
import os
import secrets
import shutil
import signal
import socket
import subprocess
import sys
import tempfile
import threading
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from pathlib import Path

from medsegr.client import EngineClient, EngineError

LOOPBACK = "127.0.0.1"
#: seconds to wait for a stopped engine before it is killed
STOP_TIMEOUT_S = 10.0
#: lines of engine output kept for the log panel
LOG_LINES = 2000


class EngineStartError(RuntimeError):
    """The bundled engine did not come up; the message ends with its last log lines."""


def module_dir() -> Path:
    """The folder that holds the ``medsegr`` package (``MedSegR/`` of the extension)."""
    return Path(__file__).resolve().parent.parent


def slicer_python(executable: str | None = None) -> str:
    """The Python to run the engine with: ``PythonSlicer`` next to Slicer's
    interpreter when there is one, else this interpreter."""
    base = Path(executable or sys.executable)
    for name in ("PythonSlicer", "PythonSlicer.exe"):
        candidate = base.with_name(name)
        if candidate.is_file() and candidate != base:
            return str(candidate)
    return str(base)


def free_port(host: str = LOOPBACK) -> int:
    """A TCP port nobody listens on right now (the OS picks it)."""
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as sock:
        sock.bind((host, 0))
        return int(sock.getsockname()[1])


def write_token_file(directory: str | os.PathLike[str]) -> tuple[str, Path]:
    """A new random token in a file only its owner can read; returns (token, path)."""
    token = secrets.token_urlsafe(32)
    path = Path(directory) / "engine.token"
    fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600)
    with os.fdopen(fd, "w", encoding="utf-8") as handle:
        handle.write(token + "\n")
    return token, path


@dataclass(frozen=True)
class EngineLaunch:
    """Everything needed to start one bundled engine."""

    command: list[str]
    env: dict[str, str]
    url: str
    token: str
    token_file: Path
    port: int


def engine_command(python: str, port: int, token_file: Path, device: str = "auto",
                   checkpoint: str | None = None, config: str | None = None,
                   base: bool = False, host: str = LOOPBACK) -> list[str]:
    """The ``medsegr serve`` command line (no secret on it: the token is in a file)."""
    command = [python, "-m", "medsegr.cli", "serve", "--host", host, "--port", str(int(port)),
               "--token-file", str(token_file), "--device", device or "auto"]
    if checkpoint:
        command += ["--checkpoint", checkpoint]
    if base:
        command.append("--base")
    if config:
        command += ["--config", config]
    return command


def engine_environment(base_env: dict[str, str] | None = None,
                       package_dir: Path | None = None) -> dict[str, str]:
    """The engine's environment: the module folder first on ``PYTHONPATH`` (so
    ``medsegr`` imports), unbuffered output for a live log, offline model hubs."""
    env = dict(os.environ if base_env is None else base_env)
    folder = str(package_dir or module_dir())
    paths = [p for p in env.get("PYTHONPATH", "").split(os.pathsep) if p and p != folder]
    env["PYTHONPATH"] = os.pathsep.join([folder] + paths)
    env["PYTHONUNBUFFERED"] = "1"
    env.setdefault("HF_HUB_OFFLINE", "1")
    env.setdefault("TRANSFORMERS_OFFLINE", "1")
    env.pop("QT_QPA_PLATFORM", None)
    return env


def prepare_launch(workdir: Path, python: str | None = None, device: str = "auto",
                   checkpoint: str | None = None, config: str | None = None, base: bool = False,
                   port: int | None = None, base_env: dict[str, str] | None = None) -> EngineLaunch:
    token, token_file = write_token_file(workdir)
    port = port or free_port()
    command = engine_command(python or slicer_python(), port, token_file, device, checkpoint,
                             config, base)
    return EngineLaunch(command=command, env=engine_environment(base_env), token=token,
                        token_file=token_file, port=port, url=f"http://{LOOPBACK}:{port}")


@dataclass
class BundledEngine:
    """One engine child process and its log.

    ``start()`` returns at once; ``wait_until_ready()`` (call it off the GUI thread)
    polls the engine until it answers, and raises :class:`EngineStartError` with the
    log's tail when the process exits first.
    """

    python: str | None = None
    device: str = "auto"
    checkpoint: str | None = None
    config: str | None = None
    base: bool = False
    on_log: Callable[[str], None] | None = None
    extra_env: dict[str, str] = field(default_factory=dict)

    def __post_init__(self) -> None:
        self.launch: EngineLaunch | None = None
        self.process: subprocess.Popen[bytes] | None = None
        self.log: collections.deque[str] = collections.deque(maxlen=LOG_LINES)
        self._workdir: tempfile.TemporaryDirectory[str] | None = None
        self._reader: threading.Thread | None = None
        self._lock = threading.Lock()
        atexit.register(self.stop)

    # -- state ----------------------------------------------------------------------
    @property
    def running(self) -> bool:
        return self.process is not None and self.process.poll() is None

    @property
    def url(self) -> str | None:
        return self.launch.url if self.launch else None

    @property
    def token(self) -> str | None:
        return self.launch.token if self.launch else None

    def client(self, timeout: float = 300.0) -> EngineClient:
        if self.launch is None:
            raise EngineStartError("the bundled engine has not been started")
        return EngineClient(self.launch.url, token=self.launch.token, timeout=timeout, connect_retries=0)

    def log_tail(self, lines: int = 15) -> str:
        return "\n".join(list(self.log)[-lines:])

    # -- life cycle -----------------------------------------------------------------
    def start(self) -> EngineLaunch:
        with self._lock:
            if self.running:
                assert self.launch is not None
                return self.launch
            self._cleanup_files()
            self._workdir = tempfile.TemporaryDirectory(prefix="medsegr-engine-")
            env = engine_environment()
            env.update(self.extra_env)
            self.launch = prepare_launch(Path(self._workdir.name), self.python, self.device,
                                         self.checkpoint, self.config, self.base, base_env=env)
            self._append(f"$ {' '.join(self.launch.command)}")
            kwargs: dict = {}
            if os.name == "nt":
                kwargs["creationflags"] = (subprocess.CREATE_NEW_PROCESS_GROUP  # type: ignore[attr-defined]
                                           | getattr(subprocess, "CREATE_NO_WINDOW", 0))
            else:
                kwargs["start_new_session"] = True  # signals to Slicer never reach it
            try:
                self.process = subprocess.Popen(self.launch.command, env=self.launch.env,
                                                stdin=subprocess.DEVNULL, stdout=subprocess.PIPE,
                                                stderr=subprocess.STDOUT, **kwargs)
            except OSError as exc:
                raise EngineStartError(f"cannot start the engine with {self.launch.command[0]}: {exc}") from None
            self._reader = threading.Thread(target=self._read_output, args=(self.process,),
                                            name="medsegr-engine-log", daemon=True)
            self._reader.start()
            return self.launch

    def wait_until_ready(self, timeout: float = 600.0, cancel: threading.Event | None = None,
                         poll_s: float = 0.25) -> dict:
        """Poll ``/v1/info`` until the engine answers; returns its info."""
        if self.launch is None or self.process is None:
            raise EngineStartError("the bundled engine has not been started")
        deadline = time.monotonic() + timeout
        client = EngineClient(self.launch.url, token=self.launch.token, timeout=5.0, connect_retries=0)
        while True:
            code = self.process.poll()
            if code is not None:
                time.sleep(0.2)  # let the reader catch the last lines
                raise EngineStartError(f"the engine stopped while starting (exit code {code}):\n"
                                       f"{self.log_tail()}")
            try:
                health = client.health()
                if health.get("status") in ("ok", "ready", None):
                    return client.check_version()
            except EngineError:
                pass
            if cancel is not None and cancel.is_set():
                self.stop()
                raise EngineStartError("starting the engine was cancelled")
            if time.monotonic() > deadline:
                self.stop()
                raise EngineStartError(f"the engine did not answer within {timeout:.0f} s:\n{self.log_tail()}")
            time.sleep(poll_s)

    def stop(self, timeout: float = STOP_TIMEOUT_S) -> None:
        """Stop the engine (terminate, then kill after ``timeout``); safe to call twice."""
        with self._lock:
            process = self.process
            if process is not None and process.poll() is None:
                self._append("stopping the engine")
                try:
                    if os.name == "nt":
                        process.terminate()
                    else:
                        os.killpg(process.pid, signal.SIGTERM)
                    process.wait(timeout=timeout)
                except (subprocess.TimeoutExpired, ProcessLookupError, PermissionError):
                    try:
                        if os.name == "nt":
                            process.kill()
                        else:
                            os.killpg(process.pid, signal.SIGKILL)
                    except (ProcessLookupError, PermissionError):
                        pass
                    process.wait(timeout=timeout)
            if self._reader is not None:
                self._reader.join(timeout=2.0)
                self._reader = None
            self._cleanup_files()

    # -- internals ------------------------------------------------------------------
    def _cleanup_files(self) -> None:
        if self._workdir is not None:
            self._workdir.cleanup()
            self._workdir = None

    def _append(self, line: str) -> None:
        self.log.append(line)
        if self.on_log is not None:
            try:
                self.on_log(line)
            except Exception:  # a broken log view must never kill the reader
                pass

    def _read_output(self, process: subprocess.Popen[bytes]) -> None:
        assert process.stdout is not None
        for raw in iter(process.stdout.readline, b""):
            self._append(raw.decode("utf-8", errors="replace").rstrip())
        process.stdout.close()
        code = process.wait()
        self._append(f"engine exited with code {code}")


def python_has_engine_requirements(python: str, modules: Sequence[str] = ("torch", "transformers",
                                                                          "fastapi", "uvicorn")) -> bool:
    """Whether ``python`` can import the engine's heavy requirements, checked in a
    child process (the Slicer process itself never imports torch)."""
    if not shutil.which(python) and not Path(python).is_file():
        return False
    code = "import importlib.util, sys; sys.exit(0 if all(importlib.util.find_spec(m) for m in sys.argv[1:]) else 1)"
    try:
        return subprocess.run([python, "-c", code, *modules], capture_output=True, timeout=60).returncode == 0
    except (OSError, subprocess.TimeoutExpired):
        return False
