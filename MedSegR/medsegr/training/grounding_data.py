"""Training data of the grounding stage: per dataset record, what the grounding module
reads and what it must answer, with the frozen parts' outputs cached once.

A :class:`GroundingItem` holds one record's slice (raw intensities of the slice and its
neighbours on the letterboxed working grid), the masks of its conversation's ``[SEG]``
tokens, the structures that cannot be in the image (absent queries) and, once
:func:`compute_states` ran, the frozen LLM's hidden states for every query: the state
that produces each ``[SEG]`` and the mean state of the name before it (``<p>…</p>``).

Absent queries are asked the way the LLM would wrongly answer them: an extra turn
("Show me the liver, the brain and the spleen." -> "The <p>liver</p> [SEG], the
<p>brain</p> [SEG] and the <p>spleen</p> [SEG].") is appended to the record's
conversation and teacher-forced on *this* image, so the decoder learns to refuse the
states it will be given when the LLM names something that is not there. The turn mixes
structures that are on the slice with the absent ones, in a random order and wording, so
that only the image and the name, never the turn, tell presence apart.
"""

from __future__ import annotations

import contextlib
import dataclasses
import random
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from types import SimpleNamespace
from typing import Any

import numpy as np
import torch

from medsegr.answers import measured_span
from medsegr.data.records import absent_name, is_absent_key
from medsegr.errors import InputError
from medsegr.imaging.channels import letterbox_raw, neighbour_indices, raw_volume
from medsegr.prompts import name_spans
from medsegr.training.examples import ImageStore, conversation_tokens, slice_input, slice_measurements

__all__ = ["GroundingItem", "absent_names", "build_items", "compute_states", "load_items",
           "save_items", "structure_regions"]

#: absent queries appended to each record's conversation
ABSENT_PER_RECORD = 3


@dataclass
class GroundingItem:
    record_id: str
    source: str
    #: the encoder cache key of the slice (:class:`medsegr.training.encoder_cache.EncoderCache`)
    cache_key: str
    #: ``(n, S, S)`` float16: Hounsfield units (CT) or normalised intensities, slice ``n // 2``
    raw: np.ndarray
    is_ct: bool
    #: ``(K, S, S)`` uint8: the masks of the conversation's K ``[SEG]``, in order
    targets: np.ndarray
    keys: list[str]
    names: list[str]
    #: the targets after a left/right flip (sided names swapped), or None when a sided
    #: structure's counterpart is not labelled in this record
    flipped_targets: np.ndarray | None
    #: names of the absent queries (their targets are empty)
    absent: list[str]
    input_ids: list[int] = dataclasses.field(default_factory=list)
    labels: list[int] = dataclasses.field(default_factory=list)
    #: query ``q`` (real ones first, then absent) is the ``state_order[q]``-th [SEG] of the
    #: token sequence
    state_order: list[int] = dataclasses.field(default_factory=list)
    #: ``(K + A, H)`` float32: the state producing each [SEG] (real ones first)
    states: torch.Tensor | None = None
    #: ``(K + A, H)`` float32: the mean state over each [SEG]'s name span
    name_states: torch.Tensor | None = None

    @property
    def queries(self) -> int:
        return len(self.keys) + len(self.absent)


def structure_regions(keys: Sequence[str]) -> set[str]:
    """The body regions of the labelled structures (what the image covers)."""
    from medsegr.data import knowledge

    regions: set[str] = set()
    for key in keys:
        try:
            entry = knowledge.get(key)
        except (KeyError, InputError):
            try:
                entry = knowledge.match_structure(key.replace("_", " "))
            except (KeyError, InputError):
                continue
        regions.update(entry.regions)
    return regions


def absent_names(keys: Sequence[str], rng: random.Random, count: int = ABSENT_PER_RECORD) -> list[str]:
    """Up to ``count`` names of known structures that cannot be in an image that shows
    ``keys`` (other body regions)."""
    from medsegr.data import knowledge

    candidates = knowledge.absent_candidates(structure_regions(keys), exclude=set(keys))
    rng.shuffle(candidates)
    return [c.name for c in candidates[:count]]


def _swap_side(key: str) -> str | None:
    for a, b in (("left", "right"), ("right", "left")):
        if key.startswith(a + "_"):
            return b + key[len(a):]
        if f"_{a}_" in key:
            return key.replace(f"_{a}_", f"_{b}_")
    return None


#: wordings of the extra turn (question, answer item, answer opening); the present and
#: absent structures it asks for are mixed, so its wording says nothing about presence
_EXTRA_QUESTIONS = ("Segment {}.", "Show me {}.", "Outline {}, please.", "Can you find {}?",
                    "Where are {}? Segment them.", "Mark {} on this image.")
_EXTRA_ITEMS = ("the <p>{}</p> [SEG]", "<p>{}</p> [SEG]")
_EXTRA_OPENINGS = ("", "Here: ", "This image shows ", "Segmented: ")


def _extra_turn(names: list[str], rng: random.Random) -> SimpleNamespace:
    """A question about ``names`` and an answer with one ``[SEG]`` for each, in order."""
    listed = ", ".join(f"the {n}" for n in names[:-1]) + (" and " if len(names) > 1 else "") + f"the {names[-1]}"
    item = rng.choice(_EXTRA_ITEMS)
    parts = [item.format(n) for n in names]
    answer = rng.choice(_EXTRA_OPENINGS) + ", ".join(parts[:-1]) + (" and " if len(parts) > 1 else "") + parts[-1] + "."
    return SimpleNamespace(question=rng.choice(_EXTRA_QUESTIONS).format(listed),
                           answer=answer[0].upper() + answer[1:])


def build_items(model: Any, records: Sequence[Any], size: int, slices: int, seed: int = 0,
                progress: bool = False) -> list[GroundingItem]:
    """One :class:`GroundingItem` per record (states not computed yet)."""
    from tqdm import tqdm

    store = ImageStore()
    rng = random.Random(seed)
    items = []
    for record in tqdm(records, desc="grounding items", unit="record", disable=not progress):
        inputs = slice_input(record, store, size)
        image = record.load_image(store.cache)
        modality = record.modality or image.modality
        is_ct = modality == "CT"
        view = inputs.view
        # the volume the channels come from: Hounsfield units on CT, normalised otherwise
        source = raw_volume(image.array, modality,
                            store.normalised(record, modality) if not is_ct else image.array)
        idx = neighbour_indices(view.index, image.shape[view.axis], slices)
        stack = np.stack([dataclasses.replace(view, index=i).extract(source) for i in idx])
        raw = letterbox_raw(stack, inputs.box, is_ct).numpy().astype(np.float16)
        mask_names = {m.key: m.name for m in record.masks}
        keys = [k for turn in record.conversation for k in turn.masks]
        # the extra turn: up to 2 structures shown on this slice beside the absent ones,
        # in a random order (the absent ones get empty targets and presence 0)
        absent = absent_names(list(inputs.masks), rng)
        shown = [k for k in inputs.masks if inputs.masks[k].any() and k in mask_names]
        rng.shuffle(shown)
        extra_present = shown[:2] if absent else []
        keys = keys + extra_present
        names = [mask_names.get(k, absent_name(k) if is_absent_key(k) else k.replace("_", " "))
                 for k in keys]
        empty = np.zeros((size, size), dtype=bool)  # an absent structure's key: an empty target
        targets = (np.stack([inputs.masks.get(k, empty) for k in keys]).astype(np.uint8) if keys
                   else np.zeros((0, size, size), np.uint8))
        flipped: np.ndarray | None = targets.copy()
        for j, key in enumerate(keys):
            other = None if is_absent_key(key) else _swap_side(key)
            if other is None:
                continue
            if other in inputs.masks:
                flipped[j] = inputs.masks[other]
            else:
                flipped = None
                break
        asked = [("p", k) for k in extra_present] + [("a", n) for n in absent]
        rng.shuffle(asked)
        extra = [mask_names[k] if kind == "p" else k for kind, k in asked]
        turns = list(record.conversation) + ([_extra_turn(extra, rng)] if extra else [])
        # the states come in sequence order; the item keeps real queries first, then absent
        n_conv = len(keys) - len(extra_present)
        order = list(range(n_conv))
        order += [n_conv + asked.index(("p", k)) for k in extra_present]
        order += [n_conv + asked.index(("a", n)) for n in absent]
        spans = None
        if getattr(model.config.model, "measured_spans", False):
            measured = slice_measurements(record, store, view, keys)
            spans = [[measured_span(measured.get(k)) for k in turn.masks] for turn in record.conversation]
            if extra:
                spans.append([measured_span(measured.get(k) if kind == "p" else None)
                              for kind, k in asked])
        ids, labels = conversation_tokens(model, turns, spans)
        if labels.count(model.seg_token_id) != len(keys) + len(absent):
            raise InputError(f"record {record.id}: the [SEG] markers do not tokenise to one id each")
        items.append(GroundingItem(
            record_id=record.id, source=record.source, cache_key=inputs.cache_key, raw=raw,
            is_ct=is_ct, targets=targets, keys=keys, names=names, flipped_targets=flipped,
            absent=absent, input_ids=ids, labels=labels, state_order=order))
    return items


@torch.no_grad()
def compute_states(model: Any, items: list[GroundingItem], cache: Any, mixed_precision: str = "bf16",
                   batch_size: int = 8, progress: bool = False) -> None:
    """Fill ``states`` and ``name_states`` of every item (one teacher-forced pass of the
    frozen LLM per record, in length-sorted batches)."""
    from tqdm import tqdm

    model.eval()
    device = next(model.parameters()).device
    base = model.llm.get_base_model() if hasattr(model.llm, "get_base_model") else model.llm
    decoder = base.get_decoder()
    pad = model.tokenizer.pad_token_id
    pad = pad if pad is not None else sorted(model.eos_token_ids)[0]
    order = sorted(range(len(items)), key=lambda i: len(items[i].input_ids))
    bar = tqdm(total=len(items), desc="[SEG] states", unit="record", disable=not progress)
    for start in range(0, len(order), batch_size):
        chunk = [items[i] for i in order[start:start + batch_size]]
        width = max(len(it.input_ids) for it in chunk)
        ids = torch.full((len(chunk), width), pad, dtype=torch.long)
        attn = torch.zeros((len(chunk), width), dtype=torch.long)
        for r, it in enumerate(chunk):
            ids[r, :len(it.input_ids)] = torch.tensor(it.input_ids)
            attn[r, :len(it.input_ids)] = 1
        emb = torch.stack([cache.get(it.cache_key) for it in chunk]).float().to(device)
        with (torch.autocast(device.type, dtype=torch.bfloat16) if mixed_precision == "bf16"
              else contextlib.nullcontext()):
            embeds = model.embed_batch(ids.to(device), model.visual_tokens(emb))
            last = decoder(inputs_embeds=embeds, attention_mask=attn.to(device),
                           use_cache=False).last_hidden_state.float().cpu()
        for r, it in enumerate(chunk):
            labels = torch.tensor(it.labels)[None]
            pos = model.seg_state_positions(labels, model.seg_token_id)[0].tolist()
            rows = it.state_order or list(range(len(pos)))
            spans = name_spans(model.tokenizer, it.input_ids, pos)
            states = last[r, pos]
            names = torch.stack([last[r, s].mean(0) for s in spans]) if spans else \
                last.new_zeros((0, last.shape[-1]))
            it.states = states[rows].clone()
            it.name_states = names[rows].clone()
        bar.update(len(chunk))
    bar.close()


def save_items(path: Path, items: list[GroundingItem]) -> None:
    from medsegr.io.atomic import atomic_path

    path.parent.mkdir(parents=True, exist_ok=True)
    with atomic_path(path) as tmp:
        torch.save([dataclasses.asdict(it) for it in items], tmp)


def load_items(path: Path) -> list[GroundingItem]:
    return [GroundingItem(**d) for d in torch.load(path, map_location="cpu", weights_only=False)]

