"""Schemathesis fuzzes the engine server from its own OpenAPI document.

``schemathesis run`` (all its phases: examples, coverage, fuzzing, stateful) runs
against the real server: uvicorn on loopback with the engine's own uvicorn
configuration and the tiny random model. Uploads are generated as real NRRD files
(the only body the upload accepts: this module registers the media type and is the
run's hooks module), so sessions open, and the stateful phase follows the document's
links: the ``session_id`` of ``POST /v1/sessions`` feeds the operations on that
session (get, ask, ask/stream, reset, delete), an answer's first segment feeds the
mask download.

Every response must pass every Schemathesis check but two: no server error; a
documented status code, content type and headers; the response schema (each event of
an answer stream included); schema-invalid requests rejected; an undocumented method
answered 405 with the right ``Allow``; a request without the token refused; a deleted
session gone; a created one available. Not run: ``positive_data_acceptance`` (the
schema cannot say which slice indices and hints fit the uploaded image, that a CT
window preset needs a CT image, or how many tokens a question takes: the engine
refuses such schema-valid requests with 400 ``bad_input``/``too_many_tokens``, as
documented) and ``object_level_authorization`` (one token, one user).

The default run is bounded (10 examples per operation, under a minute on 2 cores);
``-m slow`` runs 100.
"""

from __future__ import annotations

import os
import re
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
import schemathesis
from hypothesis import strategies as st

from medsegr.io.nrrd_codec import encode_nrrd
from server_harness import TOKEN

HERE = Path(__file__).resolve().parent
CHECKS_SKIPPED = "positive_data_acceptance,object_level_authorization"


@st.composite
def nrrd_files(draw: st.DrawFn) -> bytes:
    """Small valid NRRD images: 2-D or 3-D, several types, raw or gzip, any geometry."""
    shape = (draw(st.integers(1, 3)), draw(st.integers(2, 10)), draw(st.integers(2, 10)))
    dtype = draw(st.sampled_from([np.uint8, np.int16, np.float32]))
    seed = draw(st.integers(0, 2**16))
    array = np.random.default_rng(seed).integers(0, 200, shape).astype(dtype)
    spacing = tuple(draw(st.floats(0.1, 5.0)) for _ in range(3))
    origin = tuple(draw(st.floats(-500.0, 500.0)) for _ in range(3))
    return encode_nrrd(array, spacing, origin, encoding=draw(st.sampled_from(["raw", "gzip"])))


# the upload's body: the run loads this module as its hooks (SCHEMATHESIS_HOOKS)
schemathesis.openapi.media_type("application/x-nrrd", nrrd_files(),
                                aliases=["application/nrrd"])


@pytest.fixture(scope="module")
def server(tiny_pipeline):
    from test_server_hardening import GuardedServer

    with GuardedServer(tiny_pipeline, token=TOKEN, max_queue=64) as srv:
        yield srv


def schemathesis_run(server, tmp_path: Path, examples: int, timeout: float) -> str:
    """``schemathesis run`` against ``server``; its output (the test fails on any failure)."""
    command = [str(Path(sys.executable).with_name("schemathesis")), "run",
               f"{server.url}/v1/openapi.json", "-H", f"Authorization: Bearer {TOKEN}",
               "--checks", "all", "--exclude-checks", CHECKS_SKIPPED,
               "--max-examples", str(examples), "--generation-deterministic", "--workers", "1",
               "--no-color"]
    # its report is UTF-8 (check marks) whatever the locale of the machine running the tests
    env = {**os.environ, "SCHEMATHESIS_HOOKS": Path(__file__).stem, "PYTHONIOENCODING": "utf-8",
           "PYTHONUTF8": "1",
           "PYTHONPATH": os.pathsep.join([str(HERE), os.environ.get("PYTHONPATH", "")])}
    done = subprocess.run(command, cwd=tmp_path, env=env, capture_output=True, text=True,
                          encoding="utf-8", errors="replace", timeout=timeout)
    output = done.stdout + done.stderr
    assert done.returncode == 0, output
    return output


def check_summary(output: str) -> None:
    """Every phase ran, every operation was tested, the stateful phase followed links."""
    for phase in ("Coverage", "Fuzzing", "Stateful"):
        assert re.search(rf"✅ {phase}", output), output
    assert re.search(r"Tested: 11\b", output), output
    links = re.search(r"API Links:\s+(\d+) covered", output)
    assert links and int(links.group(1)) >= 5, output
    assert server_errors(output) == 0, output


def server_errors(output: str) -> int:
    found = re.search(r"(\d+) .*Server error", output)
    return int(found.group(1)) if found else 0


def test_schemathesis_finds_nothing(server, tmp_path):
    check_summary(schemathesis_run(server, tmp_path, examples=10, timeout=300))
    assert server.engine.worker.stats()["completed"] > 0  # questions reached the model


@pytest.mark.slow
def test_schemathesis_finds_nothing_in_a_longer_run(server, tmp_path):
    check_summary(schemathesis_run(server, tmp_path, examples=100, timeout=1800))
