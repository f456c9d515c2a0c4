"""Making a loaded model fast for inference (never used for training).

- Vision encoder: batch-norms folded into the preceding convolutions
  (``torch.nn.utils.fusion.fuse_conv_bn_eval``, exact up to rounding) and
  channels-last memory layout, which the CPU convolution kernels prefer; on CPU,
  GELUs and residual adds fused into the oneDNN convolutions and linear layers
  (:mod:`medsegr.modeling.encoder_fusion`).
- LLM: a lean Llama forward with a static KV cache (:mod:`medsegr.modeling.fast_llama`)
  for architectures it covers.
- LLM on CPU: bfloat16 where the CPU computes it natively (AVX-512 BF16 or AMX,
  detected at run time; ``llm.cpu_bf16``), otherwise
  dynamic int8 quantisation of the ``nn.Linear`` layers, except those
  named in ``llm.cpu_int8_keep_float`` (:mod:`medsegr.modeling.int8`). Switch it off
  with ``llm.cpu_int8 = false``. The int8 model is cached
  (``<cache>/int8/<key>.safetensors``, key = base LLM hash, fine-tuned checkpoint
  digest, special tokens, layers kept in float, torch version): later starts build
  the LLM as an unread skeleton and fill it from the cache, so no float linear
  weight is ever read, which saves both start-up time and peak memory.
"""

from __future__ import annotations

import logging
from concurrent.futures import Future
from pathlib import Path
from typing import Any

import torch
from torch import nn
from torch.nn.utils.fusion import fuse_conv_bn_eval

from medsegr.modeling.medsegr_model import MedSegRModel

log = logging.getLogger(__name__)


def fuse_conv_bn(module: nn.Module) -> int:
    """Replace every ``Sequential(conv, batchnorm)`` pair in ``module`` by one conv, and
    the ``conv, batchnorm`` head of every ``Sequential(conv, batchnorm, activation)`` by
    one conv (the activation kept)."""
    fused = 0
    for name, child in list(module.named_children()):
        parts = list(child.children()) if isinstance(child, nn.Sequential) else []
        if (len(parts) == 2 and isinstance(parts[0], nn.Conv2d)
                and isinstance(parts[1], nn.BatchNorm2d)):
            setattr(module, name, fuse_conv_bn_eval(parts[0].eval(), parts[1].eval()))
            fused += 1
        elif (len(parts) == 3 and isinstance(parts[0], nn.Conv2d)
              and isinstance(parts[1], nn.BatchNorm2d)):
            setattr(module, name, nn.Sequential(fuse_conv_bn_eval(parts[0].eval(), parts[1].eval()),
                                                parts[2]))
            fused += 1
        else:
            fused += fuse_conv_bn(child)
    return fused


@torch.no_grad()
def optimise_for_inference(model: MedSegRModel, int8_cache: Path | None = None,
                           int8_read: Future[Any] | None = None) -> MedSegRModel:
    """Apply the inference-only optimisations in place (see the module docstring).

    With ``int8_cache``: load the quantised LLM from it when it exists (the model
    was then built with an LLM skeleton; ``int8_read``: the file, already being read
    by ``int8.read_int8_in_background``), else quantise and write it.
    """
    model.eval()
    encoder = model.vision.image_encoder
    count = fuse_conv_bn(encoder)
    encoder.to(memory_format=torch.channels_last)
    model.vision.channels_last = True
    log.debug("fused %d conv+bn pairs in the image encoder", count)
    log.debug("fused %d conv+bn pairs in the grounding module", fuse_conv_bn(model.grounding))
    if model.device.type == "cpu":
        from medsegr.modeling.encoder_fusion import fuse_tinyvit

        log.debug("fused GELU/add kernels in %d encoder modules", fuse_tinyvit(encoder))
    precision = "float32"
    quantized: str | None = None
    if model.device.type == "cpu":
        from medsegr.modeling.device import cpu_llm_precision

        precision = cpu_llm_precision(model.config.llm.cpu_bf16, model.config.llm.cpu_int8)
    if precision == "bfloat16":
        model.llm.to(torch.bfloat16)
        quantized = "bfloat16"
    elif precision == "int8":
        from medsegr.modeling.int8 import load_int8_llm, quantize_llm_int8

        if int8_cache is not None and (int8_read is not None or int8_cache.is_file()):
            model.llm = load_int8_llm(model.llm, int8_cache, read=int8_read)
        else:
            model.llm = quantize_llm_int8(model.llm, model.config.llm.cpu_int8_keep_float,
                                          cache=int8_cache)
        quantized = "int8-dynamic"
    from medsegr.modeling.fast_llama import FastLlama, supports

    model.enter_inference(quantized, FastLlama(model.llm) if supports(model.llm) else None)
    return model
