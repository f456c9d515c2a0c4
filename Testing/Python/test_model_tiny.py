"""The model classes on a tiny random configuration: shapes, [SEG] offset, KV cache,
save/load round trip."""

from __future__ import annotations

import json

import pytest
import torch

from helpers import ForceSeg as _ForceSeg

from medsegr.modeling.generation import ConversationState, generate


def _prompt_keys(model, text="<|im_start|>user\nwhere is the liver?<|im_end|>\n"
                 "<|im_start|>assistant\n", image_id="img0"):
    ids = model.tokenizer.encode(text, add_special_tokens=False)
    return [("img", image_id, i) for i in range(model.num_visual_tokens)] + ids


@pytest.fixture
def bank(tiny_model):
    torch.manual_seed(1)
    emb = tiny_model.encode_images(torch.rand(1, 1, 256, 256))
    return emb, {"img0": tiny_model.visual_tokens(emb)[0]}


def test_shapes(tiny_model, bank):
    emb, visual = bank
    assert emb.shape == (1, 256, 64, 64)
    assert visual["img0"].shape == (tiny_model.num_visual_tokens, tiny_model.llm.config.hidden_size)
    prompts = tiny_model.seg_prompts(torch.randn(3, tiny_model.llm.config.hidden_size))
    assert prompts.shape == (3, 256)
    logits = tiny_model.decode_masks(emb, prompts)
    assert logits.shape == (3, 256, 256)
    box = torch.tensor([[10.0, 20.0, 100.0, 120.0]])
    assert tiny_model.decode_masks(emb, prompts, boxes=box).shape == (3, 256, 256)


def test_seg_token_is_one_id(tiny_model):
    ids = tiny_model.tokenizer.encode("the <p>left kidney</p> [SEG].", add_special_tokens=False)
    assert ids.count(tiny_model.seg_token_id) == 1
    assert tiny_model.tokenizer.encode("[SEG]", add_special_tokens=False) == [tiny_model.seg_token_id]


def test_kv_cache_generation_equals_no_cache(tiny_model, bank):
    _, visual = bank
    keys = _prompt_keys(tiny_model)
    handle = tiny_model.llm.get_output_embeddings().register_forward_hook(
        _ForceSeg(tiny_model, {3, 7}))
    try:
        cached = generate(tiny_model, keys, visual, 10, ConversationState(), use_cache=True)
    finally:
        handle.remove()
    handle = tiny_model.llm.get_output_embeddings().register_forward_hook(
        _ForceSeg(tiny_model, {3, 7}))
    try:
        plain = generate(tiny_model, keys, visual, 10, None, use_cache=False)
    finally:
        handle.remove()
    assert cached.token_ids == plain.token_ids
    assert cached.token_ids.count(tiny_model.seg_token_id) == 2
    torch.testing.assert_close(cached.seg_states, plain.seg_states, rtol=1e-4, atol=1e-4)


def test_seg_state_is_the_state_that_predicts_seg(tiny_model, bank):
    """Generation keeps hidden[t] where token t+1 is [SEG]; teacher forcing over the
    generated sequence must find the same states at the same offsets."""
    emb, visual = bank
    keys = _prompt_keys(tiny_model)
    hook = tiny_model.llm.get_output_embeddings().register_forward_hook(
        _ForceSeg(tiny_model, {2, 5, 6}))
    try:
        gen = generate(tiny_model, keys, visual, 8, None, use_cache=True)
    finally:
        hook.remove()
    assert gen.token_ids.count(tiny_model.seg_token_id) == 3  # several [SEG] in one answer
    image_ids = [tiny_model.image_token_id] * tiny_model.num_visual_tokens
    full = torch.tensor([image_ids + [k for k in keys if isinstance(k, int)] + gen.token_ids])
    positions = tiny_model.seg_state_positions(full, tiny_model.seg_token_id)[0]
    assert len(positions) == 3
    assert all(int(full[0, p + 1]) == tiny_model.seg_token_id for p in positions)
    with torch.no_grad():
        out = tiny_model(full, emb)
        embeds = tiny_model.embed_batch(full, tiny_model.visual_tokens(emb))
        hidden = tiny_model.llm(inputs_embeds=embeds, output_hidden_states=True).hidden_states[-1][0]
    torch.testing.assert_close(hidden[positions], gen.seg_states, rtol=1e-4, atol=1e-4)
    assert out.mask_logits[0].shape == (3, 256, 256)  # one mask per [SEG]


def test_training_loss_and_gradients(tiny_model, bank):
    from medsegr.modeling.builder import build_model
    from medsegr.config import MedSegRConfig

    model = build_model(MedSegRConfig.tiny(), device="cpu", with_lora=True)
    model.train()
    emb, _ = bank
    tok = model.tokenizer
    text = "<p>liver</p> [SEG] and <p>lesion</p> [SEG]"
    prompt = [model.image_token_id] * model.num_visual_tokens + tok.encode("where?", add_special_tokens=False)
    answer = tok.encode(text, add_special_tokens=False)
    ids = torch.tensor([prompt + answer])
    labels = torch.tensor([[-100] * len(prompt) + answer])
    gt = [torch.zeros(2, 256, 256)]
    gt[0][0, 50:100, 60:120] = 1
    gt[0][1, 70:80, 80:90] = 1
    out = model(ids, emb, labels=labels, gt_masks=gt)
    assert out.loss is not None and torch.isfinite(out.loss)
    assert out.ce_loss is not None and out.bce_loss is not None and out.dice_loss is not None
    out.loss.backward()
    lora = [p for n, p in model.llm.named_parameters() if "lora_" in n]
    assert lora and any(p.grad is not None and p.grad.abs().sum() > 0 for p in lora)
    assert model.seg_projector.mlp[0].weight.grad.abs().sum() > 0
    assert model.vision.mask_decoder.output_upscaling[0].weight.grad is not None
    with pytest.raises(ValueError):
        model(ids, emb, labels=labels, gt_masks=[torch.zeros(1, 256, 256)])


def test_save_load_round_trip(tmp_path, bank):
    from medsegr.modeling.checkpoint import from_pretrained, save_pretrained
    from medsegr.config import MedSegRConfig
    from medsegr.modeling.builder import build_model

    model = build_model(MedSegRConfig.tiny(), device="cpu", with_lora=True)
    torch.manual_seed(3)
    with torch.no_grad():  # pretend training changed every trainable piece
        for name, p in model.named_parameters():
            if "lora_" in name or "trainable_tokens_delta" in name or name.startswith(
                    ("visual_projector", "seg_projector", "vision.mask_decoder")):
                p.add_(torch.randn_like(p) * 0.05)
        model.llm.get_input_embeddings().weight[model.seg_token_id] += 0.5
    model.eval()
    emb, _ = bank
    keys = _prompt_keys(model)

    def run(m):
        visual = {"img0": m.visual_tokens(emb)[0]}
        hook = m.llm.get_output_embeddings().register_forward_hook(_ForceSeg(m, {1}))
        try:
            gen = generate(m, keys, visual, 4, None)
        finally:
            hook.remove()
        return gen, m.decode_masks(emb, m.seg_prompts(gen.seg_states))

    gen_a, masks_a = run(model)
    path = save_pretrained(model, tmp_path / "ckpt")
    assert sorted(p.name for p in path.iterdir()) == ["adapter", "heads.safetensors",
                                                      "medsegr_config.json"]
    from safetensors import safe_open

    with safe_open(str(path / "adapter" / "adapter_model.safetensors"), "pt") as f:
        stored = list(f.keys())
    assert stored and all("lora_" in k or "trainable_tokens_delta" in k for k in stored), stored
    # the adapter names its base model, not the folder it was loaded from, and has a real card
    adapter_config = json.loads((path / "adapter" / "adapter_config.json").read_text())
    assert adapter_config["base_model_name_or_path"] == model.provenance["llm"]["name"]
    card = (path / "adapter" / "README.md").read_text()
    assert card.startswith("---\n") and "# MedSegR LoRA adapter" in card
    assert "LoRA rank 8" in card and "More Information Needed" not in card
    loaded = from_pretrained(path, device="cpu")
    assert loaded.fine_tuned
    gen_b, masks_b = run(loaded)
    assert gen_a.token_ids == gen_b.token_ids
    seg = torch.tensor([model.seg_token_id])
    trained_row = model.llm.get_input_embeddings()(seg)  # base row + trainable-token delta
    torch.testing.assert_close(loaded.llm.get_input_embeddings()(seg), trained_row)
    torch.testing.assert_close(loaded.llm.get_output_embeddings().weight[seg], trained_row)
    torch.testing.assert_close(gen_a.seg_states, gen_b.seg_states, rtol=1e-4, atol=1e-4)
    torch.testing.assert_close(masks_a, masks_b, rtol=1e-3, atol=1e-3)
    # reloaded for more training (adapter not merged): the same model again
    resumed = from_pretrained(path, device="cpu", trainable=True)
    resumed.eval()
    gen_c, masks_c = run(resumed)
    torch.testing.assert_close(resumed.llm.get_input_embeddings()(seg), trained_row)
    assert gen_a.token_ids == gen_c.token_ids
    torch.testing.assert_close(gen_a.seg_states, gen_c.seg_states, rtol=1e-4, atol=1e-4)
    trainable = {n for n, p in resumed.llm.named_parameters() if p.requires_grad}
    assert any("lora_" in n for n in trainable) and any("trainable_tokens" in n for n in trainable)


def test_checkpoint_of_another_base_is_refused(tmp_path, tiny_model):
    import json

    from medsegr.modeling.checkpoint import from_pretrained, save_pretrained
    from medsegr.errors import CheckpointError

    path = save_pretrained(tiny_model, tmp_path / "ckpt")
    meta = json.loads((path / "medsegr_config.json").read_text(encoding="utf-8"))
    meta["base"]["vision"] = {"name": "litemedsam", "sha256": "0" * 64}
    (path / "medsegr_config.json").write_text(json.dumps(meta), encoding="utf-8")
    with pytest.raises(CheckpointError, match="another base vision"):
        from_pretrained(path, device="cpu")
    with pytest.raises(CheckpointError, match="not a MedSegR checkpoint"):
        from_pretrained(tmp_path, device="cpu")


def test_fast_llama_matches_the_hugging_face_forward(tiny_model, bank):
    """The lean static-cache decoder gives the same tokens and [SEG] states as the
    Hugging Face forward, across a follow-up turn that crops the cache."""
    from medsegr.modeling.fast_llama import FastLlama, StaticKVCache, supports

    _, visual = bank
    assert supports(tiny_model.llm)
    keys = _prompt_keys(tiny_model)
    follow = keys + tiny_model.tokenizer.encode(
        "The liver.<|im_end|>\n<|im_start|>user\nand the lesion?<|im_end|>\n<|im_start|>assistant\n",
        add_special_tokens=False)
    runs = {}
    for fast in (False, True):
        tiny_model.use_fast_llm(FastLlama(tiny_model.llm, capacity=16) if fast else None)
        try:
            state = ConversationState()
            handle = tiny_model.llm.get_output_embeddings().register_forward_hook(
                _ForceSeg(tiny_model, {2, 5}))
            try:
                first = generate(tiny_model, keys, visual, 9, state)
                second = generate(tiny_model, follow, visual, 6, state)
            finally:
                handle.remove()
        finally:
            tiny_model.use_fast_llm(None)
        runs[fast] = (first, second, state)
    (a1, a2, _), (b1, b2, fast_state) = runs[False], runs[True]
    assert isinstance(fast_state.cache, StaticKVCache) and fast_state.cache.capacity > 16  # grew
    assert a1.token_ids == b1.token_ids and a2.token_ids == b2.token_ids
    assert b2.reused_tokens == a2.reused_tokens > len(keys) - 2
    torch.testing.assert_close(a1.seg_states, b1.seg_states, rtol=1e-4, atol=1e-4)
    torch.testing.assert_close(a2.seg_states, b2.seg_states, rtol=1e-4, atol=1e-4)


def test_fast_llama_declines_an_unmerged_adapter_model(tiny_model):
    """A peft-wrapped LLM is not a plain Llama: the lean decoder says no (the Hugging
    Face forward is used) instead of failing while it is built."""
    import copy

    from medsegr.config import LoraConfig
    from medsegr.modeling.fast_llama import supports
    from medsegr.modeling.language import apply_lora

    wrapped = apply_lora(copy.deepcopy(tiny_model.llm), LoraConfig())
    assert supports(tiny_model.llm) and not supports(wrapped)
