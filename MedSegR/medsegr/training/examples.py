"""Dataset records -> training examples: the slice the encoder sees, the masks on the
encoder's input grid, and the token sequence with its answer labels.

The slice goes through exactly the inference path (:mod:`medsegr.slicing` display
orientation, :func:`medsegr.preprocess.normalise`, letterboxing), so the model is
trained on what it is later shown.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import Any, Sequence

import numpy as np

from medsegr.errors import InputError
from medsegr.io.images import MedicalImage, load_image
from medsegr.preprocess import Letterbox, letterbox, letterbox_geometry, normalise
from medsegr.prompts import Turn, render
from medsegr.slicing import SliceView, resolve_axis, slice_view

IGNORE = -100


@dataclass
class SliceInput:
    """One record's slice, ready for the frozen encoder."""

    record_id: str
    #: identifies the encoder input (image file, slice, window): the embedding cache key
    cache_key: str
    #: ``(S, S)`` float32 in [0, 1], letterboxed encoder input
    pixels: np.ndarray
    #: mask key -> ``(S, S)`` bool on the encoder input grid
    masks: dict[str, np.ndarray]
    view: SliceView
    box: Letterbox


@dataclass
class Example:
    """A tokenised conversation of one record."""

    record_id: str
    cache_key: str
    input_ids: list[int]
    labels: list[int]
    #: ``(K, S, S)`` uint8: the masks of the K ``[SEG]`` tokens, in order
    masks: np.ndarray
    question_types: list[str]


class ImageStore:
    """Loads each image/label file once (records share volumes)."""

    def __init__(self, root: Path) -> None:
        self.root = root
        self._images: dict[str, MedicalImage] = {}
        self._normalised: dict[tuple[str, str, str | None], np.ndarray] = {}

    def image(self, rel: str) -> MedicalImage:
        if rel not in self._images:
            self._images[rel] = load_image(self.root / rel)
        return self._images[rel]

    def normalised(self, rel: str, modality: str, window: str | None) -> np.ndarray:
        key = (rel, modality, window)
        if key not in self._normalised:
            self._normalised[key] = normalise(self.image(rel).array, modality, window)
        return self._normalised[key]

    def file_stamp(self, rel: str) -> str:
        stat = (self.root / rel).stat()
        return f"{rel}:{stat.st_size}:{stat.st_mtime_ns}"


def slice_input(record: Any, store: ImageStore, size: int) -> SliceInput:
    """The encoder input and ground-truth masks of ``record`` (a dataset record)."""
    image = store.image(record.image)
    modality = record.modality or image.modality
    if image.is_2d:
        axis, index = 0, 0
    else:
        axis = resolve_axis(record.axis or "axial", image.direction)
        index = image.shape[axis] // 2 if record.slice is None else int(record.slice)
    view = slice_view(image.shape, image.spacing, image.direction, axis, index)
    shown = view.extract(store.normalised(record.image, modality, record.window))
    box = letterbox_geometry(shown.shape, view.pixel_spacing, size)
    pixels = letterbox(shown[None], box)[0, 0].numpy()
    masks: dict[str, np.ndarray] = {}
    for spec in record.masks:
        labels = store.image(spec.file)
        if labels.shape != image.shape:
            raise InputError(f"record {record.id}: mask {spec.file} has shape {labels.shape}, "
                             f"the image {image.shape}")
        region = view.extract(labels.array == spec.label).astype(np.float32)
        masks[spec.key] = letterbox(region[None], box)[0, 0].numpy() > 0.5
    cache_key = "|".join([store.file_stamp(record.image), modality, str(record.window),
                          str(axis), str(index), str(size)])
    return SliceInput(record_id=record.id, cache_key=cache_key, pixels=pixels, masks=masks,
                      view=view, box=box)


def conversation_tokens(model: Any, turns: Sequence[Any]) -> tuple[list[int], list[int]]:
    """Token ids of a whole conversation (image tokens expanded to the model's N visual
    tokens, in the first user turn) and labels that are the token ids on every assistant
    answer (and its end-of-turn token) and :data:`IGNORE` elsewhere.

    The prompt of turn k is tokenised exactly as the pipeline tokenises it at inference
    (the chat template over the turns so far).
    """
    cfg = model.config
    tok = model.tokenizer
    answered: list[Turn] = []
    starts: list[int] = []
    ids: list[int] = []
    for k, turn in enumerate(turns):
        current = Turn(question=turn.question, image_id="image" if k == 0 else None)
        prompt = tok.encode(render(tok, cfg.llm.system_prompt, answered + [current],
                                   cfg.model.image_token), add_special_tokens=False)
        starts.append(len(prompt))
        answered.append(Turn(question=turn.question, image_id=current.image_id,
                             answer=turn.answer))
        ids = prompt  # the last prompt holds every earlier answer
    last = turns[-1]
    ids = ids + tok.encode(last.answer, add_special_tokens=False)
    end = _end_of_turn_id(model)
    ids.append(end)
    labels = [IGNORE] * len(ids)
    for start in starts:
        stop = next((t for t in range(start, len(ids)) if ids[t] == end), len(ids) - 1)
        labels[start:stop + 1] = ids[start:stop + 1]
    return _expand_image_tokens(model, ids, labels)


def _end_of_turn_id(model: Any) -> int:
    """The token that closes an assistant turn in the chat template (e.g. ``<|im_end|>``)."""
    tok = model.tokenizer
    text = render(tok, model.config.llm.system_prompt,
                  [Turn(question="q", image_id=None, answer="zq")], model.config.model.image_token)
    ids = tok.encode(text, add_special_tokens=False)
    answer = tok.encode("zq", add_special_tokens=False)
    for pos in range(len(ids) - len(answer), -1, -1):
        if ids[pos:pos + len(answer)] == answer:
            after = ids[pos + len(answer)]
            if after in model.eos_token_ids:
                return int(after)
            break
    eos = sorted(model.eos_token_ids)
    if not eos:
        raise InputError("the language model's tokenizer has no end-of-turn token")
    return int(eos[0])


def _expand_image_tokens(model: Any, ids: list[int], labels: list[int]) -> tuple[list[int], list[int]]:
    n = model.num_visual_tokens
    out_ids: list[int] = []
    out_labels: list[int] = []
    for token, label in zip(ids, labels):
        if token == model.image_token_id:
            out_ids.extend([token] * n)
            out_labels.extend([IGNORE] * n)
        else:
            out_ids.append(token)
            out_labels.append(label)
    return out_ids, out_labels


def make_example(record: Any, model: Any, inputs: SliceInput, max_tokens: int) -> Example:
    """Tokenise ``record``'s conversation and bind each ``[SEG]`` to its mask."""
    seg = model.config.model.seg_token
    keys: list[str] = []
    for k, turn in enumerate(record.conversation):
        count = turn.answer.count(seg)
        if count != len(turn.masks):
            raise InputError(f"record {record.id}, turn {k + 1}: {count} {seg} markers but "
                             f"{len(turn.masks)} masks")
        keys.extend(turn.masks)
    ids, labels = conversation_tokens(model, record.conversation)
    if len(ids) > max_tokens:
        raise InputError(f"record {record.id}: the conversation has {len(ids)} tokens, more than "
                         f"[data] max_tokens = {max_tokens}")
    if labels.count(model.seg_token_id) != len(keys):
        raise InputError(f"record {record.id}: {seg} does not tokenise to one id per marker")
    missing = [k for k in keys if k not in inputs.masks]
    if missing:
        raise InputError(f"record {record.id}: unknown mask key(s) {', '.join(missing)}")
    size = inputs.pixels.shape[0]
    masks = (np.stack([inputs.masks[k] for k in keys]).astype(np.uint8) if keys
             else np.zeros((0, size, size), dtype=np.uint8))
    return Example(record_id=record.id, cache_key=inputs.cache_key, input_ids=ids,
                   labels=labels, masks=masks,
                   question_types=[str(t.type) for t in record.conversation])
