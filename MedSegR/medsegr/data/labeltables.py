"""Label-name tables: which structure each label value of a label map is.

Read from an MSD / nnU-Net ``dataset.json`` (``labels``: ``{"1": "liver"}`` in MSD and
nnU-Net v1, ``{"liver": 1}`` or region lists ``{"tumour": [1, 2]}`` in nnU-Net v2),
from a CSV file (``label,name[,snomed]``, header optional), a JSON file
(``{"1": "liver"}``, ``{"liver": 1}``, ``{"labels": ...}`` or a list of
``{"label": 1, "name": "liver"}``) or a 3D Slicer colour table (``.ctbl``/``.txt``
lines ``value name r g b a``).
"""

from __future__ import annotations

import csv
import json
import re
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from medsegr.errors import InputError

__all__ = ["LabelEntry", "labels_from_mapping", "read_label_table"]

_BACKGROUND = {"background", "bg", "clear_label", "unlabeled", "unlabelled", "void", "none"}


@dataclass(frozen=True)
class LabelEntry:
    """One structure of a label table: its name, the label values forming it (one,
    or several for an nnU-Net region), and an optional SNOMED CT code."""

    name: str
    values: tuple[int, ...]
    snomed: str | None = None


def _as_int(value: Any, where: str) -> int:
    if isinstance(value, bool):
        raise InputError(f"{where}: label value {value!r} is not an integer")
    if isinstance(value, int):
        return value
    if isinstance(value, float) and value.is_integer():
        return int(value)
    if isinstance(value, str) and re.fullmatch(r"\s*\d+\s*", value):
        return int(value)
    raise InputError(f"{where}: label value {value!r} is not an integer")


def labels_from_mapping(mapping: Any, where: str) -> list[LabelEntry]:
    """Entries from a ``labels`` mapping in either orientation (value -> name or
    name -> value / list of values); background (value 0 or a background name) dropped."""
    if not isinstance(mapping, dict) or not mapping:
        raise InputError(f"{where}: 'labels' must be a non-empty object")
    entries: list[LabelEntry] = []
    keys_are_values = all(isinstance(k, str) and k.strip().isdigit() for k in mapping)
    for key, value in mapping.items():
        if keys_are_values:
            if not isinstance(value, str) or not value.strip():
                raise InputError(f"{where}: label {key} has no name")
            name, values = value.strip(), (int(key),)
        else:
            name = str(key).strip()
            if isinstance(value, list):
                if not value:
                    raise InputError(f"{where}: region {name!r} lists no label values")
                values = tuple(_as_int(v, where) for v in value)
            else:
                values = (_as_int(value, where),)
        if not name:
            raise InputError(f"{where}: a label has an empty name")
        if values == (0,) or name.lower() in _BACKGROUND:
            continue
        if any(v < 0 for v in values):
            raise InputError(f"{where}: label {name!r} has a negative value")
        entries.append(LabelEntry(name=name, values=values))
    if not entries:
        raise InputError(f"{where}: the label table names no structure besides the background")
    _check_unique(entries, where)
    return entries


def _check_unique(entries: list[LabelEntry], where: str) -> None:
    names: set[str] = set()
    for entry in entries:
        if entry.name.lower() in names:
            raise InputError(f"{where}: the name {entry.name!r} is used twice")
        names.add(entry.name.lower())


def read_label_table(path: str | Path) -> list[LabelEntry]:
    """Read a CSV, JSON or Slicer colour-table file (see the module docstring)."""
    source = Path(path)
    if not source.is_file():
        raise InputError(f"label table not found: {source}")
    try:
        text = source.read_text(encoding="utf-8-sig")
    except (OSError, UnicodeDecodeError) as error:
        raise InputError(f"cannot read the label table {source}: {error}") from None
    suffix = source.suffix.lower()
    if suffix == ".json":
        return _from_json(text, source)
    if suffix == ".csv" or suffix == ".tsv":
        return _from_csv(text, source, "\t" if suffix == ".tsv" else ",")
    if suffix in (".ctbl", ".txt"):
        return _from_color_table(text, source)
    raise InputError(f"unsupported label table {source.name}: use .csv, .tsv, .json, .ctbl or .txt")


def _from_json(text: str, source: Path) -> list[LabelEntry]:
    try:
        data = json.loads(text)
    except json.JSONDecodeError as error:
        raise InputError(f"{source.name}: bad JSON ({error.msg}, line {error.lineno})") from None
    if isinstance(data, dict) and "labels" in data:
        data = data["labels"]
    if isinstance(data, list):
        entries = []
        for number, item in enumerate(data, start=1):
            if not isinstance(item, dict) or "name" not in item or not ({"label", "value"} & set(item)):
                raise InputError(f"{source.name}: item {number} needs 'label' (or 'value') and 'name'")
            value = _as_int(item.get("label", item.get("value")), f"{source.name} item {number}")
            if value == 0:
                continue
            code = item.get("snomed")
            entries.append(LabelEntry(str(item["name"]).strip(), (value,), str(code) if code else None))
        _check_unique(entries, source.name)
        return entries
    return labels_from_mapping(data, source.name)


def _from_csv(text: str, source: Path, delimiter: str) -> list[LabelEntry]:
    rows = [r for r in csv.reader(text.splitlines(), delimiter=delimiter) if r and any(c.strip() for c in r)]
    if not rows:
        raise InputError(f"{source.name}: the label table is empty")
    header = [c.strip().lower() for c in rows[0]]
    value_col, name_col, code_col = 0, 1, 2 if len(header) > 2 else None
    if not header[0].isdigit():
        def find(*names: str) -> int | None:
            return next((i for i, h in enumerate(header) if h in names), None)
        found_value = find("label", "value", "index", "id", "label_value")
        found_name = find("name", "label_name", "structure", "segment")
        if found_value is None or found_name is None:
            raise InputError(f"{source.name}: the header needs a 'label' and a 'name' column")
        value_col, name_col, code_col = found_value, found_name, find("snomed", "code", "sct", "snomed_code")
        rows = rows[1:]
    entries = []
    for number, row in enumerate(rows, start=2 if not header[0].isdigit() else 1):
        if len(row) <= max(value_col, name_col):
            raise InputError(f"{source.name}: line {number} has too few columns")
        value = _as_int(row[value_col], f"{source.name} line {number}")
        name = row[name_col].strip()
        if not name:
            raise InputError(f"{source.name}: line {number} has no name")
        if value == 0 or name.lower() in _BACKGROUND:
            continue
        code = row[code_col].strip() if code_col is not None and len(row) > code_col else ""
        entries.append(LabelEntry(name, (value,), code or None))
    if not entries:
        raise InputError(f"{source.name}: the label table names no structure besides the background")
    _check_unique(entries, source.name)
    return entries


def _from_color_table(text: str, source: Path) -> list[LabelEntry]:
    entries = []
    for number, line in enumerate(text.splitlines(), start=1):
        line = line.strip()
        if not line or line.startswith("#"):
            continue
        parts = line.split()
        if len(parts) < 2:
            raise InputError(f"{source.name}: line {number} needs 'value name ...'")
        value = _as_int(parts[0], f"{source.name} line {number}")
        if value == 0 or parts[1].lower() in _BACKGROUND:
            continue
        entries.append(LabelEntry(parts[1], (value,)))
    if not entries:
        raise InputError(f"{source.name}: the colour table names no structure besides the background")
    _check_unique(entries, source.name)
    return entries
