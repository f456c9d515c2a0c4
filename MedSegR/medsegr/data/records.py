"""The dataset record format: dataclasses, strict JSON parsing, reading and writing.

One JSON object per line of ``<split>.jsonl`` (see ``docs/dataset-format.md``)::

    {"id": "mni152-ax-090", "subject": "mni152", "source": "nilearn-mni152",
     "image": "images/mni152_t1.nii.gz", "modality": "MR", "window": null,
     "axis": "axial", "slice": 90,
     "masks": [{"key": "brain", "file": "labels/mni152.nii.gz", "label": 1,
                "name": "brain", "snomed": {"code": "12738006", "meaning": "Brain"}}],
     "conversation": [{"question": "...", "type": "implicit",
                       "answer": "That is the <p>brain</p> [SEG], ...", "masks": ["brain"]}],
     "attributes": {}}

Paths are relative to the dataset folder. :func:`parse_record` checks everything
that can be checked without reading image files and reports *all* problems of a
record; :mod:`medsegr.data.validate` adds the checks that need the files.

For training, :func:`load_dataset` returns the records of one split (raising
:class:`DatasetError` with ``file:line`` for every problem), and each
:class:`Record` loads its image and masks through a shared :class:`VolumeCache`
(records of one volume share one loaded copy).
"""

from __future__ import annotations

import json
import math
import os
import re
import threading
from collections import OrderedDict
from collections.abc import Iterator, Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path, PurePosixPath
from typing import Any

import numpy as np

from medsegr.errors import InputError
from medsegr.io.images import MODALITIES, MedicalImage, atomic_output, load_image

__all__ = [
    "ABSENT_KEY_PREFIX",
    "AXIS_NAMES",
    "QUESTION_TYPES",
    "SEG_TOKEN",
    "SPLIT_NAMES",
    "DatasetError",
    "MaskRef",
    "Problem",
    "Record",
    "SnomedCode",
    "Turn",
    "VolumeCache",
    "absent_key",
    "check_answer_markers",
    "is_absent_key",
    "iter_records",
    "load_dataset",
    "parse_record",
    "relative_path_problem",
    "split_path",
    "write_split",
]

SEG_TOKEN = "[SEG]"
SPLIT_NAMES = ("train", "val", "test")
QUESTION_TYPES = ("explicit", "implicit", "multi-turn", "absent")
AXIS_NAMES = ("axial", "coronal", "sagittal")
#: an absent-structure turn binds its [SEG] to ``"absent:<name>"``: a structure that is not
#: on the slice, whose mask is empty by definition (no label map); the engine's measured
#: span after that [SEG] reads "not found"
ABSENT_KEY_PREFIX = "absent:"


def absent_key(name: str) -> str:
    """The mask key of an absent structure named ``name`` (its mask is empty)."""
    return ABSENT_KEY_PREFIX + name


def is_absent_key(key: str) -> bool:
    return key.startswith(ABSENT_KEY_PREFIX) and len(key) > len(ABSENT_KEY_PREFIX)


def absent_name(key: str) -> str:
    return key[len(ABSENT_KEY_PREFIX):]
#: the format version written into ``dataset_info.json`` by the builders
FORMAT_VERSION = 1

_SPLIT_NAME_RE = re.compile(r"^[A-Za-z0-9][A-Za-z0-9_.-]*$")
_NAME_TAG_RE = re.compile(r"<p>(.*?)</p>", re.DOTALL)
_SNOMED_CODE_RE = re.compile(r"^[0-9]{6,18}$")
_MAX_PROBLEMS_IN_MESSAGE = 20


# --------------------------------------------------------------------------- errors


@dataclass(frozen=True)
class Problem:
    """One problem found in a dataset: where (file, 1-based line or None) and what."""

    file: str
    line: int | None
    message: str

    def __str__(self) -> str:
        where = f"{self.file}:{self.line}" if self.line is not None else self.file
        return f"{where}: {self.message}"


class DatasetError(InputError):
    """A dataset folder, split file or record is broken.

    ``problems`` lists every problem found (file, line, message); the message shows
    the first ones, one per line.
    """

    code = "bad_dataset"

    def __init__(self, problems: Sequence[Problem] | str) -> None:
        if isinstance(problems, str):
            problems = [Problem("dataset", None, problems)]
        self.problems: list[Problem] = list(problems)
        shown = [str(p) for p in self.problems[:_MAX_PROBLEMS_IN_MESSAGE]]
        more = len(self.problems) - len(shown)
        if more > 0:
            shown.append(f"... and {more} more problem(s)")
        count = len(self.problems)
        header = f"{count} problem{'s' if count != 1 else ''} in the dataset"
        super().__init__(header + ":\n  " + "\n  ".join(shown) if count > 1 else shown[0])


# --------------------------------------------------------------------------- records


@dataclass(frozen=True)
class SnomedCode:
    """A SNOMED CT (or other scheme) code of a structure, with an optional laterality
    modifier (e.g. Kidney + Left), as DICOM and 3D Slicer terminologies store it."""

    code: str
    meaning: str
    scheme: str = "SCT"
    modifier: SnomedCode | None = None

    def to_json(self) -> dict[str, Any]:
        out: dict[str, Any] = {"code": self.code, "meaning": self.meaning, "scheme": self.scheme}
        if self.modifier is not None:
            out["modifier"] = self.modifier.to_json()
        return out


@dataclass(frozen=True)
class MaskRef:
    """A structure on the record's image: the voxels of ``file`` equal to ``label``.

    ``file`` is a label map on exactly the image's grid, relative to the dataset root.
    """

    key: str
    file: str
    label: int
    name: str
    snomed: SnomedCode | None = None

    def to_json(self) -> dict[str, Any]:
        out: dict[str, Any] = {"key": self.key, "file": self.file, "label": self.label,
                               "name": self.name}
        if self.snomed is not None:
            out["snomed"] = self.snomed.to_json()
        return out


@dataclass(frozen=True)
class Turn:
    """One question and its answer. ``masks`` lists the mask keys bound, in order, to
    the answer's ``[SEG]`` markers. ``reasoning`` (optional) names the kind of
    reasoning the question needs (``size``, ``laterality``, ``lesion``, ...)."""

    question: str
    type: str
    answer: str
    masks: tuple[str, ...] = ()
    reasoning: str | None = None

    def to_json(self) -> dict[str, Any]:
        out: dict[str, Any] = {"question": self.question, "type": self.type,
                               "answer": self.answer, "masks": list(self.masks)}
        if self.reasoning is not None:
            out["reasoning"] = self.reasoning
        return out


@dataclass
class Record:
    """One image (or one slice of a volume) with its masks and one conversation.

    Attributes mirror the JSON fields. ``slice`` is the index along ``axis``
    (``axial``/``coronal``/``sagittal``, resolved with
    :func:`medsegr.imaging.slicing.resolve_axis`), both ``None`` for a 2-D image. ``root`` is
    the dataset folder the paths are relative to (set by the loaders, not stored).
    """

    id: str
    subject: str
    source: str
    image: str
    modality: str
    window: str | None
    axis: str | None
    slice: int | None
    masks: list[MaskRef]
    conversation: list[Turn]
    attributes: dict[str, Any] = field(default_factory=dict)
    extra: dict[str, Any] = field(default_factory=dict)
    root: Path | None = field(default=None, compare=False, repr=False)

    # ---- serialisation

    def to_json(self) -> dict[str, Any]:
        """The JSON object of this record (field order as in the format description)."""
        out: dict[str, Any] = {
            "id": self.id, "subject": self.subject, "source": self.source, "image": self.image,
            "modality": self.modality, "window": self.window, "axis": self.axis,
            "slice": self.slice, "masks": [m.to_json() for m in self.masks],
            "conversation": [t.to_json() for t in self.conversation],
            "attributes": self.attributes,
        }
        out.update(self.extra)
        return out

    def to_line(self) -> str:
        """One JSON Lines line (no trailing newline)."""
        return json.dumps(self.to_json(), ensure_ascii=False, allow_nan=False, separators=(",", ":"))

    # ---- files

    def _root(self) -> Path:
        if self.root is None:
            raise InputError(f"record {self.id} has no dataset root (load it with load_dataset)")
        return self.root

    @property
    def image_path(self) -> Path:
        """Absolute path of the image file."""
        return self._root() / self.image

    def mask(self, key: str) -> MaskRef:
        """The mask reference with ``key``."""
        for ref in self.masks:
            if ref.key == key:
                return ref
        raise InputError(f"record {self.id} has no mask {key!r}")

    def mask_path(self, key: str) -> Path:
        """Absolute path of the label map of mask ``key``."""
        return self._root() / self.mask(key).file

    @property
    def seg_keys(self) -> list[str]:
        """The mask keys of every ``[SEG]`` of the conversation, in order."""
        return [key for turn in self.conversation for key in turn.masks]

    def load_image(self, cache: VolumeCache | None = None) -> MedicalImage:
        """The whole image (loaded once per file through ``cache``, default the shared one)."""
        return (cache or VolumeCache.shared()).get(self.image_path)

    def mask_arrays(self, cache: VolumeCache | None = None) -> dict[str, np.ndarray]:
        """Mask key -> ``bool`` array ``(z, y, x)`` of the whole volume (``file == label``).

        Raises :class:`InputError` when a label map is not on the image's grid.
        """
        cache = cache or VolumeCache.shared()
        image = self.load_image(cache)
        out: dict[str, np.ndarray] = {}
        for ref in self.masks:
            labels = cache.get(self._root() / ref.file)
            if labels.shape != image.shape:
                raise InputError(f"record {self.id}: label map {ref.file} has shape {labels.shape}, "
                                 f"the image {image.shape}")
            out[ref.key] = labels.array == ref.label
        return out

    def slice_view(self, cache: VolumeCache | None = None):  # -> medsegr.imaging.slicing.SliceView
        """How this record's slice is shown to the model (display orientation).

        2-D images use numpy axis 0, index 0; otherwise ``axis``/``slice`` are resolved
        against the image's direction matrix.
        """
        from medsegr.imaging.slicing import resolve_axis, slice_view

        image = self.load_image(cache)
        if image.is_2d and self.slice is None:
            axis, index = 0, 0
        else:
            if self.axis is None or self.slice is None:
                raise InputError(f"record {self.id}: a 3-D image needs 'axis' and 'slice'")
            axis, index = resolve_axis(self.axis, image.direction), self.slice
        return slice_view(image.shape, image.spacing, image.direction, axis, index)

    def load_slice(self, cache: VolumeCache | None = None) -> tuple[np.ndarray, dict[str, np.ndarray]]:
        """The record's slice in display orientation: the raw intensities
        ``(rows, cols)`` float32 and mask key -> ``bool (rows, cols)``.

        Display orientation (radiological convention, :mod:`medsegr.imaging.slicing`): for an
        axial slice, rows run anterior -> posterior and columns patient right -> left.
        """
        view = self.slice_view(cache)
        image = self.load_image(cache)
        masks = {key: view.extract(mask) for key, mask in self.mask_arrays(cache).items()}
        return view.extract(image.array), masks


# --------------------------------------------------------------------------- volume cache


class VolumeCache:
    """Loaded images and label maps, keyed by path, size and modification time.

    Least recently used entries are dropped beyond ``max_items``. Thread-safe.
    """

    _shared: VolumeCache | None = None

    def __init__(self, max_items: int = 16) -> None:
        self.max_items = max_items
        self._items: OrderedDict[tuple[str, int, int], MedicalImage] = OrderedDict()
        self._lock = threading.Lock()

    @classmethod
    def shared(cls) -> VolumeCache:
        """The process-wide cache used when none is given."""
        if cls._shared is None:
            cls._shared = cls()
        return cls._shared

    def get(self, path: str | os.PathLike[str]) -> MedicalImage:
        """The image at ``path`` (read on first use)."""
        target = Path(path)
        try:
            stat = target.stat()
        except OSError:
            raise InputError(f"file does not exist: {target}") from None
        key = (str(target.resolve()), stat.st_size, stat.st_mtime_ns)
        with self._lock:
            if key in self._items:
                self._items.move_to_end(key)
                return self._items[key]
        image = load_image(target)
        with self._lock:
            self._items[key] = image
            while len(self._items) > self.max_items:
                self._items.popitem(last=False)
        return image

    def clear(self) -> None:
        with self._lock:
            self._items.clear()


# --------------------------------------------------------------------------- parsing


class _Fields:
    """Reads typed fields of one JSON object, collecting problems instead of raising."""

    def __init__(self, obj: Mapping[str, Any], where: str, problems: list[str]) -> None:
        self.obj = obj
        self.where = where
        self.problems = problems

    def _say(self, message: str) -> None:
        self.problems.append(f"{self.where}{message}")

    def string(self, name: str, *, required: bool = True, nullable: bool = False,
               allow_empty: bool = False) -> str | None:
        if name not in self.obj:
            if required:
                self._say(f"missing field '{name}'")
            return None
        value = self.obj[name]
        if value is None and nullable:
            return None
        if not isinstance(value, str):
            self._say(f"'{name}' must be {'a string or null' if nullable else 'a string'}, "
                      f"got {_json_type(value)}")
            return None
        if not allow_empty and not value.strip():
            self._say(f"'{name}' is empty")
            return None
        return value

    def integer(self, name: str, *, nullable: bool = False, minimum: int | None = None) -> int | None:
        if name not in self.obj:
            self._say(f"missing field '{name}'")
            return None
        value = self.obj[name]
        if value is None and nullable:
            return None
        if isinstance(value, bool) or not isinstance(value, int):
            self._say(f"'{name}' must be an integer{' or null' if nullable else ''}, "
                      f"got {_json_type(value)}")
            return None
        if minimum is not None and value < minimum:
            self._say(f"'{name}' must be >= {minimum}, got {value}")
            return None
        return value

    def array(self, name: str, *, required: bool = True) -> list[Any] | None:
        if name not in self.obj:
            if required:
                self._say(f"missing field '{name}'")
            return None
        value = self.obj[name]
        if not isinstance(value, list):
            self._say(f"'{name}' must be a list, got {_json_type(value)}")
            return None
        return value


def _json_type(value: Any) -> str:
    if value is None:
        return "null"
    if isinstance(value, bool):
        return "a boolean"
    if isinstance(value, (int, float)):
        return "a number"
    if isinstance(value, str):
        return "a string"
    if isinstance(value, list):
        return "a list"
    if isinstance(value, dict):
        return "an object"
    return type(value).__name__


def relative_path_problem(path: str) -> str | None:
    """Why ``path`` may not be used as a dataset-relative file path (None when fine).

    It must be relative, POSIX-style (``/``), without ``..`` components. Symbolic
    links leading out of the root are checked when the file is opened
    (:func:`resolve_inside`).
    """
    if "\\" in path:
        return f"path {path!r} uses backslashes; write it with '/'"
    if "\x00" in path:
        return f"path {path!r} contains a NUL character"
    pure = PurePosixPath(path)
    if pure.is_absolute() or re.match(r"^[A-Za-z]:", path):
        return f"path {path!r} is absolute; it must be relative to the dataset folder"
    if ".." in pure.parts:
        return f"path {path!r} escapes the dataset folder ('..')"
    if path.strip() in ("", "."):
        return f"path {path!r} names no file"
    return None


def resolve_inside(root: Path, path: str) -> tuple[Path | None, str | None]:
    """``root / path`` with symbolic links resolved, or a reason why it is not usable
    (escapes the root, missing, not a file)."""
    reason = relative_path_problem(path)
    if reason:
        return None, reason
    base = root.resolve()
    target = (base / path).resolve()
    if not target.is_relative_to(base):
        return None, f"path {path!r} leads out of the dataset folder (symbolic link to {target})"
    if not target.exists():
        return None, f"file {path!r} does not exist"
    if not target.is_file():
        return None, f"{path!r} is not a file"
    return target, None


def check_answer_markers(answer: str, mask_count: int) -> list[str]:
    """Problems with the ``[SEG]`` markers of one answer bound to ``mask_count`` masks:
    the count must match, and each marker must directly follow ``<p>name</p>``
    (whitespace allowed between), and every ``<p>name</p>`` must be followed by one."""
    problems: list[str] = []
    count = answer.count(SEG_TOKEN)
    if count != mask_count:
        problems.append(f"the answer has {count} {SEG_TOKEN} marker(s) but {mask_count} mask(s)")
    pieces = answer.split(SEG_TOKEN)
    for number, piece in enumerate(pieces[:-1], start=1):
        stripped = piece.rstrip()
        tags = list(_NAME_TAG_RE.finditer(stripped))
        if not tags or tags[-1].end() != len(stripped):
            problems.append(f"{SEG_TOKEN} number {number} does not directly follow <p>name</p>")
        elif not tags[-1].group(1).strip():
            problems.append(f"{SEG_TOKEN} number {number} follows an empty <p></p>")
    last = len(pieces) - 1
    for index, piece in enumerate(pieces):  # a tag must be the last thing before a marker
        stripped = piece.rstrip()
        for tag in _NAME_TAG_RE.finditer(stripped):
            if tag.end() != len(stripped) or index == last:
                problems.append(f"<p>{tag.group(1)}</p> is not followed by {SEG_TOKEN}")
    if answer.count("<p>") != answer.count("</p>"):
        problems.append("the answer has unbalanced <p> ... </p> tags")
    return problems


def _parse_snomed(value: Any, where: str, problems: list[str], allow_modifier: bool = True) -> SnomedCode | None:
    if value is None:
        return None
    if not isinstance(value, dict):
        problems.append(f"{where}'snomed' must be an object or null, got {_json_type(value)}")
        return None
    fields = _Fields(value, f"{where}snomed: ", problems)
    code = fields.string("code")
    meaning = fields.string("meaning")
    scheme = fields.string("scheme", required=False) or "SCT"
    if code is not None and scheme == "SCT" and not _SNOMED_CODE_RE.match(code):
        problems.append(f"{where}snomed: code {code!r} is not a SNOMED CT identifier (6-18 digits)")
        code = None
    modifier = None
    if "modifier" in value:
        if allow_modifier:
            modifier = _parse_snomed(value["modifier"], f"{where}snomed modifier: ", problems, False)
        else:
            problems.append(f"{where}a modifier cannot have a modifier")
    if code is None or meaning is None:
        return None
    return SnomedCode(code=code, meaning=meaning, scheme=scheme, modifier=modifier)


def _parse_mask(value: Any, number: int, problems: list[str]) -> MaskRef | None:
    where = f"masks[{number}]: "
    if not isinstance(value, dict):
        problems.append(f"{where}must be an object, got {_json_type(value)}")
        return None
    fields = _Fields(value, where, problems)
    key = fields.string("key")
    file = fields.string("file")
    label = fields.integer("label", minimum=1)
    name = fields.string("name")
    snomed = _parse_snomed(value.get("snomed"), where, problems)
    if file is not None:
        reason = relative_path_problem(file)
        if reason:
            problems.append(f"{where}{reason}")
            file = None
    if key is None or file is None or label is None or name is None:
        return None
    return MaskRef(key=key, file=file, label=label, name=name, snomed=snomed)


def _parse_turn(value: Any, number: int, mask_keys: set[str] | None, problems: list[str]) -> Turn | None:
    where = f"conversation[{number}]: "
    if not isinstance(value, dict):
        problems.append(f"{where}must be an object, got {_json_type(value)}")
        return None
    fields = _Fields(value, where, problems)
    question = fields.string("question")
    kind = fields.string("type")
    answer = fields.string("answer")
    masks = fields.array("masks")
    reasoning = fields.string("reasoning", required=False, nullable=True)
    ok = question is not None and kind is not None and answer is not None and masks is not None
    if kind is not None and kind not in QUESTION_TYPES:
        problems.append(f"{where}unknown type {kind!r} (expected one of {', '.join(QUESTION_TYPES)})")
        ok = False
    if kind == "multi-turn" and number == 0:
        problems.append(f"{where}the first turn cannot be a 'multi-turn' follow-up")
    if question is not None and SEG_TOKEN in question:
        problems.append(f"{where}the question contains the reserved marker {SEG_TOKEN}")
    keys: list[str] = []
    if masks is not None:
        for item in masks:
            if not isinstance(item, str):
                problems.append(f"{where}'masks' must list mask keys (strings), got {_json_type(item)}")
                ok = False
            elif is_absent_key(item) and kind != "absent":
                problems.append(f"{where}the empty mask key {item!r} is only for 'absent' turns")
                ok = False
            elif mask_keys is not None and item not in mask_keys and not is_absent_key(item):
                problems.append(f"{where}unknown mask key {item!r} (the record's masks: "
                                f"{', '.join(sorted(mask_keys)) or 'none'})")
                ok = False
            else:
                keys.append(item)
    if answer is not None and masks is not None:
        for message in check_answer_markers(answer, len(masks)):
            problems.append(f"{where}{message}")
        if kind == "absent" and any(isinstance(m, str) and not is_absent_key(m) for m in masks):
            problems.append(f"{where}an 'absent' answer binds only empty masks "
                            f"('{ABSENT_KEY_PREFIX}<name>'), not the record's masks")
    if not ok:
        return None
    assert question is not None and kind is not None and answer is not None
    return Turn(question=question, type=kind, answer=answer, masks=tuple(keys), reasoning=reasoning)


_KNOWN_FIELDS = ("id", "subject", "source", "image", "modality", "window", "axis", "slice",
                 "masks", "conversation", "attributes")


def parse_record(obj: Any, *, window_names: Sequence[str] | None = None) -> tuple[Record | None, list[str]]:
    """Check and convert one decoded JSON value into a :class:`Record`.

    Returns ``(record, problems)``; ``record`` is None when the record is unusable.
    Every problem found is listed (not only the first). ``window_names`` are the
    accepted CT window presets (default: :data:`medsegr.imaging.intensity.CT_WINDOWS`).
    """
    problems: list[str] = []
    if not isinstance(obj, dict):
        return None, [f"a record must be a JSON object, got {_json_type(obj)}"]
    fields = _Fields(obj, "", problems)
    record_id = fields.string("id")
    subject = fields.string("subject")
    source = fields.string("source", required=False, allow_empty=True) or ""
    image = fields.string("image")
    modality = fields.string("modality")
    window = fields.string("window", required=False, nullable=True)
    axis = fields.string("axis", required=False, nullable=True)
    slice_index = fields.integer("slice", nullable=True, minimum=0) if "slice" in obj else None
    if "slice" not in obj:
        problems.append("missing field 'slice' (null for a 2-D image)")
    if image is not None:
        reason = relative_path_problem(image)
        if reason:
            problems.append(f"image: {reason}")
            image = None
    if modality is not None and modality not in MODALITIES:
        problems.append(f"unknown modality {modality!r} (expected one of {', '.join(MODALITIES)})")
        modality = None
    if window is not None:
        names = tuple(window_names) if window_names is not None else _ct_window_names()
        if window not in names:
            problems.append(f"unknown window {window!r} (CT presets: {', '.join(names)})")
        elif modality is not None and modality != "CT":
            problems.append(f"a window preset applies to CT only, the modality is {modality}")
    if axis is not None and axis not in AXIS_NAMES:
        problems.append(f"unknown axis {axis!r} (expected one of {', '.join(AXIS_NAMES)} or null)")
    if slice_index is not None and axis is None and "axis" in obj and obj["axis"] is None:
        problems.append("'slice' is given but 'axis' is null")
    attributes = obj.get("attributes", {})
    if attributes is None:
        attributes = {}
    if not isinstance(attributes, dict):
        problems.append(f"'attributes' must be an object, got {_json_type(attributes)}")
        attributes = {}

    masks: list[MaskRef] = []
    mask_list = fields.array("masks")
    mask_keys: set[str] | None = None
    if mask_list is not None:
        mask_keys = set()
        masks_ok = True
        for number, item in enumerate(mask_list):
            ref = _parse_mask(item, number, problems)
            if ref is None:
                masks_ok = False
                if isinstance(item, dict) and isinstance(item.get("key"), str):
                    mask_keys.add(item["key"])
                continue
            if ref.key in mask_keys:
                problems.append(f"masks[{number}]: duplicate mask key {ref.key!r}")
            mask_keys.add(ref.key)
            masks.append(ref)
        if not masks_ok:
            mask_list = None

    turns: list[Turn] = []
    turn_list = fields.array("conversation")
    if turn_list is not None and not turn_list:
        problems.append("'conversation' is empty")
    for number, item in enumerate(turn_list or []):
        turn = _parse_turn(item, number, mask_keys, problems)
        if turn is not None:
            turns.append(turn)
    if problems:
        return None, problems
    assert record_id and subject and image and modality and mask_list is not None
    extra = {k: v for k, v in obj.items() if k not in _KNOWN_FIELDS}
    record = Record(id=record_id, subject=subject, source=source, image=image, modality=modality,
                    window=window, axis=axis, slice=slice_index, masks=masks, conversation=turns,
                    attributes=attributes, extra=extra)
    return record, []


def _ct_window_names() -> tuple[str, ...]:
    from medsegr.imaging.intensity import CT_WINDOWS

    return tuple(CT_WINDOWS)


def _reject_constant(name: str) -> Any:
    raise ValueError(f"{name} is not valid JSON")


def _object_without_duplicates(pairs: list[tuple[str, Any]]) -> dict[str, Any]:
    out: dict[str, Any] = {}
    for key, value in pairs:
        if key in out:
            raise ValueError(f"duplicate key {key!r}")
        out[key] = value
    return out


def decode_line(raw: bytes) -> tuple[Any, str | None]:
    """Decode one JSON Lines line: ``(value, None)`` or ``(None, reason)``. Never raises."""
    try:
        text = raw.decode("utf-8")
    except UnicodeDecodeError as error:
        return None, f"not valid UTF-8 ({error.reason} at byte {error.start})"
    if text.startswith("\ufeff"):
        text = text[1:]
    try:
        value = json.loads(text, parse_constant=_reject_constant,
                           object_pairs_hook=_object_without_duplicates)
    except json.JSONDecodeError as error:
        return None, f"bad JSON: {error.msg} (column {error.colno})"
    except (ValueError, RecursionError) as error:
        return None, f"bad JSON: {error}"
    if isinstance(value, float) and not math.isfinite(value):
        return None, "bad JSON: not a finite number"
    return value, None


def iter_records(path: str | os.PathLike[str], *, window_names: Sequence[str] | None = None,
                 ) -> Iterator[tuple[int, Record | None, list[str]]]:
    """``(line number, record or None, problems)`` for every non-blank line of a split file.

    Never raises on the file's content; raises :class:`DatasetError` when the file
    cannot be read at all.
    """
    source = Path(path)
    try:
        data = source.read_bytes()
    except OSError as error:
        raise DatasetError([Problem(source.name, None, f"cannot read the split file: {error.strerror}")]) from None
    for number, raw in enumerate(data.split(b"\n"), start=1):
        if not raw.strip():
            continue
        value, reason = decode_line(raw.rstrip(b"\r"))
        if reason is not None:
            yield number, None, [reason]
            continue
        record, problems = parse_record(value, window_names=window_names)
        yield number, record, problems


def split_path(root: str | os.PathLike[str], split: str) -> Path:
    """The file of ``split`` (``<root>/<split>.jsonl``); the split name is checked."""
    if not isinstance(split, str) or not _SPLIT_NAME_RE.match(split):
        raise DatasetError(f"bad split name {split!r}: letters, digits, '_', '-', '.'")
    return Path(root) / f"{split}.jsonl"


# --------------------------------------------------------------------------- loading


def load_dataset(root: str | os.PathLike[str], split: str, *, check_files: bool = True) -> list[Record]:
    """The records of one split, each with ``record.root`` set.

    Checks the record format (see :func:`parse_record`), unique ids, and (with
    ``check_files``) that every referenced file exists inside the root. The image
    contents (grids, labels) are checked by ``medsegr data check``
    (:func:`medsegr.data.validate.check_dataset`), not here.

    Raises:
        DatasetError: listing every problem as ``<split>.jsonl:<line>: <message>``.
    """
    folder = Path(root)
    if not folder.is_dir():
        raise DatasetError(f"dataset folder does not exist: {folder}")
    path = split_path(folder, split)
    if not path.is_file():
        present = sorted(p.stem for p in folder.glob("*.jsonl"))
        raise DatasetError(f"split file {path.name} not found in {folder} "
                           f"(present: {', '.join(present) or 'none'})")
    problems: list[Problem] = []
    records: list[Record] = []
    seen: dict[str, int] = {}
    checked: dict[str, str | None] = {}
    for line, record, found in iter_records(path):
        problems.extend(Problem(path.name, line, message) for message in found)
        if record is None:
            continue
        if record.id in seen:
            problems.append(Problem(path.name, line, f"duplicate id {record.id!r} (first on line {seen[record.id]})"))
            continue
        seen[record.id] = line
        if check_files:
            for rel in [record.image, *dict.fromkeys(ref.file for ref in record.masks)]:
                if rel not in checked:
                    checked[rel] = resolve_inside(folder, rel)[1]
                if checked[rel]:
                    problems.append(Problem(path.name, line, str(checked[rel])))
        record.root = folder
        records.append(record)
    if problems:
        raise DatasetError(problems)
    if not records:
        raise DatasetError([Problem(path.name, None, "the split file holds no records")])
    return records


# --------------------------------------------------------------------------- writing


def write_split(root: str | os.PathLike[str], split: str, records: Sequence[Record]) -> Path:
    """Write ``records`` as ``<root>/<split>.jsonl`` atomically (temporary file + rename)."""
    path = split_path(root, split)
    with atomic_output(path) as temporary:
        with open(temporary, "w", encoding="utf-8", newline="\n") as handle:
            for record in records:
                handle.write(record.to_line())
                handle.write("\n")
    return path
