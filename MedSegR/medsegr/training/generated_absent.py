"""Absent queries in the model's own words, for the grounding stage's presence score.

Teacher-forced absent queries (:mod:`medsegr.training.grounding_data`) teach the presence
score to refuse a structure named in the training answers' wording. The model's own
answers word a hallucinated structure differently ("The femur is in the pelvis, above
the ribs: the <p>femur</p> [SEG]"), and its ``[SEG]`` state then looks present. So for a
share of the training records (``[grounding_stage] generated_absent``) the frozen model
itself is asked about one of the record's absent structures (other body regions), as
the engine asks: a first question on the record's image, greedy, up to its first
``[SEG]``. Each ``[SEG]`` of that answer whose name is a known structure of another body
region than the image's becomes one more absent query of that record (empty target,
presence 0), with the states the model produced. Names that may be on the image (its
regions, unknown names) are left out: they would teach the score to refuse what is
there.
"""

from __future__ import annotations

import contextlib
import random
from typing import Any

import torch

from medsegr.answers import Turn
from medsegr.errors import InputError
from medsegr.prompts import segment_names
from medsegr.training.grounding_data import GroundingItem, structure_regions

#: the question asked about an absent structure (the training wordings)
QUESTIONS = ("Segment the {}.", "Show me the {}.", "Where is the {}? Segment it.",
             "Outline the {}, please.", "Can you find the {}?", "Find the {} and segment it.")

#: one collected query: (name, [SEG] state, pooled name state)
Collected = tuple[str, torch.Tensor, torch.Tensor]


def clearly_absent(name: str, image_keys: list[str]) -> bool:
    """Whether ``name`` is a known structure of no body region the image covers."""
    from medsegr.data import knowledge

    try:
        entry = knowledge.match_structure(name)
    except (KeyError, ValueError, InputError):
        return False
    regions = structure_regions(image_keys)
    return entry.known and bool(entry.regions) and bool(regions) and not (set(entry.regions) & regions)


@torch.no_grad()
def collect(model: Any, items: list[GroundingItem], cache: Any, share: float, seed: int = 0,
            max_new_tokens: int = 48, mixed_precision: str = "bf16",
            progress: bool = False) -> dict[str, list[Collected]]:
    """Per record id, the absent queries the model's own answers produced (see the module
    docstring) for ``share`` of ``items``."""
    from tqdm import tqdm

    from medsegr.modeling.generation import generate, prompt_keys

    rng = random.Random(seed * 7919 + 11)
    chosen = [it for it in items if it.absent and rng.random() < share]
    model.eval()
    out: dict[str, list[Collected]] = {}
    precision = (torch.autocast("cpu", dtype=torch.bfloat16) if mixed_precision == "bf16"
                 else contextlib.nullcontext())
    with precision:
        for item in tqdm(chosen, desc="absent, in the model's words", unit="record",
                         disable=not progress):
            name = rng.choice(item.absent)
            question = rng.choice(QUESTIONS).format(name)
            bank = {"x": model.visual_tokens(cache.get(item.cache_key)[None].float())[0]}
            # the first [SEG] is the one about the asked structure: stop there
            keys = prompt_keys(model, [Turn(question=question, image_id="x")])
            gen = generate(model, keys, bank, max_new_tokens, None, use_cache=True,
                           on_token=lambda token: token != model.seg_token_id)
            raw = model.tokenizer.decode(gen.token_ids, skip_special_tokens=False)
            names = segment_names(raw, model.config.model.seg_token)
            if not names or gen.seg_states.shape[0] != len(names):
                continue
            pooled = gen.name_states(model.tokenizer)
            kept = [(n, gen.seg_states[k].float().cpu(), pooled[k].float().cpu())
                    for k, n in enumerate(names) if clearly_absent(n, item.keys)]
            if kept:
                out[item.record_id] = kept
    return out


def apply(items: list[GroundingItem], collected: dict[str, list[Collected]]) -> int:
    """Append the collected queries to their items as absent queries; returns how many."""
    added = 0
    for item in items:
        extra = collected.get(item.record_id)
        if not extra or item.states is None or item.name_states is None:
            continue
        item.absent = item.absent + [n for n, _, _ in extra]
        item.states = torch.cat([item.states, torch.stack([s for _, s, _ in extra])])
        item.name_states = torch.cat([item.name_states, torch.stack([p for _, _, p in extra])])
        added += len(extra)
    return added
