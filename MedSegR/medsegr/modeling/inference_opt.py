"""Making a loaded model fast for inference (never used for training).

- Vision encoder: batch-norms folded into the preceding convolutions
  (``torch.nn.utils.fusion.fuse_conv_bn_eval``, exact up to rounding) and
  channels-last memory layout, which the CPU convolution kernels prefer; on CPU,
  GELUs and residual adds fused into the oneDNN convolutions and linear layers
  (:mod:`medsegr.modeling.encoder_fusion`).
- LLM: a lean Llama forward with a static KV cache (:mod:`medsegr.modeling.fast_llama`)
  for architectures it covers.
- LLM on CPU: dynamic int8 quantisation of the ``nn.Linear`` layers (int8 weights,
  activations quantised on the fly), except those named in ``llm.cpu_int8_keep_float``.
  Token-by-token decoding on CPU is bound by reading the weights from memory; int8
  weights are 4x smaller than float32, so each generated token costs roughly half the
  time, and the model's resident memory shrinks accordingly. Switch it off with ``llm.cpu_int8 = false``.

  Quantising takes ~1.3 s and needs the float weights in memory, so the int8
  model is cached (``<cache>/int8/<key>.safetensors``, key = base LLM hash,
  fine-tuned checkpoint digest, special tokens, layers kept in float, torch version). Later starts build
  the LLM as an unread skeleton and fill it from the cache: no float linear
  weights are ever read, which saves both start-up time and peak memory.
"""

from __future__ import annotations

import hashlib
import json
import logging
import os
import warnings
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import torch
from torch import nn
from torch.nn.utils.fusion import fuse_conv_bn_eval

from medsegr.errors import WeightError
from medsegr.modeling.medsegr_model import MedSegRModel

INT8_FORMAT = 2  # 2: tied float tensors stored once
_QLinear = torch.ao.nn.quantized.dynamic.Linear

log = logging.getLogger(__name__)


def fuse_conv_bn(module: nn.Module) -> int:
    """Replace every ``Sequential(conv, batchnorm)`` pair in ``module`` by one conv."""
    fused = 0
    for name, child in list(module.named_children()):
        parts = list(child.children()) if isinstance(child, nn.Sequential) else []
        if (len(parts) == 2 and isinstance(parts[0], nn.Conv2d)
                and isinstance(parts[1], nn.BatchNorm2d)):
            setattr(module, name, fuse_conv_bn_eval(parts[0].eval(), parts[1].eval()))
            fused += 1
        else:
            fused += fuse_conv_bn(child)
    return fused


def quantize_llm_int8(llm: nn.Module, keep_float: Sequence[str] = ()) -> nn.Module:
    """Dynamic int8 quantisation of the LLM's linear layers (CPU only), except those
    whose name ends with one of ``keep_float`` (``llm.cpu_int8_keep_float``).

    Per-tensor weight scales: on the bundled model they gave the same greedy answers
    as per-channel scales at a third of the start-up cost (1.3 s instead of 3.6 s).
    Activations are quantised per tensor on the fly, which flattens the outliers in
    the MLP down-projections' inputs: with every layer in int8 the bundled fine-tuned
    checkpoint never emits [SEG]; with ``keep_float=["down_proj"]`` it does, but its
    answers still drift from the float model's (see docs/model-card.md).
    The float weights that remain (embeddings, norms) are copied out of the
    memory-mapped checkpoint so that the mapping, and the pages of the float linear
    weights it still holds, are released.
    """
    spec: dict[Any, Any] = {nn.Linear: torch.ao.quantization.default_dynamic_qconfig}
    for name, module in llm.named_modules():
        if isinstance(module, nn.Linear) and name.endswith(tuple(keep_float)):
            spec[name] = None
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")  # torch.ao's migration notice
        quantized = torch.ao.quantization.quantize_dynamic(
            llm, spec, dtype=torch.qint8, inplace=True)
    for module in quantized.modules():
        for param in module.parameters(recurse=False):
            param.data = param.data.clone()
    return quantized


def int8_cache_file(key: dict[str, Any]) -> Path:
    """Where the int8 LLM for ``key`` (see :func:`int8_cache_key`) is cached."""
    from medsegr.weights import cache_dir

    blob = json.dumps(key, sort_keys=True).encode()
    return cache_dir() / "int8" / f"llm-{hashlib.sha256(blob).hexdigest()[:24]}.safetensors"


def int8_cache_key(llm_provenance: dict[str, Any], checkpoint_digest: str | None,
                   special_tokens: list[str], keep_float: Sequence[str] = ()) -> dict[str, Any]:
    return {"format": INT8_FORMAT, "torch": torch.__version__, "llm": llm_provenance,
            "checkpoint": checkpoint_digest, "special_tokens": special_tokens,
            "keep_float": sorted(keep_float)}


def save_int8_llm(llm: nn.Module, path: Path) -> None:
    """Write a dynamically quantised LLM as safetensors (int8 weights + scales, and the
    remaining float tensors), atomically."""
    from safetensors.torch import save_file

    tensors: dict[str, torch.Tensor] = {}
    quantized = []
    for name, module in llm.named_modules():
        if isinstance(module, _QLinear):
            weight, bias = module._weight_bias()
            tensors[f"{name}.qweight"] = weight.int_repr().contiguous()
            tensors[f"{name}.qscale"] = torch.tensor([weight.q_scale()], dtype=torch.float64)
            tensors[f"{name}.qzero"] = torch.tensor([weight.q_zero_point()], dtype=torch.int64)
            if bias is not None:
                tensors[f"{name}.qbias"] = bias.detach().contiguous()
            quantized.append(name)
    # tied weights (a float output head sharing the embedding matrix) are stored once
    stored: dict[tuple[int, tuple[int, ...]], str] = {}
    tied: dict[str, str] = {}
    for name, tensor in llm.state_dict().items():
        if isinstance(tensor, torch.Tensor) and not tensor.is_quantized and \
                not any(name.startswith(q + ".") for q in quantized):
            identity = (tensor.data_ptr(), tuple(tensor.shape))
            if identity in stored:
                tied[name] = stored[identity]
                continue
            stored[identity] = name
            tensors[f"float.{name}"] = tensor.detach().contiguous()
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_name(f".{path.name}.{os.getpid()}.tmp")
    try:
        save_file(tensors, str(tmp), metadata={"quantized": json.dumps(quantized),
                                                "tied": json.dumps(tied)})
        os.replace(tmp, path)
    finally:
        tmp.unlink(missing_ok=True)


def _load_qlinear(llm: nn.Module, handle: Any, name: str, has_bias: bool) -> None:
    parent_name, _, child = name.rpartition(".")
    parent = llm.get_submodule(parent_name) if parent_name else llm
    old = getattr(parent, child)
    qweight = torch._make_per_tensor_quantized_tensor(
        handle.get_tensor(f"{name}.qweight"), float(handle.get_tensor(f"{name}.qscale")[0]),
        int(handle.get_tensor(f"{name}.qzero")[0]))
    bias = handle.get_tensor(f"{name}.qbias").clone() if has_bias else None
    out_features, in_features = qweight.shape
    if isinstance(old, nn.Linear) and (old.in_features, old.out_features) != \
            (in_features, out_features):
        raise ValueError(f"{name}: shape mismatch")
    # built 1x1 (cheap), then given its real packed weight: the constructor would
    # otherwise pack a full-size zero weight first
    new = _QLinear(1, 1, bias_=bias is not None, dtype=torch.qint8)
    new.set_weight_bias(qweight, bias)
    new.in_features, new.out_features = in_features, out_features
    setattr(parent, child, new)


def _module_groups(names: list[str], size: int = 8) -> list[list[str]]:
    """Quantised module names in groups of about one transformer layer."""
    return [names[i:i + size] for i in range(0, len(names), size)]


def load_int8_llm(llm: nn.Module, path: Path) -> nn.Module:
    """Fill an LLM skeleton from :func:`save_int8_llm`'s file (in place).

    The file is opened once per group of modules: a memory-mapped file keeps every
    page it has served resident until it is closed, so reading it in one go would
    hold the whole file in memory on top of the packed weights.
    """
    from safetensors import safe_open

    try:
        with safe_open(str(path), framework="pt") as handle:
            quantized = json.loads(handle.metadata()["quantized"])
            tied = json.loads(handle.metadata().get("tied", "{}"))
            keys = set(handle.keys())
        for group in _module_groups(quantized):
            with safe_open(str(path), framework="pt") as handle, warnings.catch_warnings():
                warnings.simplefilter("ignore")  # torch's notice on quantized tensor creation
                for name in group:
                    _load_qlinear(llm, handle, name, f"{name}.qbias" in keys)
        with safe_open(str(path), framework="pt") as handle:
            state = {k[len("float."):]: handle.get_tensor(k).clone()
                     for k in keys if k.startswith("float.")}
        for name, source in tied.items():
            state[name] = state[source]
    except (OSError, KeyError, ValueError, RuntimeError, AttributeError) as exc:
        path.unlink(missing_ok=True)
        raise WeightError(f"the int8 model cache {path} was unusable ({exc}); it was removed, "
                          "run again") from None
    expected = set()
    for module_name, module in llm.named_modules():
        if isinstance(module, _QLinear):
            continue
        prefix = f"{module_name}." if module_name else ""
        expected.update(prefix + n for n, p in module._parameters.items() if p is not None)
        expected.update(prefix + n for n, b in module._buffers.items()
                        if b is not None and n not in module._non_persistent_buffers_set)
    if expected != set(state):
        path.unlink(missing_ok=True)
        diff = sorted(expected ^ set(state))
        raise WeightError(f"the int8 model cache {path} does not fit the model (e.g. {diff[0]}); "
                          "it was removed, run again")
    parameters: dict[int, nn.Parameter] = {}  # tied names get the same Parameter
    for name, tensor in state.items():
        owner_name, _, attr = name.rpartition(".")
        owner = llm.get_submodule(owner_name) if owner_name else llm
        if attr in owner._parameters:
            if id(tensor) not in parameters:
                parameters[id(tensor)] = nn.Parameter(tensor, requires_grad=False)
            owner._parameters[attr] = parameters[id(tensor)]
        else:
            owner._buffers[attr] = tensor
    return llm


@torch.no_grad()
def optimise_for_inference(model: MedSegRModel, int8_cache: Path | None = None) -> MedSegRModel:
    """Apply the inference-only optimisations in place (see the module docstring).

    With ``int8_cache``: load the quantised LLM from it when it exists (the model
    was then built with an LLM skeleton), else quantise and write it.
    """
    model.eval()
    encoder = model.vision.image_encoder
    count = fuse_conv_bn(encoder)
    encoder.to(memory_format=torch.channels_last)
    model.vision.channels_last = True
    log.debug("fused %d conv+bn pairs in the image encoder", count)
    if model.device.type == "cpu":
        from medsegr.modeling.encoder_fusion import fuse_tinyvit

        log.debug("fused GELU/add kernels in %d encoder modules", fuse_tinyvit(encoder))
    if model.device.type == "cpu" and model.config.llm.cpu_int8:
        if int8_cache is not None and int8_cache.is_file():
            model.llm = load_int8_llm(model.llm, int8_cache)
        else:
            model.llm = quantize_llm_int8(model.llm, model.config.llm.cpu_int8_keep_float)
            if int8_cache is not None:
                try:
                    save_int8_llm(model.llm, int8_cache)
                except OSError as exc:  # a read-only cache only costs start-up time
                    log.warning("cannot write the int8 cache %s: %s", int8_cache, exc)
        model.llm_quantized = "int8-dynamic"
    from medsegr.modeling.fast_llama import FastLlama, supports

    model.fast_llm = FastLlama(model.llm) if supports(model.llm) else None
    model.inference_only = True
    return model
