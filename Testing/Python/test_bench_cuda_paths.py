"""The accelerator code paths that can be exercised without a GPU: the encoder batch
sized from free memory, and the fallback to smaller batches on out-of-memory."""

from __future__ import annotations

import numpy as np
import pytest
import torch

from medsegr.io.images import image_from_array
from medsegr.pipeline import MedSegRPipeline, batch_for_memory

GIB = 1024**3


def test_batch_for_memory():
    assert batch_for_memory(8 * GIB, GIB // 4) == 16  # half of 8 GiB, 256 MiB per slice
    assert batch_for_memory(80 * GIB, GIB // 4) == 64  # capped
    assert batch_for_memory(GIB // 8, GIB // 4) == 1  # never below one slice
    assert batch_for_memory(8 * GIB, GIB // 4, fraction=0.25, limit=100) == 8
    assert batch_for_memory(8 * GIB, 0) == 64


@pytest.fixture
def volume():
    arr = np.random.default_rng(1).normal(200, 30, (8, 40, 36)).astype(np.float32)
    return image_from_array(arr, spacing=(1.0, 1.0, 2.0), origin=(0.0, 0.0, 0.0),
                            direction=(1.0, 0, 0, 0, 1.0, 0, 0, 0, 1.0), modality="MR")


def test_encoder_out_of_memory_falls_back_to_smaller_batches(tiny_model, volume, monkeypatch):
    """An encoder call over 2 slices runs out of memory: the pipeline splits the batch in
    half until it fits, keeps the smaller size, and the embeddings are the same as when
    encoding one slice at a time."""
    expected, _ = MedSegRPipeline(tiny_model).new_session(volume).embeddings(0, range(8), 1)

    pipe = MedSegRPipeline(tiny_model)
    monkeypatch.setattr(tiny_model.config.generation, "encoder_batch", 8)
    assert pipe.encoder_batch() == 8
    real = tiny_model.encode_images
    calls: list[int] = []

    def limited(pixels: torch.Tensor) -> torch.Tensor:
        calls.append(pixels.shape[0])
        if pixels.shape[0] > 2:
            raise torch.OutOfMemoryError("CUDA out of memory. Tried to allocate 2.00 GiB")
        return real(pixels)

    monkeypatch.setattr(tiny_model, "encode_images", limited)
    session = pipe.new_session(volume)
    got, computed = session.embeddings(0, list(range(8)))
    assert computed == 8
    assert calls == [8, 4, 2, 2, 2, 2]
    assert pipe.encoder_batch() == 2  # remembered for later calls
    for a, b in zip(got, expected):
        torch.testing.assert_close(a.float(), b.float(), rtol=1e-3, atol=1e-3)

    calls.clear()
    other = pipe.new_session(volume)
    other.embeddings(0, [0, 1, 2])
    assert calls == [2, 1]  # starts at the size that fitted


def test_out_of_memory_on_a_single_slice_is_raised(tiny_model, volume, monkeypatch):
    pipe = MedSegRPipeline(tiny_model)

    def always(pixels: torch.Tensor) -> torch.Tensor:
        raise torch.OutOfMemoryError("CUDA out of memory")

    monkeypatch.setattr(tiny_model, "encode_images", always)
    with pytest.raises(torch.OutOfMemoryError):
        pipe.new_session(volume).embeddings(0, [0, 1, 2, 3], 4)
    assert pipe.encoder_batch() == 1
