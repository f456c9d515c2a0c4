"""The anatomy vocabulary: its data file (codes checked against DICOM's SNOMED CT table,
terminology strings against Slicer's own terminology logic), name lookup, and that
every name the dataset builders make the model say resolves to a coded entry."""

from __future__ import annotations

import ast
import json
from pathlib import Path

import pytest

from medsegr import vocabulary
from medsegr.data import knowledge as kb
from medsegr.data import procedural, realimages

#: the segmentation categories of Slicer's terminology lists (DICOM CID 7150 as Slicer codes it)
SLICER_CATEGORIES = {"85756007": "Tissue", "123037004": "Anatomical Structure",
                     "49755003": "Morphologically Altered Structure", "91720002": "Body Substance"}


@pytest.fixture(scope="module")
def sct_meanings() -> dict[str, set[str]]:
    from pydicom.sr._concepts_dict import concepts

    meanings: dict[str, set[str]] = {}
    for entries in concepts["SCT"].values():
        for code, (meaning, _) in entries.items():
            meanings.setdefault(code, set()).add(meaning.lower())
    return meanings


def test_data_file_ships_with_the_package():
    assert vocabulary.DATA_FILE.name == "anatomy.json" and vocabulary.DATA_FILE.is_file()
    toml = (Path(__file__).parents[2] / "pyproject.toml").read_text()
    assert '"medsegr.vocabulary" = ["anatomy.json"]' in toml
    cmake = (Path(__file__).parents[2] / "MedSegR" / "CMakeLists.txt").read_text()
    assert "medsegr/vocabulary/anatomy.json" in cmake


def test_every_code_is_a_dicom_sct_concept_with_that_meaning(sct_meanings):
    table = vocabulary.entries()
    assert len(table) >= 90
    for entry in table:
        assert SLICER_CATEGORIES.get(entry.category.value) == entry.category.meaning, entry.key
        assert entry.category.value in sct_meanings
        for code in (entry.type, entry.type_modifier, entry.region, entry.region_modifier):
            if code is None:
                continue
            assert code.scheme == "SCT", entry.key
            assert code.value in sct_meanings, f"{entry.key}: {code.value} is not in the DICOM SCT table"
            assert code.meaning.lower() in sct_meanings[code.value], (entry.key, code, sct_meanings[code.value])


def test_entries_are_consistent():
    raw = json.loads(vocabulary.DATA_FILE.read_text())["entries"]
    assert len({e["key"] for e in raw}) == len(raw)
    assert {e["color_source"] for e in raw} <= {"slicer", "medsegr"}
    for entry in vocabulary.entries():
        assert entry.name and entry.name == entry.name.lower() and all(0 <= c <= 255 for c in entry.color)
        if entry.side is None:
            assert entry.type_modifier is None, entry.key
        else:
            assert entry.type_modifier == {"left": vocabulary.LEFT, "right": vocabulary.RIGHT}[entry.side]
            assert entry.lateral and entry.key.startswith(entry.side + "_")


def test_bad_data_is_rejected_with_the_reason():
    with pytest.raises(ValueError, match="code field 'value' must be a non-empty string"):
        vocabulary.Code.from_dict({"scheme": "SCT", "value": "", "meaning": "Liver"})
    good = json.loads(vocabulary.DATA_FILE.read_text())["entries"][0]
    with pytest.raises(ValueError, match=r"color must be \[r, g, b\] in 0-255"):
        vocabulary._entry({**good, "color": [300, 0, 0]})
    with pytest.raises(ValueError, match="side must be left, right or null"):
        vocabulary._entry({**good, "side": "up"})


def test_knowledge_base_names_and_codes_come_from_the_vocabulary():
    for structure in kb.KNOWLEDGE_BASE.values():
        entry = vocabulary.get(structure.key)
        assert (structure.name, structure.synonyms, structure.side) == (entry.name, entry.synonyms, entry.side)
        if entry.region is None:
            assert structure.snomed.code == entry.type.value and structure.snomed.meaning == entry.type.meaning
            modifier = structure.snomed.modifier
            assert (modifier.code if modifier else None) == (entry.type_modifier.value if entry.type_modifier
                                                             else None)


# --------------------------------------------------------------------------- names the builders say


def _real_image_names() -> set[str]:
    """The answer names that data/realimages.py gives its masks: the literal name of each
    ``(kb.get(...), "name")`` pair and the lesion name passed to ``_pyradiomics_ct``
    (the other masks there are named after their knowledge-base entry)."""
    tree = ast.parse(Path(realimages.__file__).read_text())
    names = set()
    for node in ast.walk(tree):
        if isinstance(node, ast.Tuple) and len(node.elts) == 2:
            first, second = node.elts
            if (isinstance(first, ast.Call) and isinstance(first.func, ast.Attribute) and first.func.attr == "get"
                    and isinstance(second, ast.Constant) and isinstance(second.value, str)):
                names.add(second.value)
        if isinstance(node, ast.Call) and getattr(node.func, "id", None) == "_pyradiomics_ct":
            names.add(node.args[3].value)  # type: ignore[attr-defined]
    return names


def builder_names() -> set[str]:
    names = {s.name for s in kb.KNOWLEDGE_BASE.values()}
    names |= set(procedural._LESION_NAMES.values())
    names |= _real_image_names()
    # scenes name several lesions of one kind in the plural ("liver lesions")
    names |= {n + "s" for n in names if not n.endswith("s")}
    return names


def test_the_builders_names_are_found():
    names = builder_names()
    assert {"lung tumour", "brain tumour", "breast lesion", "marked liver lesion", "splenic lesion",
            "white matter lesion", "left kidney lesion"} <= names  # the enumeration reaches all sources
    assert len(names) > 130


@pytest.mark.parametrize("name", sorted(builder_names()))
def test_every_name_the_builders_make_the_model_say_is_coded(name):
    entry = vocabulary.lookup(name)
    assert entry is not None, f"{name!r} has no coded vocabulary entry"
    terminology = vocabulary.segment_terminology(name)
    assert terminology["coded"] and terminology["type"]["scheme"] == "SCT" and terminology["color"]


@pytest.mark.parametrize("name, key, type_code, modifier, region", [
    ("Left kidneys", "left_kidney", "64033007", "7771000", None),
    ("kidney_left", "left_kidney", "64033007", "7771000", None),
    ("Kidney (R)", "right_kidney", "64033007", "24028007", None),
    ("L hippocampus", "left_hippocampus", "5366008", "7771000", None),
    ("left liver", "liver", "10200004", None, None),  # the liver has no side
    ("both lungs", "lungs", "39607008", None, None),
    ("Grey_Matter", "grey_matter", "389081007", None, None),
    ("deep cerebral white matter", "cerebral_white_matter", "68523003", None, None),
    ("the deep cerebral cortex", "cerebral_grey_matter", "40146001", None, None),
    ("oesophagus", "esophagus", "32849002", None, None),
    ("hepatic lesion", "liver_lesion", "52988006", None, "10200004"),
    ("Liver Tumours", "liver_tumor", "108369006", None, "10200004"),
    ("right lung nodules", "right_lung_nodule", "27925004", None, "39607008"),
    ("haematoma", "hemorrhage", "50960005", None, None),
])
def test_lookup(name, key, type_code, modifier, region):
    entry = vocabulary.lookup(name)
    assert entry is not None and entry.key == key
    assert entry.type.value == type_code
    assert (entry.type_modifier.value if entry.type_modifier else None) == modifier
    assert (entry.region.value if entry.region else None) == region


def test_region_keeps_the_side_of_its_structure():
    entry = vocabulary.lookup("left kidney lesion")
    assert entry.region.value == "64033007" and entry.region_modifier == vocabulary.LEFT
    assert entry.name == "left kidney lesion" and entry.type_modifier is None


def test_a_sided_structure_has_its_partner_on_the_other_side():
    for name, other in (("left kidney", "right kidney"), ("Right lung", "left lung"),
                        ("left cerebral hemisphere", "right cerebral hemisphere"),
                        ("right kidneys", "left kidney")):
        assert vocabulary.partner(name).name == other, name
    # no side, a finding (its side is its organ's), no entry: no partner
    for name in ("liver", "lungs", "left lung lesion", "heart", "segment 1"):
        assert vocabulary.partner(name) is None, name


def test_a_name_with_no_code_is_kept_as_free_text():
    for name in ("segment 1", "the thing", "", "  "):
        assert vocabulary.lookup(name) is None
    terminology = vocabulary.segment_terminology("Segment 1")
    assert terminology == {"name": "Segment 1", "coded": False, "key": None, "standard_name": None,
                           "category": None, "type": None, "type_modifier": None, "region": None,
                           "region_modifier": None, "color": None}
    json.dumps(terminology)


def test_segment_terminology_is_json_ready():
    terminology = vocabulary.segment_terminology("right kidney")
    assert json.loads(json.dumps(terminology)) == terminology
    assert terminology["coded"] and terminology["standard_name"] == "right kidney"
    assert terminology["type"] == {"scheme": "SCT", "value": "64033007", "meaning": "Kidney"}
    assert terminology["type_modifier"] == {"scheme": "SCT", "value": "24028007", "meaning": "Right"}
    assert terminology["category"]["value"] == "123037004" and terminology["color"] == [185, 102, 83]


# --------------------------------------------------------------------------- Slicer's format


def test_terminology_strings_are_what_slicers_terminology_logic_writes():
    slicer = pytest.importorskip("slicer")
    logic = slicer.vtkSlicerTerminologiesModuleLogic
    for name in ("left kidney", "liver", "hepatic lesion", "right kidney cyst", "scalp and skull"):
        text = vocabulary.slicer_terminology_string(vocabulary.lookup(name))
        parsed = slicer.vtkSlicerTerminologyEntry()
        assert logic.DeserializeTerminologyEntry(text, parsed)
        assert logic.SerializeTerminologyEntry(parsed) == text
        assert parsed.GetTerminologyContextName() == vocabulary.TERMINOLOGY_CONTEXT
    parsed = slicer.vtkSlicerTerminologyEntry()
    logic.DeserializeTerminologyEntry(vocabulary.slicer_terminology_string(vocabulary.lookup("right kidney cyst")),
                                      parsed)
    assert parsed.GetTypeObject().GetCodeValue() == "367643001"
    assert parsed.GetRegionObject().GetCodeValue() == "64033007"
    assert parsed.GetRegionModifierObject().GetCodeMeaning() == "Right"
    assert parsed.GetRegionContextName() == vocabulary.REGION_CONTEXT


def test_slicer_module_terminology_reads_the_same_vocabulary():
    from MedSegRLib import terminology

    for name in ("left kidney", "hepatic lesion", "cerebral white matter"):
        match = terminology.lookup(name)
        entry = vocabulary.lookup(name)
        assert match.entry == vocabulary.slicer_terminology_string(entry)
        assert match.color == pytest.approx(tuple(c / 255 for c in entry.color))
    assert terminology.lookup("segment 1") is None
