"""The module's persistent settings, under ``MedSegR/`` in the application settings.

The store is anything with QSettings' ``value`` / ``setValue`` / ``remove`` (in
Slicer: ``qt.QSettings()``). Values are read defensively: QSettings returns strings
for booleans and numbers read back from an ini file. The remote engine's token is
only written when the user ticked "remember token"; otherwise any stored token is
removed.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any, Protocol

PREFIX = "MedSegR/"
ENGINE_MODES = ("bundled", "remote")
DEVICES = ("auto", "cpu", "cuda")


class SettingsStore(Protocol):
    def value(self, key: str, default: Any = None) -> Any: ...

    def setValue(self, key: str, value: Any) -> None: ...

    def remove(self, key: str) -> None: ...


@dataclass
class EngineSettings:
    """How the module reaches its engine, and what the user has acknowledged."""

    mode: str = "bundled"  # bundled | remote
    remote_url: str = "http://127.0.0.1:8765"
    remote_token: str = ""
    remember_token: bool = False
    device: str = "auto"  # bundled engine's --device
    checkpoint: str = ""  # bundled engine's --checkpoint ("" = the engine's default)
    python: str = ""  # interpreter for the bundled engine ("" = Slicer's own Python)
    privacy_acknowledged: bool = False  # "don't show again" on the remote-engine note
    install_declined: bool = False


def to_bool(value: Any, default: bool = False) -> bool:
    if value is None:
        return default
    if isinstance(value, bool):
        return value
    if isinstance(value, (int, float)):
        return bool(value)
    text = str(value).strip().lower()
    if text in ("1", "true", "yes", "on"):
        return True
    if text in ("0", "false", "no", "off", ""):
        return False
    return default


def _text(value: Any, default: str) -> str:
    return default if value is None else str(value)


def load(store: SettingsStore) -> EngineSettings:
    defaults = EngineSettings()
    mode = _text(store.value(PREFIX + "EngineMode"), defaults.mode)
    device = _text(store.value(PREFIX + "Device"), defaults.device)
    remember = to_bool(store.value(PREFIX + "RememberToken"), False)
    return EngineSettings(
        mode=mode if mode in ENGINE_MODES else defaults.mode,
        remote_url=_text(store.value(PREFIX + "RemoteURL"), defaults.remote_url),
        remote_token=_text(store.value(PREFIX + "RemoteToken"), "") if remember else "",
        remember_token=remember,
        device=device if device in DEVICES or device.startswith("cuda:") else defaults.device,
        checkpoint=_text(store.value(PREFIX + "Checkpoint"), ""),
        python=_text(store.value(PREFIX + "PythonExecutable"), ""),
        privacy_acknowledged=to_bool(store.value(PREFIX + "PrivacyNoteAcknowledged"), False),
        install_declined=to_bool(store.value(PREFIX + "InstallDeclined"), False),
    )


def save(store: SettingsStore, settings: EngineSettings) -> None:
    store.setValue(PREFIX + "EngineMode", settings.mode)
    store.setValue(PREFIX + "RemoteURL", settings.remote_url)
    store.setValue(PREFIX + "RememberToken", bool(settings.remember_token))
    if settings.remember_token and settings.remote_token:
        store.setValue(PREFIX + "RemoteToken", settings.remote_token)
    else:
        store.remove(PREFIX + "RemoteToken")
    store.setValue(PREFIX + "Device", settings.device)
    store.setValue(PREFIX + "Checkpoint", settings.checkpoint)
    store.setValue(PREFIX + "PythonExecutable", settings.python)
    store.setValue(PREFIX + "PrivacyNoteAcknowledged", bool(settings.privacy_acknowledged))
    store.setValue(PREFIX + "InstallDeclined", bool(settings.install_declined))
