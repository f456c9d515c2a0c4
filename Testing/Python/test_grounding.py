"""The pixel-level grounding module and its inputs: module shapes, input channels, hint
maps, the letterbox padding, neighbour slices, the 3-D clean-up of volume masks, and
how the pipeline drives the module (one backbone pass per slice, the presence gate)."""

from __future__ import annotations

import numpy as np
import pytest
import torch

from helpers import force_seg, grounding_finds_everything
from medsegr.imaging.channels import (AIR_HU, GROUNDING_WINDOWS, hint_maps, input_channels,
                                      letterbox_raw, neighbour_indices)
from medsegr.imaging.intensity import CT_WINDOWS
from medsegr.imaging.postprocess import fill_holes, is_single_object, largest_component
from medsegr.imaging.preprocess import letterbox_geometry
from medsegr.modeling.grounding import GroundingConfig, GroundingModule

SMALL = GroundingConfig(size=32, widths=(4, 8, 8, 8), embed_dim=16, query_in=24, query_dim=16,
                        head_hidden=4)


@pytest.fixture(scope="module")
def module() -> GroundingModule:
    torch.manual_seed(0)
    return GroundingModule(SMALL).eval()


def _channels(batch: int, seed: int = 0) -> torch.Tensor:
    g = torch.Generator().manual_seed(seed)
    raw = torch.rand(batch, SMALL.slices, SMALL.size, SMALL.size, generator=g)
    return input_channels(raw, torch.zeros(batch, dtype=torch.bool))


# --------------------------------------------------------------------------- module


def test_module_shapes_with_queries_on_several_images(module):
    s = SMALL.size
    channels = _channels(2)
    assert channels.shape == (2, SMALL.in_channels, s, s) and SMALL.in_channels == 4 * 3 + 1 + 3
    embedding = torch.randn(2, SMALL.embed_dim, 8, 8)  # any grid: resampled to 1/4 of S
    with torch.no_grad():
        feats = module.features(channels, embedding)
        assert feats.quarter.shape == (2, SMALL.widths[2], s // 4, s // 4)
        assert feats.full.shape == (2, SMALL.widths[0], s, s)
        states = torch.randn(3, SMALL.query_in)
        owner = torch.tensor([0, 1, 1])
        out = module.decode(feats, module.project_queries(states), owner)
        assert out.logits.shape == (3, s, s) and out.presence.shape == (3,)
        # a query's masks depend on its own image only: the same query on each image
        # alone gives the same logits as in the batch
        for k, b in enumerate(owner.tolist()):
            alone = module(channels[b:b + 1], embedding[b:b + 1], states[k:k + 1])
            torch.testing.assert_close(alone.logits[0], out.logits[k], rtol=1e-4, atol=1e-5)
            torch.testing.assert_close(alone.presence[0], out.presence[k], rtol=1e-4, atol=1e-5)
        # owner decides which image a query reads: the same state on the two images differs
        twice = module.decode(feats, module.project_queries(states[:1].expand(2, -1)),
                              torch.tensor([0, 1]))
        assert not torch.allclose(twice.logits[0], twice.logits[1])


def test_null_query_decodes_hints_alone(module):
    """No [SEG] state: ``count`` copies of the learnt null query, decoded like any other."""
    with torch.no_grad():
        feats = module.features(_channels(1), torch.randn(1, SMALL.embed_dim, 8, 8))
        queries = module.project_queries(None, count=2)
        assert queries.shape == (2, SMALL.query_dim)
        torch.testing.assert_close(queries, module.project_queries(module.null_query[None].expand(2, -1)))
        out = module.decode(feats, queries)
    assert out.logits.shape == (2, SMALL.size, SMALL.size) and out.presence.shape == (2,)


def test_module_settings_are_checked():
    with pytest.raises(ValueError, match="multiple of 8"):
        GroundingModule(GroundingConfig(size=36))
    with pytest.raises(ValueError, match="4 levels"):
        GroundingModule(GroundingConfig(widths=(4, 8, 8)))
    no_embedding = GroundingModule(GroundingConfig(size=32, widths=(4, 8, 8, 8), embed_dim=0,
                                                   query_in=24))
    assert no_embedding.embed is None
    assert no_embedding.features(_channels(1)).full.shape[-1] == 32  # needs no embedding
    with pytest.raises(ValueError, match="embedding"):
        GroundingModule(SMALL).features(_channels(1))
    assert GroundingConfig.from_dict(SMALL.to_dict()) == SMALL
    with pytest.raises(ValueError, match="unknown grounding module setting"):
        GroundingConfig.from_dict({"sise": 32})


# --------------------------------------------------------------------------- channels


def test_ct_channels_are_fixed_windows_of_the_hounsfield_units():
    """Known HU through brain (40/80), soft tissue (40/400), bone (400/1800) and lung
    (-600/1500): exact values, per slice of the stack, then the modality channel."""
    assert GROUNDING_WINDOWS == ("brain", "soft_tissue", "bone", "lung")
    hu = torch.tensor([-1024.0, -600.0, 0.0, 40.0, 60.0, 240.0, 400.0, 1300.0])
    raw = hu.view(1, 1, 1, 8).expand(1, 1, 8, 8).clone()
    raw = torch.cat([raw, raw + 20.0, raw - 20.0], 1)  # three slices, each its own values
    chans = input_channels(raw, torch.tensor([True]))
    assert chans.shape == (1, 3 * 4 + 1 + 3, 8, 8)
    expected = {
        "brain": [0, 0, 0, 0.5, 0.75, 1, 1, 1],
        "soft_tissue": [0, 0, 0.4, 0.5, 0.55, 1, 1, 1],
        "bone": [0, 0, 0.5 - 400 / 1800, 0.5 - 360 / 1800, 0.5 - 340 / 1800, 0.5 - 160 / 1800,
                 0.5, 0.5 + 900 / 1800],
        "lung": [0.5 - 424 / 1500, 0.5, 0.5 + 600 / 1500, 0.5 + 640 / 1500, 0.5 + 660 / 1500,
                 1, 1, 1],
    }
    for w, name in enumerate(GROUNDING_WINDOWS):
        torch.testing.assert_close(chans[0, w, 0], torch.tensor(expected[name]), rtol=0, atol=1e-6)
        level, width = CT_WINDOWS[name]
        for n, shift in enumerate((0.0, 20.0, -20.0)):  # slice n's windows sit at 4 n + w
            want = ((hu + shift - (level - width / 2)) / width).clamp(0, 1)
            torch.testing.assert_close(chans[0, 4 * n + w, 3], want, rtol=0, atol=1e-6)
    assert torch.equal(chans[0, 12], torch.ones(8, 8))  # modality: CT
    assert torch.equal(chans[0, 13:], torch.zeros(3, 8, 8))  # no hints


def test_mr_channels_repeat_the_normalised_slice_and_hints_come_last():
    raw = torch.linspace(-0.5, 1.5, 3 * 4 * 4).view(1, 3, 4, 4)
    hints = torch.rand(1, 3, 4, 4)
    ct_and_mr = input_channels(torch.cat([raw, raw]), torch.tensor([True, False]),
                               torch.cat([hints, hints]))
    mr = ct_and_mr[1]
    for n in range(3):
        for w in range(4):  # every window slot holds the same clamped value
            torch.testing.assert_close(mr[4 * n + w], raw[0, n].clamp(0, 1))
    assert torch.equal(mr[12], torch.zeros(4, 4))  # modality: not CT
    assert torch.equal(ct_and_mr[0, 12], torch.ones(4, 4))  # the CT image of the same batch
    torch.testing.assert_close(mr[13:], hints[0])
    assert not torch.equal(ct_and_mr[0, :12], mr[:12])  # windows apply to CT only


def test_hint_maps_box_and_points():
    maps = hint_maps(32, box=(20, 4, 10, 12), points=[(5.0, 25.0, 1), (28.0, 3.0, 0)])
    assert maps.shape == (3, 32, 32)
    box = maps[0]
    assert box[4:13, 10:21].eq(1).all()  # inside (corners in any order, both ends included)
    assert box.sum() == 9 * 11  # nothing outside
    assert box[3, 15] == 0 and box[13, 15] == 0 and box[8, 9] == 0 and box[8, 21] == 0
    positive, negative = maps[1], maps[2]
    assert positive[25, 5] == pytest.approx(1.0)  # the peak sits at the point (x=col, y=row)
    assert int(positive.argmax()) == 25 * 32 + 5
    assert positive[25, 5 + 4] == pytest.approx(np.exp(-0.5), rel=1e-5)  # one sigma away
    assert negative[3, 28] == pytest.approx(1.0) and int(negative.argmax()) == 3 * 32 + 28
    assert positive[3, 28] < 1e-6 and negative[25, 5] < 1e-6  # each label its own channel
    assert torch.equal(hint_maps(16), torch.zeros(3, 16, 16))
    clipped = hint_maps(16, box=(-5, -5, 3, 40))  # a box past the edge is cut at the edge
    assert clipped[0, :, :4].eq(1).all() and clipped[0].sum() == 16 * 4


def test_letterbox_pads_ct_with_air_and_mr_with_zero():
    box = letterbox_geometry((8, 16), (1.0, 1.0), 32)  # wide slice: rows padded below
    assert box.scaled_shape == (16, 32)
    stack = np.full((3, 8, 16), 50.0, dtype=np.float32)
    ct = letterbox_raw(stack, box, is_ct=True)
    mr = letterbox_raw(stack, box, is_ct=False)
    assert ct.shape == mr.shape == (3, 32, 32)
    torch.testing.assert_close(ct[:, :16], torch.full((3, 16, 32), 50.0))
    torch.testing.assert_close(mr[:, :16], torch.full((3, 16, 32), 50.0))
    assert ct[:, 16:].eq(AIR_HU).all() and AIR_HU == -1024.0
    assert mr[:, 16:].eq(0.0).all()


def test_neighbour_indices_are_clamped_at_the_ends():
    assert neighbour_indices(5, 10, 3) == [4, 5, 6]
    assert neighbour_indices(0, 10, 3) == [0, 0, 1]
    assert neighbour_indices(9, 10, 3) == [8, 9, 9]
    assert neighbour_indices(0, 1, 3) == [0, 0, 0]  # a 2-D image repeats its only slice
    assert neighbour_indices(4, 10, 1) == [4]
    assert neighbour_indices(1, 10, 5) == [0, 0, 1, 2, 3]


# --------------------------------------------------------------------------- clean-up


@pytest.mark.parametrize("name", ["liver", "left kidney", "brain", "Right Kidney", "spleen",
                                  "left lung"])
def test_single_objects(name):
    assert is_single_object(name)


@pytest.mark.parametrize("name", ["lungs", "lung", "bone", "white matter", "lesion",
                                  "no such thing"])
def test_not_single_objects(name):
    assert not is_single_object(name)


def test_largest_component_keeps_the_biggest_3d_part():
    mask = np.zeros((5, 10, 10), dtype=bool)
    mask[0:3, 1:5, 1:5] = True   # 48 voxels
    mask[3:5, 6:9, 6:9] = True   # 18 voxels, apart from the first
    mask[4, 0, 9] = True         # a stray voxel
    kept = largest_component(mask)
    assert kept.sum() == 48 and kept[0:3, 1:5, 1:5].all()
    mask[2, 5, 5] = True  # one voxel touching both corners diagonally joins them (26-connectivity)
    assert largest_component(mask).sum() == 48 + 18 + 1
    assert not largest_component(np.zeros((2, 3, 3), dtype=bool)).any()


def test_fill_holes_fills_each_slice_along_the_axis():
    ring = np.zeros((7, 7), dtype=bool)
    ring[1:6, 1:6] = True
    ring[2:5, 2:5] = False
    volume = np.stack([ring, ring, np.zeros_like(ring)])  # axis 0: two ringed slices
    filled = fill_holes(volume, axis=0)
    assert filled[0, 1:6, 1:6].all() and filled[1, 1:6, 1:6].all() and not filled[2].any()
    assert filled.sum() == 2 * 25
    # along axis 2 the slices are cut across the ring: no enclosed hole, nothing changes
    assert np.array_equal(fill_holes(volume, axis=2), volume)


# --------------------------------------------------------------------------- pipeline


def test_volume_question_runs_one_backbone_pass_per_slice_for_all_segments(
        tiny_pipeline, anisotropic_volume, monkeypatch):
    img, _ = anisotropic_volume
    model = tiny_pipeline.model
    monkeypatch.setattr(model.config.generation, "decoder_batch", 5)
    real = model.grounding.features
    batches: list[int] = []

    def counted(channels, embedding=None):
        batches.append(int(channels.shape[0]))
        return real(channels, embedding)

    monkeypatch.setattr(model.grounding, "features", counted)
    real_decode = model.grounding.decode
    queries: list[int] = []

    def decode(feats, q, owner=None):
        queries.append(int(q.shape[0]))
        return real_decode(feats, q, owner)

    monkeypatch.setattr(model.grounding, "decode", decode)
    session = tiny_pipeline.new_session(img)
    with force_seg(model, {2, 5}), grounding_finds_everything(model):
        answer = session.ask("Segment the organ and its lesion in the whole scan.", volume=True)
    slices = img.shape[answer.axis]
    assert slices == 12 and answer.encoded_slices == slices
    assert answer.raw_text.count("[SEG]") == 2 and len(answer.segments) == 2
    # every slice once, in batches of decoder_batch, whatever the number of segments
    assert batches == [5, 5, 2]
    assert queries == [2 * b for b in batches]  # both segments of every slice of a batch
    for seg in answer.segments:
        on = [k for k in range(slices) if np.take(seg.mask, k, axis=answer.axis).any()]
        assert on == list(range(slices))  # decoded on every slice


def test_presence_gate_empties_a_segment(tiny_pipeline, anisotropic_volume, monkeypatch):
    img, _ = anisotropic_volume
    model = tiny_pipeline.model
    session = tiny_pipeline.new_session(img)
    with grounding_finds_everything(model):
        with force_seg(model, {1}):
            found = session.ask("Segment the organ.", slice_index=6)
        assert len(found.segments) == 1 and found.segments[0].mask.any()
        assert found.not_found == []
        # the same module and question, with a gate no presence score reaches
        monkeypatch.setattr(model.config.model, "presence_threshold", 1.0)
        with force_seg(model, {1}):
            gated = session.ask("Segment the organ.", slice_index=6)
    assert gated.raw_text.count("[SEG]") == 1
    assert gated.segments == [] and len(gated.not_found) == 1
    assert "[Not found in this slice:" in gated.text


def test_a_volume_segment_found_on_one_slice_keeps_its_thinner_ends(tiny_pipeline, anisotropic_volume,
                                                                   monkeypatch):
    """The structure is found once (presence_threshold on some slice); its slices are
    those that reach volume_presence_threshold. The presence probabilities per slice
    stand in for a trained module's (the random one's are all about 0.5)."""
    import dataclasses

    import torch

    img, _ = anisotropic_volume
    model = tiny_pipeline.model
    real_ground = model.ground
    profile: list[float] = []

    def ground(*args, **kwargs):
        out = real_ground(*args, **kwargs)
        n = int(out.presence.shape[0])
        taken = [profile.pop(0) for _ in range(n)]
        return dataclasses.replace(out, presence=torch.logit(torch.tensor(taken)).to(out.presence.dtype))

    monkeypatch.setattr(model, "ground", ground)
    monkeypatch.setattr(model.config.model, "presence_threshold", 0.85)
    peak = [0.1, 0.1, 0.6, 0.7, 0.9, 0.95, 0.9, 0.7, 0.6, 0.3, 0.1, 0.1]

    def on_slices(volume_threshold, probabilities):
        monkeypatch.setattr(model.config.model, "volume_presence_threshold", volume_threshold)
        profile[:] = probabilities
        session = tiny_pipeline.new_session(img)
        with grounding_finds_everything(model), force_seg(model, {1}):
            answer = session.ask("Segment the organ in the whole scan.", volume=True)
        assert not profile  # one presence per slice, all used
        if not answer.segments:
            return None, answer
        mask = answer.segments[0].mask
        return [k for k in range(mask.shape[answer.axis]) if np.take(mask, k, axis=answer.axis).any()], answer

    assert on_slices(0.5, peak)[0] == [2, 3, 4, 5, 6, 7, 8]
    assert on_slices(0.85, peak)[0] == [4, 5, 6]           # each slice judged alone
    assert on_slices(0.95, peak)[0] == [4, 5, 6]           # the lower of the two thresholds
    missing, answer = on_slices(0.5, [min(p, 0.8) for p in peak])
    assert missing is None and len(answer.not_found) == 1  # found on no slice: no segment at all
    assert "[Not found in this volume:" in answer.text


def test_grounding_stage_batches_hold_every_query_with_its_targets():
    """A training batch: every structure of each image plus its absent queries (empty
    target, presence 0), hints only with one structure; a left/right flip swaps the
    sided targets."""
    import random

    from medsegr.training.grounding_data import GroundingItem
    from medsegr.training.grounding_stage import StageSettings, make_batch

    size = 32
    left = np.zeros((size, size), np.uint8)
    left[8:20, 20:28] = 1
    right = np.zeros((size, size), np.uint8)
    right[14:26, 2:10] = 1  # not the mirror image of the left one
    item = GroundingItem(record_id="r", source="s", cache_key="k",
                         raw=np.full((3, size, size), 40.0, np.float16), is_ct=True,
                         targets=np.stack([left, right]), keys=["left_lung", "right_lung"],
                         names=["left lung", "right lung"],
                         flipped_targets=np.stack([right, left]), absent=["liver"],
                         states=torch.randn(3, 6), name_states=torch.randn(3, 6))
    settings = StageSettings(hint_share=0.0)
    plain = make_batch([item], None, False, settings, random.Random(0), train=False)
    assert plain["channels"].shape == (1, 4 * 3 + 1 + 3, size, size)
    assert plain["queries"].shape == (3, 6) and plain["owner"].tolist() == [0, 0, 0]
    assert plain["present"].tolist() == [True, True, False]
    assert plain["targets"][2].sum() == 0
    assert torch.equal(plain["targets"][0], torch.from_numpy(left).float())

    def as_tensor(mask: np.ndarray) -> torch.Tensor:
        return torch.from_numpy(np.ascontiguousarray(mask)).float()

    # mirrored left/right, the "left lung" query's target is the mirrored right lung
    mirrored = {"none": as_tensor(left), "up/down": as_tensor(left[::-1]),
                "left/right": as_tensor(right[:, ::-1]), "both": as_tensor(right[::-1, ::-1])}
    seen = set()
    for seed in range(16):
        target = make_batch([item], None, False, settings, random.Random(seed), train=True)["targets"][0]
        kind = [k for k, m in mirrored.items() if torch.equal(target, m)]
        assert len(kind) == 1, seed
        seen.add(kind[0])
    assert "left/right" in seen and "none" in seen
    hinted = make_batch([item], None, False, StageSettings(hint_share=1.0, hint_only_share=1.0),
                        random.Random(1), train=True)
    assert hinted["queries"].shape[0] == 1 and hinted["null"].tolist() == [True]
    assert hinted["channels"][0, -3:].abs().sum() > 0  # the hint maps are drawn


def test_ablation_helpers_and_grounding_benchmark():
    from medsegr.bench.grounding import time_module
    from medsegr.training.grounding_ablation import _center_only, markdown
    from medsegr.training.grounding_data import GroundingItem

    item = GroundingItem(record_id="r", source="s", cache_key="k",
                         raw=np.arange(3 * 4 * 4, dtype=np.float16).reshape(3, 4, 4), is_ct=False,
                         targets=np.zeros((0, 4, 4), np.uint8), keys=[], names=[],
                         flipped_targets=None, absent=[])
    (center,) = _center_only([item])
    assert center.raw.shape == (1, 4, 4) and np.array_equal(center.raw[0], item.raw[1])
    results = {"arms": {"default": {"steps": 3, "train_seconds": 59.6, "dice": 0.5,
                                    "absent_empty": 1.0, "by_structure": {"brain": [0.9, 2]},
                                    "by_source": {}}}}
    assert "| default | 3 | 60 | 0.500 | 1.000 | 0.90 |" in markdown(results)
    table = markdown(results, ("brain", "left_lung"))
    assert "| left lung |" in table and table.endswith("| 0.90 | – |")
    module = GroundingModule(GroundingConfig(size=64, query_in=8, embed_dim=16)).eval()
    assert time_module(module, masks=2, repeats=1, bf16=False) > 0


def test_a_flipped_image_with_only_absent_queries_makes_a_batch():
    """An image whose conversation has no [SEG] (only absent queries) may be mirrored: its
    empty, mirrored target stack still becomes a tensor."""
    import random

    from medsegr.training.grounding_data import GroundingItem
    from medsegr.training.grounding_stage import StageSettings, make_batch

    empty = np.zeros((0, 16, 16), np.uint8)
    item = GroundingItem(record_id="r", source="s", cache_key="k", raw=np.zeros((3, 16, 16), np.float16),
                         is_ct=False, targets=empty, keys=[], names=[], flipped_targets=empty.copy(),
                         absent=["liver", "spleen"], states=torch.randn(2, 6), name_states=torch.randn(2, 6))
    for seed in range(8):
        batch = make_batch([item], None, False, StageSettings(), random.Random(seed), train=True)
        assert batch["present"].tolist() == [False, False] and batch["targets"].sum() == 0


def test_the_state_digest_follows_what_shapes_the_seg_states_only():
    """A checkpoint whose presence threshold or grounding settings changed after its states
    were cached keeps its cache; a change to the LLM's trained weights or prompt does not."""
    import torch

    from medsegr.config import MedSegRConfig
    from medsegr.modeling.builder import build_model
    from medsegr.training.grounding_stage import llm_digest

    model = build_model(MedSegRConfig.tiny(), device="cpu")
    first = llm_digest(model)
    model.config.model.presence_threshold = 0.6
    model.config.model.mask_threshold = 0.4
    model.config.generation.max_new_tokens = 17
    model.config.grounding.name_pool = not model.config.grounding.name_pool
    assert llm_digest(model) == first
    model.config.llm.system_prompt = model.config.llm.system_prompt + " Be brief."
    assert llm_digest(model) != first
    model.config.llm.system_prompt = model.config.llm.system_prompt[:-len(" Be brief.")]
    assert llm_digest(model) == first
    with torch.no_grad():
        next(p for n, p in model.named_parameters() if n.startswith("visual_projector.")).add_(1.0)
    assert llm_digest(model) != first
