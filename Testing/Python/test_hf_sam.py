"""Any SAM-family model saved in Hugging Face format (SAM, MedSAM ViT-B, …) can be the
image encoder whose embedding the LLM reads and the grounding module fuses: a tiny
random SamModel folder stands in for the real multi-GB ones."""

from __future__ import annotations

import numpy as np
import pytest
import torch

from helpers import force_seg, grounding_says_present


@pytest.fixture(scope="module")
def sam_folder(tmp_path_factory):
    from transformers import SamConfig, SamModel
    from transformers.models.sam.configuration_sam import (SamMaskDecoderConfig,
                                                            SamPromptEncoderConfig,
                                                            SamVisionConfig)

    vision = SamVisionConfig(hidden_size=32, num_hidden_layers=2, num_attention_heads=2,
                             image_size=128, patch_size=16, output_channels=32, mlp_dim=64,
                             num_pos_feats=16, global_attn_indexes=[1], window_size=4)
    prompt = SamPromptEncoderConfig(hidden_size=32, image_size=128, patch_size=16,
                                    image_embedding_size=8, mask_input_channels=4)
    decoder = SamMaskDecoderConfig(hidden_size=32, num_hidden_layers=2, num_attention_heads=2,
                                   mlp_dim=64, iou_head_hidden_dim=32)
    torch.manual_seed(0)
    sam = SamModel(SamConfig(vision_config=vision.to_dict(), prompt_encoder_config=prompt.to_dict(),
                             mask_decoder_config=decoder.to_dict()))
    folder = tmp_path_factory.mktemp("sam")
    sam.save_pretrained(folder)
    return folder


@pytest.fixture(scope="module")
def sam_model(sam_folder):
    from medsegr.config import MedSegRConfig
    from medsegr.modeling.builder import build_model

    cfg = MedSegRConfig.tiny()
    cfg.vision.source = str(sam_folder)
    return grounding_says_present(build_model(cfg, device="cpu"))


def test_hf_sam_parts_shapes(sam_model):
    from medsegr.modeling.vision import HFSamParts

    assert isinstance(sam_model.vision, HFSamParts)
    assert sam_model.vision.image_size == 128 and sam_model.vision.embed_dim == 32
    assert sam_model.provenance["vision"]["kind"] == "hf-sam"
    emb = sam_model.encode_images(torch.rand(2, 1, 128, 128))
    assert emb.shape == (2, 32, 8, 8)
    # the grounding module reads its 32-wide 8x8 embedding at 1/4 of its working grid
    assert sam_model.grounding.config.embed_dim == 32
    size = sam_model.grounding.config.size
    channels = _channels(sam_model, 2)
    states = torch.randn(3, sam_model.llm.config.hidden_size)
    owner = torch.tensor([0, 1, 1])
    out = sam_model.ground(channels, emb, states, owner=owner)
    assert out.logits.shape == (3, size, size) and out.presence.shape == (3,)
    # an embedding of this width reaches the masks (the tiny random encoder's own
    # outputs are all near 0: two random embeddings of its shape stand in)
    fake = torch.randn(emb.shape, generator=torch.Generator().manual_seed(7))
    swapped = [sam_model.ground(channels, e, states, owner=owner).logits for e in (fake, fake.flip(0))]
    assert not torch.allclose(swapped[0], swapped[1])


def _channels(model, batch: int) -> torch.Tensor:
    from medsegr.imaging.channels import input_channels

    size = model.grounding.config.size
    raw = torch.rand(batch, model.grounding.config.slices, size, size,
                     generator=torch.Generator().manual_seed(5))
    return input_channels(raw, torch.zeros(batch, dtype=torch.bool))


def test_hf_sam_in_the_pipeline(sam_model, anisotropic_volume, tmp_path):
    from medsegr.modeling.checkpoint import from_pretrained, save_pretrained
    from medsegr.answers import Hints
    from medsegr.pipeline import MedSegRPipeline

    img, _ = anisotropic_volume
    session = MedSegRPipeline(sam_model).new_session(img)
    with force_seg(sam_model, {1}):
        answer = session.ask("Segment the organ.", slice_index=6, hints=Hints(box=(5, 5, 40, 30)))
    assert len(answer.segments) == 1 and answer.segments[0].mask.shape == img.shape
    assert not np.delete(answer.segments[0].mask, 6, axis=0).any()
    path = save_pretrained(sam_model, tmp_path / "ckpt")
    loaded = from_pretrained(path, device="cpu")
    emb = loaded.encode_images(torch.rand(1, 1, 128, 128, generator=torch.Generator().manual_seed(1)))
    torch.testing.assert_close(emb, sam_model.encode_images(
        torch.rand(1, 1, 128, 128, generator=torch.Generator().manual_seed(1))))
    states = torch.randn(1, sam_model.llm.config.hidden_size, generator=torch.Generator().manual_seed(2))
    a, b = loaded.ground(_channels(loaded, 1), emb, states), sam_model.ground(_channels(sam_model, 1), emb, states)
    torch.testing.assert_close(a.logits, b.logits, rtol=1e-4, atol=1e-4)
    torch.testing.assert_close(a.presence, b.presence, rtol=1e-4, atol=1e-4)


def test_pixel_normalisation_from_the_processor_config():
    from medsegr.modeling.vision import _pixel_normalisation

    mean, std = _pixel_normalisation({})  # SAM's ImageNet values on the 0..255 scale
    np.testing.assert_allclose(mean, [123.675, 116.28, 103.53])
    np.testing.assert_allclose(std, [58.395, 57.12, 57.375])
    mean, std = _pixel_normalisation({"do_normalize": False})  # x * rescale_factor only
    np.testing.assert_allclose(mean, [0, 0, 0])
    np.testing.assert_allclose(std, [255, 255, 255])
    mean, std = _pixel_normalisation({"do_rescale": False, "image_mean": [100, 100, 100],
                                      "image_std": [50, 50, 50]})
    np.testing.assert_allclose(mean, [100, 100, 100])
    np.testing.assert_allclose(std, [50, 50, 50])
