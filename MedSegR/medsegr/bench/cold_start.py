"""The engine suite's cold-start workload: a fresh process until the model is loaded.

Timed from the top of the worker process (:mod:`medsegr.bench.engine_worker`, before
any heavy import) until ``MedSegRPipeline.load`` returns, split into the import of
the engine and the load; inside the load, the split is what the pipeline recorded
itself (``MedSegRPipeline.load_timings``: vision, llm, hashing, conversion,
optimise). Whether the one-time GGUF conversion ran is seen from the cache folder.
"""

from __future__ import annotations

import time
from typing import Any

from medsegr.bench.engine_plan import engine_config


def cold_start(top_perf: float, top_mono: float, spawn_mono: float, device: str,
               model: str) -> dict[str, Any]:
    """Import the engine and load the model; the numbers of that, as a JSON-ready dict.

    ``top_perf``/``top_mono``: the worker's clocks at its first line;
    ``spawn_mono``: the parent's monotonic clock when it started the process."""
    import medsegr.pipeline as pipeline_mod

    t_import = time.perf_counter()
    from medsegr.modeling.weights import cache_dir

    llm_dir = cache_dir() / "llm"
    cache_was_filled = llm_dir.is_dir() and any(llm_dir.iterdir())
    pipe = pipeline_mod.MedSegRPipeline.load(None, config=engine_config(model, False),
                                             device=device)
    t_loaded = time.perf_counter()
    phases, calls = pipe.load_timings, pipe.load_calls
    info = pipe.info()
    conversion_s = phases.get("conversion", 0.0)
    return {
        "interpreter_s": top_mono - spawn_mono,
        "import_s": t_import - top_perf,
        "load_s": t_loaded - t_import,
        "total_s": t_loaded - top_perf,
        "spawn_to_loaded_s": (top_mono - spawn_mono) + (t_loaded - top_perf),
        "hashing_s": phases.get("hashing", 0.0),
        "hash_calls": calls.get("hashing", 0),
        "conversion_s": conversion_s,
        "vision_s": phases.get("vision"),
        "llm_s": phases.get("llm"),
        "optimise_s": phases.get("optimise"),
        "converted": not cache_was_filled and conversion_s > 1.0,
        "cache_dir": str(cache_dir()),
        "dtype": info.get("dtype"),
        "visual_tokens": info.get("visual_tokens"),
    }
