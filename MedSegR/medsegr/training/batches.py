"""Training batches: examples with their cached image embeddings, padded into tensors.
Used by the text stage (:mod:`.trainer`); the grounding stage has its own batches
(:mod:`.grounding_stage`)."""

from __future__ import annotations

import random
from collections.abc import Iterator
from typing import Any

import torch

from medsegr.training.encoder_cache import EncoderCache
from medsegr.training.examples import IGNORE, Example


class ExampleDataset(torch.utils.data.Dataset):
    def __init__(self, examples: list[Example], cache: EncoderCache) -> None:
        self.examples = examples
        self.cache = cache

    def __len__(self) -> int:
        return len(self.examples)

    def __getitem__(self, i: int) -> dict[str, Any]:
        ex = self.examples[i]
        return {"input_ids": ex.input_ids, "labels": ex.labels, "masks": ex.masks,
                "embedding": self.cache.get(ex.cache_key), "pixels": ex.pixels}


def collate(pad_id: int):
    def fn(batch: list[dict[str, Any]]) -> dict[str, Any]:
        length = max(len(b["input_ids"]) for b in batch)
        ids = torch.full((len(batch), length), pad_id, dtype=torch.long)
        labels = torch.full((len(batch), length), IGNORE, dtype=torch.long)
        attention = torch.zeros((len(batch), length), dtype=torch.long)
        for row, b in enumerate(batch):
            n = len(b["input_ids"])
            ids[row, :n] = torch.tensor(b["input_ids"])
            labels[row, :n] = torch.tensor(b["labels"])
            attention[row, :n] = 1
        return {"input_ids": ids, "labels": labels, "attention_mask": attention,
                "image_embeddings": torch.stack([b["embedding"] for b in batch]).float(),
                "gt_masks": [torch.from_numpy(b["masks"]).float() for b in batch],
                "pixels": (torch.stack([torch.from_numpy(b["pixels"]) for b in batch]).float()
                           if all(b.get("pixels") is not None for b in batch) else None)}
    return fn


class LengthBuckets(torch.utils.data.Sampler[list[int]]):
    """Batches of examples of similar length, so little of a batch is padding.

    Each epoch the examples are shuffled, cut into pools of ``pool`` batches, each pool
    is sorted by length and cut into batches, and the batches of the epoch are shuffled
    (the order of lengths carries no signal). Deterministic for a given ``seed``.
    """

    def __init__(self, lengths: list[int], batch_size: int, seed: int = 0, pool: int = 64) -> None:
        if batch_size < 1:
            raise ValueError("batch_size must be at least 1")
        self.lengths = list(lengths)
        self.batch_size = batch_size
        self.pool = max(1, pool)
        self.seed = seed
        self.epoch = 0

    def __len__(self) -> int:
        return -(-len(self.lengths) // self.batch_size)

    def __iter__(self) -> Iterator[list[int]]:
        rng = random.Random(self.seed * 1_000_003 + self.epoch)
        self.epoch += 1
        order = list(range(len(self.lengths)))
        rng.shuffle(order)
        size = self.batch_size * self.pool
        batches: list[list[int]] = []
        for start in range(0, len(order), size):
            chunk = sorted(order[start:start + size], key=lambda i: self.lengths[i])
            batches += [chunk[k:k + self.batch_size] for k in range(0, len(chunk), self.batch_size)]
        rng.shuffle(batches)
        yield from batches
