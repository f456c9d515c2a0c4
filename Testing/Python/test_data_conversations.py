"""Generated answers reason before they segment, and every fact they state is true.

A synthetic abdominal CT slice (display orientation: the patient's left on the image
right) with two kidneys of different size, a liver with two hypodense lesions and a
gallbladder known to be removed; answers are checked with
:mod:`medsegr.evaluation.facts` against the very masks the scene was built from.
"""

from __future__ import annotations

import random
import re
from collections import Counter

import numpy as np
import pytest

from medsegr.data import knowledge as kb
from medsegr.data.conversations import (ANSWER_BUDGET, Absence, Scene, answer_cost, make_conversation,
                                        midline_column)
from medsegr.data.records import SEG_TOKEN, absent_name, check_answer_markers, is_absent_key
from medsegr.data.scenes import MaskSpec, lesion_density, scene_from_masks
from medsegr.evaluation.comparisons import comparative_claim
from medsegr.evaluation.facts import check_facts
from medsegr.prompts import segment_names

SPACING = (0.8, 0.8)


def _disc(shape, centre, radius):
    rows, cols = np.mgrid[0:shape[0], 0:shape[1]]
    return (rows - centre[0]) ** 2 + (cols - centre[1]) ** 2 <= radius ** 2


def _masks(swap_kidneys: bool = False) -> dict[str, np.ndarray]:
    shape = (128, 128)
    right, left = ((80, 34), (80, 94)) if not swap_kidneys else ((80, 94), (80, 34))
    lesions = _disc(shape, (44, 30), 4) | _disc(shape, (56, 44), 3)
    return {
        "body": _disc(shape, (64, 64), 62),
        "liver": _disc(shape, (50, 38), 22),
        "right_kidney": _disc(shape, right, 9),    # image left = patient right
        "left_kidney": _disc(shape, left, 13),     # image right = patient left, larger
        "vertebra": _disc(shape, (96, 64), 8),
        "liver_lesions": lesions,
    }


def _specs() -> dict[str, MaskSpec]:
    keys = ["body", "liver", "right_kidney", "left_kidney", "vertebra"]
    specs = {k: MaskSpec(k, kb.get(k), kb.get(k).name, "labels/x.nii.gz", n + 1) for n, k in enumerate(keys)}
    specs["liver_lesions"] = MaskSpec("liver_lesions", kb.get("lesion"), "liver lesion", "labels/y.nii.gz", 1,
                                      {"host": "liver", "density": "hypodense"})
    return specs


def _scene(masks=None, **options) -> Scene:
    masks = masks or _masks()
    return scene_from_masks(masks, _specs(), SPACING, modality="CT", plane="axial", regions=("abdomen",),
                            description="abdominal CT", absences=[Absence(kb.get("gallbladder"), "it was removed")],
                            lesion_hosts=("liver", "right_kidney", "left_kidney"), **options)


def _turns(scene: Scene, n: int = 500, seed: int = 0):
    rng = random.Random(seed)
    return [turn for _ in range(n) for turn in make_conversation(scene, rng)]


def _named_masks(scene: Scene, masks: dict[str, np.ndarray]) -> dict[str, np.ndarray]:
    return {item.name: masks[key] for key, item in scene.items.items()}


@pytest.fixture(scope="module")
def masks():
    return _masks()


@pytest.fixture(scope="module")
def scene(masks):
    return _scene(masks)


@pytest.fixture(scope="module")
def turns(scene):
    return _turns(scene)


def test_the_scene_knows_its_geometry(scene, masks):
    assert scene.shape == (128, 128)
    assert scene.midline == pytest.approx(midline_column(list(masks.values()), 128))
    assert abs(scene.midline - 63.5) < 1.5
    assert scene.side_of("left_kidney") == ("right", "left")
    assert scene.side_of("right_kidney") == ("left", "right")
    assert scene.side_of("vertebra") is None  # on the midline: no side
    assert scene.items["liver_lesions"].attrs["count"] == 2
    assert scene.items["liver_lesions"].name == "liver lesions"


def test_answers_keep_the_marker_format_and_the_budget(scene, turns):
    for turn in turns:
        assert check_answer_markers(turn.answer, len(turn.masks)) == [], turn.answer
        assert segment_names(turn.answer, SEG_TOKEN) == [
            absent_name(k) if is_absent_key(k) else scene.items[k].name for k in turn.masks]
        assert answer_cost(turn.answer) <= ANSWER_BUDGET, turn.answer
        assert len(turn.answer.split()) <= 32, turn.answer
        for name in re.findall(r"<p>(.*?)</p>", turn.answer):
            assert f"<p>{name}</p> {SEG_TOKEN}" in turn.answer


def test_answers_reason_before_they_segment(turns):
    """Most segmenting answers give a reason (some words) before their first mask."""
    segmenting = [t for t in turns if t.masks]
    reasoned = [t for t in segmenting if len(t.answer.split("<p>")[0].split()) >= 3]
    assert len(reasoned) >= 0.75 * len(segmenting)
    # and they vary: many distinct phrasings once names and numbers are taken out
    shapes = {re.sub(r"<p>.*?</p>|\d+(\.\d+)?", "#", t.answer) for t in turns}
    assert len(shapes) >= 60


def test_every_stated_fact_is_true_on_the_masks(scene, masks, turns):
    named = _named_masks(scene, masks)
    kinds = Counter()
    for turn in turns:
        for check in check_facts(turn.answer, named, SPACING, patient_left="right",
                                 densities={"liver lesions": "hypodense"}):
            assert check.ok, (check, turn.answer)
            kinds[check.kind] += 1
    assert {"side", "image_side", "count", "density"} <= set(kinds)
    # no numbers of the model's own: areas and sizes are the engine's measured spans
    assert kinds["area"] == 0 and kinds["size"] == 0
    assert not any(re.search(r"\d+(\.\d+)?\s*(cm|mm)", t.answer) for t in turns)


def test_a_side_is_stated_after_the_seg_it_belongs_to(turns):
    """The model reads the measured span (which holds the patient side) before it states
    a side: "the <p>left kidney</p> [SEG], on the patient's left."; the image side, which
    depends on the display and is not measured, only where the question asks for it."""
    sided = [t for t in turns if t.masks and re.search(r"on the patient's (left|right)", t.answer)
             and t.reasoning != "laterality"]
    assert sided
    for turn in sided:
        # (a patient side that is the structure's own name, "the left kidney … on the
        # patient's left", is knowledge, not a measurement)
        before = turn.answer.split(SEG_TOKEN)[0]
        own = {key.split("_")[0] for key in turn.masks}
        assert set(re.findall(r"patient's (left|right)", before)) <= own, turn.answer
    for turn in turns:
        if turn.reasoning != "laterality":
            assert not re.search(r"image (left|right)|(left|right) of the image", turn.answer), turn


def test_a_follow_up_compares_with_the_structure_already_segmented(scene):
    """"Is it larger than the other one?": the partner is segmented, and the conclusion
    (after its [SEG], so after its measured span) names the one whose area is larger."""
    from medsegr.data.conversations import _follow_compare

    areas = {k: i.area_mm2 for k, i in scene.items.items()}
    seen = 0
    for seed in range(20):
        made = _follow_compare(scene, ["left_kidney"], random.Random(seed))
        assert made is not None
        turn, focus = made
        assert turn.masks == ("right_kidney",) and focus == ["right_kidney"]
        assert turn.type == "multi-turn" and turn.reasoning == "size"
        conclusion = turn.answer.split(SEG_TOKEN)[-1]
        larger = "left kidney" if areas["left_kidney"] > areas["right_kidney"] else "right kidney"
        claim = comparative_claim(conclusion, ["left kidney", "right kidney"])
        assert claim is not None, turn.answer
        assert claim == (larger, "larger") or (claim[1] == "smaller" and claim[0] != larger), turn.answer
        seen += 1
    assert seen == 20
    assert _follow_compare(scene, ["liver"], random.Random(0)) is None  # no partner


def test_reasoning_states_the_deciding_rule(scene, turns):
    areas = {k: f"{i.area_mm2 / 100:.1f} cm²" for k, i in scene.items.items()}
    seen = set()
    for turn in turns:
        answer = turn.answer
        if turn.reasoning == "size" and turn.type == "implicit":
            # both segmented (their measured spans follow), the conclusion after them
            assert sorted(turn.masks) == ["left_kidney", "right_kidney"], turn
            chosen = "left kidney" if ("larger" in turn.question or "bigger" in turn.question) else "right kidney"
            conclusion = answer.split(SEG_TOKEN)[-1]
            assert chosen in conclusion and ("larger" in conclusion) == (chosen == "left kidney"), answer
            assert not any(a in answer for a in areas.values()), answer
            seen.add("size")
        if turn.reasoning == "laterality" and turn.type == "implicit":
            side = turn.masks[0].split("_")[0]
            other = "right" if side == "left" else "left"
            assert f"patient's {side}" in answer and f"image {other}" in answer, answer
            seen.add("laterality")
        if turn.reasoning == "count":
            assert re.search(r"\btwo (separate )?(lesions|foci)\b", answer, re.I), answer
            seen.add("count")
        if turn.reasoning == "lesion" and turn.masks == ("liver",):
            assert "hypodense" in answer and ("two" in answer or "Two" in answer), answer
            assert "inside the <p>liver</p>" in answer or "inside the liver" in answer, answer
            seen.add("host")
        if turn.type == "absent":
            if turn.reasoning == "absent":
                # named with a [SEG] bound to an empty mask; after the engine's span
                # ("not found") the answer says it is not on the slice, and why
                assert len(turn.masks) == 1 and is_absent_key(turn.masks[0]), turn
                assert answer.count(SEG_TOKEN) == 1, answer
                after = answer.split(SEG_TOKEN)[1]
                assert re.search(r"not (found|visible|on this slice)", after), answer
                assert "removed" in after or "cover" in after, answer
            else:
                assert SEG_TOKEN not in answer and "<p>" not in answer
                assert "no lesion" in answer.lower(), answer
            seen.add("absent")
    assert seen == {"size", "laterality", "count", "host", "absent"}


def test_a_side_that_contradicts_the_label_is_not_asked():
    """Kidneys labelled left/right but lying on the wrong image sides: no laterality
    question claims a side the masks do not show."""
    masks = _masks(swap_kidneys=True)
    scene = _scene(masks)
    named = _named_masks(scene, masks)
    for turn in _turns(scene, 300, seed=1):
        assert not (turn.reasoning == "laterality" and turn.type == "implicit"), turn
        for check in check_facts(turn.answer, named, SPACING, densities={"liver lesions": "hypodense"}):
            assert check.ok, (check, turn.answer)


def test_measured_density_replaces_the_stated_one(masks):
    image = np.full(masks["body"].shape, 40.0, dtype=np.float32)
    image[masks["liver"]] = 60.0
    image[masks["liver_lesions"]] = 95.0  # brighter than the liver: hyperdense, whatever the spec says
    assert lesion_density(image, masks["liver_lesions"], masks["liver"], "CT") == "hyperdense"
    assert lesion_density(image, masks["liver_lesions"], masks["liver"], "MR") == "hyperintense"
    scene = _scene(masks, intensities=image)
    assert scene.items["liver_lesions"].attrs["density"] == "hyperdense"
    image[masks["liver_lesions"]] = 60.0  # not visible on this slice: no density is stated
    assert "density" not in _scene(masks, intensities=image).items["liver_lesions"].attrs


def test_answer_lengths_stay_small(turns):
    costs = [answer_cost(t.answer) for t in turns]
    assert max(costs) <= ANSWER_BUDGET
    assert np.mean(costs) < 0.75 * ANSWER_BUDGET


def test_a_structure_without_knowledge_is_located_on_the_image():
    shape = (100, 100)
    masks = {"body": _disc(shape, (50, 50), 48), "widget": _disc(shape, (20, 80), 8)}
    specs = {"body": MaskSpec("body", kb.get("body"), "body", "l.nii.gz", 1),
             "widget": MaskSpec("widget", kb.match_structure("widget"), "widget", "l.nii.gz", 2)}
    scene = scene_from_masks(masks, specs, (1.0, 1.0), modality="CT", plane="axial", regions=(),
                             description="CT image")
    rng = random.Random(3)
    answers = {t.answer for _ in range(200) for t in make_conversation(scene, rng) if t.masks == ("widget",)}
    # up or down only: the side is stated after the [SEG], from its measured span
    assert any("upper part of the image" in a for a in answers), answers
    assert not any(re.search(r"(left|right) of the image|image (left|right)", a) for a in answers), answers
    for answer in answers:
        assert all(c.ok for c in check_facts(answer, {"body": masks["body"], "widget": masks["widget"]}))


def test_a_procedural_dataset_states_only_true_facts(tmp_path):
    from medsegr.data.procedural import ProceduralOptions, build_procedural
    from medsegr.data.records import VolumeCache, load_dataset
    from medsegr.evaluation.facts import slice_ground_truth, summarise_facts

    build_procedural(tmp_path / "ds", ProceduralOptions(count=8, seed=5, workers=1))
    cache = VolumeCache()
    checks = []
    for split in ("train", "val", "test"):
        if not (tmp_path / "ds" / f"{split}.jsonl").exists():
            continue
        for record in load_dataset(tmp_path / "ds", split):
            truth = slice_ground_truth(record, cache)  # densities measured on the image
            for turn in record.conversation:
                for check in truth.check(turn.answer):
                    assert check.ok, (record.id, check, turn.answer)
                    checks.append(check)
    summary = summarise_facts(checks)
    assert summary["facts"] >= 20 and summary["accuracy"] == 1.0


# --------------------------------------------------------------------------- held-out wordings
def _heldout_patterns() -> list[re.Pattern[str]]:
    from medsegr.data import conversations as conv

    out = []
    for template in (*conv.HELDOUT_EXPLICIT_Q, *conv.HELDOUT_IMPLICIT_Q, *conv.HELDOUT_ABSENT_Q,
                     conv.HELDOUT_ABSENT_CLUE_Q, *(q for qs in conv.HELDOUT_SIZE_Q.values() for q in qs)):
        parts = re.split(r"\{[a-z_]+\}", template)
        out.append(re.compile(".+".join(re.escape(p) for p in parts) + "$"))
    return out


def test_the_heldout_wordings_are_never_used_by_the_training_conversations():
    patterns = _heldout_patterns()
    rng = random.Random(7)
    questions = {t.question for _ in range(400) for t in make_conversation(_scene(), rng)}
    assert len(questions) > 60
    assert not [q for q in questions if any(p.match(q) for p in patterns)]


def test_a_heldout_conversation_asks_in_the_heldout_wordings_and_answers_as_trained():
    from medsegr.data.conversations import make_heldout_conversation

    patterns = _heldout_patterns()
    kinds = Counter()
    for seed in range(60):
        turns = make_heldout_conversation(_scene(), random.Random(seed))
        assert len(turns) == 1
        turn = turns[0]
        assert any(p.match(turn.question) for p in patterns), turn.question
        kinds[turn.type] += 1
        assert check_answer_markers(turn.answer, len(turn.masks)) == []
        assert (SEG_TOKEN in turn.answer) == bool(turn.masks)
    assert set(kinds) == {"explicit", "implicit", "absent"}


def test_the_test_split_gets_one_heldout_record_per_slice_and_the_others_do_not_change():
    from medsegr.data.conversations import TEMPLATES_ATTRIBUTE
    from medsegr.data.scenes import SliceRef, records_for_scene

    def build(heldout: bool):
        return records_for_scene(_scene(), _specs(), SliceRef("images/x.nii.gz", "axial", 3, "axial"),
                                 record_id="x-axi-003", subject="x", source="s", modality="CT",
                                 count=3, rng=random.Random(5), heldout_templates=heldout)

    plain, with_heldout = build(False), build(True)
    # the slice's kidneys differ in size: a held-out size question too
    assert with_heldout[:-2] == plain and len(with_heldout) == len(plain) + 2
    for extra, suffix in zip(with_heldout[-2:], ("t0", "t1")):
        assert extra.id == f"x-axi-003-{suffix}" and extra.attributes[TEMPLATES_ATTRIBUTE] == "heldout"
        assert any(p.match(extra.conversation[0].question) for p in _heldout_patterns())
    size = with_heldout[-1].conversation[0]
    assert size.reasoning == "size" and len(size.masks) == 2 and size.answer.startswith("Measuring both")
    assert all(TEMPLATES_ATTRIBUTE not in r.attributes for r in plain)
    # no pair of clearly different size on the slice: no size record
    masks = _masks()
    masks["left_kidney"] = np.flip(masks["right_kidney"], axis=1)
    same = records_for_scene(_scene(masks), _specs(), SliceRef("images/x.nii.gz", "axial", 3, "axial"),
                             record_id="x-axi-003", subject="x", source="s", modality="CT", count=3,
                             rng=random.Random(5), heldout_templates=True)
    assert [r.id[-2:] for r in same if TEMPLATES_ATTRIBUTE in r.attributes] == ["t0"]


def test_an_absent_structure_is_named_as_a_present_one_would_be(turns):
    """What precedes an absent structure's [SEG] says nothing about this slice: the same
    openings serve present structures, so the [SEG] state carries no guess of presence
    (the grounding module's presence score and the measured span decide)."""
    absent = [t for t in turns if t.type == "absent" and t.masks]
    present = [t for t in turns if t.masks and t.type != "absent"]
    assert len(absent) >= 20

    def opening(answer: str) -> str:
        return re.sub(r"<p>.*?</p>", "#", answer.split(SEG_TOKEN)[0]).split(":")[0].strip()

    present_openings = {opening(t.answer) for t in present}
    for turn in absent:
        before = turn.answer.split(SEG_TOKEN)[0]
        assert not re.search(r"\bnot\b|\bno\b|cannot|absent|removed", before), turn.answer
    assert any(opening(t.answer) in present_openings for t in absent)
    assert any(o.startswith("Looking for the #") for o in present_openings)
