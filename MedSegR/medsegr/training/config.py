"""The training configuration (``medsegr train CONFIG``): a TOML or JSON file.

Sections and their defaults (every key optional; unknown keys are refused)::

    [data]
    root = "datasets/medsegqa"      # dataset folder (relative to the config file)
    train_split = "train"
    val_split = "val"              # "" for none
    max_tokens = 512               # a longer conversation is an error, never cut silently
    repeat = {}                    # reasoning kind -> times its conversations are seen per
                                   # pass of the text stage, e.g. { size = 3, absent = 2 }

    [engine]
    config = ""                    # MedSegR model config file (as for `medsegr ask --config`)
    tiny = false                   # the tiny random model of the same classes (tests)
    init_checkpoint = ""           # start from a fine-tuned checkpoint instead of the base

    [optim]
    steps = 300                    # optimiser steps
    batch_size = 8                 # per process
    grad_accum = 1
    lr = 3e-4
    weight_decay = 0.0
    warmup_steps = 20              # linear warm-up, then cosine decay
    max_grad_norm = 1.0
    mixed_precision = "no"         # "bf16" on a GPU, or on a CPU with AVX-512 BF16 / AMX
    train_from_layer = 0           # LoRA of the layers from this index up only (0: all)
    length_buckets = false         # batches of similar length
    max_seconds = 0                # stop the text stage after this much time (0: no limit)

    [grounding_stage]              # after the text stage: LLM frozen, [SEG] states cached
    steps = 0                      # 0: no grounding stage
    batch_size = 8                 # images per step, each with all its structures
    lr = 2e-3
    warmup_steps = 50
    eval_every = 250               # validation Dice and absent-query refusals (0: never)
    save_every = 100               # resumable state (0: only at the end)
    max_seconds = 0                # stop after this much training time (0: no limit)
    hint_share = 0.25              # images given box/point hints from one structure
    hint_only_share = 0.3          # ... of which with no text query
    warm_start = false             # start from init_checkpoint's grounding module
    generated_absent = 0.0         # share of records asked about an absent structure by the model itself

    [loss]
    ce = 1.0                       # weight of the answer text's cross-entropy

    [run]
    output_dir = "runs/medsegr"
    seed = 0
    log_every = 10
    eval_every = 50                # validation loss and Dice (0: never)
    save_every = 100               # resumable checkpoints (0: only the final one)
    keep_checkpoints = 2
    cache_dir = ""                 # frozen-encoder cache (default: OUTPUT_DIR/../encoder-cache)
"""

from __future__ import annotations

import dataclasses
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from medsegr.config import _section_from_dict, read_config_file
from medsegr.errors import ConfigError


@dataclass
class DataSection:
    root: str = ""
    train_split: str = "train"
    val_split: str = "val"
    max_tokens: int = 512
    repeat: dict[str, int] = field(default_factory=dict)


@dataclass
class EngineSection:
    config: str = ""
    tiny: bool = False
    init_checkpoint: str = ""


@dataclass
class OptimSection:
    steps: int = 300
    batch_size: int = 8
    grad_accum: int = 1
    lr: float = 3e-4
    weight_decay: float = 0.0
    warmup_steps: int = 20
    max_grad_norm: float = 1.0
    mixed_precision: str = "no"
    #: train the LoRA of the decoder layers from this index up only; the layers below,
    #: the visual projector and the added tokens' rows stay as the start checkpoint has
    #: them, and the backward pass stops at this layer (0: train all of them)
    train_from_layer: int = 0
    #: batches of examples of similar length (less padding); shuffled in pools of 64
    #: batches, then the batches are shuffled
    length_buckets: bool = False
    #: stop the text stage after this many seconds of training (0: no limit)
    max_seconds: float = 0.0


@dataclass
class LossSection:
    #: weight of the answer text's cross-entropy (the text stage has no mask loss)
    ce: float = 1.0


@dataclass
class RunSection:
    output_dir: str = "runs/medsegr"
    seed: int = 0
    log_every: int = 10
    eval_every: int = 50
    save_every: int = 100
    keep_checkpoints: int = 2
    cache_dir: str = ""


@dataclass
class GroundingStageSection:
    """The grounding stage (:mod:`medsegr.training.grounding_stage`): the LLM frozen, its
    ``[SEG]`` states and the encoder embeddings cached, the grounding module trained."""

    steps: int = 0
    #: images per step, each with all its structures and its absent queries
    batch_size: int = 8
    lr: float = 2e-3
    warmup_steps: int = 50
    weight_decay: float = 1e-4
    hint_share: float = 0.25
    hint_only_share: float = 0.3
    bce: float = 1.0
    dice: float = 1.0
    presence: float = 0.5
    eval_every: int = 250
    save_every: int = 100
    #: stop after this many seconds of training (0: no limit)
    max_seconds: float = 0.0
    #: start from the grounding module of the start checkpoint (``[engine]
    #: init_checkpoint``) instead of fresh weights
    warm_start: bool = False
    #: share of the training records on which the frozen model is asked about an absent
    #: structure; the [SEG]s of its own answers become absent queries
    #: (:mod:`medsegr.training.generated_absent`)
    generated_absent: float = 0.0


@dataclass
class TrainConfig:
    data: DataSection = field(default_factory=DataSection)
    engine: EngineSection = field(default_factory=EngineSection)
    optim: OptimSection = field(default_factory=OptimSection)
    grounding_stage: GroundingStageSection = field(default_factory=GroundingStageSection)
    loss: LossSection = field(default_factory=LossSection)
    run: RunSection = field(default_factory=RunSection)
    #: folder that relative paths are resolved against (the config file's folder)
    base_dir: Path = field(default_factory=Path.cwd, compare=False)

    # -- loading -------------------------------------------------------------
    @classmethod
    def from_dict(cls, data: Any, base_dir: Path | None = None) -> "TrainConfig":
        if not isinstance(data, dict):
            raise ConfigError("a training config must be a table/object at the top level")
        sections = {f.name: f for f in dataclasses.fields(cls) if f.name != "base_dir"}
        unknown = sorted(set(data) - set(sections))
        if unknown:
            raise ConfigError(f"unknown training config section(s): {', '.join(unknown)} "
                              f"(known: {', '.join(sections)})")
        kwargs = {name: _section_from_dict(name, fld.default_factory,  # type: ignore[misc]
                                           data.get(name, {}))
                  for name, fld in sections.items()}
        config = cls(**kwargs, base_dir=(base_dir or Path.cwd()).resolve())
        config.validate()
        return config

    @classmethod
    def from_file(cls, path: str | Path) -> "TrainConfig":
        return cls.from_dict(read_config_file(path, "training config"), base_dir=Path(path).parent)

    def to_dict(self) -> dict[str, Any]:
        out = dataclasses.asdict(self)
        out.pop("base_dir")
        return out

    def validate(self) -> None:
        o, r, d = self.optim, self.run, self.data
        checks = [
            (bool(d.root), "[data] root is required"),
            (bool(d.train_split), "[data] train_split is required"),
            (d.max_tokens >= 16, "[data] max_tokens must be at least 16"),
            (all(isinstance(k, str) and k and isinstance(v, int) and not isinstance(v, bool)
                 and 1 <= v <= 100 for k, v in d.repeat.items()),
             "[data] repeat maps a reasoning kind (size, absent, laterality, ...) to a whole "
             "number of times from 1 to 100"),
            (o.steps >= 1 or (o.steps == 0 and bool(self.engine.init_checkpoint)
                              and self.grounding_stage.steps >= 1),
             "[optim] steps must be at least 1 (0 only with [engine] init_checkpoint and a "
             "[grounding_stage]: the grounding stage alone on a fine-tuned checkpoint)"),
            (o.batch_size >= 1, "[optim] batch_size must be at least 1"),
            (o.grad_accum >= 1, "[optim] grad_accum must be at least 1"),
            (o.lr > 0, "[optim] lr must be positive"),
            (o.weight_decay >= 0, "[optim] weight_decay must not be negative"),
            (o.warmup_steps >= 0, "[optim] warmup_steps must not be negative"),
            (o.max_grad_norm >= 0, "[optim] max_grad_norm must not be negative (0: no clipping)"),
            (o.train_from_layer >= 0, "[optim] train_from_layer must not be negative"),
            (o.max_seconds >= 0, "[optim] max_seconds must not be negative (0: no limit)"),
            (o.train_from_layer == 0 or bool(self.engine.init_checkpoint) or o.steps == 0,
             "[optim] train_from_layer > 0 keeps the visual projector and the lower layers as "
             "they are: set [engine] init_checkpoint to a fine-tuned checkpoint"),
            (not self.grounding_stage.warm_start or bool(self.engine.init_checkpoint),
             "[grounding_stage] warm_start needs [engine] init_checkpoint"),
            (o.mixed_precision in ("no", "bf16", "fp16"),
             "[optim] mixed_precision must be no, bf16 or fp16"),
            (self.grounding_stage.steps >= 0, "[grounding_stage] steps must not be negative"),
            (self.grounding_stage.batch_size >= 1, "[grounding_stage] batch_size must be at least 1"),
            (self.grounding_stage.lr > 0, "[grounding_stage] lr must be positive"),
            (min(self.grounding_stage.warmup_steps, self.grounding_stage.eval_every, self.grounding_stage.save_every) >= 0,
             "[grounding_stage] warmup_steps/eval_every/save_every must be >= 0"),
            (0 <= self.grounding_stage.hint_share <= 1 and 0 <= self.grounding_stage.hint_only_share <= 1,
             "[grounding_stage] hint_share and hint_only_share must be between 0 and 1"),
            (0 <= self.grounding_stage.generated_absent <= 1,
             "[grounding_stage] generated_absent must be between 0 and 1"),
            (min(self.grounding_stage.bce, self.grounding_stage.dice, self.grounding_stage.presence, self.grounding_stage.weight_decay, self.grounding_stage.max_seconds) >= 0,
             "[grounding_stage] loss weights, weight_decay and max_seconds must not be negative"),
            (self.loss.ce >= 0, "[loss] ce must not be negative"),
            (r.log_every >= 1, "[run] log_every must be at least 1"),
            (r.eval_every >= 0 and r.save_every >= 0, "[run] eval_every/save_every must be >= 0"),
            (r.keep_checkpoints >= 1, "[run] keep_checkpoints must be at least 1"),
            (not (self.engine.tiny and self.engine.config),
             "[engine] set either tiny or config, not both"),
        ]
        for ok, message in checks:
            if not ok:
                raise ConfigError(message)

    # -- resolved paths --------------------------------------------------------
    def path(self, value: str) -> Path:
        p = Path(value).expanduser()
        return p if p.is_absolute() else (self.base_dir / p)

    @property
    def data_root(self) -> Path:
        return self.path(self.data.root)

    @property
    def output_dir(self) -> Path:
        return self.path(self.run.output_dir)

    @property
    def cache_dir(self) -> Path:
        return self.path(self.run.cache_dir) if self.run.cache_dir else (
            self.output_dir.parent / "encoder-cache")

    def engine_config(self):  # -> MedSegRConfig
        from medsegr.config import MedSegRConfig

        if self.engine.tiny:
            config = MedSegRConfig.tiny()
        elif self.engine.config:
            config = MedSegRConfig.from_file(self.path(self.engine.config))
        else:
            config = MedSegRConfig()
        return config
