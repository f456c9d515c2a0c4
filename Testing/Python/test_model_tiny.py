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


def _channels(model, batch: int = 1, seed: int = 0) -> torch.Tensor:
    """Grounding-module input for ``batch`` random slices (CT first, then MR)."""
    from medsegr.imaging.channels import input_channels

    size = model.grounding.config.size
    g = torch.Generator().manual_seed(seed)
    raw = torch.rand(batch, model.grounding.config.slices, size, size, generator=g)
    return input_channels(raw * 2000 - 1000, torch.arange(batch) == 0)


def test_shapes(tiny_model, bank):
    emb, visual = bank
    hidden = tiny_model.llm.config.hidden_size
    assert emb.shape == (1, 256, 64, 64)
    assert visual["img0"].shape == (tiny_model.num_visual_tokens, hidden)
    size = tiny_model.grounding.config.size
    # three [SEG] states on two images: one on the first, two on the second
    out = tiny_model.ground(_channels(tiny_model, 2), emb.expand(2, -1, -1, -1),
                            torch.randn(3, hidden), owner=torch.tensor([0, 1, 1]))
    assert out.logits.shape == (3, size, size) and out.presence.shape == (3,)
    assert torch.isfinite(out.logits).all() and torch.isfinite(out.presence).all()
    alone = tiny_model.ground(_channels(tiny_model, 1), emb, None, count=2)  # hints alone
    assert alone.logits.shape == (2, size, size) and alone.presence.shape == (2,)


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
    # the teacher-forced pass hands the same states to the grounding stage
    assert out.seg_states[0].shape == (3, tiny_model.llm.config.hidden_size)
    torch.testing.assert_close(out.seg_states[0], gen.seg_states, rtol=1e-4, atol=1e-4)


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
    out = model(ids, emb, labels=labels)
    assert out.loss is not None and torch.isfinite(out.loss)
    assert out.ce_loss is not None and torch.equal(out.loss, out.ce_loss)
    assert out.logits.shape[0] == len(answer)  # the LM head ran on the answer positions only
    assert out.seg_states[0].shape == (2, model.llm.config.hidden_size)  # the answer's two [SEG]
    out.loss.backward()
    lora = [p for n, p in model.llm.named_parameters() if "lora_" in n]
    assert lora and any(p.grad is not None and p.grad.abs().sum() > 0 for p in lora)
    assert model.visual_projector.mlp[0].weight.grad.abs().sum() > 0
    # the text stage does not train the grounding module (the grounding stage does)
    assert all(p.grad is None for p in model.grounding.parameters())


def test_save_load_round_trip(tmp_path, bank):
    from medsegr.modeling.checkpoint import from_pretrained, save_pretrained
    from medsegr.config import MedSegRConfig
    from medsegr.modeling.builder import build_model

    model = build_model(MedSegRConfig.tiny(), device="cpu", with_lora=True)
    torch.manual_seed(3)
    with torch.no_grad():  # pretend training changed every trainable piece
        for name, p in model.named_parameters():
            if "lora_" in name or "trainable_tokens_delta" in name or name.startswith(
                    ("visual_projector", "grounding.")):
                p.add_(torch.randn_like(p) * 0.05)
        for name, b in model.grounding.named_buffers():  # batch-norm statistics
            if name.endswith(("running_mean", "running_var")):
                b.mul_(1.5).add_(0.1)
        model.llm.get_input_embeddings().weight[model.seg_token_id] += 0.5
    model.eval()
    emb, _ = bank
    keys = _prompt_keys(model)
    channels = _channels(model, 1, seed=4)

    def run(m):
        visual = {"img0": m.visual_tokens(emb)[0]}
        hook = m.llm.get_output_embeddings().register_forward_hook(_ForceSeg(m, {1}))
        try:
            gen = generate(m, keys, visual, 4, None)
        finally:
            hook.remove()
        out = m.ground(channels, emb, gen.seg_states)
        return gen, torch.cat([out.logits.flatten(), out.presence])

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
    torch.testing.assert_close(masks_a, masks_c, rtol=1e-3, atol=1e-3)
    torch.testing.assert_close(resumed.llm.get_input_embeddings()(seg), trained_row)
    assert gen_a.token_ids == gen_c.token_ids
    torch.testing.assert_close(gen_a.seg_states, gen_c.seg_states, rtol=1e-4, atol=1e-4)
    trainable = {n for n, p in resumed.llm.named_parameters() if p.requires_grad}
    assert any("lora_" in n for n in trainable) and any("trainable_tokens" in n for n in trainable)


def test_a_checkpoint_from_before_the_grounding_module_only_starts_training(tmp_path, tiny_model):
    """A checkpoint of the SAM-decoder mask path (its config keys and head tensors) cannot
    answer: loading it for inference is refused with what to do; for training it loads,
    its visual projector kept and its old mask tensors dropped."""
    from safetensors.torch import load_file, save_file

    from medsegr.errors import CheckpointError
    from medsegr.modeling.checkpoint import from_pretrained, is_legacy, save_pretrained

    path = save_pretrained(tiny_model, tmp_path / "ckpt")
    meta = json.loads((path / "medsegr_config.json").read_text(encoding="utf-8"))
    assert not is_legacy(meta)
    del meta["config"]["grounding"]
    meta["config"]["model"].update(seg_projector_hidden=0, box_refine=True, pixel_refiner=16)
    (path / "medsegr_config.json").write_text(json.dumps(meta), encoding="utf-8")
    heads = {k: v for k, v in load_file(str(path / "heads.safetensors")).items()
             if not k.startswith("grounding.")}
    heads["seg_projector.mlp.0.weight"] = torch.zeros(4, 4)
    heads["vision.mask_decoder.iou_token.weight"] = torch.zeros(1, 4)
    heads["visual_projector.mlp.0.bias"] = heads["visual_projector.mlp.0.bias"] + 1.0
    save_file(heads, str(path / "heads.safetensors"))
    assert is_legacy(meta)
    with pytest.raises(CheckpointError, match="before the pixel-level grounding module"):
        from_pretrained(path, device="cpu")
    start = from_pretrained(path, device="cpu", trainable=True)
    torch.testing.assert_close(start.visual_projector.mlp[0].bias.detach(),
                               heads["visual_projector.mlp.0.bias"])
    assert not hasattr(start, "seg_projector")
    assert start.grounding.config == tiny_model.grounding.config


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
