"""Training: examples from dataset records, a few steps that lower the loss, the encoder
cache, resume, bad configs and checkpoints, and 2 CPU processes under accelerate."""

from __future__ import annotations

import dataclasses
import json
import os
import shutil
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest

from helpers import make_dataset


def write_config(path: Path, data_root: Path, out: Path, grounding: dict | None = None,
                 init: str = "", **optim) -> Path:
    values = {"steps": 6, "batch_size": 2, "lr": 2e-3, "warmup_steps": 1, **optim}
    optim_text = "\n".join(f"{k} = {json.dumps(v)}" for k, v in values.items())
    stage = ("[grounding_stage]\n" + "\n".join(f"{k} = {json.dumps(v)}" for k, v in grounding.items())
             if grounding else "")
    engine = "tiny = true" + (f'\ninit_checkpoint = "{init}"' if init else "")
    path.write_text(f"""
[data]
root = "{data_root}"
max_tokens = 400

[engine]
{engine}

[optim]
{optim_text}

{stage}

[run]
output_dir = "{out}"
log_every = 1
eval_every = 3
save_every = 3
cache_dir = "{out.parent / 'cache'}"
""", encoding="utf-8")
    return path


@pytest.fixture(scope="module")
def dataset(tmp_path_factory):
    return make_dataset(tmp_path_factory.mktemp("data"))


def test_examples_bind_seg_tokens_to_masks(dataset, tiny_model):
    from medsegr.data.records import load_dataset
    from medsegr.training.examples import IGNORE, ImageStore, make_example, slice_input

    record = load_dataset(dataset, "train")[0]
    store = ImageStore()
    item = slice_input(record, store, tiny_model.vision.image_size)
    assert item.pixels.shape == (256, 256) and 0 <= item.pixels.min() <= item.pixels.max() <= 1
    assert item.masks["kidney"].sum() > item.masks["lesion"].sum() > 0
    ex = make_example(record, tiny_model, item, 400)
    assert ex.reasoning == ()                       # the turns name no reasoning kind
    kinds = ("lesion", None, "absent")[:len(record.conversation)]
    record.conversation = [dataclasses.replace(t, reasoning=k) for t, k in zip(record.conversation, kinds)]
    assert make_example(record, tiny_model, item, 400).reasoning == tuple(k for k in kinds if k)
    assert ex.masks.shape == (2, 256, 256)          # kidney, then lesion (turn order)
    assert np.array_equal(ex.masks[0], item.masks["kidney"])
    ids, labels = ex.input_ids, ex.labels
    assert ids.count(tiny_model.image_token_id) == tiny_model.num_visual_tokens
    # two [SEG] in the answers (the system prompt mentions the token too, unlabelled)
    assert labels.count(tiny_model.seg_token_id) == 2
    first_image = ids.index(tiny_model.image_token_id)
    for pos, token in enumerate(ids):
        if token == tiny_model.seg_token_id:  # answers' [SEG] are trained, the prompt's not
            assert labels[pos] == (token if pos > first_image else IGNORE)
        if token == tiny_model.image_token_id:
            assert labels[pos] == IGNORE
    answers = tiny_model.tokenizer.decode([t for t, l in zip(ids, labels) if l != IGNORE])
    assert "holds it." in answers and "no liver" in answers
    assert "Which organ" not in answers
    with pytest.raises(Exception, match="max_tokens"):
        make_example(record, tiny_model, item, 20)


def test_train_lowers_the_loss_caches_the_encoder_and_resumes(dataset, tmp_path):
    from medsegr.modeling.checkpoint import from_pretrained
    from medsegr.errors import InputError
    from medsegr.training.config import TrainConfig
    from medsegr.training.trainer import train

    out = tmp_path / "run"
    config = TrainConfig.from_file(write_config(tmp_path / "train.toml", dataset, out))
    first = train(config, max_steps=3, progress=False)
    assert first.steps == 3 and first.encoded_slices == 8  # 4 train + 4 val slices, once
    assert (out / "checkpoint-000003" / "training_state.pt").is_file()

    with pytest.raises(InputError, match="--resume auto"):  # never mixes two runs silently
        train(config, progress=False)
    second = train(config, resume="auto", progress=False)
    assert second.steps == 6
    assert second.encoded_slices == 0  # every embedding came from the disk cache
    rows = [json.loads(line) for line in (out / "metrics.jsonl").read_text(encoding="utf-8").splitlines()]
    train_rows = [r for r in rows if r["kind"] == "train"]
    assert [r["step"] for r in train_rows] == [1, 2, 3, 4, 5, 6]
    assert np.mean([r["loss"] for r in train_rows[-2:]]) < train_rows[0]["loss"]
    val = [r for r in rows if r["kind"] == "val"]
    assert val and all(r["val_ce_loss"] > 0 for r in val)
    assert (out / "curves.png").stat().st_size > 1000
    model = from_pretrained(out / "final", device="cpu")
    assert model.fine_tuned
    meta = json.loads((out / "final" / "medsegr_config.json").read_text(encoding="utf-8"))
    assert meta["training"]["steps"] == 6


def test_grounding_stage_trains_resumes_and_ships_in_the_checkpoint(dataset, tmp_path):
    """The grounding stage on a text-stage checkpoint: its [SEG] states and items are
    cached once, the module's loss falls, an interrupted stage resumes where it was, and
    the final checkpoint's pipeline decodes masks with the trained module."""
    import torch

    from medsegr.modeling.checkpoint import from_pretrained
    from medsegr.training.config import TrainConfig
    from medsegr.training.trainer import train

    text = tmp_path / "text"
    train(TrainConfig.from_file(write_config(tmp_path / "t.toml", dataset, text, steps=2)),
          progress=False)
    out = tmp_path / "ground"
    stage = {"steps": 16, "batch_size": 2, "lr": 3e-3, "warmup_steps": 1, "eval_every": 8,
             "save_every": 4}
    cfg = write_config(tmp_path / "g.toml", dataset, out, grounding=stage, steps=0,
                       init=str(text / "final"), mixed_precision="no")
    config = TrainConfig.from_file(cfg)
    result = train(config, progress=False)
    assert result.steps == 0 and result.grounding_stage_steps == 16
    caches = sorted((out / "grounding-cache").glob("*.pt"))
    assert [p.name.split("-")[0] for p in caches] == ["train", "val"]
    rows = [json.loads(line) for line in (out / "grounding" / "metrics.jsonl").read_text().splitlines()]
    losses = [r["loss"] for r in rows if r["kind"] == "train"]
    assert losses[-1] < losses[0]
    val = [r for r in rows if r["kind"] == "val"]
    assert val and all(0 <= r["dice"] <= 1 and 0 <= r["absent_empty"] <= 1 for r in val)

    # an interrupted stage resumes from its state (same caches, no new items)
    state = torch.load(out / "grounding" / "state.pt", weights_only=False)
    assert state["step"] == 16
    shutil.rmtree(out / "final")
    stage["steps"] = 20
    config = TrainConfig.from_file(write_config(tmp_path / "g.toml", dataset, out, grounding=stage,
                                                steps=0, init=str(text / "final"), mixed_precision="no"))
    again = train(config, progress=False)
    assert again.grounding_stage_steps == 20
    assert sorted((out / "grounding-cache").glob("*.pt")) == caches

    model = from_pretrained(out / "final", device="cpu")
    trained = torch.load(out / "grounding" / "state.pt", weights_only=False)["module"]
    for key, value in model.grounding.state_dict().items():
        assert torch.equal(value.float(), trained[key].float()), key
    meta = json.loads((out / "final" / "medsegr_config.json").read_text(encoding="utf-8"))
    assert meta["training"]["grounding_stage"]["steps"] == 20


def test_bad_training_configs_and_checkpoints_are_refused(dataset, tmp_path):
    from medsegr.errors import CheckpointError, ConfigError, InputError
    from medsegr.training.config import TrainConfig
    from medsegr.training.trainer import train

    bad = tmp_path / "bad.toml"
    bad.write_text('[optim]\nstepz = 3\n', encoding="utf-8")
    with pytest.raises(ConfigError, match="stepz"):
        TrainConfig.from_file(bad)
    bad.write_text('[data]\nroot = "x"\n[optim]\nlr = -1.0\n', encoding="utf-8")
    with pytest.raises(ConfigError, match="lr"):
        TrainConfig.from_file(bad)
    for repeat in ("{ size = 0 }", "{ size = 2.5 }", "{ size = true }", '{ "" = 2 }'):
        bad.write_text(f'[data]\nroot = "x"\nrepeat = {repeat}\n', encoding="utf-8")
        with pytest.raises(ConfigError, match="repeat"):
            TrainConfig.from_file(bad)
    bad.write_text('[data]\nroot = "x"\nrepeat = [3]\n', encoding="utf-8")
    with pytest.raises(ConfigError, match="repeat"):
        TrainConfig.from_file(bad)

    # a resumable checkpoint trained on another base vision model
    out = tmp_path / "run"
    config = TrainConfig.from_file(write_config(tmp_path / "t.toml", dataset, out, steps=1))
    train(config, progress=False)
    ckpt = next(out.glob("checkpoint-*"))
    meta_file = ckpt / "model" / "medsegr_config.json"
    meta = json.loads(meta_file.read_text(encoding="utf-8"))
    meta["base"]["vision"]["sha256"] = "0" * 64
    meta_file.write_text(json.dumps(meta), encoding="utf-8")
    with pytest.raises(CheckpointError, match="another base"):
        train(config, resume=str(ckpt), progress=False)
    with pytest.raises(CheckpointError, match="not a resumable"):
        train(config, resume=str(tmp_path), progress=False)

    # a record whose answer has a [SEG] without a mask
    broken = tmp_path / "broken"
    shutil.copytree(dataset, broken)
    lines = (broken / "train.jsonl").read_text(encoding="utf-8").splitlines()
    rec = json.loads(lines[0])
    rec["conversation"][0]["masks"] = []
    lines[0] = json.dumps(rec)
    (broken / "train.jsonl").write_text("\n".join(lines) + "\n", encoding="utf-8")
    config = TrainConfig.from_file(write_config(tmp_path / "b.toml", broken, tmp_path / "r2"))
    with pytest.raises(InputError):
        train(config, progress=False)
    assert not (tmp_path / "r2" / "final").exists()


def test_train_command_under_accelerate_launch_with_two_cpu_processes(dataset, tmp_path):
    out = tmp_path / "ddp"
    cfg = write_config(tmp_path / "ddp.toml", dataset, out, steps=2, batch_size=1)
    launcher = Path(sys.executable).with_name("accelerate")
    env = {**os.environ, "OMP_NUM_THREADS": "1", "HF_HUB_OFFLINE": "1"}
    proc = subprocess.run(
        [str(launcher), "launch", "--cpu", "--num_processes", "2", "--num_machines", "1",
         "--mixed_precision", "no", "--dynamo_backend", "no", "-m", "medsegr.cli", "train",
         str(cfg), "--no-progress"],
        capture_output=True, text=True, env=env, timeout=600)
    assert proc.returncode == 0, proc.stderr[-3000:]
    assert "joint stage 2 steps: loss" in proc.stdout
    assert (out / "final" / "heads.safetensors").is_file()
    rows = [json.loads(line) for line in (out / "metrics.jsonl").read_text(encoding="utf-8").splitlines()]
    assert [r["step"] for r in rows if r["kind"] == "train"] == [1, 2]  # logged once, not twice


def test_image_store_keeps_only_the_most_recent_normalised_volumes():
    from types import SimpleNamespace

    import numpy as np

    from medsegr.training.examples import ImageStore

    loads: list[str] = []

    def record(name: str):
        def load_image(cache):
            loads.append(name)
            return SimpleNamespace(array=np.full((2, 3, 3), 100.0, dtype=np.float32))
        return SimpleNamespace(image_path=name, window=None, load_image=load_image)

    store = ImageStore(max_normalised=2)
    a, b, c = record("a"), record("b"), record("c")
    first = store.normalised(a, "MR")
    assert store.normalised(a, "MR") is first and loads == ["a"]  # reused, not recomputed
    store.normalised(b, "MR")
    store.normalised(a, "MR")  # a is now the most recent
    store.normalised(c, "MR")  # drops b, the least recently used
    assert len(store._normalised) == 2
    store.normalised(a, "MR")
    assert loads == ["a", "b", "c"]
    store.normalised(b, "MR")
    assert loads == ["a", "b", "c", "b"]


def test_length_buckets_cover_every_example_once_in_batches_of_similar_length():
    from medsegr.training.batches import LengthBuckets

    lengths = [((i * 37) % 101) + 10 for i in range(203)]
    sampler = LengthBuckets(lengths, batch_size=8, seed=3, pool=4)
    first = list(sampler)
    assert len(first) == len(sampler) == 26
    assert sorted(i for batch in first for i in batch) == list(range(203))
    # within a pool of 32 examples sorted by length, a batch spans a quarter of its range
    spans = [max(lengths[i] for i in b) - min(lengths[i] for i in b) for b in first if len(b) == 8]
    assert np.median(spans) < 0.3 * (max(lengths) - min(lengths))
    second = list(sampler)  # the next epoch: another order
    assert second != first and sorted(i for b in second for i in b) == list(range(203))
    again = LengthBuckets(lengths, batch_size=8, seed=3, pool=4)
    assert list(again) == first  # deterministic for a seed


def test_continued_text_training_of_the_top_layers_then_a_warm_grounding_stage(dataset, tmp_path):
    """From a fine-tuned checkpoint: only the LoRA of the layers from [optim]
    train_from_layer up changes (the lower layers, the visual projector and the added
    tokens' rows stay); [optim] max_seconds ends the text stage early and the grounding
    stage still runs; [grounding_stage] warm_start starts from the checkpoint's module."""
    import torch

    from medsegr.errors import ConfigError
    from medsegr.modeling.checkpoint import from_pretrained
    from medsegr.training.config import TrainConfig
    from medsegr.training.trainer import train

    start = tmp_path / "start"
    stage = {"steps": 3, "batch_size": 2, "lr": 1e-3, "warmup_steps": 1, "eval_every": 0,
             "save_every": 0}
    train(TrainConfig.from_file(write_config(tmp_path / "s.toml", dataset, start, grounding=stage,
                                             steps=2, mixed_precision="no")), progress=False)
    before = from_pretrained(start / "final", device="cpu", trainable=True)
    out = tmp_path / "more"
    warm = {**stage, "lr": 1e-12, "warm_start": True}
    cfg = write_config(tmp_path / "m.toml", dataset, out, grounding=warm, init=str(start / "final"),
                       steps=50, mixed_precision="no", train_from_layer=1, length_buckets=True,
                       max_seconds=1e-6)
    result = train(TrainConfig.from_file(cfg), progress=False)
    assert result.steps == 1 and result.grounding_stage_steps == 3  # stopped by the clock
    after = from_pretrained(out / "final", device="cpu", trainable=True)
    old = dict(before.named_parameters())
    changed = {name for name, p in after.named_parameters()
               if ("lora_" in name or name.startswith("visual_projector.") or "trainable_tokens" in name)
               and not torch.equal(p, old[name])}
    assert changed and all(".layers.0." not in n and "lora_" in n for n in changed), changed
    start_weights = dict(before.grounding.named_parameters())
    for key, value in after.grounding.named_parameters():  # lr 1e-12: still the start's weights
        assert torch.allclose(value.float(), start_weights[key].float(), atol=1e-5), key
    meta = json.loads((out / "final" / "medsegr_config.json").read_text(encoding="utf-8"))
    assert meta["training"]["grounding_stage"]["warm_start"] is True
    assert meta["training"]["text_seconds"] >= 0

    with pytest.raises(ConfigError, match="init_checkpoint"):  # nothing to keep below the layer
        TrainConfig.from_file(write_config(tmp_path / "x.toml", dataset, tmp_path / "x",
                                           train_from_layer=1))
    with pytest.raises(ConfigError, match="warm_start"):
        TrainConfig.from_file(write_config(tmp_path / "y.toml", dataset, tmp_path / "y",
                                           grounding={**stage, "warm_start": True}))
    with pytest.raises(ConfigError, match="decoder layers"):
        train(TrainConfig.from_file(write_config(tmp_path / "z.toml", dataset, tmp_path / "z",
                                                 init=str(start / "final"), train_from_layer=99)),
              progress=False)


def test_absent_queries_in_the_models_own_words(tiny_model):
    """Which names of a generated answer become absent queries (a known structure of
    another body region than the image's, never one the image may show), and how they
    join their item; the prompt is the engine's."""
    import torch

    from medsegr.answers import Turn
    from medsegr.modeling.generation import prompt_keys
    from medsegr.prompts import render
    from medsegr.training.generated_absent import apply, clearly_absent
    from medsegr.training.grounding_data import GroundingItem

    head = ["brain", "head"]
    assert clearly_absent("liver", head) and clearly_absent("left kidney", head)
    assert not clearly_absent("brain", head) and not clearly_absent("skull", head)
    assert not clearly_absent("a thing nobody labels", head) and not clearly_absent("", head)
    assert not clearly_absent("liver", [])  # an image of unknown regions: nothing is sure

    # the engine's prompt (ChatSession._keys): the image token becomes the visual tokens
    keys = prompt_keys(tiny_model, [Turn(question="Segment the liver.", image_id="x")])
    text = render(tiny_model.tokenizer, tiny_model.config.llm.system_prompt,
                  [Turn(question="Segment the liver.", image_id="x")], tiny_model.config.model.image_token)
    ids = tiny_model.tokenizer.encode(text, add_special_tokens=False)
    assert [k for k in keys if isinstance(k, int)] == [t for t in ids if t != tiny_model.image_token_id]
    assert [k for k in keys if not isinstance(k, int)] == [("img", "x", i) for i in
                                                          range(tiny_model.num_visual_tokens)]

    hidden = 8
    item = GroundingItem(record_id="r", source="s", cache_key="k", raw=np.zeros((1, 4, 4), np.float16),
                         is_ct=False, targets=np.zeros((1, 4, 4), np.uint8), keys=["brain"],
                         names=["brain"], flipped_targets=None, absent=["liver"],
                         states=torch.zeros((2, hidden)), name_states=torch.zeros((2, hidden)))
    added = apply([item], {"r": [("femur", torch.ones(hidden), torch.full((hidden,), 2.0))],
                           "other": [("spleen", torch.ones(hidden), torch.ones(hidden))]})
    assert added == 1 and item.absent == ["liver", "femur"] and item.queries == 3
    assert item.states.shape == (3, hidden) and float(item.name_states[2, 0]) == 2.0


def test_the_text_stage_cost_of_each_lever_is_measured_side_by_side(dataset, tmp_path):
    """``python -m medsegr.training.text_cost``: every arm runs its timed steps from the
    same start weights; the top-layers arms train fewer parameters."""
    from medsegr.training.text_cost import ARMS, main

    cfg = write_config(tmp_path / "c.toml", dataset, tmp_path / "run", mixed_precision="no")
    out = tmp_path / "cost.json"
    assert main([str(cfg), "--steps", "2", "--json", str(out)]) == 0
    result = json.loads(out.read_text(encoding="utf-8"))
    rows = {r["arm"]: r for r in result["rows"]}
    assert list(rows) == list(ARMS)
    assert all(r["s_per_step"] > 0 and 0 <= r["padding_share"] < 1 for r in rows.values())
    assert rows["top-layers"]["trainable_parameters"] < rows["all-layers"]["trainable_parameters"]
    assert rows["top-layers"]["trained_from_layer"] >= 1 and rows["all-layers"]["trained_from_layer"] == 0


def test_repeat_lists_conversations_of_a_reasoning_kind_more_often():
    import numpy as np

    from medsegr.training.examples import Example, repeat_by_reasoning

    def example(name, *kinds):
        return Example(record_id=name, cache_key=name, input_ids=[1], labels=[1],
                       masks=np.zeros((0, 4, 4), np.uint8), question_types=["implicit"], reasoning=kinds)

    examples = [example("a", "size"), example("b"), example("c", "function", "absent"),
                example("d", "absent", "size")]
    out = repeat_by_reasoning(examples, {"size": 3, "absent": 2})
    assert [e.record_id for e in out] == ["a", "a", "a", "b", "c", "c", "d", "d", "d"]
    assert repeat_by_reasoning(examples, {}) == examples
