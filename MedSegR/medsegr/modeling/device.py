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


def cpu_has_native_bf16() -> bool:
    """Whether this CPU computes bfloat16 natively (AVX-512 BF16 or AMX tiles): there a
    bfloat16 LLM is faster than float32 and keeps its answers; elsewhere it is emulated."""
    import torch

    checks = ("_is_avx512_bf16_supported", "_is_amx_tile_supported")
    return any(bool(getattr(torch.cpu, name, lambda: False)()) for name in checks)


#: environment variable that forces the LLM's CPU precision (bfloat16, int8 or float32)
PRECISION_ENV = "MEDSEGR_CPU_LLM_PRECISION"


def cpu_llm_precision(cpu_bf16: bool, cpu_int8: bool) -> str:
    """The LLM's precision for CPU inference: ``"bfloat16"`` (asked for and native),
    ``"int8"`` or ``"float32"``; ``$MEDSEGR_CPU_LLM_PRECISION`` overrides the config."""
    import os

    forced = os.environ.get(PRECISION_ENV, "").strip().lower()
    if forced:
        if forced not in ("bfloat16", "int8", "float32"):
            from medsegr.errors import InputError

            raise InputError(f"${PRECISION_ENV} must be bfloat16, int8 or float32, not {forced!r}")
        return forced
    if cpu_bf16 and cpu_has_native_bf16():
        return "bfloat16"
    return "int8" if cpu_int8 else "float32"
