"""Where the time of one slice question goes: the torch profiler on each path."""

from __future__ import annotations

from pathlib import Path

from medsegr.bench.context import QUESTION, SLICE_INDEX, BenchContext
from medsegr.io.images import atomic_output

#: rows of each operator table
TOP_OPERATORS = 25


def profile_slice_question(ctx: BenchContext, path: str) -> str:
    """Profile one slice question on ``path`` (``medsegr`` or ``reference``) and return
    the operator table (sorted by self CPU time; self CUDA time on a GPU) with a
    header that says what was profiled."""
    import torch
    from torch.profiler import ProfilerActivity, profile

    activities = [ProfilerActivity.CPU]
    on_cuda = ctx.device.type == "cuda"
    if on_cuda:
        activities.append(ProfilerActivity.CUDA)
    session = ctx.open_session(path)
    with profile(activities=activities, record_shapes=False) as prof:
        answer = session.ask(QUESTION, axis="axial", slice_index=SLICE_INDEX)
        if on_cuda:
            torch.cuda.synchronize(ctx.device)
    sort = "self_cuda_time_total" if on_cuda else "self_cpu_time_total"
    timings = ", ".join(f"{k} {v:.3f} s" for k, v in answer.timings.items())
    header = (f"# {path}: one slice question ({answer.tokens['generated']} tokens; answer "
              f"timings: {timings}; under the profiler, which slows small operators down)\n")
    return header + prof.key_averages().table(sort_by=sort, row_limit=TOP_OPERATORS) + "\n"


def write_profile(ctx: BenchContext, target: str | Path, paths: tuple[str, ...]) -> Path:
    text = "\n".join(profile_slice_question(ctx, path) for path in paths)
    target = Path(target)
    target.parent.mkdir(parents=True, exist_ok=True)
    with atomic_output(target) as tmp:
        tmp.write_text(text, encoding="utf-8")
    return target
