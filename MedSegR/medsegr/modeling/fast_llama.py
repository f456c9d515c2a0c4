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
- logits for the last position only.

It reproduces ``LlamaForCausalLM``'s outputs (the tests compare both on the same
prompts); models it does not cover (other architectures, non-default rotary
types) use the Hugging Face forward.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch
import torch.nn.functional as F
from torch import nn


def supports(llm: nn.Module) -> bool:
    """True when :class:`FastLlama` reproduces this model exactly."""
    cfg = getattr(llm, "config", None)
    if cfg is None or getattr(cfg, "model_type", None) != "llama":
        return False
    rope = getattr(cfg, "rope_parameters", None) or getattr(cfg, "rope_scaling", None) or {}
    if rope.get("rope_type", "default") != "default":
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


class FastLlama:
    """Inference forward over a ``LlamaForCausalLM``'s modules (see the module docstring)."""

    def __init__(self, llm: nn.Module, capacity: int = 1024) -> None:
        if not supports(llm):
            raise ValueError("FastLlama covers Llama models with default rotary embeddings")
        cfg = llm.config
        base = llm.model
        self.layers = list(base.layers)
        self.norm = base.norm
        self.lm_head = llm.lm_head
        self.heads = int(cfg.num_attention_heads)
        self.kv_heads = int(cfg.num_key_value_heads)
        self.head_dim = int(getattr(cfg, "head_dim", None) or cfg.hidden_size // self.heads)
        self.inv_freq = base.rotary_emb.inv_freq.float()
        self.rope_scaling = float(base.rotary_emb.attention_scaling)
        self.capacity = capacity

    def new_cache(self, dtype: torch.dtype, device: torch.device) -> StaticKVCache:
        return StaticKVCache.empty(len(self.layers), self.kv_heads, self.head_dim, self.capacity,
                                   dtype, device)

    def _rope(self, start: int, count: int, dtype: torch.dtype) -> tuple[torch.Tensor, torch.Tensor]:
        pos = torch.arange(start, start + count, dtype=torch.float32, device=self.inv_freq.device)
        freqs = pos[:, None] * self.inv_freq[None, :]
        emb = torch.cat((freqs, freqs), dim=-1)
        return (emb.cos() * self.rope_scaling).to(dtype), (emb.sin() * self.rope_scaling).to(dtype)

    @staticmethod
    def _rotate(x: torch.Tensor, cos: torch.Tensor, sin: torch.Tensor) -> torch.Tensor:
        half = x.shape[-1] // 2
        rotated = torch.cat((-x[..., half:], x[..., :half]), dim=-1)
        return x * cos + rotated * sin

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
        mask = None
        causal = steps > 1 and start == 0  # a fresh prompt: the fused causal kernel
        if steps > 1 and start > 0:  # tokens after a cached prefix: explicit mask
            q_pos = torch.arange(start, end, device=embeds.device)[:, None]
            mask = torch.arange(end, device=embeds.device)[None, :] <= q_pos
        x = embeds
        for i, layer in enumerate(self.layers):
            attn = layer.self_attn
            h = layer.input_layernorm(x)
            q = attn.q_proj(h).view(1, steps, self.heads, self.head_dim).transpose(1, 2)
            k = attn.k_proj(h).view(1, steps, self.kv_heads, self.head_dim).transpose(1, 2)
            v = attn.v_proj(h).view(1, steps, self.kv_heads, self.head_dim).transpose(1, 2)
            q = self._rotate(q, cos, sin)
            k = self._rotate(k, cos, sin)
            cache.keys[i, :, start:end] = k[0]
            cache.values[i, :, start:end] = v[0]
            out = F.scaled_dot_product_attention(
                q, cache.keys[i, None, :, :end], cache.values[i, None, :, :end], attn_mask=mask,
                is_causal=causal, enable_gqa=self.kv_heads != self.heads)
            x = x + attn.o_proj(out.transpose(1, 2).reshape(1, steps, self.heads * self.head_dim))
            x = x + layer.mlp(layer.post_attention_layernorm(x))
        cache.length = end
        last = self.norm(x[:, -1])
        return last[0], self.lm_head(last)[0]
