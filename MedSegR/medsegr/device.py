"""Choosing the compute device and precision."""

from __future__ import annotations

import torch

from medsegr.errors import InputError


def resolve_device(name: str = "auto") -> tuple[torch.device, torch.dtype]:
    """``auto`` | ``cpu`` | ``cuda`` | ``cuda:N`` -> (device, dtype).

    CUDA runs in bfloat16 when the GPU supports it (float16 otherwise is not used:
    the LLM's logits overflow too easily), CPU in float32.
    """
    name = (name or "auto").strip().lower()
    if name == "auto":
        name = "cuda" if torch.cuda.is_available() else "cpu"
    if name == "cpu":
        return torch.device("cpu"), torch.float32
    if name.startswith("cuda"):
        if not torch.cuda.is_available():
            raise InputError(f"device {name!r} requested but CUDA is not available on this machine "
                             "(use --device cpu)")
        device = torch.device(name)
        if device.index is not None and device.index >= torch.cuda.device_count():
            raise InputError(f"device {name!r} does not exist ({torch.cuda.device_count()} CUDA devices)")
        dtype = torch.bfloat16 if torch.cuda.is_bf16_supported() else torch.float32
        return device, dtype
    raise InputError(f"unknown device {name!r} (use auto, cpu, cuda or cuda:N)")
