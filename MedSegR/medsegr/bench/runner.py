"""Loading the model once and running the selected workloads on both paths.

Both paths use the one loaded :class:`~medsegr.pipeline.MedSegRPipeline` (same
weights, same kernels, same configuration), so the ratio compares equal work.

Precision. On CPU the engine normally quantises the LLM's linear layers to int8 on
the fly (dynamic quantisation: each call's activations get their own scale). That
scale then depends on how many positions a call holds, and the reference re-runs
the whole sequence (~150 positions, with the large activations of the first
tokens) where MedSegR runs one position: the two paths no longer compute the same
function, and on the bundled model the reference's answers come out different (and
degenerate) from the first token. The comparison therefore runs the LLM in float32
on CPU (``llm.cpu_int8 = false``) by default; ``cpu_int8=True`` runs both paths
with the production int8 LLM instead, and the equality check then reports what
differs. On CUDA both paths run in bfloat16.
"""

from __future__ import annotations

import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Callable

import torch

from medsegr.bench.machine import host_facts, torch_facts
from medsegr.bench.memory import rss_mib
from medsegr.bench.context import (FULL, QUICK, SAMPLE, BenchContext, Plan, SegAtStep,
                                   WorkloadResult)
from medsegr.bench.workloads import run_workload, warm_up, workload_names
from medsegr.config import MedSegRConfig
from medsegr.errors import InputError
from medsegr.pipeline import MedSegRPipeline

#: mask-decoder batch in volume mode on CUDA (the engine's default, 4, suits CPU)
CUDA_DECODER_BATCH = 64


@dataclass
class BenchOptions:
    """What ``medsegr bench`` was asked to do."""

    quick: bool = False
    device: str = "auto"
    workloads: tuple[str, ...] = ("slice", "conversation", "volume", "server")
    #: "bundled" (the real pretrained parts) or "tiny" (a tiny random model of the same
    #: classes: a smoke test of the benchmark itself, its numbers mean nothing)
    model: str = "bundled"
    #: a fine-tuned checkpoint folder, "default" (the engine's default: the bundled
    #: checkpoint when there is one) or None (the untrained base parts)
    checkpoint: str | Path | None = "default"
    #: model configuration for the base parts
    config_file: Path | None = None
    cpu_int8: bool = False
    compile: bool = False
    repeats: int | None = None

    def plan(self) -> Plan:
        plan = QUICK if self.quick else FULL
        return plan.with_repeats(self.repeats) if self.repeats else plan


@dataclass
class BenchResult:
    """Everything one ``medsegr bench`` run measured."""

    options: BenchOptions
    plan: Plan
    machine: dict[str, Any]
    model: dict[str, Any]
    settings: dict[str, Any]
    load_s: float
    rss_after_load_mib: float | None
    warm_up_s: float
    compile_s: float | None
    workloads: list[WorkloadResult] = field(default_factory=list)
    wall_s: float = 0.0

    @property
    def equality_passed(self) -> bool:
        ran = [w for w in self.workloads if w.skipped is None]
        return all(w.equality.passed for w in ran)


def bench_config(options: BenchOptions, plan: Plan) -> MedSegRConfig:
    """The configuration of the base parts both paths run with."""
    if options.model == "tiny":
        config = MedSegRConfig.tiny()
    elif options.model == "bundled":
        config = MedSegRConfig.from_file(options.config_file) if options.config_file \
            else MedSegRConfig()
    else:
        raise InputError(f"unknown --model {options.model!r} (bundled or tiny)")
    return apply_bench_settings(config, options, plan)


def apply_bench_settings(config: MedSegRConfig, options: BenchOptions,
                         plan: Plan) -> MedSegRConfig:
    """Fixed-length greedy answers and the LLM precision of the comparison."""
    config.llm.cpu_int8 = options.cpu_int8
    config.llm.cpu_bf16 = False  # both paths compare the LLM in float32 (or int8)
    config.generation.max_new_tokens = plan.answer_tokens
    config.generation.min_new_tokens = plan.answer_tokens
    config.generation.temperature = 0.0
    if config.generation.volume_key_slices != 1:
        raise InputError("the benchmark's reference path covers one key slice per volume "
                         "question (generation.volume_key_slices = 1)")
    return config


def compile_vision(pipeline: MedSegRPipeline) -> None:
    """``torch.compile`` the image encoder and the grounding module's two parts: the
    backbone pass (one per slice batch) and the per-query decoding (static shapes: one
    graph per batch size and query count, so a shape first seen in a timed run compiles
    there). Both run without CUDA graphs: the backbone is compute-bound at the batch
    sizes volumes use, and a batch split after an out-of-memory error keeps several
    outputs alive at once. The LLM's lean decoder is not compiled: its KV cache grows
    every step, so every length would be a new graph. Both paths of the benchmark share
    the compiled parts (they run on the same model object)."""
    vision = pipeline.model.vision
    grounding = pipeline.model.grounding
    vision.image_encoder = torch.compile(vision.image_encoder, dynamic=False)
    grounding.features = torch.compile(grounding.features, dynamic=False)  # type: ignore[method-assign]
    grounding.decode = torch.compile(grounding.decode, dynamic=False)  # type: ignore[method-assign]


def machine_facts(device: torch.device) -> dict[str, Any]:
    """The machine and software a result belongs to (:mod:`medsegr.bench.machine`)."""
    facts = host_facts()
    load = facts.pop("loadavg")
    facts.update(torch_facts(device))
    del facts["torch_interop_threads"]
    if load is not None:
        facts["loadavg_before"] = load
    return facts


def checkpoint_path(options: BenchOptions) -> Path | None:
    """The fine-tuned checkpoint the benchmark loads, or None for the base parts."""
    from medsegr.pipeline import default_checkpoint

    if options.model == "tiny" or options.config_file is not None or options.checkpoint is None:
        return None
    if options.checkpoint == "default":
        return default_checkpoint()
    path = Path(options.checkpoint)
    if not (path / "medsegr_config.json").is_file():
        raise InputError(f"not a MedSegR checkpoint folder (no medsegr_config.json): {path}")
    return path


def load_pipeline(options: BenchOptions, plan: Plan) -> tuple[MedSegRPipeline, float]:
    """Load the model both paths share. A fine-tuned checkpoint is loaded as the engine
    loads it, except that the LLM precision is the benchmark's (``options.cpu_int8``)
    and the int8 cache is not used."""
    t0 = time.perf_counter()
    path = checkpoint_path(options)
    if path is None:
        pipeline = MedSegRPipeline.load(None, config=bench_config(options, plan),
                                        device=options.device)
    else:
        from medsegr.modeling.checkpoint import from_pretrained
        from medsegr.modeling.inference_opt import optimise_for_inference

        model = from_pretrained(path, device=options.device)
        apply_bench_settings(model.config, options, plan)
        pipeline = MedSegRPipeline(optimise_for_inference(model), checkpoint=path)
    if pipeline.model.device.type == "cuda":
        pipeline.model.config.generation.decoder_batch = CUDA_DECODER_BATCH
    pipeline.adjust_logits = SegAtStep(pipeline.model.seg_token_id, plan.answer_tokens - 1)
    return pipeline, time.perf_counter() - t0


def run_bench(options: BenchOptions, progress: Callable[[str], None] = lambda m: None,
              pipeline: MedSegRPipeline | None = None, load_s: float = 0.0) -> BenchResult:
    """Run the benchmark. ``pipeline``: one already set up by :func:`load_pipeline`
    (which took ``load_s`` seconds); by default it is loaded here."""
    unknown = sorted(set(options.workloads) - set(workload_names()))
    if unknown:
        raise InputError(f"unknown workload(s): {', '.join(unknown)} "
                         f"(known: {', '.join(workload_names())})")
    plan = options.plan()
    t_start = time.perf_counter()
    if pipeline is None:
        progress(f"loading the {options.model} model on {options.device} ...")
        pipeline, load_s = load_pipeline(options, plan)
    from medsegr.io.images import load_image
    from medsegr.cli.samples import resolve

    image = load_image(resolve("sample:" + SAMPLE))
    ctx = BenchContext(pipeline, image, plan, progress)
    rss_loaded = rss_mib()
    compile_s = None
    if options.compile:
        compile_vision(pipeline)
    progress("warming up (one short question per path, not timed)")
    warm_s = warm_up(ctx, volume="volume" in options.workloads)
    if options.compile:
        compile_s = warm_s
    info = pipeline.info()
    gen = pipeline.model.config.generation
    settings = {
        "llm_precision": ("int8 (dynamic)" if pipeline.model.llm_quantized else info["dtype"]),
        "lean_decoder": pipeline.model.fast_llm is not None,
        "answer_tokens": plan.answer_tokens,
        "seg_forced_at_token": plan.answer_tokens,
        "encoder_batch": pipeline.encoder_batch(),
        "decoder_batch": gen.decoder_batch,
        "embedding_cache_dtype": gen.embedding_cache_dtype,
        "compiled_vision": options.compile,
    }
    result = BenchResult(options=options, plan=plan, machine=machine_facts(pipeline.model.device),
                         model=info, settings=settings, load_s=load_s,
                         rss_after_load_mib=rss_loaded, warm_up_s=warm_s, compile_s=compile_s)
    for name in options.workloads:
        progress(f"[{name}]")
        outcome = run_workload(name, ctx)
        if outcome.skipped:
            progress(f"  skipped: {outcome.skipped}")
        result.workloads.append(outcome)
    result.wall_s = time.perf_counter() - t_start
    return result
