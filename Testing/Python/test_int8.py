"""CPU int8 of the LLM on the tiny model: which layers are quantised, that it equals
``torch.ao.quantization.quantize_dynamic`` bit for bit, and that the cached int8 model
loads back into a skeleton computing exactly the same logits."""

from __future__ import annotations

import copy

import pytest
import torch
from torch import nn

from medsegr.modeling.int8 import (
    QLinear,
    SharedInt8Slice,
    int8_cache_key,
    load_int8_llm,
    quantize_llm_int8,
)


@pytest.fixture
def llm(tiny_model):
    return copy.deepcopy(tiny_model.llm).eval()


def _linear_kinds(model: nn.Module) -> dict[str, str]:
    return {name: "int8" if isinstance(m, QLinear | SharedInt8Slice) else "float"
            for name, m in model.named_modules() if isinstance(m, nn.Linear | QLinear | SharedInt8Slice)}


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
    path = tmp_path / "int8" / "llm.safetensors"
    quantized = quantize_llm_int8(llm, keep_float=keep, cache=path)
    expected = quantized(input_ids=ids).logits
    assert path.is_file() and not list(path.parent.glob(".*"))  # no temporary file left
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


@torch.no_grad()
def test_shared_kernels_equal_the_separate_projections(llm):
    """q/k/v and gate/up share one per-channel int8 kernel per layer; each projection
    (a slice of it), and the whole model, give exactly what ``quantize_dynamic`` gives."""
    separate = torch.ao.quantization.quantize_dynamic(copy.deepcopy(llm), {nn.Linear}, dtype=torch.qint8)
    shared = quantize_llm_int8(llm)
    layers = len(shared.model.layers)
    x = torch.randn(2, 3, shared.config.hidden_size)
    for i in range(layers):
        attn, mlp = shared.model.layers[i].self_attn, shared.model.layers[i].mlp
        assert isinstance(attn.q_proj, SharedInt8Slice) and attn.q_proj.shared is attn.qkv_proj
        assert mlp.up_proj.shared is mlp.gate_up_proj
        for name in ("q_proj", "k_proj", "v_proj"):
            ref = getattr(separate.model.layers[i].self_attn, name)(x)
            assert torch.equal(getattr(attn, name)(x), ref)
        for name in ("gate_proj", "up_proj"):
            assert torch.equal(getattr(mlp, name)(x), getattr(separate.model.layers[i].mlp, name)(x))
    ids = torch.tensor([[1, 5, 9, 3, 7]])
    assert torch.equal(shared(input_ids=ids).logits, separate(input_ids=ids).logits)


def test_a_read_only_cache_still_quantises(llm, tmp_path, caplog):
    blocker = tmp_path / "file"
    blocker.write_text("not a folder", encoding="utf-8")
    quantized = quantize_llm_int8(llm, cache=blocker / "int8" / "llm.safetensors")
    assert set(_linear_kinds(quantized).values()) == {"int8"}
    assert "cannot write the int8 cache" in caplog.text


def test_quantising_frees_each_float_weight(llm):
    """The float linear weights are dropped as they are quantised (the first start's
    peak memory): no float Linear remains, and no float weight is left behind."""
    from medsegr.modeling.int8 import int8_state

    weights = {id(m.weight) for m in llm.modules() if type(m) is nn.Linear}
    state = int8_state(llm)
    assert not [m for m in llm.modules() if type(m) is nn.Linear]
    left = {id(p) for p in llm.parameters()}
    assert not (weights & left) - {id(llm.get_input_embeddings().weight)}  # a tied head
    assert state.slices and all(name.endswith(("q_proj", "k_proj", "v_proj", "gate_proj", "up_proj"))
                                for name in state.slices)


@torch.no_grad()
def test_reading_the_cache_in_the_background(llm, tiny_model, tmp_path):
    """The start-up path: the file is read and its kernels packed in a thread while the
    skeleton is built; a damaged file is removed with a clear error."""
    from medsegr.errors import WeightError
    from medsegr.modeling.int8 import read_int8_in_background

    path = tmp_path / "llm.safetensors"
    expected = quantize_llm_int8(llm, cache=path)(input_ids=torch.tensor([[4, 2, 8]])).logits
    read = read_int8_in_background(path)
    loaded = load_int8_llm(copy.deepcopy(tiny_model.llm).eval(), path, read=read)
    assert torch.equal(loaded(input_ids=torch.tensor([[4, 2, 8]])).logits, expected)

    path.write_bytes(path.read_bytes()[:1000])  # truncated
    with pytest.raises(WeightError, match="int8 model cache .* was unusable"):
        load_int8_llm(copy.deepcopy(tiny_model.llm).eval(), path, read=read_int8_in_background(path))
    assert not path.exists()
