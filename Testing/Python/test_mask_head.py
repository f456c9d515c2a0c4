"""The precise mask head: boxes of masks, the box re-prompt pass, the pixel refiner, the
decoder stage of training (with resume) and the CPU precision choice."""

from __future__ import annotations

import json
import shutil

import pytest
import torch

from helpers import make_dataset


def test_mask_boxes_are_tight_pixel_edges_and_empty_masks_are_flagged():
    from medsegr.modeling.mask_head import mask_boxes

    masks = torch.zeros(2, 32, 32, dtype=torch.bool)
    masks[0, 5:9, 10:20] = True  # rows 5..8, cols 10..19
    boxes, present = mask_boxes(masks)
    assert present.tolist() == [True, False]
    assert boxes[0].tolist() == [10.0, 5.0, 20.0, 9.0]
    assert boxes[1].tolist() == [0.0, 0.0, 0.0, 0.0]


def test_jittered_boxes_stay_in_the_image_and_near_the_box():
    from medsegr.modeling.mask_head import jitter_boxes

    boxes = torch.tensor([[0.0, 0.0, 10.0, 10.0], [100.0, 100.0, 200.0, 150.0]])
    out = jitter_boxes(boxes, 256, torch.Generator().manual_seed(0), fraction=0.1)
    assert (out >= 0).all() and (out <= 256).all()
    assert (out - boxes).abs()[1].max() <= 10.0 + 1e-4  # 10 % of the 100-pixel side
    assert not torch.equal(out, boxes)


def test_an_untrained_pixel_refiner_changes_nothing_and_learns_from_pixels():
    from medsegr.modeling.mask_head import PixelRefiner

    torch.manual_seed(0)
    refiner = PixelRefiner(8)
    logits = torch.randn(2, 32, 32)
    pixels = torch.rand(2, 32, 32)
    assert torch.equal(refiner(logits, pixels), logits)
    # a few steps teach it "bright pixels are foreground" from the pixels alone
    opt = torch.optim.Adam(refiner.parameters(), lr=1e-2)
    flat = torch.zeros(2, 32, 32)
    target = (pixels > 0.5).float()
    first = None
    for _ in range(60):
        loss = torch.nn.functional.binary_cross_entropy_with_logits(refiner(flat, pixels), target)
        first = first if first is not None else float(loss)
        opt.zero_grad()
        loss.backward()
        opt.step()
    assert float(loss) < 0.5 * first


def test_box_refine_runs_a_second_pass_only_for_non_empty_first_masks(tiny_model):
    model = tiny_model
    old = model.config.model.box_refine
    model.config.model.box_refine = True
    try:
        emb = torch.randn(1, model.vision.embed_dim, 64, 64)
        prompts = torch.randn(3, model.vision.embed_dim)
        with torch.no_grad():
            passes = model.mask_passes(emb, prompts)
            first = passes[0]
            # a user box turns the re-prompt off (the user's box is the prompt)
            boxed = model.mask_passes(emb, prompts, boxes=torch.tensor([[10.0, 10.0, 90.0, 90.0]]))
        assert len(boxed) == 1
        empty = ~(first > 0).flatten(1).any(1)
        if len(passes) == 2:
            assert torch.equal(passes[1][empty], first[empty])
        else:  # every first mask was empty: nothing to re-prompt
            assert bool(empty.all())
    finally:
        model.config.model.box_refine = old


def test_cpu_llm_precision_prefers_native_bf16_then_int8(monkeypatch):
    import medsegr.modeling.device as device

    monkeypatch.setattr(device, "cpu_has_native_bf16", lambda: True)
    assert device.cpu_llm_precision(True, True) == "bfloat16"
    assert device.cpu_llm_precision(False, True) == "int8"
    monkeypatch.setattr(device, "cpu_has_native_bf16", lambda: False)
    assert device.cpu_llm_precision(True, True) == "int8"
    assert device.cpu_llm_precision(True, False) == "float32"


def _config(tmp_path, data, **stage):
    from medsegr.training.config import TrainConfig

    return TrainConfig.from_dict({
        "data": {"root": str(data), "max_tokens": 400},
        "engine": {"tiny": True, "box_refine": True, "pixel_refiner": 4},
        "optim": {"steps": 2, "batch_size": 2, "lr": 2e-3, "warmup_steps": 1},
        "decoder_stage": {"steps": 4, "batch_size": 3, "eval_every": 2, "save_every": 2, **stage},
        "run": {"output_dir": str(tmp_path / "run"), "log_every": 1, "eval_every": 0,
                "save_every": 0, "cache_dir": str(tmp_path / "cache")}})


@pytest.mark.filterwarnings("ignore::FutureWarning")
def test_decoder_stage_trains_the_mask_head_and_resumes(tmp_path):
    from medsegr.modeling.checkpoint import read_checkpoint_config
    from medsegr.training.trainer import train

    data = make_dataset(tmp_path / "data")
    config = _config(tmp_path, data)
    result = train(config, progress=False)
    out = result.output_dir
    lines = [json.loads(x) for x in (out / "metrics.jsonl").read_text().splitlines()]
    kinds = [r["kind"] for r in lines]
    assert kinds.count("decoder") == 4 and "decoder_states" in kinds and "decoder_val" in kinds
    assert read_checkpoint_config(out / "final")["training"]["decoder_stage_steps"] == 4
    assert (out / "checkpoint-d000002").is_dir()
    # interrupted after the stage's step 2: --resume auto continues the stage, not the joint stage
    shutil.rmtree(out / "final")
    result = train(config, resume="auto", progress=False)
    lines = [json.loads(x) for x in (out / "metrics.jsonl").read_text().splitlines()]
    stage_steps = [r["step"] for r in lines if r["kind"] == "decoder"]
    assert stage_steps[-2:] == [3, 4]
    assert [r["step"] for r in lines if r["kind"] == "train"] == [1, 2]  # the joint stage not re-run
    assert read_checkpoint_config(out / "final")["training"]["decoder_stage_steps"] == 4


@pytest.mark.filterwarnings("ignore::FutureWarning")
def test_decoder_stage_alone_on_a_fine_tuned_checkpoint(tmp_path):
    """``[optim] steps = 0`` with ``[engine] init_checkpoint``: only the decoder stage
    runs (configs/train-decoder-stage.toml); the LLM's LoRA is the checkpoint's, and the
    result records where it started."""
    import dataclasses

    from medsegr.modeling.checkpoint import read_checkpoint_config
    from medsegr.errors import ConfigError
    from medsegr.training.trainer import train

    data = make_dataset(tmp_path / "data")
    joint = train(_config(tmp_path / "joint", data, steps=0), progress=False)
    start = joint.final_checkpoint
    config = _config(tmp_path / "stage", data)
    config.optim = dataclasses.replace(config.optim, steps=0)
    with pytest.raises(ConfigError, match="init_checkpoint"):
        config.validate()
    config.engine = dataclasses.replace(config.engine, init_checkpoint=str(start))
    config.validate()
    result = train(config, progress=False)
    assert result.steps == 0 and result.decoder_stage_steps == 4
    saved = read_checkpoint_config(result.final_checkpoint)["training"]
    assert saved["steps"] == 0 and saved["decoder_stage_steps"] == 4 and saved["final_loss"] is None
    assert saved["init_checkpoint"]["name"] == start.name
    assert saved["init_checkpoint"]["training"]["steps"] == 2
    rows = [json.loads(x) for x in (result.output_dir / "metrics.jsonl").read_text().splitlines()]
    assert not [r for r in rows if r["kind"] == "train"] and [r for r in rows if r["kind"] == "decoder"]
    from medsegr.modeling.checkpoint import from_pretrained

    before, after = from_pretrained(start, device="cpu"), from_pretrained(result.final_checkpoint, device="cpu")
    lora = {k: v for k, v in before.state_dict().items() if k.startswith("llm.")}
    assert lora and all(torch.equal(v, after.state_dict()[k]) for k, v in lora.items())  # LLM frozen
    changed = [k for k, v in before.state_dict().items() if k.startswith("vision.mask_decoder.")
               and not torch.equal(v, after.state_dict()[k])]
    assert changed  # the mask decoder trained


def test_the_saved_checkpoint_carries_the_mask_head(tmp_path, tiny_model):
    from medsegr.modeling.checkpoint import from_pretrained, save_pretrained
    from medsegr.config import MedSegRConfig
    from medsegr.modeling.builder import build_model

    config = MedSegRConfig.tiny()
    config.model.box_refine = True
    config.model.pixel_refiner = 4
    model = build_model(config, device="cpu", with_lora=True)
    with torch.no_grad():
        model.pixel_refiner.out.weight.fill_(0.25)
    save_pretrained(model, tmp_path / "ckpt")
    loaded = from_pretrained(tmp_path / "ckpt", device="cpu")
    assert loaded.config.model.box_refine and loaded.pixel_refiner is not None
    assert torch.equal(loaded.pixel_refiner.out.weight, model.pixel_refiner.out.weight)


def test_the_pipeline_runs_the_mask_head_and_a_bf16_llm_on_cpu(monkeypatch, anisotropic_volume):
    """On a CPU with native bfloat16 the LLM is cast to bfloat16 (the lean decoder still
    serves it), and a model with the full mask head decodes through all three passes,
    with the refiner looking at the slice's pixels."""
    import medsegr.modeling.device as device
    from helpers import force_seg
    from medsegr.config import MedSegRConfig
    from medsegr.modeling.builder import build_model
    from medsegr.modeling.inference_opt import optimise_for_inference
    from medsegr.pipeline import MedSegRPipeline

    monkeypatch.setattr(device, "cpu_has_native_bf16", lambda: True)
    config = MedSegRConfig.tiny()
    config.llm.cpu_bf16 = True
    config.model.box_refine = True
    config.model.pixel_refiner = 4
    model = optimise_for_inference(build_model(config, device="cpu"))
    assert model.llm_quantized == "bfloat16" and model.fast_llm is not None
    assert next(model.llm.parameters()).dtype == torch.bfloat16
    seen = []
    model.pixel_refiner.register_forward_hook(lambda m, args, out: seen.append(args[1].shape))
    img, _ = anisotropic_volume
    session = MedSegRPipeline(model).new_session(img)
    with force_seg(model, {1}):
        answer = session.ask("Segment the organ.", axis="axial", slice_index=6)
    assert len(answer.segments) == 1 and answer.segments[0].mask.shape == img.shape
    assert seen and tuple(seen[0][-2:]) == (model.vision.image_size, model.vision.image_size)
