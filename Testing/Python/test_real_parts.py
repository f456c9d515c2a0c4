"""Integration tests on the real pretrained parts (SmolLM2-135M-Instruct + LiteMedSAM).

These run in the default test command: they are the real model path.
"""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
import SimpleITK as sitk

from helpers import force_seg, grounding_finds_everything
from medsegr.io.images import image_from_array, load_image
from medsegr.io.segmentation_files import read_seg_nrrd
from medsegr.answers import Hints
from medsegr.cli.samples import sample_path
from medsegr.modeling.weights import LITEMEDSAM, SMOLLM2_GGUF

pytestmark = pytest.mark.real


def _mni_brain():
    """The MNI152 T1 and a brain mask from its grey + white matter probability maps."""
    t1 = load_image(sample_path("brain-mri"))
    data = Path(sample_path("brain-mri")).parent
    gm = sitk.GetArrayFromImage(sitk.ReadImage(str(data / "mni_icbm152_gm_tal_nlin_sym_09a_converted.nii.gz")))
    wm = sitk.GetArrayFromImage(sitk.ReadImage(str(data / "mni_icbm152_wm_tal_nlin_sym_09a_converted.nii.gz")))
    return t1, (gm + wm) > 0.5


def _dice(a: np.ndarray, b: np.ndarray) -> float:
    return float(2 * (a & b).sum() / max(1, a.sum() + b.sum()))


def test_cli_end_to_end_on_a_real_mri(tmp_path):
    out = tmp_path / "out"
    proc = subprocess.run(
        [sys.executable, "-m", "medsegr.cli", "ask", "sample:head-mri",
         "Which structure in this head MRI is the brain? Segment it.", "--slice", "70",
         "--out", str(out), "--device", "cpu", "--base", "--json"],
        capture_output=True, text=True, timeout=600)
    assert proc.returncode == 0, proc.stderr
    assert "not grounded" in proc.stderr  # says clearly that the model is not fine-tuned
    printed = json.loads(proc.stdout)
    assert printed["answer"].strip()
    names = sorted(p.name for p in out.iterdir())
    assert names == ["answer.json", "labels.nrrd", "overlay.png", "segmentation.seg.nrrd"]
    record = json.loads((out / "answer.json").read_text(encoding="utf-8"))
    assert record["fine_tuned"] is False
    assert record["model"]["base"]["vision"]["sha256"] == LITEMEDSAM.sha256
    assert record["model"]["base"]["llm"]["sha256"] == SMOLLM2_GGUF.sha256
    assert record["slice_index"] == 70 and set(record["timings_s"]) >= {"encode", "total"}
    source = sitk.ReadImage(str(sample_path("head-mri")))
    labels = sitk.ReadImage(str(out / "labels.nrrd"))
    assert labels.GetSize() == source.GetSize()
    np.testing.assert_allclose(labels.GetSpacing(), source.GetSpacing(), atol=1e-6)
    np.testing.assert_allclose(labels.GetOrigin(), source.GetOrigin(), atol=1e-6)
    np.testing.assert_allclose(labels.GetDirection(), source.GetDirection(), atol=1e-6)
    segments, geometry = read_seg_nrrd(out / "segmentation.seg.nrrd")
    assert len(segments) == len(record["segments"])
    assert geometry.shape == tuple(reversed(source.GetSize()))
    assert (out / "overlay.png").read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"


def test_real_mask_on_an_anisotropic_oblique_volume(real_pipeline, tmp_path, monkeypatch):
    """Decode a real mask (the [SEG] path + a box hint, through the real encoder and the
    grounding module) and check it lands on the source grid voxel for voxel, through
    .seg.nrrd, in a real MRML scene."""
    from conftest import oblique_direction
    from test_segmentation_files import (new_scene, reference_volume_node, slicer_read,
                                         slicer_segment_mask)

    from medsegr.cli.outputs import write_results

    # the base parts have no trained grounding module: its presence score means nothing,
    # so every mask it decodes is let through (what it outlines is arbitrary; the
    # geometry of where the mask lands is what is tested here)
    monkeypatch.setattr(real_pipeline.model.config.model, "presence_threshold", 0.0)
    t1, brain = _mni_brain()
    arr, gt = t1.array[::2], brain[::2]  # 2 mm slices: anisotropic
    direction = np.array(oblique_direction(15)).reshape(3, 3) @ np.array(t1.direction).reshape(3, 3)
    img = image_from_array(arr, spacing=(1.0, 1.0, 2.0), origin=(-90.0, 120.0, -70.0),
                           direction=tuple(direction.ravel()), modality="MR")
    k = 45
    ys, xs = np.nonzero(gt[k])
    box = (float(xs.min()), float(ys.min()), float(xs.max()), float(ys.max()))
    question = "Segment the brain on this slice."

    def ask(image, index):
        session = real_pipeline.new_session(image)
        with force_seg(real_pipeline.model, {3}), grounding_finds_everything(real_pipeline.model):
            return session, session.ask(question, slice_index=index, hints=Hints(box=box))

    session, answer = ask(img, k)
    assert len(answer.segments) == 1 and answer.not_found == []
    mask = answer.segments[0].mask
    assert mask.shape == img.shape
    assert mask[k].any() and not np.delete(mask, k, axis=0).any()
    # the geometry metadata must not change the answer: the same voxels (the slice and
    # the neighbours the grounding module sees) axis-aligned, at another origin
    aligned = image_from_array(arr, spacing=(1.0, 1.0, 2.0), origin=t1.origin,
                               direction=t1.direction, modality="MR")
    _, original = ask(aligned, k)
    np.testing.assert_array_equal(original.segments[0].mask, mask)

    paths = write_results(tmp_path / "out", session, "Segment the brain on this slice.", answer,
                          real_pipeline.info())
    import slicer

    scene = new_scene(slicer)
    node = slicer_read(slicer, scene, paths["segmentation"])
    volume = reference_volume_node(slicer, scene, img)
    seg_id = node.GetSegmentation().GetNthSegmentID(0)
    np.testing.assert_array_equal(slicer_segment_mask(slicer, scene, node, seg_id, volume), mask)


def test_real_follow_up_reuses_the_image_embedding(real_pipeline):
    t1, _ = _mni_brain()
    session = real_pipeline.new_session(t1)
    first = session.ask("What kind of scan is this?", slice_index=90)
    second = session.ask("Which tissue appears brightest in it?", slice_index=90)
    assert session.encoder_calls == 1
    assert first.encoded_slices == 1 and second.encoded_slices == 0
    assert second.tokens["reused"] >= first.tokens["prompt"]
    assert second.timings["encode"] < 0.01
    assert first.text and second.text


def test_real_fast_decoder_matches_the_hugging_face_forward(real_pipeline):
    """On the real (int8, CPU) model, the lean decoder and the Hugging Face forward
    give the same answer."""
    import torch

    from medsegr.modeling.generation import generate

    model = real_pipeline.model
    assert model.fast_llm is not None and model.llm_quantized == "int8-dynamic"
    emb = model.encode_images(torch.rand(1, 1, 256, 256, generator=torch.Generator().manual_seed(0)))
    visual = {"a": model.visual_tokens(emb)[0]}
    keys = [("img", "a", i) for i in range(model.num_visual_tokens)] + model.tokenizer.encode(
        "<|im_start|>user\nWhat organ is shown?<|im_end|>\n<|im_start|>assistant\n",
        add_special_tokens=False)
    fast = generate(model, keys, visual, 16)
    saved = model.fast_llm
    model.use_fast_llm(None)
    try:
        reference = generate(model, keys, visual, 16)
    finally:
        model.use_fast_llm(saved)
    assert fast.token_ids == reference.token_ids


def test_info_command(capsys):
    from medsegr.cli.commands import main

    assert main(["info", "--device", "cpu"]) == 0
    info = json.loads(capsys.readouterr().out)
    assert info["device"] == "cpu"
    assert info["fine_tuned"] is True  # the bundled checkpoint in MedSegR/Resources/checkpoint
    assert Path(info["checkpoint"]).name == "checkpoint"
    from medsegr.modeling.device import cpu_has_native_bf16

    # the bundled checkpoint's LLM: bfloat16 where the CPU has it natively, else int8
    # the bundled checkpoint keeps its LLM in float32 where bfloat16 is not native (no int8)
    assert info["llm_quantization"] == ("bfloat16" if cpu_has_native_bf16() else None)
    assert info["base"]["vision"]["sha256"] == LITEMEDSAM.sha256


def test_real_fast_decoder_hidden_states_are_bit_identical(real_pipeline):
    """The lean decoder calls the int8 kernels directly, with q/k/v and gate/up each
    packed into one per-channel kernel: each packed kernel equals its separate layers
    bit for bit, and a prompt's final hidden state equals the Hugging Face forward's.
    (Only the same rows in one call can match exactly: int8 activation scales are
    computed per call.)"""
    import torch

    from medsegr.modeling.fast_llama import FastLlama

    llm = real_pipeline.model.llm
    gen = torch.Generator().manual_seed(1)
    fast = FastLlama(llm)
    layer, kernels = llm.model.layers[5], fast.layers[5]
    assert kernels.qkv.__name__ == "int8_linear"  # one fused int8 kernel
    with torch.no_grad():
        for rows in (1, 3, 40):
            h = torch.randn(1, rows, llm.config.hidden_size, generator=gen)
            attn, mlp = layer.self_attn, layer.mlp
            assert torch.equal(kernels.qkv(h), torch.cat([attn.q_proj(h), attn.k_proj(h),
                                                          attn.v_proj(h)], dim=-1))
            assert torch.equal(kernels.gate_up(h), torch.cat([mlp.gate_proj(h), mlp.up_proj(h)], dim=-1))
        embeds = torch.randn(1, 12, llm.config.hidden_size, generator=gen) * 0.05
        reference = llm(inputs_embeds=embeds, output_hidden_states=True).hidden_states[-1][0, -1]
        hidden, _ = fast.forward(embeds, fast.new_cache(torch.float32, torch.device("cpu")))
    assert torch.equal(hidden, reference)


def test_real_vision_weights_are_all_loaded_without_random_init():
    """The LiteMedSAM modules are built without random initialisation (every weight is
    loaded next): afterwards each tensor equals the weight file's, and torch's init
    functions are themselves again."""
    import torch

    from medsegr.config import VisionConfig
    from medsegr.modeling.vision import build_vision
    from medsegr.modeling.weights import locate

    before = {name: getattr(torch.nn.init, name) for name in ("normal_", "kaiming_uniform_", "ones_")}
    parts, _ = build_vision(VisionConfig())
    assert {name: getattr(torch.nn.init, name) for name in before} == before
    state = torch.load(str(locate(LITEMEDSAM)), map_location="cpu", weights_only=True)
    state = state.get("model", state)
    own = parts.state_dict()
    assert set(own) == set(state)
    assert all(torch.equal(own[name], state[name].to(own[name].dtype)) for name in own)
