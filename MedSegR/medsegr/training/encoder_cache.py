"""Frozen-encoder outputs on disk: each slice is encoded once, ever.

The image encoder is frozen during training, so its output for a slice never
changes. Each embedding is stored (float16, safetensors) under a folder named after
the encoder's weights, keyed by a hash of the encoder input's pixels (a rebuilt
dataset with the same slices reuses them). The first epoch (or an earlier run)
fills the cache; later epochs and runs only read it.
"""

from __future__ import annotations

import hashlib
import json
from pathlib import Path
from typing import Sequence

import numpy as np
import torch

from medsegr.io.atomic import atomic_path
from medsegr.training.examples import SliceInput


def encoder_digest(model) -> str:
    """Identifies the encoder's weights (SHA-256 from the model's provenance, or a hash of
    the parameters for models without one, e.g. the tiny test model)."""
    vision = model.provenance.get("vision", {})
    shas = {k: v for k, v in vision.items() if k.startswith("sha256")}
    if shas:
        text = json.dumps(shas, sort_keys=True)
    else:
        h = hashlib.sha256()
        for name, p in sorted(model.vision.image_encoder.state_dict().items()):
            h.update(name.encode())
            h.update(p.detach().float().cpu().numpy().tobytes())
        text = h.hexdigest()
    return hashlib.sha256(f"{text}|{model.vision.image_size}".encode()).hexdigest()[:16]


class EncoderCache:
    def __init__(self, folder: Path, digest: str) -> None:
        self.folder = Path(folder) / digest
        self.folder.mkdir(parents=True, exist_ok=True)
        self.memory: dict[str, torch.Tensor] = {}
        self.computed = 0  # slices encoded by this process

    def _file(self, key: str) -> Path:
        return self.folder / f"{hashlib.sha256(key.encode()).hexdigest()[:32]}.safetensors"

    def has(self, key: str) -> bool:
        return key in self.memory or self._file(key).is_file()

    def fill(self, model, inputs: Sequence[SliceInput], batch_size: int = 0,
             progress: bool = True) -> None:
        """Encode every input whose embedding is not on disk yet (frozen encoder, no grad).

        On CPU a copy of the encoder with the inference fusions (batch-norm folding and
        fused oneDNN kernels, equal to float32 rounding) encodes one slice at a time,
        which is the fastest there; ``batch_size`` 0 means 1 on CPU and 4 elsewhere."""
        from safetensors.torch import save_file
        from tqdm import tqdm

        encode = model.encode_images
        on_cpu = model.device.type == "cpu"
        batch_size = batch_size or (1 if on_cpu else 4)
        if on_cpu and any(not self.has(item.cache_key) for item in inputs):
            encode = _fused_cpu_encoder(model)

        todo: dict[str, SliceInput] = {}
        for item in inputs:
            if not self.has(item.cache_key):
                todo.setdefault(item.cache_key, item)
        items = list(todo.values())
        bar = tqdm(total=len(items), desc="encoding slices (cached)", unit="slice",
                   disable=not progress or not items)
        for start in range(0, len(items), batch_size):
            chunk = items[start:start + batch_size]
            pixels = torch.from_numpy(np.stack([c.pixels for c in chunk]))[:, None]
            with torch.no_grad():
                emb = encode(pixels).to(torch.float16).cpu()
            for item, e in zip(chunk, emb):
                with atomic_path(self._file(item.cache_key)) as tmp:
                    save_file({"embedding": e.contiguous()}, str(tmp), metadata={"key": item.cache_key})
            self.computed += len(chunk)
            bar.update(len(chunk))
        bar.close()

    def get(self, key: str) -> torch.Tensor:
        """The embedding ``(C, h, w)`` float16 (read from disk once, then kept in memory)."""
        if key not in self.memory:
            from safetensors import safe_open

            with safe_open(str(self._file(key)), framework="pt") as f:
                if f.metadata().get("key") != key:
                    raise RuntimeError(f"encoder cache collision for {key!r}")
                self.memory[key] = f.get_tensor("embedding")
        return self.memory[key]


def _fused_cpu_encoder(model):
    """``pixels (B, 1, S, S) -> embeddings`` through a fused copy of the frozen encoder
    (the model itself is left as it is: it is trained and saved)."""
    import copy

    from medsegr.modeling.encoder_fusion import fuse_tinyvit
    from medsegr.modeling.inference_opt import fuse_conv_bn

    vision = copy.deepcopy(model.vision).eval()
    fuse_conv_bn(vision.image_encoder)
    vision.image_encoder.to(memory_format=torch.channels_last)
    vision.channels_last = True
    fuse_tinyvit(vision.image_encoder)
    dtype = next(vision.image_encoder.parameters()).dtype

    def encode(pixels: torch.Tensor) -> torch.Tensor:
        with torch.no_grad():
            return vision.encode(pixels.to(model.device, dtype))
    return encode
