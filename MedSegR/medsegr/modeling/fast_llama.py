"""A lean forward pass for Llama-architecture LLMs, for inference.

Token-by-token decoding of a small LLM on CPU spends as much time in framework
overhead (mask building, cache bookkeeping, concatenating the KV cache at every
step) as in arithmetic. :class:`FastLlama` runs the same modules (the checkpoint's
own projections, norms and MLPs, float or int8) with:

- a preallocated :class:`StaticKVCache` (keys/values written in place, no
  concatenation; cropping a conversation back to a shared prefix is O(1));
- rotary embeddings from the model's own ``inv_freq`` and scaling;
- scaled-dot-product attention with grouped KV heads, no mask for single-token
  steps and an explicit causal mask only when several tokens follow a cached prefix;
- logits for the last position only;
- the layers' kernels called directly (``F.linear`` or the int8 kernel on the
  layer's own weights, ``F.rms_norm``, queries and keys rotated in one pass; int8
  q/k/v and gate/up projections each one shared kernel, see
  :mod:`medsegr.modeling.int8`): less than half the operators per layer, and no
  ``nn.Module`` dispatch (so forward hooks on the layers' projections do not run;
  those on the LM head do).

It reproduces ``LlamaForCausalLM``'s outputs (the tests compare both on the same
prompts); models it does not cover (other architectures, non-default rotary
types) use the Hugging Face forward.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass
from functools import partial
from typing import Any

import torch
import torch.nn.functional as F
from torch import nn

from medsegr.modeling.int8 import QLinear, SharedInt8Slice


def supports(llm: nn.Module) -> bool:
    """True when :class:`FastLlama` reproduces this model exactly."""
    cfg = getattr(llm, "config", None)
    if cfg is None or getattr(cfg, "model_type", None) != "llama":
        return False
    rope = getattr(cfg, "rope_parameters", None) or getattr(cfg, "rope_scaling", None) or {}
    if rope.get("rope_type", "default") != "default":
        return False
    base = getattr(llm, "model", None)
    layers, norm = getattr(base, "layers", None), getattr(base, "norm", None)
    if layers is None or norm is None:  # e.g. a wrapper (an unmerged adapter model)
        return False
    norms = [norm] + [getattr(layer, name, None) for layer in layers
                      for name in ("input_layernorm", "post_attention_layernorm")]
    if not all(hasattr(n, "variance_epsilon") and hasattr(n, "weight") for n in norms):
        return False
    return getattr(cfg, "hidden_act", "silu") == "silu" and getattr(cfg, "pretraining_tp", 1) == 1


@dataclass
class StaticKVCache:
    """Keys and values of all layers: ``(layers, kv_heads, capacity, head_dim)`` each."""

    keys: torch.Tensor
    values: torch.Tensor
    length: int = 0

    @classmethod
    def empty(cls, layers: int, kv_heads: int, head_dim: int, capacity: int,
              dtype: torch.dtype, device: torch.device) -> "StaticKVCache":
        shape = (layers, kv_heads, capacity, head_dim)
        return cls(torch.empty(shape, dtype=dtype, device=device),
                   torch.empty(shape, dtype=dtype, device=device))

    @property
    def capacity(self) -> int:
        return self.keys.shape[2]

    def get_seq_length(self) -> int:
        return self.length

    def crop(self, remove: int) -> None:
        """Drop the last ``-remove`` positions (the Hugging Face ``crop(-n)`` convention)."""
        if remove > 0:
            raise ValueError("crop takes a negative number of positions to remove")
        self.length = max(0, self.length + remove)

    def fork(self) -> "StaticKVCache":
        """A new cache holding a copy of this one's positions (a shared prompt prefix)."""
        other = StaticKVCache(torch.empty_like(self.keys), torch.empty_like(self.values))
        other.keys[:, :, : self.length] = self.keys[:, :, : self.length]
        other.values[:, :, : self.length] = self.values[:, :, : self.length]
        other.length = self.length
        return other

    def reserve(self, total: int) -> None:
        if total <= self.capacity:
            return
        new = max(total, 2 * self.capacity)
        for name in ("keys", "values"):
            old = getattr(self, name)
            grown = old.new_empty((old.shape[0], old.shape[1], new, old.shape[3]))
            grown[:, :, : self.length] = old[:, :, : self.length]
            setattr(self, name, grown)


Kernel = Callable[[torch.Tensor], torch.Tensor]


def _is_int8(linear: nn.Module) -> bool:
    """A dynamically quantised int8 linear whose ``forward`` is ``linear_dynamic(reduce_range=True)``."""
    return (isinstance(linear, QLinear) and linear._packed_params.dtype == torch.qint8
            and (getattr(linear, "version", None) or 0) >= 4)


def _direct(linear: nn.Module) -> Kernel:
    """The kernel behind a linear layer, called without ``nn.Module`` dispatch.

    Plain ``nn.Linear`` -> ``F.linear`` on its weights; a dynamically quantised int8
    linear -> ``quantized.linear_dynamic`` on its packed weights (what its own
    ``forward`` calls); anything else (e.g. an unmerged adapter) -> the module.
    """
    if type(linear) is nn.Linear:
        return partial(F.linear, weight=linear.weight, bias=linear.bias)
    if _is_int8(linear):
        return _int8_kernel(linear._packed_params._packed_params)
    return linear


def _int8_kernel(packed: Any) -> Kernel:
    def int8_linear(x: torch.Tensor) -> torch.Tensor:
        return torch.ops.quantized.linear_dynamic(x, packed, reduce_range=True)

    return int8_linear


def _fused(linears: list[nn.Module]) -> Kernel:
    """One kernel computing ``cat([l(x) for l in linears], -1)`` for linears reading one input.

    When they are consecutive slices of one shared int8 kernel
    (``medsegr.modeling.int8``: q/k/v, gate/up), that kernel is called
    once; otherwise each layer is called and the outputs concatenated.
    """
    if all(isinstance(linear, SharedInt8Slice) for linear in linears):
        shared = linears[0].shared
        starts = [0] + [linear.stop for linear in linears]  # consecutive, covering it
        if (_is_int8(shared) and all(linear.shared is shared for linear in linears)
                and [linear.start for linear in linears] == starts[:-1]
                and starts[-1] == shared.out_features):
            return _int8_kernel(shared._packed_params._packed_params)
    kernels = [_direct(linear) for linear in linears]

    def each(x: torch.Tensor) -> torch.Tensor:
        return torch.cat([kernel(x) for kernel in kernels], dim=-1)

    return each


def _rms_norm(norm: nn.Module) -> Kernel:
    """``LlamaRMSNorm`` as one call (``F.rms_norm``) for float32, its own forward otherwise."""
    weight, eps = norm.weight, float(norm.variance_epsilon)

    def apply(x: torch.Tensor) -> torch.Tensor:
        if x.dtype != torch.float32 or weight.dtype != torch.float32:
            return norm(x)
        return F.rms_norm(x, weight.shape, weight, eps)

    return apply


@dataclass
class _Layer:
    """One decoder layer's kernels (see :func:`_direct`)."""

    input_norm: Kernel
    qkv: Kernel  # queries, keys, values concatenated
    o: Kernel
    post_norm: Kernel
    gate_up: Kernel  # MLP gate and up projections concatenated
    down: Kernel

    @classmethod
    def of(cls, layer: nn.Module) -> "_Layer":
        attn, mlp = layer.self_attn, layer.mlp
        return cls(_rms_norm(layer.input_layernorm),
                   _fused([attn.q_proj, attn.k_proj, attn.v_proj]), _direct(attn.o_proj),
                   _rms_norm(layer.post_attention_layernorm),
                   _fused([mlp.gate_proj, mlp.up_proj]), _direct(mlp.down_proj))


class FastLlama:
    """Inference forward over a ``LlamaForCausalLM``'s modules (see the module docstring)."""

    def __init__(self, llm: nn.Module, capacity: int = 1024) -> None:
        if not supports(llm):
            raise ValueError("FastLlama covers Llama models with default rotary embeddings")
        cfg = llm.config
        base = llm.model
        self.layers = [_Layer.of(layer) for layer in base.layers]
        self.norm = _rms_norm(base.norm)
        self.lm_head = llm.lm_head  # a module call (once per step): its hooks run
        self.heads = int(cfg.num_attention_heads)
        self.kv_heads = int(cfg.num_key_value_heads)
        self.head_dim = int(getattr(cfg, "head_dim", None) or cfg.hidden_size // self.heads)
        self.inv_freq = base.rotary_emb.inv_freq.float()
        self.rope_scaling = float(base.rotary_emb.attention_scaling)
        self.capacity = capacity
        self._rope_table: dict[torch.dtype, tuple[torch.Tensor, torch.Tensor]] = {}

    def new_cache(self, dtype: torch.dtype, device: torch.device) -> StaticKVCache:
        return StaticKVCache.empty(len(self.layers), self.kv_heads, self.head_dim, self.capacity,
                                   dtype, device)

    def _rope(self, start: int, count: int, dtype: torch.dtype) -> tuple[torch.Tensor, torch.Tensor]:
        """cos and sin ``(count, head_dim)`` of positions ``start ..``, from a table grown on demand."""
        table = self._rope_table.get(dtype)
        if table is None or table[0].shape[0] < start + count:
            size = max(start + count, self.capacity, 2 * (table[0].shape[0] if table else 0))
            pos = torch.arange(size, dtype=torch.float32, device=self.inv_freq.device)
            freqs = pos[:, None] * self.inv_freq[None, :]
            emb = torch.cat((freqs, freqs), dim=-1)
            table = ((emb.cos() * self.rope_scaling).to(dtype), (emb.sin() * self.rope_scaling).to(dtype))
            self._rope_table[dtype] = table
        return table[0][start:start + count], table[1][start:start + count]

    @torch.no_grad()
    def forward(self, embeds: torch.Tensor, cache: StaticKVCache) -> tuple[torch.Tensor, torch.Tensor]:
        """Run ``embeds`` ``(1, T, H)`` after the cached positions.

        Returns the last position's final-norm hidden state ``(H,)`` and logits
        ``(vocab,)``; the cache grows by T.
        """
        steps = embeds.shape[1]
        start = cache.length
        cache.reserve(start + steps)
        end = start + steps
        cos, sin = self._rope(start, steps, embeds.dtype)
        cos, sin = cos[:, None], sin[:, None]  # (T, 1, head_dim): broadcast over heads
        heads, kv_heads, head_dim = self.heads, self.kv_heads, self.head_dim
        half = head_dim // 2
        mask = None
        causal = steps > 1 and start == 0  # a fresh prompt: the fused causal kernel
        if steps > 1 and start > 0:  # tokens after a cached prefix: explicit mask
            q_pos = torch.arange(start, end, device=embeds.device)[:, None]
            mask = torch.arange(end, device=embeds.device)[None, :] <= q_pos
        x = embeds
        for i, layer in enumerate(self.layers):
            qkv = layer.qkv(layer.input_norm(x)).view(1, steps, heads + 2 * kv_heads, head_dim)
            # queries and keys rotated together: (1, T, heads + kv_heads, head_dim)
            qk = qkv[:, :, :heads + kv_heads]
            rotated = torch.cat((-qk[..., half:], qk[..., :half]), dim=-1)
            qk = qk * cos + rotated * sin
            q = qk[:, :, :heads].transpose(1, 2)
            cache.keys[i, :, start:end] = qk[0, :, heads:].transpose(0, 1)
            cache.values[i, :, start:end] = qkv[0, :, heads + kv_heads:].transpose(0, 1)
            out = F.scaled_dot_product_attention(
                q, cache.keys[i, None, :, :end], cache.values[i, None, :, :end], attn_mask=mask,
                is_causal=causal, enable_gqa=kv_heads != heads)
            x = x + layer.o(out.transpose(1, 2).reshape(1, steps, heads * head_dim))
            gate, up = layer.gate_up(layer.post_norm(x)).chunk(2, dim=-1)
            x = x + layer.down(F.silu(gate) * up)
        cache.length = end
        last = self.norm(x[:, -1])
        return last[0], self.lm_head(last)[0]
