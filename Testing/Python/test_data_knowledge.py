"""The anatomy knowledge base (codes checked against DICOM's SNOMED CT table), label-name
matching, and the conversations built from a scene."""

from __future__ import annotations

import random

import numpy as np
import pytest

from medsegr.data import knowledge as kb
from medsegr.data.conversations import Absence, make_conversation
from medsegr.data.records import check_answer_markers, is_absent_key
from medsegr.data.scenes import MaskSpec, scene_from_masks
from medsegr.evaluation.comparisons import comparative_claim


def test_every_snomed_code_is_a_dicom_sct_concept_with_that_meaning():
    from pydicom.sr._concepts_dict import concepts

    meanings: dict[str, set[str]] = {}
    for entries in concepts["SCT"].values():
        for code, (meaning, _) in entries.items():
            meanings.setdefault(code, set()).add(meaning.lower())
    coded = [s for s in kb.KNOWLEDGE_BASE.values() if s.snomed is not None]
    assert len(coded) >= 50
    for structure in coded:
        code = structure.snomed
        assert code.code in meanings, f"{structure.key}: {code.code} is not in the DICOM SCT table"
        assert code.meaning.lower() in meanings[code.code], (structure.key, code.meaning, meanings[code.code])
        if structure.side:
            assert code.modifier == (kb.LEFT if structure.side == "left" else kb.RIGHT)
    assert "left" in meanings[kb.LEFT.code] and "right" in meanings[kb.RIGHT.code]


def test_entries_are_complete():
    for structure in kb.KNOWLEDGE_BASE.values():
        assert structure.name and structure.noun and structure.kind
        if structure.kind != "lesion":
            assert structure.clues, structure.key
    for key in ("liver", "spleen", "left_kidney", "right_kidney", "aorta", "vertebra", "bone", "brain",
                "grey_matter", "white_matter", "lateral_ventricles", "head", "body", "scalp_skull"):
        entry = kb.get(key)
        assert entry.location and entry.appearance, key


@pytest.mark.parametrize("label, key, name", [
    ("liver", "liver", "liver"), ("LIVER", "liver", "liver"), ("Liver_Parenchyma", "liver", "liver"),
    ("kidney_left", "left_kidney", "left kidney"), ("Kidney (R)", "right_kidney", "right kidney"),
    ("L kidney", "left_kidney", "left kidney"), ("kidneys", "kidneys", "kidneys"),
    ("lung_right", "right_lung", "right lung"), ("gray_matter", "grey_matter", "grey matter"),
    ("White-Matter", "white_matter", "white matter"), ("vertebrae_L1", "vertebra_l1", "L1 vertebra"),
    ("adrenal_gland_left", "left_adrenal_gland", "left adrenal gland"), ("cancer", "tumor", "tumour"),
    ("urinary_bladder", "urinary_bladder", "urinary bladder"), ("spleen", "spleen", "spleen"),
])
def test_label_names_match_entries(label, key, name):
    structure = kb.match_structure(label)
    assert (structure.key, structure.name) == (key, name)
    assert structure.known


def test_lesion_and_unknown_names():
    tumour = kb.match_structure("Liver Tumour")
    assert tumour.kind == "lesion" and tumour.name == "liver tumour" and tumour.snomed.code == "108369006"
    edema = kb.match_structure("peritumoral_edema")
    assert edema.kind == "lesion"
    hip = kb.match_structure("hip_left")
    assert hip.known is False and hip.name == "hip left"
    thing = kb.match_structure("iliopsoas muscle")
    assert thing.known is False and thing.name == "iliopsoas muscle"
    with pytest.raises(ValueError):
        kb.match_structure("  ")


def test_absent_candidates_are_outside_the_scanned_region():
    head_absent = {s.key for s in kb.absent_candidates({"head"})}
    assert {"liver", "kidneys", "spleen", "lungs"} <= head_absent
    assert not {"brain", "skull", "body", "bone", "trachea", "spinal_cord"} & head_absent  # neck: nearby
    abdomen_absent = {s.key for s in kb.absent_candidates({"abdomen"})}
    assert "brain" in abdomen_absent and not {"liver", "aorta", "lungs", "heart"} & abdomen_absent
    chest_absent = {s.key for s in kb.absent_candidates({"chest"})}
    assert "brain" in chest_absent and not {"liver", "spleen", "kidneys"} & chest_absent


# --------------------------------------------------------------------------- conversations


def _disc(shape, centre, radius):
    rows, cols = np.mgrid[0:shape[0], 0:shape[1]]
    return (rows - centre[0]) ** 2 + (cols - centre[1]) ** 2 <= radius ** 2


@pytest.fixture
def scene():
    """An axial abdomen slice in display orientation: the patient's left on the image right."""
    shape = (120, 120)
    masks = {
        "body": _disc(shape, (60, 60), 58),
        "liver": _disc(shape, (50, 35), 20),
        "right_kidney": _disc(shape, (80, 35), 9),   # image left = patient right
        "left_kidney": _disc(shape, (80, 85), 13),   # image right = patient left, larger
        "liver_lesions": _disc(shape, (50, 35), 5),
    }
    specs = {k: MaskSpec(k, kb.get(k), kb.get(k).name, "labels/x.nii.gz", n + 1)
             for n, k in enumerate(["body", "liver", "right_kidney", "left_kidney"])}
    specs["liver_lesions"] = MaskSpec("liver_lesions", kb.get("lesion"), "liver lesion", "labels/y.nii.gz", 1,
                                      {"host": "liver", "density": "hypodense"})
    return scene_from_masks(masks, specs, (1.0, 1.0), modality="CT", plane="axial", regions=("abdomen",),
                            description="abdominal CT", absences=[Absence(kb.get("gallbladder"), "it was removed")],
                            lesion_hosts=("liver", "right_kidney", "left_kidney"))


def test_scene_facts(scene):
    assert scene.items["liver_lesions"].attrs["count"] == 1
    assert scene.lesion_free == ["right_kidney", "left_kidney"]
    assert "liver_lesions" in scene.contains["liver"] and "liver" in scene.contains["body"]


def test_an_organ_with_a_tiny_lesion_is_not_called_lesion_free():
    shape = (80, 80)
    masks = {"liver": _disc(shape, (40, 40), 25), "liver_lesions": _disc(shape, (40, 40), 1)}
    specs = {"liver": MaskSpec("liver", kb.get("liver"), "liver", "l.nii.gz", 1),
             "liver_lesions": MaskSpec("liver_lesions", kb.get("lesion"), "liver lesion", "l.nii.gz", 2,
                                       {"host": "liver"})}
    scene = scene_from_masks(masks, specs, (1.0, 1.0), modality="CT", plane="axial", regions=("abdomen",),
                             description="CT", lesion_hosts=("liver",))
    assert "liver_lesions" not in scene.items  # too small to ask about ...
    assert scene.lesion_free == []  # ... but the liver is not said to be free of lesions


def _many(scene, n=400):
    rng = random.Random(0)
    return [make_conversation(scene, rng) for _ in range(n)]


def test_reasoning_answers_are_right(scene):
    seen = set()
    for turns in _many(scene):
        for turn in turns:
            assert check_answer_markers(turn.answer, len(turn.masks)) == []
            q = turn.question
            if turn.reasoning == "size" and turn.type == "implicit":
                # both kidneys segmented; the conclusion, after their measured spans,
                # names the asked one
                assert sorted(turn.masks) == ["left_kidney", "right_kidney"]
                chosen = "left kidney" if ("larger" in q or "bigger" in q) else "right kidney"
                assert chosen in turn.answer.split("[SEG]")[-1], turn.answer
                seen.add("size")
            if turn.reasoning == "size" and turn.type == "multi-turn":
                # the partner segmented; the conclusion agrees with the areas (left larger)
                claim = comparative_claim(turn.answer.split("[SEG]")[-1], ["left kidney", "right kidney"])
                assert len(turn.masks) == 1 and claim is not None, turn.answer
                assert claim in (("left kidney", "larger"), ("right kidney", "smaller")), turn.answer
            if turn.type == "implicit" and turn.reasoning == "laterality":
                side = "left" if ("patient's left" in q or "image right" in q or "right side of the image" in q
                                  or "right of the picture" in q) else "right"
                assert turn.masks == (f"{side}_kidney",), q
                seen.add("laterality")
            if turn.reasoning == "lesion" and turn.type == "implicit" and "hypodense lesion" in q:
                assert turn.masks == ("liver",)
                seen.add("host")
            if turn.type == "absent":
                # no mask, or the absent structure named with a [SEG] bound to an empty one
                assert all(is_absent_key(k) for k in turn.masks), turn
                seen.add("absent")
            if "Now only the lesion" in q or "just the lesion" in q:
                assert turn.masks == ("liver_lesions",)
                seen.add("follow-lesion")
    assert seen == {"size", "laterality", "host", "absent", "follow-lesion"}


def test_absent_questions_are_true(scene):
    present = {i.entry.name for i in scene.items.values()}
    for turns in _many(scene):
        for turn in turns:
            if turn.type == "absent" and turn.reasoning == "absent":
                assert not any(f"the {name} " in turn.answer or f"no {name} " in turn.answer for name in present)
            if turn.type == "absent" and "kidney" in turn.question and turn.reasoning == "lesion":
                assert "no lesion" in turn.answer or "normal" in turn.answer
            if "liver" in turn.question and turn.reasoning == "lesion" and "abnormal" in turn.question:
                assert turn.type == "implicit" and turn.masks == ("liver_lesions",)


def test_an_empty_scene_gives_no_conversation():
    from medsegr.data.conversations import Scene

    scene = Scene(modality="MR", plane="axial", regions=(), items={})
    assert make_conversation(scene, random.Random(0)) == []
