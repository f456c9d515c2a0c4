"""CPU int8 of the LLM on the tiny model: which layers are quantised, and that the cached
int8 model loads back into a skeleton computing exactly the same logits."""

from __future__ import annotations

import copy

import pytest
import torch
from torch import nn

from medsegr.modeling.inference_opt import (
    _QLinear,
    int8_cache_key,
    load_int8_llm,
    quantize_llm_int8,
    save_int8_llm,
)


@pytest.fixture
def llm(tiny_model):
    return copy.deepcopy(tiny_model.llm).eval()


def _linear_kinds(model: nn.Module) -> dict[str, str]:
    return {name: "int8" if isinstance(m, _QLinear) else "float"
            for name, m in model.named_modules() if isinstance(m, (nn.Linear, _QLinear))}


def test_down_projections_stay_float(llm):
    kinds = _linear_kinds(quantize_llm_int8(llm, keep_float=["down_proj"]))
    assert kinds and all(kind == ("float" if name.endswith("down_proj") else "int8")
                         for name, kind in kinds.items()), kinds
    assert any(name.endswith("down_proj") for name in kinds)
    assert kinds["lm_head"] == "int8"


def test_nothing_kept_float_quantises_every_linear(llm):
    assert set(_linear_kinds(quantize_llm_int8(llm)).values()) == {"int8"}


@torch.no_grad()
@pytest.mark.parametrize("keep", [[], ["down_proj"], ["down_proj", "lm_head"]])
def test_the_int8_cache_round_trips_into_a_skeleton(llm, tiny_model, tmp_path, keep):
    """A float output head tied to the embeddings is stored once and tied again."""
    ids = torch.tensor([[1, 5, 9, 3, 7]])
    quantized = quantize_llm_int8(llm, keep_float=keep)
    expected = quantized(input_ids=ids).logits
    path = tmp_path / "int8" / "llm.safetensors"
    save_int8_llm(quantized, path)
    fresh = copy.deepcopy(tiny_model.llm).eval()
    for param in fresh.parameters():
        param.data.zero_()  # the cache, not the copied weights, must fill it
    loaded = load_int8_llm(fresh, path)
    assert _linear_kinds(loaded) == _linear_kinds(quantized)
    if "lm_head" in keep and tiny_model.llm.config.tie_word_embeddings:
        assert loaded.lm_head.weight is loaded.get_input_embeddings().weight
    torch.testing.assert_close(loaded(input_ids=ids).logits, expected, rtol=0, atol=0)


def test_the_cache_key_names_the_float_layers():
    a = int8_cache_key({"sha256": "x"}, None, ["[SEG]"], ["down_proj"])
    b = int8_cache_key({"sha256": "x"}, None, ["[SEG]"], [])
    assert a != b and a["keep_float"] == ["down_proj"]
