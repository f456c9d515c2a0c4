"""MedSegRModel: a multimodal LLM whose ``[SEG]`` tokens are decoded into masks.

Data flow (one image)::

    pixels (1,1,S,S) -> vision.encode -> embedding (1,C,h,w) --pool+MLP--> visual tokens (1,N,H)
    chat prompt with <image> --(image token -> N visual tokens)--> LLM --> text ... [SEG]
    last-layer hidden state that produced [SEG] (1,H) -> SegProjector -> prompt (1,C)
    embedding + prompt (+ optional box/points) -> mask decoder -> logits (1,1,S,S)

The hidden state that *produces* ``[SEG]`` is the one at the position before it
(the one whose logits predict it): in training that is ``hidden[t]`` where
``input_ids[t + 1] == seg_id``; in generation it is the state of the step whose
output token is ``[SEG]``.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any, Hashable, Sequence

import torch
import torch.nn.functional as F
from torch import nn

from medsegr.config import MedSegRConfig
from medsegr.modeling.projectors import SegProjector, VisualProjector
from medsegr.modeling.vision import SamParts

#: keys of a token sequence: an ``int`` token id, or ``ImageKey`` for a visual token
ImageKey = tuple[str, str, int]  # ("img", image id, index within the image's tokens)
Key = Hashable


@dataclass
class MedSegROutput:
    """Training forward pass output."""

    loss: torch.Tensor | None
    ce_loss: torch.Tensor | None
    bce_loss: torch.Tensor | None
    dice_loss: torch.Tensor | None
    #: ``(B, T, V)`` without labels; with labels only the labelled positions ``(L, V)``
    logits: torch.Tensor
    #: per sample, mask logits ``(K_i, S, S)`` for its K_i ``[SEG]`` tokens
    mask_logits: list[torch.Tensor]


class MedSegRModel(nn.Module):
    """The assembled model. Build it with :func:`medsegr.modeling.builder.build_model`."""

    def __init__(self, config: MedSegRConfig, llm: nn.Module, tokenizer: Any, vision: SamParts,
                 seg_token_id: int, image_token_id: int, provenance: dict[str, Any]) -> None:
        super().__init__()
        self.config = config
        self.llm = llm
        self.tokenizer = tokenizer
        self.vision = vision
        self.seg_token_id = seg_token_id
        self.image_token_id = image_token_id
        self.provenance = provenance
        hidden = int(llm.config.hidden_size)
        mcfg = config.model
        self.visual_projector = VisualProjector(
            vision.embed_dim, mcfg.visual_projector_hidden or hidden, hidden, mcfg.visual_grid)
        self.seg_projector = SegProjector(hidden, mcfg.seg_projector_hidden or hidden, vision.embed_dim)
        #: True once fine-tuned heads were loaded (see medsegr.checkpoint)
        self.fine_tuned = False
        #: set by medsegr.modeling.inference_opt: the model can no longer be trained/saved
        self.inference_only = False
        self.llm_quantized: str | None = None
        #: lean decoder over the LLM's modules (set by inference_opt), or None
        self.fast_llm: Any = None

    # -- basic properties ----------------------------------------------------
    @property
    def device(self) -> torch.device:
        return next(self.visual_projector.parameters()).device

    @property
    def num_visual_tokens(self) -> int:
        return self.visual_projector.num_tokens

    @property
    def eos_token_ids(self) -> set[int]:
        ids = {int(self.tokenizer.eos_token_id)}
        eos = getattr(self.llm.config, "eos_token_id", None)
        if isinstance(eos, int):
            ids.add(eos)
        elif isinstance(eos, (list, tuple)):
            ids.update(int(e) for e in eos)
        return ids

    # -- vision ----------------------------------------------------------------
    @torch.no_grad()
    def encode_images(self, pixels: torch.Tensor) -> torch.Tensor:
        """``(B, 1, S, S)`` in [0, 1] -> image embeddings ``(B, C, h, w)`` (frozen encoder)."""
        enc_dtype = next(self.vision.image_encoder.parameters()).dtype
        return self.vision.encode(pixels.to(self.device, enc_dtype))

    def visual_tokens(self, embeddings: torch.Tensor) -> torch.Tensor:
        """``(B, C, h, w)`` -> ``(B, N, H)`` LLM input tokens, in the LLM's dtype."""
        return self.visual_projector(embeddings).to(self._llm_dtype())

    def decode_masks(self, embeddings: torch.Tensor, prompts: torch.Tensor,
                     boxes: torch.Tensor | None = None,
                     points: tuple[torch.Tensor, torch.Tensor] | None = None) -> torch.Tensor:
        """Mask logits ``(B, S, S)`` for prompt tokens ``prompts`` ``(B, C)``.

        ``embeddings`` is ``(B, C, h, w)`` or ``(1, C, h, w)`` (shared by all B);
        ``boxes`` ``(B or 1, 4)`` and ``points`` in encoder-input pixels.
        """
        batch = prompts.shape[0]
        dtype = embeddings.dtype
        if boxes is not None and boxes.shape[0] != batch:
            boxes = boxes.expand(batch, -1)
        if points is not None and points[0].shape[0] != batch:
            points = (points[0].expand(batch, -1, -1), points[1].expand(batch, -1))
        sparse, dense = self.vision.prompt(prompts[:, None, :].to(dtype),
                                           boxes=None if boxes is None else boxes.to(dtype),
                                           points=None if points is None else
                                           (points[0].to(dtype), points[1]))
        if dense.shape[0] != batch:
            dense = dense[:1].expand(batch, -1, -1, -1)
        return self.vision.decode(embeddings, sparse, dense)[:, 0]

    def seg_prompts(self, seg_states: torch.Tensor) -> torch.Tensor:
        """``(K, H)`` hidden states -> ``(K, C)`` prompt tokens."""
        return self.seg_projector(seg_states)

    # -- language --------------------------------------------------------------
    def _llm_dtype(self) -> torch.dtype:
        return self.llm.get_input_embeddings().weight.dtype

    def embed_keys(self, keys: Sequence[Key], visual_bank: dict[str, torch.Tensor]) -> torch.Tensor:
        """Input embeddings ``(1, T, H)`` for a key sequence.

        An ``int`` key is a token id; an ``("img", image_id, i)`` key is row ``i`` of
        ``visual_bank[image_id]`` ``(N, H)``.
        """
        table = self.llm.get_input_embeddings()
        ids = [k if isinstance(k, int) else 0 for k in keys]
        embeds = table(torch.tensor([ids], device=self.device))
        image_rows = [(pos, k) for pos, k in enumerate(keys) if not isinstance(k, int)]
        if image_rows:
            embeds = embeds.clone()
            for pos, (_, image_id, index) in image_rows:  # type: ignore[misc]
                embeds[0, pos] = visual_bank[image_id][index]
        return embeds

    def embed_batch(self, input_ids: torch.Tensor, visual: torch.Tensor) -> torch.Tensor:
        """Training/teacher-forcing embeddings: image-token positions of each row of
        ``input_ids`` ``(B, T)`` take that row's visual tokens ``visual`` ``(B, N, H)`` in order
        (the prompt must hold exactly N image tokens per image)."""
        embeds = self.llm.get_input_embeddings()(input_ids)
        mask = input_ids == self.image_token_id
        counts = mask.sum(dim=1)
        if not bool((counts % visual.shape[1] == 0).all()):
            raise ValueError(f"each sample needs a multiple of {visual.shape[1]} image tokens, "
                             f"got {counts.tolist()}")
        embeds = embeds.clone()
        for b in range(input_ids.shape[0]):
            n = int(counts[b])
            if n:
                embeds[b, mask[b]] = visual[b].repeat(n // visual.shape[1], 1).to(embeds.dtype)
        return embeds

    @staticmethod
    def seg_state_positions(input_ids: torch.Tensor, seg_token_id: int) -> list[torch.Tensor]:
        """Per row, the positions ``t`` whose hidden state produces a ``[SEG]`` at ``t + 1``."""
        following = input_ids[:, 1:] == seg_token_id
        return [torch.nonzero(row, as_tuple=False).flatten() for row in following]

    def forward(self, input_ids: torch.Tensor, image_embeddings: torch.Tensor,
                attention_mask: torch.Tensor | None = None, labels: torch.Tensor | None = None,
                gt_masks: list[torch.Tensor] | None = None, ce_weight: float = 1.0,
                bce_weight: float = 2.0, dice_weight: float = 0.5) -> MedSegROutput:
        """Teacher-forced pass (training and evaluation).

        ``input_ids`` ``(B, T)`` with N image tokens per sample, ``image_embeddings``
        ``(B, C, h, w)`` (cached encoder outputs), ``labels`` ``(B, T)`` with -100 on
        non-answer positions, ``gt_masks[b]`` ``(K_b, S, S)`` for the K_b ``[SEG]``
        tokens of sample b. Loss = ce·CE + bce·BCE + dice·Dice.
        """
        visual = self.visual_tokens(image_embeddings)
        embeds = self.embed_batch(input_ids, visual)
        base = self.llm.get_base_model() if hasattr(self.llm, "get_base_model") else self.llm
        decoder = base.get_decoder()
        last = decoder(inputs_embeds=embeds, attention_mask=attention_mask,
                       use_cache=False).last_hidden_state
        head = base.get_output_embeddings()
        logits = None
        ce = None
        if labels is not None:
            # the LM head runs only where a label is predicted (answer tokens): the
            # vocabulary projection of every prompt position would dominate the step
            targets = labels[:, 1:]
            chosen = targets != -100
            logits = head(last[:, :-1][chosen])
            ce = (F.cross_entropy(logits.float(), targets[chosen]) if logits.shape[0]
                  else last.new_zeros(()))
        else:
            logits = head(last)
        # with labels, only the answers' [SEG] count (the system prompt may mention the token)
        positions = self.seg_state_positions(labels if labels is not None else input_ids,
                                             self.seg_token_id)
        mask_logits: list[torch.Tensor] = []
        for b, pos in enumerate(positions):
            if pos.numel() == 0:
                mask_logits.append(last.new_zeros((0, self.vision.image_size, self.vision.image_size)))
                continue
            prompts = self.seg_prompts(last[b, pos])
            mask_logits.append(self.decode_masks(image_embeddings[b:b + 1], prompts))
        bce = dice = None
        if gt_masks is not None:
            bce, dice = _mask_losses(mask_logits, gt_masks)
        loss = None
        if ce is not None or bce is not None:
            zero = last.new_zeros(())
            loss = (ce_weight * (ce if ce is not None else zero)
                    + bce_weight * (bce if bce is not None else zero)
                    + dice_weight * (dice if dice is not None else zero))
        return MedSegROutput(loss=loss, ce_loss=ce, bce_loss=bce, dice_loss=dice,
                             logits=logits, mask_logits=mask_logits)


def _mask_losses(pred: list[torch.Tensor], gt: list[torch.Tensor]) -> tuple[torch.Tensor, torch.Tensor]:
    """Mean per-mask BCE and soft Dice loss over all masks of the batch."""
    bce_terms, dice_terms = [], []
    for p, g in zip(pred, gt, strict=True):
        if p.shape[0] != g.shape[0]:
            raise ValueError(f"{p.shape[0]} [SEG] tokens but {g.shape[0]} ground-truth masks")
        if p.shape[0] == 0:
            continue
        p = p.float()
        g = g.to(p.device, torch.float32)
        bce_terms.append(F.binary_cross_entropy_with_logits(p, g, reduction="none").flatten(1).mean(1))
        prob = p.sigmoid().flatten(1)
        g = g.flatten(1)
        inter = (prob * g).sum(1)
        dice_terms.append(1 - (2 * inter + 1) / (prob.sum(1) + g.sum(1) + 1))
    if not bce_terms:
        zero = pred[0].new_zeros(()) if pred else torch.zeros(())
        return zero, zero
    return torch.cat(bce_terms).mean(), torch.cat(dice_terms).mean()
