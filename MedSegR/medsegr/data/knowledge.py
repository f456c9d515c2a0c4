"""The anatomy knowledge base behind the generated questions and answers.

Each :class:`Structure` holds what a question can be built from: the body system,
*clues* (what it does or is; a clue completes "Which organ ...?"), its location,
its appearance per modality (CT density, T1 and T2 signal) and the body regions it
lies in (used to ask about structures that cannot be in an image: a liver in a head
scan). Names, synonyms, sides and SNOMED CT codes come from the anatomy vocabulary
(:mod:`medsegr.vocabulary`, one data file shared with the engine and the Slicer
module; codes checked against the DICOM code tables in the tests), by key.

:func:`match_structure` maps a user's label name (``"kidney_left"``,
``"Liver Tumour"``, ``"vertebrae_L1"``) to an entry: case, ``_``/``-`` and plural
insensitive, with synonyms, sides (``left``/``l``/``lt``) and lesion words.
"""

from __future__ import annotations

import re
from dataclasses import dataclass, field, replace

from medsegr import vocabulary
from medsegr.data.records import SnomedCode

__all__ = [
    "KNOWLEDGE_BASE",
    "LEFT",
    "REGIONS",
    "RIGHT",
    "Structure",
    "absent_candidates",
    "get",
    "match_structure",
    "normalise_name",
    "sided",
]

LEFT = SnomedCode(vocabulary.LEFT.value, vocabulary.LEFT.meaning, vocabulary.LEFT.scheme)
RIGHT = SnomedCode(vocabulary.RIGHT.value, vocabulary.RIGHT.meaning, vocabulary.RIGHT.scheme)
#: the body regions a scan can cover
REGIONS = ("head", "neck", "chest", "abdomen", "pelvis", "limbs")


@dataclass(frozen=True)
class Structure:
    """One anatomical structure or finding.

    Attributes:
        key: identifier (also the default mask key), e.g. ``left_kidney``.
        name: how answers name it inside ``<p>…</p>``, e.g. ``left kidney``.
        noun: the word a question uses for it: ``organ``, ``tissue``, ``bone``, ...
        plural: the name is plural ("kidneys"): clues use plural verbs.
        kind: ``organ``, ``tissue``, ``bone``, ``vessel``, ``space``, ``region`` or ``lesion``.
        system: the body system ("urinary system"), or ``""``.
        clues: phrases that complete "Which <noun> ...?" and identify it.
        location: where it lies ("in the right upper abdomen").
        appearance: modality (``CT``, ``T1``, ``T2``) -> how it looks.
        snomed: SNOMED CT code (with laterality modifier for sided structures).
        synonyms: other names a label table may use.
        regions: body regions it lies in (empty: anywhere, never asked as absent).
        side: ``left``/``right`` for a sided structure (patient side), else None.
        pair: the key of the two-sided entry ("kidneys" for "left_kidney").
        known: False for an entry made up from an unknown label name.
    """

    key: str
    name: str
    noun: str
    kind: str
    system: str = ""
    clues: tuple[str, ...] = ()
    location: str = ""
    appearance: dict[str, str] = field(default_factory=dict)
    snomed: SnomedCode | None = None
    synonyms: tuple[str, ...] = ()
    regions: tuple[str, ...] = ()
    plural: bool = False
    side: str | None = None
    pair: str | None = None
    known: bool = True

    def looks(self, modality: str, sequence: str | None = None) -> str:
        """The appearance phrase for a modality (MR: ``T1``/``T2`` when known), or ``""``."""
        if modality == "CT":
            return self.appearance.get("CT", "")
        if modality == "MR":
            return self.appearance.get(sequence or "T1", "") or self.appearance.get("T2", "")
        return ""

    @property
    def be(self) -> str:
        """``is`` or ``are``."""
        return "are" if self.plural else "is"


def _snomed(entry: vocabulary.AnatomyEntry) -> SnomedCode | None:
    """The record code of a vocabulary entry: its type with the laterality modifier
    (None for an entry coded only through an anatomic region, e.g. "scalp and skull")."""
    if entry.region is not None:
        return None
    modifier = {"left": LEFT, "right": RIGHT}.get(entry.side or "")
    return SnomedCode(entry.type.value, entry.type.meaning, entry.type.scheme, modifier)


def _structure(key: str, noun: str, kind: str, system: str, clues: tuple[str, ...], location: str,
               appearance: dict[str, str], regions: tuple[str, ...], plural: bool = False, **more: object,
               ) -> Structure:
    """A knowledge-base entry: name, synonyms, side and code from the anatomy vocabulary
    (``medsegr/vocabulary/anatomy.json``), the rest given here."""
    entry = vocabulary.get(key)
    return Structure(key=key, name=entry.name, noun=noun, kind=kind, system=system, clues=clues,
                     location=location, appearance=appearance, snomed=_snomed(entry), synonyms=entry.synonyms,
                     regions=regions, plural=plural, side=entry.side, **more)  # type: ignore[arg-type]


def _entries() -> list[Structure]:
    abdomen, chest, head = ("abdomen",), ("chest",), ("head",)
    out = [
        # ---- whole-body regions
        _structure("body", "region", "region", "",
                   ("includes all of the patient's tissue but not the table or the air",
                    "is bounded by the skin", "is everything inside the skin line"),
                   "everything inside the skin",
                   {"CT": "all tissue denser than air inside the skin line",
                    "T1": "all signal-bearing tissue inside the skin line",
                    "T2": "all signal-bearing tissue inside the skin line"},
                   ()),
        _structure("head", "region", "region", "",
                   ("contains the skull, the scalp and the brain", "is the whole cross-section of the head",
                    "includes the brain and everything around it up to the skin"),
                   "above the neck",
                   {"CT": "bone ring of the skull with soft tissue inside and outside it",
                    "T1": "bright scalp fat around a dark skull and the brain",
                    "T2": "scalp, a dark skull and bright fluid around the brain"},
                   head),
        # ---- brain
        _structure("brain", "organ", "organ", "central nervous system",
                   ("controls thought, movement and sensation", "is protected by the skull",
                    "is made of grey and white matter", "is the main organ of the central nervous system",
                    "is removed from the skull in skull stripping"),
                   "inside the skull",
                   {"CT": "soft tissue of 20-45 HU inside the skull",
                    "T1": "grey matter darker than white matter inside the skull",
                    "T2": "grey matter brighter than white matter, bright CSF around it"},
                   head),
        _structure("grey_matter", "tissue", "tissue", "central nervous system",
                   ("holds most neuronal cell bodies", "forms the cerebral cortex",
                    "is the folded outer ribbon of the brain", "processes information in the cortex"),
                   "in the cortical ribbon and the deep nuclei",
                   {"CT": "slightly denser than white matter",
                    "T1": "darker than white matter", "T2": "brighter than white matter"},
                   head),
        _structure("white_matter", "tissue", "tissue", "central nervous system",
                   ("is made of myelinated axons", "connects cortical regions with each other",
                    "forms the deep, myelinated part of the cerebral hemispheres",
                    "carries signals between brain regions"),
                   "deep to the cortex in both hemispheres",
                   {"CT": "slightly less dense than grey matter",
                    "T1": "brighter than grey matter", "T2": "darker than grey matter"},
                   head),
        _structure("scalp_skull", "layer", "region", "",
                   ("surrounds and protects the brain", "lies between the skin surface and the brain",
                    "is removed by skull stripping", "is the non-brain tissue of the head"),
                   "around the brain, up to the skin",
                   {"CT": "bright bone ring with soft tissue outside it",
                    "T1": "bright scalp fat over a dark skull", "T2": "scalp and dark skull around bright CSF"},
                   head),
        _structure("skull", "bone", "bone", "musculoskeletal system",
                   ("protects the brain", "is the bony case of the head", "is the densest ring of the head"),
                   "around the brain",
                   {"CT": "very dense bone above 700 HU", "T1": "dark cortical bone", "T2": "dark cortical bone"},
                   head),
        _structure("scalp", "tissue", "tissue", "integumentary system",
                   ("covers the skull", "carries the hair of the head"),
                   "outside the skull",
                   {"CT": "soft tissue outside the skull", "T1": "bright fat outside the skull"},
                   head),
        _structure("lateral_ventricles", "spaces", "space", "central nervous system",
                   ("hold cerebrospinal fluid in the middle of the brain",
                    "are the largest fluid spaces inside the brain",
                    "make cerebrospinal fluid through their choroid plexus"),
                   "deep in both hemispheres, beside the midline",
                   {"CT": "fluid of about 5 HU", "T1": "dark fluid", "T2": "bright fluid"},
                   head, plural=True),
        _structure("cerebrospinal_fluid", "fluid", "space", "central nervous system",
                   ("cushions the brain and the spinal cord",),
                   "around and inside the brain",
                   {"CT": "water density", "T1": "dark", "T2": "bright"},
                   head),
        _structure("cerebellum", "structure", "organ", "central nervous system",
                   ("coordinates balance and fine movement",),
                   "in the posterior fossa",
                   {},
                   head),
        _structure("brainstem", "structure", "organ", "central nervous system",
                   ("connects the brain with the spinal cord",),
                   "in front of the cerebellum",
                   {},
                   head),
        _structure("thalamus", "structure", "organ", "central nervous system",
                   ("relays sensory signals to the cortex",),
                   "beside the third ventricle",
                   {},
                   head),
        _structure("hippocampus", "structure", "organ", "central nervous system",
                   ("forms new memories",),
                   "in the medial temporal lobe",
                   {},
                   head),
        _structure("corpus_callosum", "structure", "tissue", "central nervous system",
                   ("connects the two cerebral hemispheres",),
                   "above the lateral ventricles",
                   {},
                   head),
        _structure("eye", "organ", "organ", "visual system",
                   ("senses light",),
                   "in the orbit",
                   {},
                   head),
        # ---- chest
        _structure("lungs", "organs", "organ", "respiratory system",
                   ("exchange oxygen and carbon dioxide", "are filled with air",
                    "are the darkest organs on a CT of the chest"),
                   "on both sides of the chest",
                   {"CT": "air-filled, about -850 HU", "T1": "almost no signal", "T2": "almost no signal"},
                   chest, plural=True),
        _structure("heart", "organ", "organ", "circulatory system",
                   ("pumps blood through the body", "lies between the lungs, left of the midline"),
                   "in the middle mediastinum",
                   {"CT": "soft tissue of about 40 HU between the lungs"},
                   chest),
        _structure("trachea", "organ", "organ", "respiratory system",
                   ("carries air to the lungs",),
                   "in front of the oesophagus",
                   {"CT": "air-filled tube"},
                   ("neck", "chest")),
        _structure("esophagus", "organ", "organ", "digestive system",
                   ("carries food from the throat to the stomach",),
                   "behind the trachea",
                   {},
                   ("neck", "chest")),
        # ---- abdomen
        _structure("liver", "organ", "organ", "digestive system",
                   ("stores glycogen", "produces bile", "clears toxins from the blood",
                    "receives blood from the portal vein", "is the largest solid organ of the abdomen"),
                   "in the right upper abdomen, under the diaphragm",
                   {"CT": "homogeneous soft tissue of 50-70 HU, bright after contrast",
                    "T1": "brighter than the spleen", "T2": "darker than the spleen"},
                   abdomen),
        _structure("spleen", "organ", "organ", "lymphatic system",
                   ("filters old red blood cells", "stores platelets and lymphocytes",
                    "sits in the left upper quadrant behind the stomach"),
                   "in the left upper abdomen, behind the stomach",
                   {"CT": "soft tissue of 40-50 HU, slightly darker than the liver before contrast",
                    "T1": "darker than the liver", "T2": "brighter than the liver"},
                   abdomen),
        _structure("kidneys", "organs", "organ", "urinary system",
                   ("filter the blood and make urine", "sit on both sides of the spine",
                    "regulate blood pressure and salt balance"),
                   "in the retroperitoneum on both sides of the spine",
                   {"CT": "bean-shaped soft tissue of about 30 HU, very bright after contrast",
                    "T1": "cortex brighter than medulla", "T2": "bright parenchyma"},
                   abdomen, plural=True),
        _structure("gallbladder", "organ", "organ", "digestive system",
                   ("stores and concentrates bile",),
                   "under the liver",
                   {"CT": "fluid of 0-20 HU"},
                   abdomen),
        _structure("pancreas", "organ", "organ", "digestive system",
                   ("makes insulin and digestive enzymes",),
                   "behind the stomach",
                   {},
                   abdomen),
        _structure("stomach", "organ", "organ", "digestive system",
                   ("begins the digestion of food",),
                   "in the left upper abdomen",
                   {},
                   abdomen),
        _structure("duodenum", "organ", "organ", "digestive system",
                   ("receives bile and pancreatic juice",),
                   "around the head of the pancreas",
                   {},
                   abdomen),
        _structure("small_intestine", "organ", "organ", "digestive system",
                   ("absorbs most nutrients",),
                   "in the central abdomen",
                   {},
                   ("abdomen", "pelvis")),
        _structure("colon", "organ", "organ", "digestive system",
                   ("absorbs water from the stool",),
                   "around the abdomen",
                   {},
                   ("abdomen", "pelvis")),
        _structure("adrenal_gland", "gland", "organ", "endocrine system",
                   ("makes cortisol and adrenaline",),
                   "above the kidney",
                   {},
                   abdomen),
        _structure("portal_vein", "vessel", "vessel", "circulatory system",
                   ("brings blood from the gut to the liver",),
                   "at the liver hilum",
                   {},
                   abdomen),
        _structure("inferior_vena_cava", "vessel", "vessel", "circulatory system",
                   ("returns blood from the lower body to the heart",),
                   "right of the aorta",
                   {},
                   ("chest", "abdomen")),
        # ---- pelvis
        _structure("urinary_bladder", "organ", "organ", "urinary system",
                   ("stores urine",),
                   "in the pelvis",
                   {"CT": "fluid of 0-20 HU"},
                   ("pelvis",)),
        _structure("prostate", "gland", "organ", "reproductive system",
                   ("adds fluid to the semen",),
                   "below the bladder",
                   {},
                   ("pelvis",)),
        _structure("rectum", "organ", "organ", "digestive system",
                   ("stores stool",),
                   "in the posterior pelvis",
                   {},
                   ("pelvis",)),
        _structure("uterus", "organ", "organ", "reproductive system",
                   ("carries a pregnancy",),
                   "behind the bladder",
                   {},
                   ("pelvis",)),
        # ---- vessels, bones, tissues found in many regions
        _structure("aorta", "vessel", "vessel", "circulatory system",
                   ("carries oxygenated blood from the heart to the body", "is the largest artery",
                    "runs in front of the spine, slightly to the patient's left"),
                   "in front of the spine, slightly left of the midline",
                   {"CT": "round, about 40 HU without contrast and very bright after it",
                    "T1": "dark flow void", "T2": "dark flow void"},
                   ("chest", "abdomen")),
        _structure("vertebra", "bone", "bone", "musculoskeletal system",
                   ("protects the spinal cord", "carries the weight of the trunk",
                    "is the bone in the posterior midline of the trunk"),
                   "in the posterior midline",
                   {"CT": "bone of 300-1000 HU around the spinal canal",
                    "T1": "bright fatty marrow inside a dark cortex", "T2": "intermediate marrow"},
                   ("neck", "chest", "abdomen", "pelvis")),
        _structure("spine", "bone", "bone", "musculoskeletal system",
                   ("protects the spinal cord",),
                   "in the posterior midline",
                   {},
                   ("neck", "chest", "abdomen", "pelvis")),
        _structure("spinal_cord", "structure", "organ", "central nervous system",
                   ("carries nerve signals between the brain and the body",),
                   "in the spinal canal",
                   {},
                   ("neck", "chest", "abdomen")),
        _structure("rib", "bone", "bone", "musculoskeletal system",
                   ("protects the chest",),
                   "around the chest",
                   {},
                   ("chest", "abdomen")),
        _structure("sacrum", "bone", "bone", "musculoskeletal system",
                   ("joins the spine to the pelvis",),
                   "in the back of the pelvis",
                   {},
                   ("pelvis",)),
        _structure("femur", "bone", "bone", "musculoskeletal system",
                   ("is the bone of the thigh",),
                   "in the thigh",
                   {},
                   ("pelvis", "limbs")),
        _structure("bone", "tissue", "tissue", "musculoskeletal system",
                   ("is the densest tissue in the image", "forms the skeleton", "measures above 300 HU on CT"),
                   "in the skeleton",
                   {"CT": "dense tissue above 300 HU", "T1": "dark cortex with bright fatty marrow",
                    "T2": "dark cortex"},
                   ()),
        _structure("muscle", "tissue", "tissue", "musculoskeletal system",
                   ("moves the skeleton",),
                   "around the bones",
                   {"CT": "soft tissue of about 40-60 HU"},
                   ()),
        _structure("subcutaneous_fat", "tissue", "tissue", "integumentary system",
                   ("stores energy under the skin",),
                   "under the skin",
                   {"CT": "fat of about -100 HU"},
                   ()),
        # ---- findings
        _structure("lesion", "finding", "lesion", "",
                   ("differs in density or signal from the surrounding organ",),
                   "",
                   {"CT": "focal area of different density", "T1": "focal area of different signal",
                    "T2": "focal area of different signal"},
                   ()),
        _structure("nodule", "finding", "lesion", "",
                   ("is a small round opacity",),
                   "",
                   {"CT": "small round soft-tissue opacity"},
                   ()),
        _structure("cyst", "finding", "lesion", "",
                   ("is filled with fluid",),
                   "",
                   {"CT": "round fluid of 0-20 HU", "T2": "very bright fluid"},
                   ()),
        _structure("mass", "finding", "lesion", "",
                   ("is a space-occupying lesion",),
                   "",
                   {},
                   ()),
        _structure("tumor", "finding", "lesion", "",
                   ("is an abnormal growth of tissue",),
                   "",
                   {},
                   ()),
        _structure("metastasis", "finding", "lesion", "",
                   ("has spread from a tumour elsewhere",),
                   "",
                   {},
                   ()),
        _structure("edema", "finding", "lesion", "",
                   ("is tissue swollen with fluid",),
                   "",
                   {"T2": "bright"},
                   ()),
        _structure("hemorrhage", "finding", "lesion", "",
                   ("is bleeding into tissue",),
                   "",
                   {"CT": "dense blood of 50-90 HU"},
                   ()),
        _structure("necrosis", "finding", "lesion", "",
                   ("is dead tissue",),
                   "",
                   {},
                   ()),
    ]
    return out + _sided_entries()


def _sided_entries() -> list[Structure]:
    """Left and right entries of paired structures (patient side)."""
    out: list[Structure] = []
    specs = [
        ("kidney", "organ", "urinary system", "kidneys",
         ("filters the blood and makes urine on the patient's {side} side",),
         "in the {side} retroperitoneum, beside the spine",
         {"CT": "bean-shaped soft tissue beside the spine"}, ("abdomen",)),
        ("lung", "organ", "respiratory system", "lungs",
         ("exchanges gas on the patient's {side} side", "fills the {side} half of the chest"),
         "in the {side} hemithorax", {"CT": "air-filled, about -850 HU"}, ("chest",)),
        ("cerebral_hemisphere", "structure", "central nervous system", None,
         ("controls the {other} side of the body",), "to the patient's {side} of the midline",
         {}, ("head",)),
        ("adrenal_gland", "gland", "endocrine system", "adrenal_gland",
         ("makes cortisol on the patient's {side} side",), "above the {side} kidney", {}, ("abdomen",)),
        ("eye", "organ", "visual system", "eye", ("senses light",), "in the {side} orbit", {}, ("head",)),
        ("femur", "bone", "musculoskeletal system", "femur",
         ("is the {side} thigh bone",), "in the {side} thigh", {}, ("pelvis", "limbs")),
        ("rib", "bone", "musculoskeletal system", "rib",
         ("protects the {side} side of the chest",), "in the {side} chest wall", {}, ("chest", "abdomen")),
    ]
    for base, noun, system, pair, clues, location, look, regions in specs:
        for side, other in (("left", "right"), ("right", "left")):
            out.append(_structure(
                f"{side}_{base}", noun, "bone" if noun == "bone" else "organ", system,
                tuple(c.format(side=side, other=other) for c in clues), location.format(side=side),
                dict(look), regions, pair=pair))
    return out


KNOWLEDGE_BASE: dict[str, Structure] = {s.key: s for s in _entries()}


def get(key: str) -> Structure:
    """The entry with ``key`` (KeyError when unknown)."""
    return KNOWLEDGE_BASE[key]


def sided(base: str, side: str) -> Structure:
    """The ``left``/``right`` entry of a paired structure (``sided("kidney", "left")``)."""
    return KNOWLEDGE_BASE[f"{side}_{base}"]


# --------------------------------------------------------------------------- matching

_SIDE_WORDS = {"left": "left", "l": "left", "lt": "left", "sinister": "left",
               "right": "right", "r": "right", "rt": "right", "dexter": "right"}
_SPELLING = {"gray": "grey", "tumour": "tumor", "tumours": "tumors", "oesophagus": "esophagus",
             "oedema": "edema", "haemorrhage": "hemorrhage", "haematoma": "hematoma"}
_LESION_WORDS = ("tumor", "tumors", "cancer", "carcinoma", "lesion", "lesions", "nodule", "nodules",
                 "cyst", "cysts", "mass", "metastasis", "metastases", "edema", "hemorrhage",
                 "hematoma", "necrosis", "necrotic", "neoplasm")


def normalise_name(name: str) -> str:
    """Lower case, separators (``_ - / , . ( )``) as spaces, British/American spelling
    unified, whitespace collapsed: ``"Kidney_Left"`` -> ``"kidney left"``."""
    text = re.sub(r"[_\-/,.()\[\]:;]+", " ", name.strip().lower())
    words = [_SPELLING.get(w, w) for w in text.split()]
    return " ".join(words)


def _index() -> dict[str, Structure]:
    index: dict[str, Structure] = {}
    for entry in KNOWLEDGE_BASE.values():
        for alias in (entry.key, entry.name, *entry.synonyms):
            index.setdefault(normalise_name(alias), entry)
    return index


_INDEX = _index()


def _lookup(text: str) -> Structure | None:
    if text in _INDEX:
        return _INDEX[text]
    if text.endswith("s") and text[:-1] in _INDEX:
        return _INDEX[text[:-1]]
    return None


def match_structure(label_name: str) -> Structure:
    """The knowledge-base entry for a label name from a user's label table.

    Tries, in order: the whole name (with synonyms, spelling variants, plural);
    a side word at either end (``kidney_left``, ``L kidney``, ``Kidney (R)``);
    a known name followed by a short qualifier (``vertebrae_L1`` -> "L1 vertebra");
    a lesion word anywhere (``liver tumour`` -> a lesion entry named "liver tumor").
    Unknown names give an entry with ``known=False`` named after the label.
    """
    text = normalise_name(label_name)
    if not text:
        raise ValueError("empty label name")
    found = _lookup(text)
    if found is not None:
        return found
    words = text.split()
    for side_first in (True, False):
        edge = words[0] if side_first else words[-1]
        if edge in _SIDE_WORDS and len(words) > 1:
            side = _SIDE_WORDS[edge]
            rest = " ".join(words[1:] if side_first else words[:-1])
            base = _lookup(rest)
            if base is not None:
                pair_key = base.key if base.side is None else base.pair
                candidate = KNOWLEDGE_BASE.get(f"{side}_{_singular_key(pair_key or base.key)}")
                if candidate is not None:
                    return candidate
                return replace(base, key=f"{side}_{base.key}", name=f"{side} {base.name}", side=side,
                               snomed=_with_side(base.snomed, side))
    for cut in range(len(words) - 1, 0, -1):
        head, qualifier = " ".join(words[:cut]), " ".join(words[cut:])
        base = _lookup(head)
        if base is not None and base.kind != "lesion" and len(qualifier) <= 4:
            return replace(base, key=f"{base.key}_{qualifier.replace(' ', '_')}",
                           name=f"{qualifier.upper()} {base.name}", plural=False)
    for word in words:
        if word in _LESION_WORDS:
            lesion = _lookup(word) or KNOWLEDGE_BASE["lesion"]
            return replace(lesion, key=text.replace(" ", "_"), name=_display(label_name), plural=False)
    return Structure(key=text.replace(" ", "_"), name=_display(label_name), noun="structure",
                     kind="structure", known=False)


def _singular_key(key: str) -> str:
    return {"kidneys": "kidney", "lungs": "lung"}.get(key, key)


def _with_side(code: SnomedCode | None, side: str) -> SnomedCode | None:
    if code is None:
        return None
    return replace(code, modifier=LEFT if side == "left" else RIGHT)


def _display(label_name: str) -> str:
    return re.sub(r"\s+", " ", re.sub(r"[_]+", " ", label_name)).strip().lower()


#: body regions that a scan of a region may partly include (a head scan reaches the
#: neck; chest slices show the liver dome; abdominal slices the lung bases)
_NEIGHBOURS = {"head": ("neck",), "neck": ("head", "chest"), "chest": ("neck", "abdomen"),
               "abdomen": ("chest", "pelvis"), "pelvis": ("abdomen", "limbs"), "limbs": ("pelvis",)}


def absent_candidates(regions: tuple[str, ...] | set[str], exclude: frozenset[str] | set[str] = frozenset(),
                      ) -> list[Structure]:
    """Known organs that cannot appear in a scan of ``regions`` (e.g. the liver in a
    head scan): entries lying neither in those regions nor in neighbouring ones. No
    region known: no candidate."""
    if not regions:
        return []
    covered = set(regions)
    for region in regions:
        covered.update(_NEIGHBOURS.get(region, ()))
    out = []
    for entry in KNOWLEDGE_BASE.values():
        if not entry.regions or entry.kind == "lesion" or entry.key in exclude:
            continue
        if covered.isdisjoint(entry.regions) and entry.clues and entry.side is None:
            out.append(entry)
    return out
