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
from typing import TYPE_CHECKING, Any, Hashable, Sequence

import torch
import torch.nn.functional as F
from torch import nn

from medsegr.config import MedSegRConfig
from medsegr.modeling.mask_head import PixelRefiner, boxes_from_logits, jitter_boxes, mask_boxes
from medsegr.modeling.projectors import SegProjector, VisualProjector
from medsegr.modeling.vision import SamParts

if TYPE_CHECKING:
    from medsegr.modeling.fast_llama import FastLlama

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
        #: the full-resolution refinement of the decoder's logits (``[model] pixel_refiner``)
        self.pixel_refiner = PixelRefiner(mcfg.pixel_refiner) if mcfg.pixel_refiner > 0 else None
        # state set only by the methods below (see their docstrings)
        self._fine_tuned = False
        self._inference_only = False
        self._llm_quantized: str | None = None
        self._fast_llm: FastLlama | None = None

    # -- state: fine-tuned heads, optimised inference ----------------------------
    @property
    def fine_tuned(self) -> bool:
        """True once fine-tuned heads were loaded (:meth:`mark_fine_tuned`)."""
        return self._fine_tuned

    def mark_fine_tuned(self) -> None:
        """Record that this model's heads (and adapter) come from a fine-tuned checkpoint
        (called by :func:`medsegr.modeling.checkpoint.from_pretrained`)."""
        self._fine_tuned = True

    @property
    def inference_only(self) -> bool:
        """True once optimised for inference (:meth:`enter_inference`): the LLM may be
        quantised and the encoder fused, so the model can no longer be trained or saved."""
        return self._inference_only

    @property
    def llm_quantized(self) -> str | None:
        """How the LLM's weights were lowered for inference (``"bfloat16"``,
        ``"int8-dynamic"``), or None when they are as loaded."""
        return self._llm_quantized

    @property
    def fast_llm(self) -> FastLlama | None:
        """The lean decoder over the LLM's modules that generation uses, or None (the
        LLM's own forward)."""
        return self._fast_llm

    def enter_inference(self, llm_quantized: str | None, fast_llm: FastLlama | None) -> None:
        """Record that the model was optimised for inference
        (:func:`medsegr.modeling.inference_opt.optimise_for_inference`): how its LLM was
        lowered and the lean decoder to generate with. There is no way back."""
        self._inference_only = True
        self._llm_quantized = llm_quantized
        self._fast_llm = fast_llm

    def use_fast_llm(self, fast_llm: FastLlama | None) -> None:
        """Generate with ``fast_llm`` (None: with the LLM's own forward), e.g. to compare
        the two decoders on one model."""
        self._fast_llm = fast_llm

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
                     points: tuple[torch.Tensor, torch.Tensor] | None = None,
                     pixels: torch.Tensor | None = None) -> torch.Tensor:
        """Mask logits ``(B, S, S)`` for prompt tokens ``prompts`` ``(B, C)``.

        ``embeddings`` is ``(B, C, h, w)`` or ``(1, C, h, w)`` (shared by all B);
        ``boxes`` ``(B or 1, 4)`` and ``points`` in encoder-input pixels; ``pixels``
        ``(B or 1, S, S)`` the encoder input, used by the pixel refiner (see
        :mod:`medsegr.modeling.mask_head`). With ``[model] box_refine`` and no box
        from the user, a second pass is prompted with the box of the first mask.
        """
        return self.mask_passes(embeddings, prompts, boxes, points, pixels)[-1]

    def mask_passes(self, embeddings: torch.Tensor, prompts: torch.Tensor,
                    boxes: torch.Tensor | None = None,
                    points: tuple[torch.Tensor, torch.Tensor] | None = None,
                    pixels: torch.Tensor | None = None,
                    teacher_boxes: tuple[torch.Tensor, torch.Tensor] | None = None,
                    ) -> list[torch.Tensor]:
        """Every pass's mask logits ``(B, S, S)``, the final one last.

        ``teacher_boxes`` = (boxes ``(B, 4)``, rows ``(B,)`` bool): in training, the
        second pass of the chosen rows is prompted with these boxes (jittered
        ground-truth boxes) instead of the first pass's.
        """
        mcfg = self.config.model
        first = self._decoder_pass(embeddings, prompts, boxes, points)
        passes = [first]
        if mcfg.box_refine and boxes is None:
            found, present = boxes_from_logits(first)
            if teacher_boxes is not None:
                given, rows = teacher_boxes
                rows = rows.to(present.device)
                found = torch.where(rows[:, None], given.to(found), found)
                present = present | rows
            if bool(present.any()):
                second = self._decoder_pass(embeddings, prompts, found.to(first.device), points)
                # an empty first mask has no box: it stays as it was
                passes.append(torch.where(present[:, None, None].to(first.device), second, first))
        if self.pixel_refiner is not None and pixels is not None:
            batch = prompts.shape[0]
            shown = pixels if pixels.shape[0] == batch else pixels[:1].expand(batch, -1, -1)
            passes.append(self.pixel_refiner(passes[-1], shown.to(passes[-1].device)))
        return passes

    def teacher_boxes(self, gt: torch.Tensor, share: float = 0.5) -> tuple[torch.Tensor, torch.Tensor]:
        """Training boxes for the second pass: for about ``share`` of the masks ``gt``
        ``(K, S, S)``, their jittered ground-truth box (the rest use the first pass's)."""
        boxes, present = mask_boxes(gt > 0.5)
        rows = (torch.rand(gt.shape[0]) < share) & present.cpu()
        return jitter_boxes(boxes.cpu(), gt.shape[-1]), rows

    def _decoder_pass(self, embeddings: torch.Tensor, prompts: torch.Tensor,
                      boxes: torch.Tensor | None,
                      points: tuple[torch.Tensor, torch.Tensor] | None) -> torch.Tensor:
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
                gt_masks: list[torch.Tensor] | None = None, pixels: torch.Tensor | None = None,
                ce_weight: float = 1.0,
                bce_weight: float = 2.0, dice_weight: float = 0.5) -> MedSegROutput:
        """Teacher-forced pass (training and evaluation).

        ``input_ids`` ``(B, T)`` with N image tokens per sample, ``image_embeddings``
        ``(B, C, h, w)`` (cached encoder outputs), ``labels`` ``(B, T)`` with -100 on
        non-answer positions, ``gt_masks[b]`` ``(K_b, S, S)`` for the K_b ``[SEG]``
        tokens of sample b, ``pixels`` ``(B, S, S)`` the encoder inputs (for the pixel
        refiner). Loss = ce·CE + bce·BCE + dice·Dice, the mask terms averaged over the
        decoding passes (:meth:`mask_passes`).
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
        bce_terms: list[torch.Tensor] = []
        dice_terms: list[torch.Tensor] = []
        size = self.vision.image_size
        for b, pos in enumerate(positions):
            gt = None if gt_masks is None else gt_masks[b]
            if gt is not None and gt.shape[0] != pos.numel():
                raise ValueError(f"{pos.numel()} [SEG] tokens but {gt.shape[0]} ground-truth masks")
            if pos.numel() == 0:
                mask_logits.append(last.new_zeros((0, size, size)))
                continue
            passes = self.mask_passes(
                image_embeddings[b:b + 1], self.seg_prompts(last[b, pos]),
                pixels=None if pixels is None else pixels[b:b + 1],
                teacher_boxes=self.teacher_boxes(gt) if (gt is not None and self.training
                                                          and self.config.model.box_refine) else None)
            mask_logits.append(passes[-1])
            if gt is not None:
                pass_bce, pass_dice = pass_losses(passes, gt)
                bce_terms.append(pass_bce)
                dice_terms.append(pass_dice)
        bce = dice = None
        if gt_masks is not None:
            zero = last.new_zeros(())
            bce = torch.cat(bce_terms).mean() if bce_terms else zero
            dice = torch.cat(dice_terms).mean() if dice_terms else zero
        loss = None
        if ce is not None or bce is not None:
            zero = last.new_zeros(())
            loss = (ce_weight * (ce if ce is not None else zero)
                    + bce_weight * (bce if bce is not None else zero)
                    + dice_weight * (dice if dice is not None else zero))
        return MedSegROutput(loss=loss, ce_loss=ce, bce_loss=bce, dice_loss=dice,
                             logits=logits, mask_logits=mask_logits)


def pass_losses(passes: list[torch.Tensor], gt: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """Per-mask BCE and soft Dice loss ``(K,)`` each, averaged over the decoding passes
    (every pass is trained: the first one's box prompts the next)."""
    g = gt.to(passes[-1].device, torch.float32).flatten(1)
    bce_sum = dice_sum = None
    for logits in passes:
        p = logits.float().flatten(1)
        bce = F.binary_cross_entropy_with_logits(p, g, reduction="none").mean(1)
        prob = p.sigmoid()
        dice = 1 - (2 * (prob * g).sum(1) + 1) / (prob.sum(1) + g.sum(1) + 1)
        bce_sum = bce if bce_sum is None else bce_sum + bce
        dice_sum = dice if dice_sum is None else dice_sum + dice
    assert bce_sum is not None and dice_sum is not None
    return bce_sum / len(passes), dice_sum / len(passes)
