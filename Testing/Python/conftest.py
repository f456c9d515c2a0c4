"""Shared fixtures: a tiny random model of the real classes, and the real parts."""

from __future__ import annotations

import os

os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("TRANSFORMERS_OFFLINE", "1")
os.environ.setdefault("QT_QPA_PLATFORM", "offscreen")

import numpy as np
import pytest


@pytest.fixture(scope="session")
def tiny_model():
    """2-layer random Llama + tiny TinyViT + random grounding module: the real classes,
    seconds to build. Its grounding module says "present" everywhere (see
    :func:`helpers.grounding_says_present`), as a trained one asked about a visible
    structure would: answers with [SEG] get non-empty masks."""
    from helpers import grounding_says_present
    from medsegr.config import MedSegRConfig
    from medsegr.modeling.builder import build_model

    return grounding_says_present(build_model(MedSegRConfig.tiny(), device="cpu"))


@pytest.fixture(scope="session")
def tiny_pipeline(tiny_model):
    from medsegr.pipeline import MedSegRPipeline

    return MedSegRPipeline(tiny_model)


@pytest.fixture(scope="session")
def real_pipeline():
    """The bundled pretrained parts (SmolLM2-135M + LiteMedSAM), base model, with the
    int8 LLM that CPUs without native bfloat16 get (on this CPU the default would be
    bfloat16; the int8 kernels and the lean decoder over them are what is tested here)."""
    from medsegr.config import MedSegRConfig
    from medsegr.pipeline import MedSegRPipeline

    config = MedSegRConfig()
    config.llm.cpu_bf16 = False
    return MedSegRPipeline.load(None, config=config, device="cpu")


def oblique_direction(deg: float = 20.0) -> tuple[float, ...]:
    """A rotation about the (LPS) x axis by ``deg`` degrees, ITK row-major."""
    a = np.deg2rad(deg)
    m = np.array([[1, 0, 0], [0, np.cos(a), -np.sin(a)], [0, np.sin(a), np.cos(a)]])
    return tuple(float(v) for v in m.ravel())


@pytest.fixture
def anisotropic_volume():
    """A 3-D image with anisotropic spacing and an oblique direction, and a bright
    ellipsoid ("organ") inside it."""
    from medsegr.io.images import image_from_array

    z, y, x = np.mgrid[0:12, 0:40, 0:56]
    organ = ((z - 6) / 4.5) ** 2 + ((y - 20) / 10) ** 2 + ((x - 30) / 14) ** 2 <= 1
    arr = np.where(organ, 300.0, 0.0) + np.random.default_rng(0).normal(0, 5, organ.shape)
    img = image_from_array(arr.astype(np.float32), spacing=(0.8, 1.1, 3.0),
                           origin=(-10.0, 25.0, 40.0), direction=oblique_direction(),
                           modality="MR")
    return img, organ


@pytest.fixture
def mrml_scene():
    """A real MRML scene (slicer-core) with Slicer's module logics and the standard
    Red/Yellow/Green slice views (see mrml_scene.py)."""
    pytest.importorskip("slicer")
    from mrml_scene import new_scene

    return new_scene()
