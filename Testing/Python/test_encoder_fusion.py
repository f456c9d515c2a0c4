"""The fused CPU encoder (oneDNN GELU/add fusion) against the original TinyViT."""

from __future__ import annotations

import copy

import numpy as np
import pytest
import torch

from medsegr.config import VisionConfig
from medsegr.modeling import encoder_fusion
from medsegr.modeling.inference_opt import fuse_conv_bn
from medsegr.modeling.vision import build_vision

pytestmark = pytest.mark.skipif(not encoder_fusion.available(),
                                reason="this PyTorch build has no oneDNN fused kernels")


def _folded(source: str):
    parts, _ = build_vision(VisionConfig(source=source))
    parts.eval()
    fuse_conv_bn(parts.image_encoder)
    parts.image_encoder.to(memory_format=torch.channels_last)
    parts.channels_last = True
    return parts


def _module_types(module: torch.nn.Module) -> set[str]:
    return {type(m).__name__ for m in module.modules()}


@torch.no_grad()
def test_tiny_encoder_fused_matches_the_original():
    torch.manual_seed(0)
    plain = _folded("tiny-random")
    fused = copy.deepcopy(plain)
    assert encoder_fusion.fuse_tinyvit(fused.image_encoder) > 0
    assert "MBConv" not in _module_types(fused.image_encoder)
    assert {"FusedMBConv", "FusedPatchMerging", "FusedPatchEmbed"} <= _module_types(fused.image_encoder)
    x = torch.rand(2, 1, 256, 256)
    ref, out = plain.encode(x), fused.encode(x)
    assert out.shape == ref.shape
    torch.testing.assert_close(out, ref, rtol=1e-4, atol=1e-5)


@pytest.mark.real
@torch.no_grad()
def test_real_encoder_fused_matches_the_original_on_an_mri_slice():
    from medsegr.io.images import load_image
    from medsegr.imaging.intensity import normalise
    from medsegr.cli.samples import sample_path

    plain = _folded("litemedsam")
    fused = copy.deepcopy(plain)
    replaced = encoder_fusion.fuse_tinyvit(fused.image_encoder)
    # 2 MBConv + 3 patch mergings + patch embedding + 2 stage-1 MLPs
    assert replaced == 8
    image = load_image(sample_path("brain-mri"))
    volume = normalise(image.array, image.modality)
    slice_ = torch.from_numpy(np.ascontiguousarray(volume[90], dtype=np.float32))
    x = torch.nn.functional.interpolate(slice_[None, None], size=(256, 256), mode="bilinear")
    ref, out = plain.encode(x), fused.encode(x)
    assert ref.shape == (1, 256, 64, 64)
    torch.testing.assert_close(out, ref, rtol=1e-4, atol=2e-5)
    cos = torch.nn.functional.cosine_similarity(out.flatten(), ref.flatten(), dim=0)
    assert cos > 0.999999


def test_other_encoders_are_left_alone():
    conv = torch.nn.Sequential(torch.nn.Conv2d(3, 4, 1), torch.nn.GELU())
    assert encoder_fusion.fuse_tinyvit(conv) == 0
    assert isinstance(conv[0], torch.nn.Conv2d)


def test_real_pipeline_runs_the_fused_encoder(real_pipeline):
    assert "FusedMBConv" in _module_types(real_pipeline.model.vision.image_encoder)
