"""Standard names, codes and colours for the structures an answer names.

3D Slicer describes what a segment shows with a *terminology entry*: category, type
and optional modifier, each a coded concept (SNOMED CT here), in the "3D Slicer
General Anatomy list" context. A segment that carries the entry shows its standard
meaning in the Segment Editor and exports correctly to DICOM SEG. The table below
holds the SNOMED CT codes and the recommended display colours of that list for the
structures CT/MR questions are usually about; :func:`lookup` maps a free-text
structure name from an answer ("Left kidneys", "grey matter", "a tumour") onto it.
Names that match nothing keep their text, get no entry, and a distinct colour.
"""

from __future__ import annotations

import re
from dataclasses import dataclass

CONTEXT = "Segmentation category and type - 3D Slicer General Anatomy list"
ANATOMIC_CONTEXT = "Anatomic codes - DICOM master list"

CATEGORIES = {
    "85756007": "Tissue",
    "123037004": "Anatomical Structure",
    "49755003": "Morphologically Altered Structure",
    "91720002": "Body Substance",
}
LATERALITY = {"left": ("7771000", "Left"), "right": ("24028007", "Right")}

#: (category code, SNOMED CT code, meaning, recommended RGB, has left/right modifiers)
_TYPES: tuple[tuple[str, str, str, tuple[int, int, int], bool], ...] = (
    ("85756007", "51114001", "Artery", (216, 101, 79), False),
    ("85756007", "248300009", "Body fat", (230, 220, 70), False),
    ("85756007", "272673000", "Bone", (241, 214, 145), False),
    ("85756007", "309312004", "Cartilage", (111, 184, 210), False),
    ("85756007", "59441001", "Lymph node", (68, 172, 100), False),
    ("85756007", "71616004", "Muscle", (192, 104, 88), False),
    ("85756007", "119410002", "Nerve", (244, 214, 49), False),
    ("85756007", "39937001", "Skin", (177, 122, 101), False),
    ("85756007", "13024002", "Tendon", (152, 189, 207), False),
    ("85756007", "29092000", "Vein", (0, 151, 206), False),
    ("123037004", "113345001", "Abdomen", (177, 122, 101), False),
    ("123037004", "23451007", "Adrenal gland", (249, 186, 150), True),
    ("123037004", "4958002", "Amygdala", (98, 153, 112), True),
    ("123037004", "15825003", "Aorta", (224, 97, 76), False),
    ("123037004", "28273000", "Bile Duct", (0, 145, 30), False),
    ("123037004", "89837001", "Bladder", (222, 154, 132), False),
    ("123037004", "12738006", "Brain", (250, 250, 225), False),
    ("123037004", "35764002", "Brain ventricle", (88, 106, 215), False),
    ("123037004", "11000004", "Caudate nucleus", (30, 111, 85), True),
    ("123037004", "33060004", "Cerebellar white matter", (194, 195, 164), False),
    ("123037004", "40146001", "Cerebral Grey Matter", (128, 174, 128), False),
    ("123037004", "68523003", "Cerebral White Matter", (250, 250, 225), False),
    ("123037004", "389081007", "Gray Matter", (200, 200, 235), False),
    ("123037004", "389080008", "White Matter", (250, 250, 210), False),
    ("123037004", "10200004", "Liver", (221, 130, 101), False),
    ("123037004", "3120008", "Pleura", (255, 245, 217), False),
    ("123037004", "113197003", "Rib", (253, 232, 158), False),
    ("123037004", "78961009", "Spleen", (157, 108, 162), False),
    ("123037004", "122494005", "Cervical spine", (255, 255, 207), False),
    ("123037004", "51299004", "Clavicle", (205, 179, 108), True),
    ("123037004", "71854001", "Colon", (204, 168, 143), False),
    ("123037004", "88442005", "Corpus callosum", (97, 113, 158), False),
    ("123037004", "38848004", "Duodenum", (255, 253, 229), False),
    ("123037004", "32849002", "Esophagus", (211, 171, 143), False),
    ("123037004", "79652003", "Eyeball", (194, 142, 0), True),
    ("123037004", "83251001", "Frontal lobe", (83, 146, 164), True),
    ("123037004", "28231008", "Gallbladder", (139, 150, 98), False),
    ("123037004", "69536005", "Head", (177, 122, 101), False),
    ("123037004", "80891009", "Heart", (206, 110, 84), False),
    ("123037004", "64033007", "Kidney", (185, 102, 83), True),
    ("123037004", "4596009", "Larynx", (150, 208, 243), False),
    ("123037004", "66720007", "Lateral ventricle", (88, 106, 215), True),
    ("123037004", "122496007", "Lumbar spine", (212, 188, 102), False),
    ("123037004", "39607008", "Lung", (197, 165, 145), True),
    ("123037004", "91609006", "Mandible", (222, 198, 101), False),
    ("123037004", "72410000", "Mediastinum", (255, 244, 209), False),
    ("123037004", "45048000", "Neck", (177, 122, 101), False),
    ("123037004", "31065004", "Occipital lobe", (182, 166, 110), True),
    ("123037004", "244453006", "Optic chiasm", (99, 106, 24), False),
    ("123037004", "15776009", "Pancreas", (249, 180, 111), False),
    ("123037004", "16630005", "Parietal lobe", (141, 93, 137), True),
    ("123037004", "76848001", "Pericardium", (255, 244, 209), False),
    ("123037004", "56329008", "Pituitary", (57, 157, 110), False),
    ("123037004", "41216001", "Prostate", (230, 158, 140), False),
    ("123037004", "89278009", "Putamen", (210, 157, 166), True),
    ("123037004", "89546000", "Skull", (241, 213, 144), False),
    ("123037004", "30315005", "Small Intestine", (205, 167, 142), False),
    ("123037004", "2748008", "Spinal cord", (244, 214, 49), False),
    ("123037004", "56873002", "Sternum", (244, 217, 154), False),
    ("123037004", "69695003", "Stomach", (216, 132, 105), False),
    ("123037004", "35951006", "Subarachnoid space", (88, 106, 215), False),
    ("123037004", "78277001", "Temporal lobe", (162, 115, 105), True),
    ("123037004", "119406000", "Thalamus", (122, 101, 38), True),
    ("123037004", "122495006", "Thoracic spine", (226, 202, 134), False),
    ("123037004", "51185008", "Thorax", (177, 122, 101), False),
    ("123037004", "69748006", "Thyroid", (62, 162, 114), False),
    ("123037004", "44567001", "Trachea", (182, 228, 255), False),
    ("123037004", "35039007", "Uterus", (255, 181, 158), False),
    ("49755003", "75753009", "Blood clot", (145, 60, 66), False),
    ("49755003", "367643001", "Cyst", (205, 205, 100), False),
    ("49755003", "79654002", "Edema", (140, 224, 228), False),
    ("49755003", "50960005", "Hemorrhage", (188, 65, 28), False),
    ("49755003", "4147007", "Mass", (144, 238, 144), False),
    ("49755003", "6574001", "Necrosis", (216, 191, 216), False),
    ("91720002", "70150004", "Bile", (0, 145, 30), False),
    ("91720002", "32457005", "Body fluid", (170, 250, 250), False),
    ("91720002", "74947009", "Gas", (218, 255, 255), False),
    ("91720002", "78014005", "Urine", (214, 230, 130), False),
)

#: other ways answers name a type (normalised: lower case, singular, British or US)
_SYNONYMS: dict[str, str] = {
    "fat": "Body fat", "adipose tissue": "Body fat", "subcutaneous fat": "Body fat",
    "bony structure": "Bone", "osseous structure": "Bone", "skeleton": "Bone",
    "lymph node": "Lymph node",
    "urinary bladder": "Bladder", "ventricle": "Brain ventricle",
    "ventricular system": "Brain ventricle", "cerebral ventricle": "Brain ventricle",
    "caudate": "Caudate nucleus", "cerebral cortex": "Cerebral Grey Matter",
    "cortical grey matter": "Cerebral Grey Matter", "cerebral grey matter": "Cerebral Grey Matter",
    "cerebral gray matter": "Cerebral Grey Matter", "grey matter": "Gray Matter",
    "gray matter": "Gray Matter", "white matter": "White Matter",
    "cerebral white matter": "Cerebral White Matter", "gall bladder": "Gallbladder",
    "oesophagus": "Esophagus", "eye": "Eyeball", "globe": "Eyeball",
    "frontal lobe": "Frontal lobe", "whole head": "Head", "hepatic parenchyma": "Liver",
    "pulmonary parenchyma": "Lung", "small bowel": "Small Intestine",
    "large bowel": "Colon", "large intestine": "Colon", "pituitary gland": "Pituitary",
    "prostate gland": "Prostate", "cranium": "Skull", "calvarium": "Skull",
    "chest": "Thorax", "thyroid gland": "Thyroid", "womb": "Uterus",
    "thrombus": "Blood clot", "clot": "Blood clot", "oedema": "Edema",
    "haemorrhage": "Hemorrhage", "bleed": "Hemorrhage", "bleeding": "Hemorrhage",
    "hematoma": "Hemorrhage", "haematoma": "Hemorrhage", "tumor": "Mass",
    "tumour": "Mass", "lesion": "Mass", "neoplasm": "Mass", "nodule": "Mass",
    "mass lesion": "Mass", "metastasis": "Mass", "metastases": "Mass",
    "fluid": "Body fluid", "air": "Gas", "cerebrospinal fluid": "Subarachnoid space",
    "csf": "Subarachnoid space",
}

_BY_MEANING = {t[2].lower(): t for t in _TYPES}
_ARTICLES = re.compile(r"^(the|a|an|both|all)\s+")
_LATERAL = re.compile(r"\b(left|right)\b")
_WORD_CHARS = re.compile(r"[^a-z0-9 ]+")

#: distinct colours for names that match no terminology entry (0-255 RGB)
PALETTE: tuple[tuple[int, int, int], ...] = (
    (230, 25, 75), (60, 180, 75), (255, 225, 25), (0, 130, 200), (245, 130, 48),
    (145, 30, 180), (70, 240, 240), (240, 50, 230), (210, 245, 60), (250, 190, 212),
    (0, 128, 128), (220, 190, 255), (170, 110, 40), (128, 0, 0), (170, 255, 195),
)


@dataclass(frozen=True)
class TerminologyMatch:
    """A structure name resolved to a terminology entry."""

    entry: str  # the segment's terminology string (Slicer's ``~``/``^`` format)
    meaning: str  # e.g. "Kidney"
    code: str  # SNOMED CT code of the type
    laterality: str | None  # "Left" / "Right" / None
    color: tuple[float, float, float]  # recommended display colour, 0-1

    @property
    def standard_name(self) -> str:
        base = self.meaning if self.meaning[:1].isupper() else self.meaning.capitalize()
        return f"{self.laterality} {base.lower()}" if self.laterality else base


def normalise(name: str) -> str:
    """Lower case, plain words, no article."""
    text = _WORD_CHARS.sub(" ", name.lower().replace("-", " ")).strip()
    text = re.sub(r"\s+", " ", text)
    return _ARTICLES.sub("", text).strip()


def _singular(text: str) -> list[str]:
    forms = [text]
    if text.endswith("ies"):
        forms.append(text[:-3] + "y")
    if text.endswith("es"):
        forms.append(text[:-2])
    if text.endswith("s") and not text.endswith("ss"):
        forms.append(text[:-1])
    return forms


def _find_type(text: str) -> tuple[str, str, str, tuple[int, int, int], bool] | None:
    for form in _singular(text):
        if form in _BY_MEANING:
            return _BY_MEANING[form]
        if form in _SYNONYMS:
            return _BY_MEANING[_SYNONYMS[form].lower()]
    return None


def lookup(name: str) -> TerminologyMatch | None:
    """The terminology entry for a structure name, or None when it is not known."""
    text = normalise(name)
    if not text:
        return None
    sides = set(_LATERAL.findall(text))
    core = _LATERAL.sub(" ", text)
    core = re.sub(r"\s+", " ", core).strip()
    core = _ARTICLES.sub("", core).strip()
    found = _find_type(core)
    if found is None:
        return None
    category, code, meaning, rgb, lateral = found
    laterality = None
    if lateral and len(sides) == 1:
        laterality = LATERALITY[sides.pop()][1]
    modifier = "^^"
    if laterality is not None:
        mod_code, mod_meaning = LATERALITY[laterality.lower()]
        modifier = f"SCT^{mod_code}^{mod_meaning}"
    entry = (f"{CONTEXT}~SCT^{category}^{CATEGORIES[category]}~SCT^{code}^{meaning}"
             f"~{modifier}~{ANATOMIC_CONTEXT}~^^~^^")
    return TerminologyMatch(entry=entry, meaning=meaning, code=code, laterality=laterality,
                            color=tuple(c / 255.0 for c in rgb))  # type: ignore[arg-type]


def palette_color(used: list[tuple[float, float, float]]) -> tuple[float, float, float]:
    """The first palette colour not already used (0-1 RGB), cycling when all are."""
    used_255 = {tuple(round(c * 255) for c in color) for color in used}
    for rgb in PALETTE:
        if rgb not in used_255:
            return tuple(c / 255.0 for c in rgb)  # type: ignore[return-value]
    rgb = PALETTE[len(used) % len(PALETTE)]
    return tuple(c / 255.0 for c in rgb)  # type: ignore[return-value]
