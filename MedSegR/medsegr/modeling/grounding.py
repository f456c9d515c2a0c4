"""The pixel-level grounding module: ``[SEG]`` queries -> masks and presence scores.

A conditional pixel decoder that sees every pixel of the slice::

    input channels (B, C_in, S, S)        CT windows / MR percentiles of the slice and its
                                          neighbours, a modality channel, hint maps
    frozen encoder embedding (B, E, h, w) added at 1/4 resolution
        -> UNet backbone (one pass per image, shared by every query)
        -> features at 1/4 resolution (B, W2, S/4, S/4) and at full resolution (B, W0, S, S)

    query (K, D) -- the [SEG] hidden state (optionally with the pooled name span) --
        -> MLP -> q (K, Q)
        -> FiLM of the 1/4-resolution features of the query's image -> conv -> presence logit
        -> dynamic per-pixel head: weights generated from q, run over
           [full-resolution features, upsampled FiLM features]      -> mask logits (K, S, S)

One backbone pass makes all of an image's masks; each query costs a FiLM, a small
convolution at 1/4 resolution and a per-pixel MLP of a few hundred weights. Shapes:
``S`` is the working resolution (256 or more, a multiple of 8); masks come out on the
letterboxed working grid and are resampled to the source grid before the threshold.
"""

from __future__ import annotations

from dataclasses import asdict, dataclass
from typing import Any

import torch
import torch.nn.functional as F
from torch import nn

__all__ = ["GroundingConfig", "GroundingFeatures", "GroundingModule", "GroundingOutput"]


@dataclass
class GroundingConfig:
    """Shape of the grounding module (saved in the checkpoint's config)."""

    #: channels per slice: CT windows (brain, soft tissue, bone, lung) or MR percentiles
    windows: int = 4
    #: slices seen per decoded slice: 1 (2D) or 3 (the slice and its +-1 neighbours, 2.5D)
    slices: int = 3
    #: hint maps: box, positive points, negative points
    hint_channels: int = 3
    #: UNet widths at full, 1/2, 1/4 and 1/8 resolution
    widths: tuple[int, ...] = (16, 32, 64, 128)
    #: width of the frozen encoder's embedding (0: the module does not use it)
    embed_dim: int = 256
    #: width of a query: the LLM's hidden size (x2 with the pooled name span)
    query_in: int = 576
    #: width of the projected query
    query_dim: int = 128
    #: hidden units of the dynamic per-pixel head
    head_hidden: int = 8
    #: working resolution (square)
    size: int = 256
    #: the query also holds the mean of the hidden states of the name before ``[SEG]``
    name_pool: bool = False

    @classmethod
    def from_section(cls, section: Any, hidden_size: int, embed_dim: int) -> "GroundingConfig":
        """From the model config's ``[grounding]`` section, the LLM's hidden size and the
        image encoder's embedding width."""
        return cls(slices=int(section.slices), widths=tuple(int(w) for w in section.widths),
                   embed_dim=embed_dim if section.use_embedding else 0,
                   query_in=hidden_size * (2 if section.name_pool else 1),
                   query_dim=int(section.query_dim), head_hidden=int(section.head_hidden),
                   size=int(section.size), name_pool=bool(section.name_pool))

    @property
    def in_channels(self) -> int:
        return self.windows * self.slices + 1 + self.hint_channels

    def to_dict(self) -> dict[str, Any]:
        d = asdict(self)
        d["widths"] = list(self.widths)
        return d

    @classmethod
    def from_dict(cls, values: dict[str, Any]) -> "GroundingConfig":
        known = {f for f in cls.__dataclass_fields__}
        unknown = set(values) - known
        if unknown:
            raise ValueError(f"unknown grounding module setting(s): {', '.join(sorted(unknown))}")
        v = dict(values)
        if "widths" in v:
            v["widths"] = tuple(int(w) for w in v["widths"])
        return cls(**v)


@dataclass
class GroundingFeatures:
    """The query-independent backbone output of B images."""

    quarter: torch.Tensor  # (B, W2, S/4, S/4)
    full: torch.Tensor     # (B, W0, S, S)


@dataclass
class GroundingOutput:
    logits: torch.Tensor    # (K, S, S) mask logits
    presence: torch.Tensor  # (K,) presence logits


def _block(cin: int, cout: int) -> nn.Sequential:
    """3x3 convolution, batch norm (folded into the convolution for inference), GELU."""
    return nn.Sequential(nn.Conv2d(cin, cout, 3, padding=1, bias=False), nn.BatchNorm2d(cout),
                         nn.GELU())


class GroundingModule(nn.Module):
    """See the module docstring."""

    def __init__(self, config: GroundingConfig | None = None) -> None:
        super().__init__()
        cfg = config or GroundingConfig()
        if len(cfg.widths) != 4:
            raise ValueError("the grounding module's UNet has 4 levels (widths = [w0, w1, w2, w3])")
        if cfg.size % 8:
            raise ValueError(f"the working resolution must be a multiple of 8, not {cfg.size}")
        self.config = cfg
        w0, w1, w2, w3 = cfg.widths
        self.stem = _block(cfg.in_channels, w0)
        self.down1 = _block(w0, w1)
        self.down2 = _block(w1, w2)
        self.down3 = _block(w2, w3)
        self.embed = nn.Conv2d(cfg.embed_dim, w2, 1) if cfg.embed_dim > 0 else None
        # decoder: the coarser level, projected (1x1) and upsampled, is added to the skip
        self.lat2, self.up2 = nn.Conv2d(w3, w2, 1), _block(w2, w2)
        self.lat1, self.up1 = nn.Conv2d(w2, w1, 1), _block(w1, w1)
        self.lat0, self.up0 = nn.Conv2d(w1, w0, 1), _block(w0, w0)
        q = cfg.query_dim
        self.query = nn.Sequential(nn.Linear(cfg.query_in, q * 2), nn.GELU(), nn.Linear(q * 2, q))
        self.film = nn.Linear(q, 2 * w2)
        self.query_conv = nn.Sequential(nn.Conv2d(w2, 16, 1), nn.GELU(), nn.Conv2d(16, 8, 3, padding=1))
        self.presence = nn.Sequential(nn.Linear(16 + w1 + q, q), nn.GELU(), nn.Linear(q, 1))
        self.presence_pre = nn.Conv2d(w2, w1, 1)
        head_in = w0 + 8 + 2  # full-resolution features, query features, coordinates
        h = cfg.head_hidden
        self._head_shapes = [(h, head_in), (h,), (1, h), (1,)]
        self.head = nn.Linear(q, sum(torch.Size(s).numel() for s in self._head_shapes))
        #: a query for "no text": hints alone (a box or points with no [SEG] state)
        self.null_query = nn.Parameter(torch.zeros(cfg.query_in))
        nn.init.zeros_(self.film.weight)
        nn.init.zeros_(self.film.bias)

    # -- backbone -------------------------------------------------------------
    def features(self, channels: torch.Tensor, embedding: torch.Tensor | None = None) -> GroundingFeatures:
        """``channels`` ``(B, C_in, S, S)`` (+ ``embedding`` ``(B, E, h, w)``) -> features."""
        x0 = self.stem(channels)
        x1 = self.down1(F.avg_pool2d(x0, 2))
        x2 = self.down2(F.avg_pool2d(x1, 2))
        if self.embed is not None:
            if embedding is None:
                raise ValueError("this grounding module reads the encoder embedding; none was given")
            emb = self.embed(embedding.to(x2.dtype))
            if emb.shape[-2:] != x2.shape[-2:]:
                emb = F.interpolate(emb, size=x2.shape[-2:], mode="bilinear", align_corners=False)
            x2 = x2 + emb
        x3 = self.down3(F.avg_pool2d(x2, 2))
        y2 = self.up2(F.interpolate(self.lat2(x3), scale_factor=2.0, mode="nearest") + x2)
        y1 = self.up1(F.interpolate(self.lat1(y2), scale_factor=2.0, mode="nearest") + x1)
        y0 = self.up0(F.interpolate(self.lat0(y1), scale_factor=2.0, mode="nearest") + x0)
        return GroundingFeatures(quarter=y2, full=y0)

    # -- queries --------------------------------------------------------------
    def project_queries(self, states: torch.Tensor | None, count: int = 0) -> torch.Tensor:
        """``(K, query_in)`` states -> ``(K, Q)``; ``None`` gives ``count`` null queries."""
        if states is None:
            states = self.null_query[None].expand(count, -1)
        return self.query(states.to(self.null_query.dtype))

    def decode(self, feats: GroundingFeatures, queries: torch.Tensor,
               owner: torch.Tensor | None = None) -> GroundingOutput:
        """Masks of projected queries ``(K, Q)``; ``owner`` ``(K,)`` says which image of
        ``feats`` each query belongs to (default: all the first)."""
        k = queries.shape[0]
        if owner is None:
            owner = torch.zeros(k, dtype=torch.long, device=queries.device)
        quarter = feats.quarter[owner]
        full = feats.full[owner] if feats.full.shape[0] > 1 else feats.full.expand(k, -1, -1, -1)
        gamma, beta = self.film(queries).to(quarter.dtype).chunk(2, dim=1)
        h = quarter * (1 + gamma[:, :, None, None]) + beta[:, :, None, None]
        hidden = self.query_conv[0](h)
        hidden = self.query_conv[1](hidden)
        pooled = torch.cat([hidden.mean((2, 3)), self.presence_pre(h).amax((2, 3))], 1)
        presence = self.presence(torch.cat([pooled.to(queries.dtype), queries], 1))[:, 0]
        qfeat = self.query_conv[2](hidden)                                        # (K, 8, S/4, S/4)
        params = self.head(queries).to(full.dtype)
        w1, b1, w2, b2 = _split(params, self._head_shapes)
        w0 = full.shape[1]
        w_full, w_query, w_coord = w1[:, :, :w0], w1[:, :, w0:w0 + 8], w1[:, :, w0 + 8:]
        # the first layer is linear: its query-feature part runs at 1/4 resolution and is
        # upsampled after (bilinear resampling commutes with a 1x1 map)
        y = torch.einsum("khc,kcxy->khxy", w_full, full)
        low = torch.einsum("khc,kcxy->khxy", w_query, qfeat.to(full.dtype))
        y = y + F.interpolate(low, size=full.shape[-2:], mode="bilinear", align_corners=False)
        ramp = torch.einsum("khc,cxy->khxy", w_coord, _coords(full.shape[-1], full.device, full.dtype)[0])
        y = F.gelu(y + ramp + b1[:, :, None, None])
        logits = torch.einsum("koh,khxy->koxy", w2, y)[:, 0] + b2[:, :1, None]
        return GroundingOutput(logits=logits, presence=presence)

    def forward(self, channels: torch.Tensor, embedding: torch.Tensor | None,
                states: torch.Tensor, owner: torch.Tensor | None = None) -> GroundingOutput:
        return self.decode(self.features(channels, embedding), self.project_queries(states), owner)


def _coords(size: int, device: torch.device, dtype: torch.dtype) -> torch.Tensor:
    axis = torch.linspace(-1.0, 1.0, size, device=device, dtype=dtype)
    yy, xx = torch.meshgrid(axis, axis, indexing="ij")
    return torch.stack([yy, xx])[None]


def _split(params: torch.Tensor, shapes: list[tuple[int, ...]]) -> list[torch.Tensor]:
    out = []
    start = 0
    for shape in shapes:
        n = torch.Size(shape).numel()
        out.append(params[:, start:start + n].reshape(params.shape[0], *shape))
        start += n
    return out


def loss_terms(out: GroundingOutput, targets: torch.Tensor, present: torch.Tensor,
               ) -> dict[str, torch.Tensor]:
    """BCE + soft Dice on the masks (Dice only where the structure is present) and BCE
    on presence. ``targets`` ``(K, S, S)`` in {0, 1}, ``present`` ``(K,)`` bool."""
    logits = out.logits.float().flatten(1)
    g = targets.to(logits.device, torch.float32).flatten(1)
    bce = F.binary_cross_entropy_with_logits(logits, g)
    prob = logits.sigmoid()
    dice_each = 1 - (2 * (prob * g).sum(1) + 1) / (prob.sum(1) + g.sum(1) + 1)
    mask = present.to(dice_each.device)
    dice = dice_each[mask].mean() if bool(mask.any()) else logits.new_zeros(())
    pres = F.binary_cross_entropy_with_logits(out.presence.float(), present.float().to(logits.device))
    return {"bce": bce, "dice": dice, "presence": pres}

