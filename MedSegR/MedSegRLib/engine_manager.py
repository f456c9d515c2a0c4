"""The one owner of the MedSegR engine inside 3D Slicer.

:class:`EngineManager` knows which engine the module talks to and keeps it alive or
stops it: the install plan for the bundled engine and the install itself
(:mod:`MedSegRLib.slicer_install`), starting and stopping the bundled engine process
(:class:`MedSegRLib.engine_process.BundledEngine`), connecting to a remote engine (URL
and token) and noticing an engine that died. ``MedSegRLogic`` holds one; the panel only
shows its state and asks the user (install consent, privacy of a remote URL).

The blocking calls (``start_bundled``, ``connect_remote``) wait on the network or a
process: the panel runs them off the GUI thread, scripts call them directly.
"""

from __future__ import annotations

import logging
import threading
from collections.abc import Callable
from typing import Any

from medsegr.client import EngineClient

from MedSegRLib import dependencies
from MedSegRLib.engine_process import BundledEngine, EngineStartError

log = logging.getLogger(__name__)

#: the status-line prefix that ``medsegr serve`` prints while it loads the model
LOAD_STATUS_PREFIX = "medsegr: "


class EngineManager:
    """The engine the module uses: a bundled child process or a remote server."""

    def __init__(self) -> None:
        self.engine: BundledEngine | None = None
        self.client: EngineClient | None = None
        self.info: dict | None = None
        self.mode: str | None = None  # "bundled" | "remote" | None
        self.load_status: str = ""  # the engine's latest loading step while it starts
        self._lock = threading.Lock()

    # -- installing ---------------------------------------------------------------------
    @staticmethod
    def install_plan(python: str | None = None,
                     gpu: dependencies.GpuInfo | None | str = "detect") -> dependencies.InstallPlan | None:
        """What must be installed before the bundled engine can run (None: nothing;
        also None for a user-chosen interpreter, which has its own environment)."""
        if python:
            return None
        found = dependencies.detect_nvidia_gpu() if gpu == "detect" else gpu
        plan = dependencies.plan_install(gpu=found)  # type: ignore[arg-type]
        return plan if plan.needed else None

    @staticmethod
    def install(plan: dependencies.InstallPlan, slicer_module: Any) -> list[str]:
        """Install ``plan`` into Slicer's Python (the user agreed first); blocking."""
        from MedSegRLib.slicer_install import SlicerInstaller, pytorch_utils_logic

        installer = SlicerInstaller(slicer_module, pytorch_utils_logic() if plan.torch else None)
        return installer.install(plan)

    # -- state ----------------------------------------------------------------------------
    @property
    def connected(self) -> bool:
        return self.client is not None

    @property
    def running(self) -> bool:
        """A bundled engine process is alive."""
        return self.engine is not None and self.engine.running

    def use(self, client: EngineClient | None, info: dict | None, mode: str | None) -> None:
        with self._lock:
            self.client, self.info, self.mode = client, info, mode

    def disconnect(self) -> None:
        self.use(None, None, None)

    def died(self) -> str | None:
        """A sentence when the bundled engine in use stopped on its own (crash, killed);
        the manager then forgets it. None while all is well."""
        engine = self.engine
        if engine is None or engine.process is None or engine.running or engine.url is None:
            return None
        if self.client is None or self.client.url != engine.url:
            return None
        self.disconnect()
        return (f"The engine stopped unexpectedly (exit code {engine.process.returncode}); see the "
                "engine log. The next question starts it again.")

    # -- bundled engine -------------------------------------------------------------------
    def start_bundled(self, python: str | None = None, device: str = "auto",
                      checkpoint: str | None = None, base: bool = False, config: str | None = None,
                      timeout: float = 900.0, cancel: threading.Event | None = None,
                      on_log: Callable[[str], None] | None = None) -> dict:
        """Start the bundled engine, wait until it answers and use it; returns its info.

        ``on_log(line)`` receives the engine's output (from a reader thread). While the
        model loads, :attr:`load_status` holds the engine's latest loading step."""
        self.stop()
        self.load_status = ""

        def log_line(line: str) -> None:
            if line.startswith(LOAD_STATUS_PREFIX):
                self.load_status = line[len(LOAD_STATUS_PREFIX):].strip()
            if on_log is not None:
                on_log(line)

        engine = BundledEngine(python=python, device=device, checkpoint=checkpoint, base=base,
                               config=config, on_log=log_line)
        self.engine = engine
        engine.start()
        info = engine.wait_until_ready(timeout=timeout, cancel=cancel)
        if self.engine is not engine:  # stopped meanwhile
            raise EngineStartError("the engine was stopped while it started")
        self.use(engine.client(), info, "bundled")
        return info

    def stop(self) -> None:
        """Stop the bundled engine (if any) and forget it; safe to call twice."""
        engine, self.engine = self.engine, None
        if engine is None:
            return
        if self.client is not None and self.client.url == engine.url:
            self.disconnect()
        engine.stop()

    # -- remote engine --------------------------------------------------------------------
    def connect_remote(self, url: str, token: str | None = None) -> dict:
        """Connect to an engine on another computer; returns its info (blocking)."""
        url = (url or "").strip()
        if not url:
            raise EngineStartError("no engine URL is set (Engine section: Remote URL)")
        client = EngineClient(url, token=token or None)
        info = client.check_version()
        self.use(client, info, "remote")
        return info

    def health(self) -> dict:
        """The engine's ``/v1/health`` (raises :class:`medsegr.client.EngineError`)."""
        if self.client is None:
            raise EngineStartError("no engine is connected")
        return self.client.health()
