"""Dynamic int8 quantisation of the LLM for CPU inference, and its on-disk cache.

The ``nn.Linear`` layers (except those named in ``llm.cpu_int8_keep_float``) get
int8 weights, quantised per tensor by PyTorch's own weight observer, exactly as
``torch.ao.quantization.quantize_dynamic`` would; activations are quantised on
the fly. Token-by-token decoding on CPU is bound by reading the weights, so int8
weights (4x smaller than float32) make each token roughly twice as fast and the
resident model smaller.

Each layer's q/k/v and gate/up projections share one kernel: one per-channel int8
weight whose rows keep their own layer's scale and zero point, so every projection
(a :class:`SharedInt8Slice`) gives exactly what its own per-tensor layer gives,
while the lean decoder calls the shared kernel once (one int8 call costs ~30-40 us
on 2 cores whatever its size).

The quantised model is cached as safetensors (:func:`int8_cache_file`): int8 values,
scales and zero points per kernel, the float tensors that remain (embeddings,
norms; tied ones stored once), and which projections are slices of which kernel.
Every start fills an LLM from such a state: later starts build the LLM as an unread
skeleton and read the file; the first start quantises the float model layer by
layer into the same state, freeing each float weight as it goes (which keeps the
first start's peak memory near the float model's), writes it, and fills the model
from it. Both starts therefore give the same model, bit for bit.
"""

from __future__ import annotations

import contextlib
import ctypes
import hashlib
import json
import logging
import warnings
from collections.abc import Callable, Sequence
from concurrent.futures import Future, ThreadPoolExecutor
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import torch
from torch import nn

from medsegr.errors import WeightError

INT8_FORMAT = 3  # 2: tied float tensors stored once; 3: shared q/k/v and gate/up kernels
QLinear = torch.ao.nn.quantized.dynamic.Linear

#: projections packed into one int8 kernel: (name of the shared kernel, projections)
SHARED_GROUPS = (("qkv_proj", ("q_proj", "k_proj", "v_proj")),
                 ("gate_up_proj", ("gate_proj", "up_proj")))

log = logging.getLogger(__name__)


class SharedInt8Slice(nn.Module):
    """One projection of an int8 kernel shared by projections that read the same input.

    Its output is rows ``start:stop`` of ``shared``'s output. The lean decoder
    (:mod:`medsegr.modeling.fast_llama`) calls ``shared`` once for all of them; the
    Hugging Face forward calls each slice, which computes the whole kernel each time
    (slower, same values).
    """

    def __init__(self, shared: nn.Module, start: int, stop: int) -> None:
        super().__init__()
        self.__dict__["shared"] = shared  # registered on the parent, not here
        self.start, self.stop = start, stop
        self.in_features, self.out_features = shared.in_features, stop - start

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.shared(x)[..., self.start:self.stop]

    def extra_repr(self) -> str:
        return f"rows {self.start}:{self.stop} of a shared int8 kernel"


@dataclass
class Int8State:
    """The content of an int8 cache file: tensors and metadata."""

    tensors: dict[str, torch.Tensor] = field(default_factory=dict)
    quantized: list[str] = field(default_factory=list)  # kernel names, in model order
    tied: dict[str, str] = field(default_factory=dict)  # float tensor -> the one stored
    slices: dict[str, tuple[str, int, int]] = field(default_factory=dict)

    def metadata(self) -> dict[str, str]:
        return {"quantized": json.dumps(self.quantized), "tied": json.dumps(self.tied),
                "slices": json.dumps(self.slices)}

    def get_tensor(self, name: str) -> torch.Tensor:
        return self.tensors[name]

    def keys(self) -> list[str]:
        return list(self.tensors)

    def release(self, prefix: str) -> None:
        """Drop the tensors under ``prefix`` (once a kernel is built from them)."""
        for name in [n for n in self.tensors if n.startswith(prefix)]:
            del self.tensors[name]


def int8_cache_file(key: dict[str, Any]) -> Path:
    """Where the int8 LLM for ``key`` (see :func:`int8_cache_key`) is cached."""
    from medsegr.modeling.weights import cache_dir

    blob = json.dumps(key, sort_keys=True).encode()
    return cache_dir() / "int8" / f"llm-{hashlib.sha256(blob).hexdigest()[:24]}.safetensors"


def int8_cache_key(llm_provenance: dict[str, Any], checkpoint_digest: str | None,
                   special_tokens: list[str], keep_float: Sequence[str] = ()) -> dict[str, Any]:
    return {"format": INT8_FORMAT, "torch": torch.__version__, "llm": llm_provenance,
            "checkpoint": checkpoint_digest, "special_tokens": special_tokens,
            "keep_float": sorted(keep_float)}


# ----------------------------------------------------------------- float -> state


def _quantize_weight(linear: nn.Linear) -> torch.Tensor:
    """The per-tensor int8 weight ``quantize_dynamic`` gives this layer (same observer)."""
    from torch.ao.nn.quantized.modules.utils import _quantize_weight as quantize
    from torch.ao.quantization.qconfig import default_dynamic_qconfig

    observer = default_dynamic_qconfig.weight()
    observer(linear.weight)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")  # torch's notice on quantized tensor creation
        return quantize(linear.weight.float(), observer)


def _put_kernel(state: Int8State, name: str, weights: list[torch.Tensor],
                biases: list[torch.Tensor | None]) -> None:
    """Store per-tensor int8 weights as one kernel (per-channel when several)."""
    values = torch.cat([w.int_repr() for w in weights]).contiguous()
    if len(weights) == 1:
        scale = torch.tensor([weights[0].q_scale()], dtype=torch.float64)
        zero = torch.tensor([weights[0].q_zero_point()], dtype=torch.int64)
    else:
        scale = torch.cat([torch.full((w.shape[0],), w.q_scale(), dtype=torch.float64) for w in weights])
        zero = torch.cat([torch.full((w.shape[0],), w.q_zero_point(), dtype=torch.int64)
                          for w in weights])
    state.tensors.update({f"{name}.qweight": values, f"{name}.qscale": scale, f"{name}.qzero": zero})
    if any(b is not None for b in biases):
        state.tensors[f"{name}.qbias"] = torch.cat([
            b.detach().float() if b is not None else torch.zeros(w.shape[0])
            for b, w in zip(biases, weights)])
    state.quantized.append(name)


@torch.no_grad()
def int8_state(llm: nn.Module, keep_float: Sequence[str] = ()) -> Int8State:
    """Quantise ``llm``'s linear layers into an :class:`Int8State`, layer by layer.

    Each quantised float layer is replaced by an empty placeholder as soon as its
    int8 weight exists, so its float weight is freed: ``llm`` is only good for
    :func:`fill_int8_llm` afterwards.
    """
    state = Int8State()
    keep = tuple(keep_float)
    modules = dict(llm.named_modules())

    def quantizable(name: str, module: nn.Module | None) -> bool:
        return type(module) is nn.Linear and not (keep and name.endswith(keep))

    done: set[str] = set()
    for name, module in list(modules.items()):
        prefix = f"{name}." if name else ""
        for shared_name, parts in SHARED_GROUPS:
            names = [prefix + part for part in parts]
            found = [modules.get(n) for n in names]
            if not all(quantizable(n, m) for n, m in zip(names, found)):
                continue
            linears: list[nn.Linear] = found  # type: ignore[assignment]
            if len({m.in_features for m in linears}) != 1:
                continue
            _put_kernel(state, prefix + shared_name, [_quantize_weight(m) for m in linears],
                        [m.bias for m in linears])
            start = 0
            for n, m in zip(names, linears):
                state.slices[n] = (prefix + shared_name, start, start + m.out_features)
                start += m.out_features
                _free(llm, n)
                done.add(n)
        if name not in done and quantizable(name, module):
            assert isinstance(module, nn.Linear)
            _put_kernel(state, name, [_quantize_weight(module)], [module.bias])
            _free(llm, name)
            done.add(name)
    stored: dict[tuple[int, tuple[int, ...]], str] = {}
    floats: list[tuple[str, torch.Tensor]] = []
    for name, tensor in llm.state_dict(keep_vars=True).items():
        identity = (tensor.data_ptr(), tuple(tensor.shape))
        if identity in stored:  # e.g. a float output head tied to the embeddings
            state.tied[name] = stored[identity]
            continue
        stored[identity] = name
        floats.append((name, tensor))
    for name, tensor in floats:
        # a private copy, which the model uses too: nothing then holds on to a
        # memory-mapped checkpoint, whose pages are released before packing
        private = tensor.detach().clone()
        tensor.data = private
        state.tensors[f"float.{name}"] = private
    return state


def _parent(llm: nn.Module, name: str) -> tuple[nn.Module, str]:
    parent_name, _, child = name.rpartition(".")
    return (llm.get_submodule(parent_name) if parent_name else llm), child


def _free(llm: nn.Module, name: str) -> None:
    parent, child = _parent(llm, name)
    old = getattr(parent, child)
    placeholder = nn.Module()  # keeps the shape for the checks of the filling step
    placeholder.in_features, placeholder.out_features = old.in_features, old.out_features
    setattr(parent, child, placeholder)


def write_int8_state(state: Int8State, path: Path) -> None:
    """Write ``state`` to ``path`` atomically (readers never see a partial file)."""
    from safetensors.torch import save_file

    from medsegr.io.images import atomic_output

    path.parent.mkdir(parents=True, exist_ok=True)
    with atomic_output(path) as tmp:
        save_file(state.tensors, str(tmp), metadata=state.metadata())


# ----------------------------------------------------------------- state -> model


def _new_qlinear(weight: torch.Tensor, bias: torch.Tensor | None) -> nn.Module:
    # built 1x1 (cheap), then given its real packed weight: the constructor would
    # otherwise pack a full-size zero weight first
    module = QLinear(1, 1, bias_=bias is not None, dtype=torch.qint8)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")  # torch's notice on quantized tensor creation
        module.set_weight_bias(weight, bias)
    module.out_features, module.in_features = weight.shape
    return module


def _check_shape(llm: nn.Module, name: str, in_features: int, out_features: int) -> tuple[nn.Module, str]:
    parent, child = _parent(llm, name)
    old = getattr(parent, child, None)
    if old is not None and (getattr(old, "in_features", in_features),
                            getattr(old, "out_features", out_features)) != (in_features, out_features):
        raise ValueError(f"{name}: shape mismatch")
    return parent, child


def _read_kernel(source: Any, name: str, has_bias: bool) -> nn.Module:
    values = source.get_tensor(f"{name}.qweight")
    scales, zeros = source.get_tensor(f"{name}.qscale"), source.get_tensor(f"{name}.qzero")
    if scales.numel() == 1:
        weight = torch._make_per_tensor_quantized_tensor(values, float(scales[0]), int(zeros[0]))
    else:
        weight = torch._make_per_channel_quantized_tensor(values, scales, zeros, 0)
    bias = source.get_tensor(f"{name}.qbias").clone() if has_bias else None
    return _new_qlinear(weight, bias)


def _module_groups(names: list[str], size: int = 8) -> list[list[str]]:
    """Kernel names in groups of about two transformer layers."""
    return [names[i:i + size] for i in range(0, len(names), size)]


@dataclass
class ReadInt8:
    """An int8 state turned into modules, not yet placed in a model."""

    kernels: dict[str, nn.Module]  # packed int8 kernels by module name
    slices: dict[str, tuple[str, int, int]]
    floats: dict[str, torch.Tensor]  # tied names share one tensor


def _read(opener: Callable[[], contextlib.AbstractContextManager[Any]]) -> ReadInt8:
    """Pack every kernel and read the float tensors (needs no model: it can run
    while the model is being built, see :func:`read_int8_in_background`)."""
    with opener() as source:
        meta = source.metadata()
        quantized, tied = json.loads(meta["quantized"]), json.loads(meta.get("tied", "{}"))
        slices = json.loads(meta.get("slices", "{}"))
        keys = set(source.keys())
    kernels: dict[str, nn.Module] = {}
    for group in _module_groups(quantized):
        with opener() as source, warnings.catch_warnings():
            warnings.simplefilter("ignore")  # torch's notice on quantized tensor creation
            for name in group:
                kernels[name] = _read_kernel(source, name, f"{name}.qbias" in keys)
                if isinstance(source, Int8State):  # in memory: keep one copy of the weights
                    source.release(f"{name}.q")
    with opener() as source:
        # tensors of a file are copied out of its memory mapping; a state's are private
        copy = not isinstance(source, Int8State)
        floats = {k[len("float."):]: source.get_tensor(k).clone() if copy else source.get_tensor(k)
                  for k in keys if k.startswith("float.")}
    for name, stored in tied.items():
        floats[name] = floats[stored]
    return ReadInt8(kernels, {k: (v[0], int(v[1]), int(v[2])) for k, v in slices.items()}, floats)


def _place(llm: nn.Module, read: ReadInt8) -> nn.Module:
    """Put :func:`_read`'s modules and tensors into ``llm`` (checked against its shapes)."""
    for name, kernel in read.kernels.items():
        parent, child = _check_shape(llm, name, kernel.in_features, kernel.out_features)
        setattr(parent, child, kernel)
    for name, (shared_name, start, stop) in read.slices.items():
        shared = llm.get_submodule(shared_name)
        parent, child = _check_shape(llm, name, shared.in_features, stop - start)
        setattr(parent, child, SharedInt8Slice(shared, start, stop))
    expected = set()
    for module_name, module in llm.named_modules():
        if isinstance(module, QLinear | SharedInt8Slice):
            continue
        prefix = f"{module_name}." if module_name else ""
        expected.update(prefix + n for n, p in module._parameters.items() if p is not None)
        expected.update(prefix + n for n, b in module._buffers.items()
                        if b is not None and n not in module._non_persistent_buffers_set)
    if expected != set(read.floats):
        diff = sorted(expected ^ set(read.floats))
        raise ValueError(f"it does not fit the model (e.g. {diff[0]})")
    parameters: dict[int, nn.Parameter] = {}  # tied names get the same Parameter
    for name, tensor in read.floats.items():
        owner, attr = _parent(llm, name)
        if attr in owner._parameters:
            if id(tensor) not in parameters:
                parameters[id(tensor)] = nn.Parameter(tensor, requires_grad=False)
            owner._parameters[attr] = parameters[id(tensor)]
        else:
            owner._buffers[attr] = tensor
    return llm


def fill_int8_llm(llm: nn.Module, state: Int8State) -> nn.Module:
    """Fill ``llm`` (a skeleton, or a model :func:`int8_state` emptied) from ``state``."""
    return _place(llm, _read(lambda: contextlib.nullcontext(state)))


def read_int8_file(path: Path) -> ReadInt8:
    """Read an int8 cache file into packed kernels and float tensors.

    The file is opened once per group of kernels: a memory-mapped file keeps every
    page it has served resident until it is closed, so reading it in one go would
    hold the whole file in memory on top of the packed weights.
    """
    from safetensors import safe_open

    return _read(lambda: safe_open(str(path), framework="pt"))


def read_int8_in_background(path: Path) -> Future[ReadInt8]:
    """Start :func:`read_int8_file` in a thread. Packing the kernels (~0.6 s on 2
    cores) runs in C++ without the GIL, so it overlaps with the imports and model
    building of the main thread."""
    executor = ThreadPoolExecutor(max_workers=1, thread_name_prefix="medsegr-int8")
    try:
        return executor.submit(_read_and_trim, path)
    finally:
        executor.shutdown(wait=False)


def _read_and_trim(path: Path) -> ReadInt8:
    """:func:`read_int8_file`, then the thread's freed memory handed back to the system.

    glibc gives each thread its own malloc arena and keeps what is freed there (the
    file's temporary tensors: ~80 MiB of resident memory for the engine's lifetime
    otherwise); ``malloc_trim`` returns it. Elsewhere than glibc this is a no-op.
    """
    read = read_int8_file(path)
    try:
        ctypes.CDLL("libc.so.6").malloc_trim(0)
    except (OSError, AttributeError):
        pass
    return read


def load_int8_llm(llm: nn.Module, path: Path, read: Future[ReadInt8] | None = None) -> nn.Module:
    """Fill an LLM skeleton from an int8 cache file (in place), or from ``read``, that
    file already being read (:func:`read_int8_in_background`). An unusable file is
    removed (it is rebuilt on the next start)."""
    from safetensors import SafetensorError

    try:
        return _place(llm, read.result() if read is not None else read_int8_file(path))
    except (OSError, KeyError, ValueError, RuntimeError, AttributeError, SafetensorError) as exc:
        path.unlink(missing_ok=True)
        raise WeightError(f"the int8 model cache {path} was unusable ({exc}); it was removed, "
                          "run again") from None


def quantize_llm_int8(llm: nn.Module, keep_float: Sequence[str] = (),
                      cache: Path | None = None) -> nn.Module:
    """Quantise a float LLM in place (see the module docstring); with ``cache``, also
    write the int8 cache file there (a read-only cache only costs start-up time:
    the error is logged and the model still quantised)."""
    state = int8_state(llm, keep_float)
    if cache is not None:
        try:
            write_int8_state(state, cache)
        except OSError as exc:
            log.warning("cannot write the int8 cache %s: %s", cache, exc)
    return fill_int8_llm(llm, state)
