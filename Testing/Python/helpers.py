"""Small test helpers (imported by the tests, not a fixture module)."""

from __future__ import annotations

import contextlib
from typing import Iterator


class ForceSeg:
    """Biases the [SEG] logit up at chosen decoding steps and down at all others.

    A forward hook on the LM head: it lets a test make a *random* model emit
    ``[SEG]`` exactly where the test needs it. Step 0 is the prefill's output.
    """

    def __init__(self, model, steps):
        self.model, self.steps, self.calls = model, set(steps), 0

    def __call__(self, module, args, output):
        output = output.clone()
        output[..., -1, self.model.seg_token_id] += 1e4 if self.calls in self.steps else -1e4
        self.calls += 1
        return output


@contextlib.contextmanager
def force_seg(model, steps) -> Iterator[ForceSeg]:
    hook = ForceSeg(model, steps)
    handle = model.llm.get_output_embeddings().register_forward_hook(hook)
    try:
        yield hook
    finally:
        handle.remove()
