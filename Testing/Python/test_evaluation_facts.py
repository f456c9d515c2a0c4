"""The fact check of answers (medsegr.evaluation.facts) on small synthetic masks."""

from __future__ import annotations

import numpy as np
import pytest

from medsegr.evaluation.facts import check_facts, find_facts, summarise_facts

SPACING = (0.5, 0.5)  # 1 pixel = 0.25 mm²


def _disc(shape, centre, radius):
    rows, cols = np.mgrid[0:shape[0], 0:shape[1]]
    return (rows - centre[0]) ** 2 + (cols - centre[1]) ** 2 <= radius ** 2


@pytest.fixture(scope="module")
def masks():
    shape = (100, 100)
    liver = _disc(shape, (40, 28), 18)
    lesions = _disc(shape, (34, 24), 4) | _disc(shape, (48, 32), 3)  # two separate lesions in the liver
    return {
        "body": _disc(shape, (50, 50), 48),
        "right kidney": _disc(shape, (70, 25), 8),   # image left: the patient's right
        "left kidney": _disc(shape, (70, 75), 11),   # image right: the patient's left
        "aorta": _disc(shape, (72, 51), 4),          # on the midline
        "liver": liver,
        "liver lesions": lesions,
    }


def _area(mask) -> float:
    return np.count_nonzero(mask) * SPACING[0] * SPACING[1] / 100.0


def _by_kind(checks):
    return {c.kind: c for c in checks}


def test_a_true_size_answer_passes(masks):
    big, small = _area(masks["left kidney"]), _area(masks["right kidney"])
    answer = (f"Left kidney {big:.1f} cm², right kidney {small:.1f} cm²: the larger is the "
              f"<p>left kidney</p> [SEG].")
    checks = check_facts(answer, masks, SPACING)
    assert [(c.kind, c.structure, c.ok) for c in checks] == [("area", "left kidney", True),
                                                             ("area", "right kidney", True)]
    # 15 % off passes, 30 % off does not
    close = check_facts(f"The <p>left kidney</p> [SEG] covers {big * 1.12:.1f} cm².", masks, SPACING)
    far = check_facts(f"The <p>left kidney</p> [SEG] covers {big * 1.3:.1f} cm².", masks, SPACING)
    assert close[0].ok and not far[0].ok
    # the areas swapped: both wrong
    swapped = check_facts(f"Left kidney {small:.1f} cm², right kidney {big:.1f} cm².", masks, SPACING)
    assert [c.ok for c in swapped] == [False, False]


def test_sides(masks):
    good = check_facts("The patient's left is the image right; the kidney there is the "
                       "<p>left kidney</p> [SEG].", masks, SPACING, patient_left="right")
    assert {c.kind: c.ok for c in good} == {"side": True, "image_side": True}
    bad = check_facts("On the image left, the patient's left: the <p>left kidney</p> [SEG].", masks, SPACING)
    assert {c.kind: c.ok for c in bad} == {"side": True, "image_side": False}
    wrong = check_facts("Its partner lies on the image right, the patient's left: the <p>right kidney</p> [SEG].",
                        masks, SPACING)
    assert [c.ok for c in wrong] == [False, False]
    # a mirrored display (patient's left on the image left)
    mirrored = check_facts("The <p>left kidney</p> [SEG], on the patient's right.", masks, SPACING,
                           patient_left="left")
    assert mirrored[0].ok
    # no patient side on a sagittal view; near the midline either side is accepted
    sagittal = check_facts("The <p>left kidney</p> [SEG], on the patient's left.", masks, SPACING,
                           patient_left=None)
    assert not sagittal[0].ok and "not known" in sagittal[0].detail
    midline = check_facts("The <p>aorta</p> [SEG], slightly to the patient's right.", masks, SPACING)
    assert midline[0].ok and midline[0].truth == "midline"
    # "left of the image" also counts as an image side
    assert check_facts("In the lower left of the image: the <p>right kidney</p> [SEG].", masks, SPACING)[0].ok


def test_a_negated_side_holds_when_the_structure_is_on_the_other_side(masks):
    both = check_facts("The <p>left kidney</p> [SEG] is on the patient's left, not the patient's right.",
                       masks, SPACING)
    assert [(c.stated, c.truth, c.ok) for c in both] == [("left", "left", True), ("not right", "left", True)]
    untrue = check_facts("The <p>left kidney</p> [SEG], not on the patient's left.", masks, SPACING)
    assert [(c.stated, c.ok) for c in untrue] == [("not left", False)]
    image = check_facts("The <p>right kidney</p> [SEG] lies rather than the right of the image on its left "
                        "half.", masks, SPACING)
    assert [(c.kind, c.stated, c.ok) for c in image] == [("image_side", "not right", True)]
    # a "not" further back in the sentence does not negate the side
    far = check_facts("Not a lesion: the <p>right kidney</p> [SEG], on the patient's left.", masks, SPACING)
    assert [(c.stated, c.ok) for c in far] == [("left", False)]
    # near the midline a negated side is accepted like a stated one
    assert check_facts("The <p>aorta</p> [SEG], not to the patient's right.", masks, SPACING)[0].ok


def test_lesion_count_size_and_density(masks):
    diameter = 2 * np.sqrt(np.count_nonzero(_disc((100, 100), (34, 24), 4)) * 0.25 / np.pi)
    answer = (f"Two hypodense lesions in the liver, the largest about {diameter:.0f} mm: the "
              f"<p>liver lesions</p> [SEG].")
    checks = _by_kind(check_facts(answer, masks, SPACING, densities={"liver lesions": "hypodense"}))
    assert set(checks) == {"count", "density", "size"}
    assert all(c.ok and c.structure == "liver lesions" for c in checks.values()), checks
    wrong = _by_kind(check_facts("Three hyperdense lesions: the <p>liver lesions</p> [SEG].", masks, SPACING,
                                 densities={"liver lesions": "hypodense"}))
    assert not wrong["count"].ok and wrong["count"].truth == 2
    assert not wrong["density"].ok
    # digits and other nouns; "a single" is one
    assert not check_facts("I count 3 foci: the <p>liver lesions</p> [SEG].", masks, SPACING)[0].ok
    assert check_facts("2 nodules here: the <p>liver lesions</p> [SEG].", masks, SPACING)[0].ok
    assert not check_facts("A single lesion: the <p>liver lesions</p> [SEG].", masks, SPACING)[0].ok


def test_density_from_the_intensities(masks):
    image = np.full((100, 100), 40.0, dtype=np.float32)
    image[masks["liver"]] = 60.0
    image[masks["liver lesions"]] = 20.0
    # a lesion fact next to its organ's name belongs to the lesion inside that organ
    answer = "A hypodense focus lies inside the <p>liver</p> [SEG]."
    check = check_facts(answer, masks, SPACING, intensities=image)[0]
    assert check.structure == "liver lesions" and check.ok and check.truth == "hypo"
    assert not check_facts("A hyperintense focus lies inside the <p>liver</p> [SEG].", masks, SPACING,
                           intensities=image, modality="MR")[0].ok
    # no intensities and no known density: cannot be checked, so not ok
    unknown = check_facts(answer, masks, SPACING)[0]
    assert not unknown.ok and "not known" in unknown.detail


def test_attribution_and_unknown_structures(masks):
    facts = find_facts("The right kidney measures 3.0 cm², the left kidney 9.5 cm²; smaller: the "
                       "<p>right kidney</p> [SEG].", list(masks))
    assert [(f.kind, f.stated, f.structure) for f in facts] == [("area", 3.0, "right kidney"),
                                                               ("area", 9.5, "left kidney")]
    # an area of a structure the slice does not have
    only = {"liver": masks["liver"], "left kidney": masks["left kidney"]}
    check = check_facts("The <p>spleen</p> [SEG] covers 12.0 cm².", only, SPACING)[0]
    assert not check.ok and check.structure == "spleen" and "no ground-truth mask" in check.detail
    # facts inside a name are not facts; answers without facts give no checks
    assert check_facts("The <p>left kidney</p> [SEG].", masks, SPACING) == []
    assert check_facts("There is no gallbladder in this image: it was removed.", masks, SPACING) == []


def test_summary(masks):
    area = _area(masks["liver"])
    checks = check_facts(f"The liver covers {area:.1f} cm², on the patient's left: the <p>liver</p> [SEG].",
                         masks, SPACING)
    summary = summarise_facts(checks)
    assert summary == {"facts": 2, "correct": 1, "accuracy": 0.5, "by_kind": {"side": [1, 0], "area": [1, 1]}}
    assert summarise_facts([])["accuracy"] is None
    assert checks[0].to_json()["kind"] == checks[0].kind
