"""The logic as the one owner of the engine (:mod:`MedSegRLib.engine_manager`), real
progress in the panel, and installing inside Slicer (:mod:`MedSegRLib.slicer_install`).

Real engines throughout: a server on loopback in this process (tiny random model) and
``medsegr serve`` child processes started by the logic; the panel is built from its
real .ui file under PySide6 (offscreen) on a real MRML scene."""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import types

import pytest

pytest.importorskip("slicer")
pytest.importorskip("PySide6")
pytest.importorskip("uvicorn")

from engine_server import LoopbackEngine  # noqa: E402
from medsegr.client import EngineError, Progress  # noqa: E402
from medsegr.cli.samples import sample_path  # noqa: E402
from mrml_scene import load_volume_file, new_scene, show_in_view  # noqa: E402
from MedSegRLib import dependencies  # noqa: E402
from MedSegRLib.engine_manager import EngineManager  # noqa: E402
from MedSegRLib.engine_process import EngineStartError  # noqa: E402
from MedSegRLib.slicer_install import InstallError, SlicerInstaller  # noqa: E402
from server_harness import tiny_config_file  # noqa: E402

import slicer_shell  # noqa: E402


@pytest.fixture(scope="module")
def engine(tiny_pipeline):
    with LoopbackEngine(tiny_pipeline) as server:
        yield server


@pytest.fixture
def shell(tmp_path):
    installed = slicer_shell.install(new_scene(), tmp_path / "settings")
    yield installed
    installed.uninstall()


@pytest.fixture
def panel(shell):
    volume = load_volume_file(shell.scene, sample_path("head-mri"), "head MRI")
    show_in_view(shell.scene, volume, "Red")
    import MedSegR

    widget = MedSegR.MedSegRWidget()
    widget.setup()
    widget.parent.show()
    shell.process_events(0.1)
    yield widget, volume
    widget.cleanup()
    widget.parent.close()


def tiny_engine_options(tmp_path) -> dict:
    return {"python": sys.executable, "device": "cpu", "base": True,
            "config": str(tiny_config_file(tmp_path)), "timeout": 240.0}


def node_ids(scene):
    return sorted(scene.GetNthNode(i).GetID() for i in range(scene.GetNumberOfNodes()))


def bar_recorder(widget):
    values: list[tuple[int, int]] = []
    bar = widget.ui.progressBar
    bar.valueChanged.connect(lambda value: values.append((value, bar.maximum())))
    return values


def send_volume_question(shell, widget, question):
    import MedSegR

    widget._parameterNode.scope = MedSegR.SCOPE_VOLUME
    widget.ui.questionLineEdit.setText(question)
    shell.qt.QTest.keyClick(widget.ui.questionLineEdit, shell.qt.Qt.Key_Return)


# --------------------------------------------------------------------------- the manager


def test_manager_connects_checks_and_refuses_bad_remotes(engine):
    manager = EngineManager()
    info = manager.connect_remote(engine.url, engine.token)
    assert info["api_version"] == "1" and manager.connected and manager.mode == "remote"
    assert manager.health()["status"] == "ok"
    assert not manager.running and manager.died() is None  # nothing bundled to die
    with pytest.raises(EngineError) as refused:
        EngineManager().connect_remote(engine.url, "wrong-token-0123456789")
    assert refused.value.status == 401
    with pytest.raises(EngineStartError, match="no engine URL"):
        EngineManager().connect_remote("  ")
    manager.disconnect()
    assert not manager.connected
    with pytest.raises(EngineStartError, match="no engine is connected"):
        manager.health()


def test_install_plan_is_none_for_a_chosen_python_and_lists_what_is_missing():
    assert EngineManager.install_plan(python=sys.executable) is None
    plan = dependencies.plan_install(versions={}, gpu=None, platform="linux")
    assert plan.needed and plan.torch == list(dependencies.TORCH_REQUIREMENTS)


def test_logic_owns_the_bundled_engine_and_slicer_exit_stops_it(shell, tmp_path):
    import MedSegR

    logic = MedSegR.MedSegRLogic(shell.scene)
    lines: list[str] = []
    info = logic.startBundledEngine(on_log=lines.append, **tiny_engine_options(tmp_path))
    process = logic.engine.process
    assert info["api_version"] == "1" and logic.client is not None and logic.engineManager.running
    assert logic.engineLoadStatus() == "the model is ready"  # the engine's loading steps reached the logic
    assert any(line.startswith("medsegr: building the base model") for line in lines)
    shell.app.aboutToQuit.emit()  # Slicer exits
    assert process.poll() is not None and logic.client is None and logic.engine is None
    logic.cleanup()  # twice is harmless


# --------------------------------------------------------------------------- progress in the panel


def test_volume_question_moves_a_determinate_bar_and_cancel_still_works(shell, panel, engine, tiny_pipeline):
    import slicer
    from MedSegRLib.chat_logic import axial_axis

    widget, volume = panel
    from test_slicer_widget import connect_remote

    connect_remote(shell, widget, engine)
    widget.confirmPrivacy = lambda text: (True, True)
    values = bar_recorder(widget)
    labels: list[str] = []
    widget.ui.progressLabel.setText = (lambda original: (lambda text: (labels.append(text), original(text))))(
        widget.ui.progressLabel.setText)
    send_volume_question(shell, widget, "Segment the brain.")
    assert widget.ui.progressBar.isVisible() and widget.ui.progressBar.maximum() == 0  # busy until counted
    assert shell.wait_for(lambda: widget.task is not None and not widget.busy(), timeout=180)
    assert widget.pending is None, widget.pending.message
    total = max(maximum for _value, maximum in values)
    assert total == slicer.util.arrayFromVolume(volume).shape[axial_axis(volume)]  # slices encoded of all
    encoded = [value for value, maximum in values if maximum == total]
    assert len(set(encoded)) >= 3 and encoded == sorted(encoded) and encoded[-1] == total
    assert any(text.startswith("Encoding slices ") and text.endswith(f"/{total}") for text in labels)
    assert "Answering…" in labels
    assert not widget.ui.progressBar.isVisible()  # the bar stops with the answer

    # a second volume question on a slow engine, cancelled while it runs
    before = node_ids(shell.scene)
    turns = len(widget.logic.conversation(widget.currentConversation()).turns)
    answered = labels.count("Answering…")
    with slow_generation(tiny_pipeline.model, 0.2):
        send_volume_question(shell, widget, "And the ventricles?")
        assert shell.wait_for(lambda: labels.count("Answering…") > answered, timeout=120)
        shell.qt.QTest.mouseClick(widget.ui.cancelButton, shell.qt.Qt.LeftButton)
        assert shell.wait_for(lambda: not widget.busy(), timeout=60)
    assert widget.pending is not None and widget.pending.status == "cancelled"
    assert node_ids(shell.scene) == before
    assert len(widget.logic.conversation(widget.currentConversation()).turns) == turns
    assert not widget.ui.progressBar.isVisible()


class slow_generation:  # noqa: N801 - used like a function
    def __init__(self, model, seconds):
        self.model, self.seconds = model, seconds

    def __enter__(self):
        import time

        self.handle = self.model.llm.get_output_embeddings().register_forward_hook(
            lambda *_args: time.sleep(self.seconds))

    def __exit__(self, *exc):
        self.handle.remove()


def test_an_engine_that_dies_during_a_volume_question(shell, panel, tmp_path):
    """The bundled engine is killed while it encodes the volume: the panel says so,
    the bar stops, the scene is untouched and the next question can start it again."""
    widget, _volume = panel
    widget.logic.startBundledEngine(**tiny_engine_options(tmp_path))
    process = widget.logic.engine.process
    values = bar_recorder(widget)
    post = widget.mainQueue.post

    def intercept(function, *args, **kwargs):
        report = args[0] if args else None
        if isinstance(report, Progress) and report.stage == "encoding" and process.poll() is None:
            os.kill(process.pid, signal.SIGSTOP)  # freeze it mid-volume, then kill it
            os.kill(process.pid, signal.SIGKILL)
            process.wait(timeout=30)
        post(function, *args, **kwargs)

    widget.mainQueue.post = intercept
    before = node_ids(shell.scene)
    send_volume_question(shell, widget, "Segment the brain.")
    assert shell.wait_for(lambda: widget.task is not None and not widget.busy(), timeout=180)
    assert process.poll() == -signal.SIGKILL
    assert widget.pending is not None and widget.pending.status == "error"
    assert "The engine stopped while answering" in widget.pending.message
    assert "nothing was added to the scene" in widget.pending.message
    assert "stopped unexpectedly" in widget.ui.engineStatusLabel.text()
    assert not widget.ui.progressBar.isVisible() and widget.ui.progressLabel.text() == ""
    assert values and max(value for value, _maximum in values) < max(m for _v, m in values)  # mid-volume
    assert node_ids(shell.scene) == before
    assert widget.logic.client is None and widget.ui.startEngineButton.isEnabled()


# --------------------------------------------------------------------------- installing inside Slicer


class FakePip:
    """Records pip calls; fails those that name ``fail_on``."""

    def __init__(self, fail_on: str | None = None) -> None:
        self.calls: list[tuple[object, dict]] = []
        self.constraints: list[str] = []
        self.fail_on = fail_on

    def __call__(self, requirements=None, **kwargs):
        self.calls.append((requirements, kwargs))
        if kwargs.get("constraints"):
            with open(kwargs["constraints"], encoding="utf-8") as handle:
                self.constraints.append(handle.read())
        text = " ".join(requirements if isinstance(requirements, list) else [str(requirements or "")])
        text += " ".join(kwargs.get("no_deps_requirements") or [])
        if self.fail_on and self.fail_on in text:
            raise subprocess.CalledProcessError(1, ["pip", "install", text])


def plan_for_tests() -> dependencies.InstallPlan:
    return dependencies.plan_install(versions={"numpy": "2.0.0", "slicer-own": "1.2.3"}, gpu=None,
                                     platform="linux", requirements=["fastapi==0.115.0"])


def test_installer_uses_slicer_pydeps_pytorch_utils_and_no_deps_requirements():
    pip = FakePip()
    ensured: list[tuple[list, dict]] = []

    def pip_ensure(requirements, **kwargs):
        ensured.append((requirements, kwargs))

    class PyTorchUtilsLogic:
        @staticmethod
        def _getPipInstallArguments(backend, torch_requirement, torchvision_requirement):
            return ["torch" + torch_requirement, "torchvision" + torchvision_requirement,
                    "--extra-index-url", "https://download.pytorch.org/whl/cu128"]

    slicer_module = types.SimpleNamespace(util=types.SimpleNamespace(pip_install=pip),
                                          pydeps=types.SimpleNamespace(pip_ensure=pip_ensure))
    installer = SlicerInstaller(slicer_module, PyTorchUtilsLogic())
    steps = installer.install(plan_for_tests())
    assert steps == ["torch (the PyTorch extension)", "requirements (slicer.pydeps.pip_ensure)",
                     "no-deps requirements"]
    assert pip.calls[0][0][:2] == ["torch==2.14.1", "torchvision==0.29.1"]
    assert "cu128" in " ".join(pip.calls[0][0])
    assert [str(r) for r in ensured[0][0]] == ["fastapi==0.115.0"]
    assert ensured[0][1]["requester"] == "MedSegR" and ensured[0][1]["constraints"]
    assert pip.calls[1][1]["no_deps_requirements"] == list(dependencies.NO_DEPS_REQUIREMENTS)
    assert "numpy==2.0.0\n" in pip.constraints[0] and "slicer-own==1.2.3\n" in pip.constraints[0]
    assert not os.path.exists(ensured[0][1]["constraints"])  # the constraints file is removed


def test_installer_falls_back_to_pip_install_on_older_slicer():
    calls: list[list[str]] = []

    def old_pip_install(requirements):  # Slicer before packaging helpers: one argument
        calls.append(list(requirements))

    installer = SlicerInstaller(types.SimpleNamespace(util=types.SimpleNamespace(pip_install=old_pip_install)))
    installer.install(plan_for_tests())
    assert calls[0][:2] == ["torch==2.14.1", "torchvision==0.29.1"] and "--index-url" in calls[0]
    assert calls[0][-2] == "-c"  # constrained to what is installed
    assert calls[1][0] == "fastapi==0.115.0" and calls[1][-2] == "-c"
    assert calls[2] == ["--no-deps", *dependencies.NO_DEPS_REQUIREMENTS]


def test_a_failed_pip_install_in_the_panel_says_so_and_touches_nothing(shell, panel, monkeypatch):
    import slicer

    widget, _volume = panel
    pip = FakePip(fail_on="fastapi")
    monkeypatch.setattr(slicer.util, "pip_install", pip)
    installed = dependencies.installed_versions()
    widget.logic.engineInstallPlan = lambda python=None: plan_for_tests()
    prompts: list[str] = []
    widget.confirmInstall = lambda text: prompts.append(text) or True
    widget.ui.bundledRadioButton.setChecked(True)
    shell.qt.QTest.mouseClick(widget.ui.startEngineButton, shell.qt.Qt.LeftButton)
    shell.process_events(0.1)
    assert len(prompts) == 1  # always asked first
    status = widget.ui.engineStatusLabel.text()
    assert "Installing the engine's requirements failed" in status and "fastapi" in status
    assert "Slicer's own packages were not changed" in status
    assert widget.logic.engine is None and widget.logic.client is None
    assert not widget.engineStarting() and widget.ui.startEngineButton.isEnabled()
    assert len(pip.calls) == 2 and all(kwargs.get("constraints") for _r, kwargs in pip.calls)
    assert dependencies.installed_versions() == installed
    with pytest.raises(InstallError):
        widget.logic.installEngineRequirements(plan_for_tests())


def test_an_unexpected_error_is_shown_with_its_traceback(shell, panel, engine, monkeypatch):
    import slicer

    widget, _volume = panel
    from test_slicer_widget import connect_remote

    connect_remote(shell, widget, engine)
    widget.confirmPrivacy = lambda text: (True, True)
    shown: list[tuple[str, str]] = []
    monkeypatch.setattr(slicer.util, "errorDisplay",
                        lambda text, detailedText="", **kwargs: shown.append((text, detailedText)))

    def broken(*args, **kwargs):
        raise RuntimeError("a bug in preparing the question")

    monkeypatch.setattr(widget.logic, "prepare", broken)
    before = node_ids(shell.scene)
    widget.ui.questionLineEdit.setText("Segment the brain.")
    shell.qt.QTest.keyClick(widget.ui.questionLineEdit, shell.qt.Qt.Key_Return)
    shell.process_events(0.1)
    assert len(shown) == 1 and "could not answer the question" in shown[0][0]
    assert "Traceback" in shown[0][1] and "a bug in preparing the question" in shown[0][1]
    assert "Unexpected error (RuntimeError)" in widget.ui.statusLabel.text()
    assert node_ids(shell.scene) == before
