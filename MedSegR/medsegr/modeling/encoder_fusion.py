"""Fused CPU kernels for the LiteMedSAM TinyViT image encoder (inference only).

The encoder spends much of its CPU time outside its matrix products: every GELU
and residual add is a separate pass over activations of up to 256 x 256 x 256
floats. oneDNN (PyTorch's CPU backend for convolutions) can apply the GELU and
the residual add while each convolution's or linear layer's output is still in
cache. :func:`fuse_tinyvit` swaps the encoder's blocks for modules that do that,
with the same weights:

- ``Conv2d + GELU`` (patch embedding, MBConv, patch merging): one
  ``mkldnn._convolution_pointwise`` call;
- MBConv's last ``Conv2d + shortcut``: one call of its ``binary`` (add) form;
- MLP ``Linear + GELU``: one ``mkldnn._linear_pointwise`` call, in the blocks
  with at least :data:`FUSED_MLP_MIN_TOKENS` tokens (stage 1, 128 x 128): with
  fewer tokens, oneDNN's linear on unpacked weights is slower than PyTorch's
  ``addmm`` plus a separate GELU (measured on 2 AVX2 cores).

Window attention stays as it is: ``scaled_dot_product_attention`` with the bias
as an additive mask falls back to a slower unfused path on CPU.

These are the kernels PyTorch's own compiler emits for the same patterns; here
they are called directly, so nothing is compiled at start-up. The fused encoder
matches the original to float32 rounding (tests compare both). It needs a CPU
build of PyTorch with oneDNN (:func:`available`); batch-norms must already be
folded into the convolutions (``inference_opt.fuse_conv_bn``).
"""

from __future__ import annotations

import math

import torch
import torch.nn.functional as F
from torch import nn

#: MLPs of blocks with at least this many tokens get the fused Linear + GELU
FUSED_MLP_MIN_TOKENS = 128 * 128


def available() -> bool:
    """True when this PyTorch build has the oneDNN fused kernels."""
    if not torch.backends.mkldnn.is_available():
        return False
    try:
        torch.ops.mkldnn._convolution_pointwise.default  # noqa: B018 - lookup raises if absent
        torch.ops.mkldnn._convolution_pointwise.binary  # noqa: B018
        torch.ops.mkldnn._linear_pointwise.default  # noqa: B018
    except (AttributeError, RuntimeError):
        return False
    return True


class ConvAct(nn.Module):
    """A (BN-folded) ``Conv2d`` followed by GELU or nothing, as one oneDNN call."""

    def __init__(self, conv: nn.Conv2d, gelu: bool) -> None:
        super().__init__()
        if not isinstance(conv, nn.Conv2d):
            raise TypeError(f"expected a Conv2d (fold batch-norms first), got {type(conv).__name__}")
        self.weight = nn.Parameter(conv.weight.detach().contiguous(memory_format=torch.channels_last),
                                   requires_grad=False)
        bias = conv.bias if conv.bias is not None else torch.zeros(conv.out_channels)
        self.bias = nn.Parameter(bias.detach().clone(), requires_grad=False)
        self.padding = list(conv.padding)
        self.stride = list(conv.stride)
        self.dilation = list(conv.dilation)
        self.groups = conv.groups
        self.attr = "gelu" if gelu else "none"

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return torch.ops.mkldnn._convolution_pointwise(
            x, self.weight, self.bias, self.padding, self.stride, self.dilation, self.groups,
            self.attr, [], "none" if self.attr == "gelu" else None)

    def add(self, x: torch.Tensor, other: torch.Tensor) -> torch.Tensor:
        """``conv(x) + other`` in one call."""
        return torch.ops.mkldnn._convolution_pointwise.binary(
            x, other, self.weight, self.bias, self.padding, self.stride, self.dilation,
            self.groups, "add", None, None, [], None)


class FusedPatchEmbed(nn.Module):
    """``Conv2d -> GELU -> Conv2d`` (the LiteMedSAM patch embedding)."""

    def __init__(self, seq: nn.Sequential) -> None:
        super().__init__()
        first, act, second = list(seq.children())
        _check_gelu(act)
        self.first = ConvAct(first, gelu=True)
        self.second = ConvAct(second, gelu=False)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.second(self.first(x))


class FusedMBConv(nn.Module):
    """TinyViT's inverted-residual block: 1x1 GELU, depthwise 3x3 GELU, 1x1 + shortcut, GELU."""

    def __init__(self, block: nn.Module) -> None:
        super().__init__()
        for act in (block.act1, block.act2, block.act3):
            _check_gelu(act)
        self.expand = ConvAct(block.conv1, gelu=True)
        self.depthwise = ConvAct(block.conv2, gelu=True)
        self.project = ConvAct(block.conv3, gelu=False)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        y = self.depthwise(self.expand(x))
        return F.gelu(self.project.add(y, x))


class FusedPatchMerging(nn.Module):
    """TinyViT's downsampling: 1x1 GELU, strided depthwise 3x3 GELU, 1x1; tokens out."""

    def __init__(self, merge: nn.Module) -> None:
        super().__init__()
        _check_gelu(merge.act)
        self.input_resolution = merge.input_resolution
        self.expand = ConvAct(merge.conv1, gelu=True)
        self.depthwise = ConvAct(merge.conv2, gelu=True)
        self.project = ConvAct(merge.conv3, gelu=False)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if x.ndim == 3:  # tokens (B, H*W, C) -> a channels-last (B, C, H, W) view
            height, width = self.input_resolution
            x = x.view(len(x), height, width, -1).permute(0, 3, 1, 2)
        x = self.project(self.depthwise(self.expand(x)))
        return x.flatten(2).transpose(1, 2)


class FusedMlp(nn.Module):
    """``LayerNorm -> Linear + GELU (one call) -> Linear``."""

    def __init__(self, mlp: nn.Module) -> None:
        super().__init__()
        _check_gelu(mlp.act)
        self.norm = mlp.norm
        self.fc1 = mlp.fc1
        self.fc2 = mlp.fc2

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        h = torch.ops.mkldnn._linear_pointwise(self.norm(x), self.fc1.weight, self.fc1.bias,
                                               "gelu", [], "none")
        return self.fc2(h)


def _check_gelu(act: nn.Module) -> None:
    if not (isinstance(act, nn.GELU) and act.approximate == "none"):
        raise ValueError(f"expected an exact GELU, got {act!r}")


@torch.no_grad()
def fuse_tinyvit(encoder: nn.Module) -> int:
    """Swap a BN-folded, eval-mode TinyViT's blocks for the fused modules, in place.

    Returns the number of modules replaced (0 when ``encoder`` is not a TinyViT or
    the kernels are unavailable, in which case nothing changes).
    """
    if type(encoder).__name__ != "TinyViT" or not available():
        return 0
    replaced = 0
    encoder.patch_embed.seq = FusedPatchEmbed(encoder.patch_embed.seq)
    replaced += 1
    for layer in encoder.layers:
        for i, block in enumerate(layer.blocks):
            if type(block).__name__ == "MBConv":
                layer.blocks[i] = FusedMBConv(block)
                replaced += 1
            elif math.prod(block.input_resolution) >= FUSED_MLP_MIN_TOKENS:  # TinyViTBlock
                block.mlp = FusedMlp(block.mlp)
                replaced += 1
        if layer.downsample is not None:
            layer.downsample = FusedPatchMerging(layer.downsample)
            replaced += 1
    return replaced
