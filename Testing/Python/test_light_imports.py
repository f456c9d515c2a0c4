"""The light parts of the engine package import nothing heavy.

The 3D Slicer module and the standard-library client import them at start-up, and
``medsegr --help`` and the command modules must start in a blink: none of them may pull
in torch, transformers, SimpleITK or the web framework. Each case runs in a fresh
interpreter (an import already done by this test process would hide one).
"""

from __future__ import annotations

import pytest

from helpers import HEAVY, heavy_modules_after

#: the data tools and the imaging steps a remote client uses read images with
#: SimpleITK, but must not load the model stack
NO_MODEL = ("torch", "transformers", "peft", "timm")

#: case -> (modules imported together, the heavy modules none of them may pull in)
CASES = {
    # what the Slicer module and remote clients use
    "core": (["medsegr", "medsegr.answers", "medsegr.errors", "medsegr.config",
              "medsegr.prompts", "medsegr.vocabulary", "medsegr.io.atomic", "medsegr.io.limits",
              "medsegr.imaging.intensity", "medsegr.imaging.slicing", "medsegr.cli.samples"],
             HEAVY),
    "wire": (["medsegr.io.nrrd_codec", "medsegr.client"], HEAVY),
    # the command line and every command module it registers (before a command runs)
    "command line": (["medsegr.cli", "medsegr.cli.commands", "medsegr.cli.model_options",
                      "medsegr.option_types"], HEAVY),
    "server command": (["medsegr.server", "medsegr.server.commands", "medsegr.server.settings"],
                       HEAVY),
    "data": (["medsegr.data.commands", "medsegr.data.records", "medsegr.data.validate",
              "medsegr.data.knowledge", "medsegr.data.conversations", "medsegr.data.writer"],
             NO_MODEL),
    # what `medsegr ask --server` needs besides the wire: writing the result files
    "remote answers": (["medsegr.cli.remote_ask", "medsegr.cli.outputs", "medsegr.io.dicom_seg"],
                       NO_MODEL),
    "other commands": (["medsegr.training.commands", "medsegr.evaluation.commands",
                        "medsegr.bench.commands"], HEAVY),
}


@pytest.mark.parametrize("modules, heavy", list(CASES.values()), ids=list(CASES))
def test_light_modules_import_nothing_heavy(modules: list[str], heavy: tuple[str, ...]) -> None:
    assert heavy_modules_after("import " + ", ".join(modules), heavy) == []


def test_the_probe_sees_a_heavy_import() -> None:
    """The check above can fail: importing the pipeline is heavy."""
    assert "torch" in heavy_modules_after("import medsegr.pipeline", HEAVY)
