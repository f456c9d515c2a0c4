"""Small test helpers (imported by the tests, not a fixture module)."""

from __future__ import annotations

import contextlib
import json
from pathlib import Path
from typing import Iterator

import numpy as np


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
    with _on_lm_head(model, ForceSeg(model, steps)) as hook:
        yield hook


@contextlib.contextmanager
def _on_lm_head(model, hook):
    """``hook`` as a forward hook on the model's LM head while the block runs."""
    handle = model.llm.get_output_embeddings().register_forward_hook(hook)
    try:
        yield hook
    finally:
        handle.remove()


class ForceText:
    """Makes a *random* model answer exactly ``text`` and then stop: a forward hook on the
    LM head that raises the logit of the text's next token at every decoding step (and
    of end-of-sequence after it). For tests of what the product does with a named
    answer (terminology, colours, DICOM codes); the masks stay the random model's."""

    def __init__(self, model, text: str):
        self.model, self.calls = model, 0
        self.tokens = model.tokenizer.encode(text, add_special_tokens=False) + [min(model.eos_token_ids)]

    def __call__(self, module, args, output):
        output = output.clone()
        output[..., -1, self.tokens[min(self.calls, len(self.tokens) - 1)]] += 1e4
        self.calls += 1
        return output


@contextlib.contextmanager
def force_text(model, text: str) -> Iterator[ForceText]:
    with _on_lm_head(model, ForceText(model, text)) as hook:
        yield hook


def write_records(path: Path, records: list[dict]) -> None:
    path.write_text("".join(json.dumps(r) + "\n" for r in records), encoding="utf-8")


def make_dataset(root: Path) -> Path:
    """A dataset in the MedSeg-QA-style format (docs/dataset-format.md). Two subjects
    (one per split): small MR-like volumes with a bright "kidney" and a
    dark "lesion" inside it, label maps on the same oblique, anisotropic grid."""
    from medsegr.io.images import image_from_array, write_image

    (root / "images").mkdir(parents=True)
    (root / "labels").mkdir()
    rng = np.random.default_rng(0)
    for split, subject in (("train", "s1"), ("val", "s2")):
        z, y, x = np.mgrid[0:6, 0:48, 0:56]
        kidney = ((y - 24) / 14) ** 2 + ((x - 26) / 18) ** 2 <= 1
        lesion = ((y - 22) / 4) ** 2 + ((x - 30) / 5) ** 2 <= 1
        image = np.where(kidney, 800.0, 100.0) - np.where(lesion, 500.0, 0.0)
        image = image + rng.normal(0, 20, image.shape)
        labels = np.where(lesion, 2, np.where(kidney, 1, 0)).astype(np.int16)
        geometry = dict(spacing=(0.9, 1.1, 2.5), origin=(-5.0, 10.0, 3.0),
                        direction=(1, 0, 0, 0, 0.96592583, -0.25881905, 0, 0.25881905, 0.96592583))
        write_image(root / "images" / f"{subject}.nrrd",
                    image_from_array(image.astype(np.float32), modality="MR", **geometry))
        write_image(root / "labels" / f"{subject}.nrrd",
                    image_from_array(labels.astype(np.float32), modality="OT", **geometry))
        masks = [{"key": "kidney", "file": f"labels/{subject}.nrrd", "label": 1, "name": "kidney"},
                 {"key": "lesion", "file": f"labels/{subject}.nrrd", "label": 2, "name": "lesion"}]
        records = []
        for k in range(1, 5):
            records.append({
                "id": f"{subject}-ax-{k}", "subject": subject, "source": "test",
                "image": f"images/{subject}.nrrd", "modality": "MR", "window": None,
                "axis": "axial", "slice": k, "masks": masks,
                "conversation": [
                    {"question": "Which organ holds a dark lesion? Segment it.", "type": "implicit",
                     "answer": "The <p>kidney</p> [SEG] holds it.", "masks": ["kidney"]},
                    {"question": "Now only the lesion.", "type": "multi-turn",
                     "answer": "Here is the <p>lesion</p> [SEG].", "masks": ["lesion"]},
                    {"question": "Is the liver visible?", "type": "absent",
                     "answer": "No, there is no liver in this slice.", "masks": []},
                ]})
        write_records(root / f"{split}.jsonl", records)
    return root


#: modules that make an import heavy (seconds of start-up, hundreds of MiB)
HEAVY = ("torch", "transformers", "peft", "timm", "SimpleITK", "fastapi", "uvicorn")


def heavy_modules_after(code: str, heavy: tuple[str, ...] = HEAVY, timeout: float = 120) -> list[str]:
    """Run ``code`` in a fresh interpreter; return which of ``heavy`` it left in
    ``sys.modules`` (fails the test when ``code`` itself fails)."""
    import subprocess
    import sys

    probe = (f"{code}\nimport sys as _sys\n"
             f"print('heavy:' + ','.join(m for m in {tuple(heavy)!r} if m in _sys.modules))\n")
    proc = subprocess.run([sys.executable, "-c", probe], capture_output=True, encoding="utf-8",
                          errors="replace", timeout=timeout)
    assert proc.returncode == 0, proc.stderr[-3000:]
    last = proc.stdout.strip().splitlines()[-1]
    assert last.startswith("heavy:"), proc.stdout[-2000:]
    return [m for m in last.removeprefix("heavy:").split(",") if m]


def grounding_says_present(model, shift: float = 5.0):
    """Stands in for a trained grounding module asked about a structure that the answer
    names and the image shows: raises the *random* module's presence logits and mask
    logits by ``shift`` (the output bias of its presence MLP and the bias of the dynamic
    head's last layer, ``b2``; the random weights stay). Its presence probabilities
    then pass the gate (``[model] presence_threshold``) and its masks cover the slices
    it decodes. Without it the tiny model's presence probabilities are all just under
    0.5 and its random masks are often empty: every segment would be dropped as not
    found, leaving nothing for the tests of what the product does with masks (files,
    geometry, server answers, Slicer segments). Returns ``model``."""
    import torch

    g = model.grounding
    with torch.no_grad():
        g.presence[-1].bias += shift
        g.head.bias[-1] += shift  # b2: the last parameter the head generates
    return model


@contextlib.contextmanager
def grounding_finds_everything(model, logit: float = 20.0) -> Iterator[None]:
    """Stands in for a trained grounding module that finds the named structure on every
    slice it is asked about: the tiny model's *random* module gets a mask logit of
    ``+logit`` at every pixel and a presence logit of ``+logit`` for every query, through
    the biases of its last layers (the dynamic head's output bias ``b2`` and the presence
    MLP's output), their weights zeroed. Every mask then covers the whole letterboxed
    image; the original parameters come back when the block ends. For tests of what the
    product does with non-empty masks (files, DICOM SEG frames, the presence gate)."""
    import torch

    g = model.grounding
    head, presence = g.head, g.presence[-1]
    saved = [p.detach().clone() for p in (head.weight, head.bias, presence.weight, presence.bias)]
    try:
        with torch.no_grad():
            head.weight[-1].zero_()  # b2: the last generated parameter
            head.bias[-1] = logit
            hidden = g.config.head_hidden  # w2 (1, h) sits right before b2
            head.weight[-1 - hidden:-1].zero_()
            head.bias[-1 - hidden:-1] = 0.0
            presence.weight.zero_()
            presence.bias.fill_(logit)
        yield
    finally:
        with torch.no_grad():
            for p, value in zip((head.weight, head.bias, presence.weight, presence.bias), saved):
                p.copy_(value)
