"""``medsegr serve`` as a real process: safe defaults, the client's connection
errors and retries, and a server killed mid-request and started again."""

from __future__ import annotations

import threading
import time

import pytest

from medsegr.cli.commands import main
from medsegr.client import EngineClient, EngineError, EngineUnavailable
from server_harness import ServeProcess, free_port, oblique_volume, tiny_config_file

TOKEN = "process-token-0123456789"


@pytest.mark.parametrize("args, message", [
    (["--host", "0.0.0.0"], "refusing to listen on 0.0.0.0 without a token"),
    (["--host", "192.168.1.20", "--token", "short"], "at least 16 characters"),
    (["--token-file", "/nonexistent/token"], "cannot read the token file"),
    (["--port", "70000"], "--port must be between 0 and 65535"),
    (["--config", "x.toml"], "--config applies to --base"),
])
def test_unsafe_or_bad_serve_options_are_refused_before_loading(args, message, capsys):
    t0 = time.monotonic()
    assert main(["serve", *args]) == 2
    assert message in capsys.readouterr().err
    assert time.monotonic() - t0 < 5  # refused before any model is loaded


def test_empty_token_file_and_busy_port(tmp_path, capsys):
    empty = tmp_path / "token"
    empty.write_text("\n", encoding="utf-8")
    assert main(["serve", "--token-file", str(empty)]) == 2
    assert "is empty" in capsys.readouterr().err
    import socket

    with socket.socket() as busy:
        busy.bind(("127.0.0.1", 0))
        busy.listen(1)
        port = busy.getsockname()[1]
        assert main(["serve", "--port", str(port)]) == 2
        assert f"cannot listen on 127.0.0.1:{port}" in capsys.readouterr().err


def test_client_retries_refused_connections_then_reports_them():
    client = EngineClient(f"http://127.0.0.1:{free_port()}", connect_retries=2, timeout=5)
    t0 = time.monotonic()
    with pytest.raises(EngineUnavailable, match="cannot connect to the MedSegR engine") as exc:
        client.health()
    assert exc.value.code == "unavailable" and exc.value.status is None
    assert time.monotonic() - t0 >= 0.7  # two back-offs: 0.25 s + 0.5 s


def test_killing_the_server_mid_request_then_restarting(tmp_path):
    token_file = tmp_path / "token"
    token_file.write_text(TOKEN + "\n", encoding="utf-8")
    token_file.chmod(0o600)
    port = free_port()
    args = ["--base", "--config", str(tiny_config_file(tmp_path)), "--device", "cpu",
            "--port", str(port), "--token-file", str(token_file), "--log-level", "warning"]
    first = ServeProcess(args).start()
    try:
        assert first.url == f"http://127.0.0.1:{port}"
        client = EngineClient(first.url, token=TOKEN, timeout=60, connect_retries=0)
        info = client.check_version()
        assert info["model"]["base"]["llm"]["name"] == "tiny-random" and info["auth"]
        arr, spacing, origin, direction = oblique_volume((24, 32, 32))
        sid = client.create_session(arr, spacing, origin, direction)
        outcome: dict[str, BaseException] = {}

        def ask() -> None:
            try:
                client.ask(sid, "Segment everything in the whole scan.", volume=True)
            except BaseException as exc:  # noqa: BLE001 - checked below
                outcome["error"] = exc

        asking = threading.Thread(target=ask)
        asking.start()
        deadline = time.monotonic() + 60
        while not client.info()["queue"]["running"]:  # the volume is being encoded
            assert time.monotonic() < deadline
            time.sleep(0.05)
        first.kill()
        asking.join(timeout=30)
    finally:
        first.kill()
    assert not asking.is_alive()
    error = outcome.get("error")
    assert isinstance(error, EngineUnavailable), error
    assert error.code == "connection_lost" and "lost the connection" in error.message
    with pytest.raises(EngineUnavailable):
        client.health()

    second = ServeProcess(args).start()  # same port, same client object
    try:
        assert client.health()["status"] == "ok"
        with pytest.raises(EngineError) as exc:
            client.session_info(sid)  # sessions live in the engine's memory only
        assert exc.value.status == 404 and exc.value.code == "unknown_session"
        sid = client.create_session(arr[:4], spacing, origin, direction)
        answer = client.ask(sid, "Serving again?", slice_index=1, max_new_tokens=3)
        assert answer.tokens["generated"] > 0 and answer.encoded_slices == 1
    finally:
        second.kill()
    assert "Traceback" not in "".join(second.lines)
