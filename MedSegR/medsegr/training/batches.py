"""Training batches: examples with their cached image embeddings, padded into tensors.
Used by the text stage (:mod:`.trainer`); the grounding stage has its own batches
(:mod:`.grounding_stage`)."""

from __future__ import annotations

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
