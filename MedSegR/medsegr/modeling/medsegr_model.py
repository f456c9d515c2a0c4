"""MedSegRModel: a multimodal LLM whose ``[SEG]`` tokens are decoded into masks.

Data flow (one image)::

    pixels (1,1,S,S) -> vision.encode -> embedding (1,C,h,w) --pool+MLP--> visual tokens (1,N,H)
    chat prompt with <image> --(image token -> N visual tokens)--> LLM --> text ... [SEG]
    last-layer hidden state that produced [SEG] (K,H) = the queries
    input channels (1,C_in,S,S) + embedding + queries -> grounding module
        -> mask logits (K,S,S) and presence logits (K,)   (medsegr.modeling.grounding)

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
from medsegr.modeling.grounding import GroundingConfig, GroundingModule, GroundingOutput
from medsegr.modeling.projectors import VisualProjector
from medsegr.modeling.vision import SamParts

if TYPE_CHECKING:
    from medsegr.modeling.fast_llama import FastLlama

#: keys of a token sequence: an ``int`` token id, or ``ImageKey`` for a visual token
ImageKey = tuple[str, str, int]  # ("img", image id, index within the image's tokens)
Key = Hashable


@dataclass
class MedSegROutput:
    """Teacher-forced pass output (the text stage: masks belong to the grounding stage)."""

    loss: torch.Tensor | None
    ce_loss: torch.Tensor | None
    #: ``(B, T, V)`` without labels; with labels only the labelled positions ``(L, V)``
    logits: torch.Tensor
    #: per sample, the ``(K_i, H)`` last-layer states that produce its K_i ``[SEG]`` tokens
    seg_states: list[torch.Tensor]


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
        #: the pixel-level grounding module: [SEG] states -> masks and presence
        self.grounding = GroundingModule(GroundingConfig.from_section(config.grounding, hidden,
                                                                      vision.embed_dim))
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

    def ground(self, channels: torch.Tensor, embeddings: torch.Tensor | None, states: torch.Tensor | None,
               owner: torch.Tensor | None = None, count: int = 0) -> GroundingOutput:
        """Masks and presence of ``[SEG]`` states ``(K, H)`` (``None``: ``count`` queries
        with no text, for hints alone) on images given as grounding-module input
        ``channels`` ``(B, C_in, S, S)`` (:func:`medsegr.imaging.channels.input_channels`)
        and encoder ``embeddings`` ``(B, C, h, w)``; ``owner`` ``(K,)`` says which image
        each state belongs to (default: the first)."""
        g = self.grounding
        dtype = g.null_query.dtype
        feats = g.features(channels.to(self.device, dtype),
                           None if embeddings is None or g.embed is None else embeddings.to(self.device, dtype))
        queries = g.project_queries(None if states is None else states.to(self.device, dtype), count)
        return g.decode(feats, queries, None if owner is None else owner.to(self.device))

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
                ce_weight: float = 1.0) -> MedSegROutput:
        """Teacher-forced pass (the text stage, and the ``[SEG]`` states of the grounding
        stage's cache).

        ``input_ids`` ``(B, T)`` with N image tokens per sample, ``image_embeddings``
        ``(B, C, h, w)`` (cached encoder outputs), ``labels`` ``(B, T)`` with -100 on
        non-answer positions. Loss = ce * CE on the answer tokens.
        """
        visual = self.visual_tokens(image_embeddings)
        embeds = self.embed_batch(input_ids, visual)
        base = self.llm.get_base_model() if hasattr(self.llm, "get_base_model") else self.llm
        decoder = base.get_decoder()
        last = decoder(inputs_embeds=embeds, attention_mask=attention_mask,
                       use_cache=False).last_hidden_state
        head = base.get_output_embeddings()
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
        states = [last[b, pos] for b, pos in enumerate(positions)]
        loss = None if ce is None else ce_weight * ce
        return MedSegROutput(loss=loss, ce_loss=ce, logits=logits, seg_states=states)
