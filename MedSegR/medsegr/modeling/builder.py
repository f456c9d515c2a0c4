"""The one place that assembles a :class:`MedSegRModel` from its base parts."""

from __future__ import annotations

import torch

from medsegr.config import MedSegRConfig
from medsegr.modeling.device import resolve_device
from medsegr.modeling.language import add_special_tokens, apply_lora, load_language_model
from medsegr.modeling.load_timings import phase
from medsegr.modeling.medsegr_model import MedSegRModel
from medsegr.modeling.vision import build_vision


def build_model(config: MedSegRConfig | None = None, device: str = "auto",
                with_lora: bool = False, llm_skeleton: bool = False) -> MedSegRModel:
    """Load the base parts named by ``config`` and join them.

    The projectors are freshly initialised (seeded by ``config.model.seed``):
    without a fine-tuned checkpoint (:func:`medsegr.modeling.checkpoint.from_pretrained`) the
    model is *not* trained to ground text in pixels. ``with_lora`` wraps the LLM in
    peft LoRA adapters for training, with a trainable ``[SEG]`` embedding row. ``llm_skeleton`` leaves the LLM's weights
    unread (see :func:`medsegr.modeling.inference_opt.optimise_for_inference`).
    """
    config = config or MedSegRConfig()
    dev, dtype = resolve_device(device)
    torch.manual_seed(config.model.seed)
    with phase("vision"):  # small: fail fast on bad weights
        vision, vision_provenance = build_vision(config.vision)
    with phase("llm"):
        llm, tokenizer, llm_provenance = load_language_model(config.llm, torch.float32,
                                                              skeleton=llm_skeleton)
    seg_id, image_id = add_special_tokens(
        llm, tokenizer, [config.model.seg_token, config.model.image_token], skeleton=llm_skeleton)
    if with_lora:
        llm = apply_lora(llm, config.lora, trainable_token_ids=[seg_id])
    torch.manual_seed(config.model.seed)
    model = MedSegRModel(config, llm, tokenizer, vision, seg_token_id=seg_id,
                         image_token_id=image_id,
                         provenance={"llm": llm_provenance, "vision": vision_provenance})
    model.to(device=dev, dtype=dtype)
    model.eval()
    return model
