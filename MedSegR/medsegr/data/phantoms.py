"""Procedural CT- and MR-like axial phantoms with known anatomy and lesions.

A phantom is drawn in *display space*: array ``(slices, rows, cols)`` where rows run
from anterior to posterior and columns from the patient's right to the patient's
left (the radiological view), in millimetres around the body centre. Each
structure is an organic blob (an ellipse with a random low-order radial wobble);
an *owner map* gives each pixel to the last structure painted on it, so organ
masks never overlap, and lesions are drawn inside their host organ (whose mask
contains them). Intensities come from per-modality tables (Hounsfield units for CT;
T1/T2 signal for MR) with texture, partial-volume blur, noise and (MR) a bias
field. Sizes, positions, rotation, contrast phase, intensities and noise vary with
the random generator, so that nothing can be memorised.

Kinds: ``ct-abdomen``, ``ct-chest``, ``mr-brain``, ``mr-abdomen``.
"""

from __future__ import annotations

import math
from dataclasses import dataclass, field
from typing import Any

import numpy as np

__all__ = ["KINDS", "Phantom", "PhantomLesion", "draw_phantom"]

KINDS = ("ct-abdomen", "ct-chest", "mr-brain", "mr-abdomen")


@dataclass
class PhantomLesion:
    """The lesions of one host organ (same density), as drawn."""

    host: str
    density: str
    diameters_mm: list[float]
    value: float


@dataclass
class Phantom:
    """A drawn phantom in display space (see the module docstring).

    ``masks``: key -> bool ``(slices, rows, cols)``; ``lesions``: per host organ;
    ``absent``: keys of organs of this kind deliberately left out (e.g. after a
    nephrectomy), with the reason; ``facts``: the drawing parameters.
    """

    kind: str
    modality: str
    sequence: str | None
    region: str
    array: np.ndarray
    spacing: tuple[float, float, float]
    masks: dict[str, np.ndarray]
    lesions: list[PhantomLesion]
    absent: dict[str, str] = field(default_factory=dict)
    facts: dict[str, Any] = field(default_factory=dict)


# --------------------------------------------------------------------------- shapes


class Canvas:
    """Millimetre coordinates of every pixel of a square slice, rotated about the
    body centre (so the whole anatomy turns by ``rotation_deg``)."""

    def __init__(self, size: int, spacing: float, shift: tuple[float, float], rotation_deg: float) -> None:
        rows, cols = np.mgrid[0:size, 0:size].astype(np.float32)
        x = (cols - (size - 1) / 2.0) * spacing - shift[0]
        y = (rows - (size - 1) / 2.0) * spacing - shift[1]
        angle = math.radians(rotation_deg)
        self.x = (math.cos(angle) * x + math.sin(angle) * y).astype(np.float32)
        self.y = (-math.sin(angle) * x + math.cos(angle) * y).astype(np.float32)
        self.size = size
        self.spacing = spacing

    def blob(self, cx: float, cy: float, a: float, b: float, angle_deg: float = 0.0,
             wobble: tuple[tuple[int, float, float], ...] = ()) -> np.ndarray:
        """Pixels inside an ellipse (half-axes ``a`` along x, ``b`` along y, turned by
        ``angle_deg``) whose radius varies by ``1 + sum(amp cos(k phi + phase))``."""
        angle = math.radians(angle_deg)
        dx, dy = self.x - cx, self.y - cy
        u = (math.cos(angle) * dx + math.sin(angle) * dy) / max(a, 1e-3)
        v = (-math.sin(angle) * dx + math.cos(angle) * dy) / max(b, 1e-3)
        rho = np.sqrt(u * u + v * v)
        limit: np.ndarray | float = 1.0
        if wobble:
            phi = np.arctan2(v, u)
            limit = 1.0 + sum(amp * np.cos(k * phi + phase) for k, amp, phase in wobble)
        return rho <= limit

    def disc(self, cx: float, cy: float, r: float) -> np.ndarray:
        return (self.x - cx) ** 2 + (self.y - cy) ** 2 <= r * r


def _wobble(rng: np.random.Generator, amount: float, orders: tuple[int, ...] = (2, 3, 4, 5)) -> tuple[tuple[int, float, float], ...]:
    return tuple((k, float(rng.uniform(0, amount) / k * 2), float(rng.uniform(0, 2 * math.pi))) for k in orders)


def _shrink(z_mm: float, half_extent: float) -> float:
    """Cross-section scale of a structure of half-height ``half_extent`` at ``z_mm``."""
    return math.sqrt(max(0.05, 1.0 - (z_mm / half_extent) ** 2))


class _Painter:
    """The owner map of one slice: which structure each pixel belongs to."""

    def __init__(self, size: int) -> None:
        self.owner = np.zeros((size, size), dtype=np.int16)
        self.names: list[str] = ["air"]

    def paint(self, name: str, region: np.ndarray, within: np.ndarray | None = None) -> None:
        if name not in self.names:
            self.names.append(name)
        code = self.names.index(name)
        target = region if within is None else region & within
        self.owner[target] = code

    def mask(self, *names: str) -> np.ndarray:
        codes = [self.names.index(n) for n in names if n in self.names]
        return np.isin(self.owner, codes) if codes else np.zeros_like(self.owner, dtype=bool)


# --------------------------------------------------------------------------- lesions


def _place_lesions(canvas: Canvas, host: np.ndarray, count: int, diameters: list[float],
                   rng: np.random.Generator, avoid: np.ndarray | None = None) -> list[tuple[float, float, float]]:
    """Centres (x, y) and radii of ``count`` discs lying inside ``host`` with a margin,
    apart from each other. Returns fewer when the host is too small."""
    from scipy.ndimage import distance_transform_edt

    room = distance_transform_edt(host) * canvas.spacing
    placed: list[tuple[float, float, float]] = []
    for diameter in diameters[:count]:
        radius = diameter / 2.0
        free = room >= radius + 2.0
        if avoid is not None:
            free &= ~avoid
        for cx, cy, r in placed:
            free &= (canvas.x - cx) ** 2 + (canvas.y - cy) ** 2 > (r + radius + 3.0) ** 2
        rows, cols = np.nonzero(free)
        if rows.size == 0:
            continue
        pick = int(rng.integers(rows.size))
        placed.append((float(canvas.x[rows[pick], cols[pick]]), float(canvas.y[rows[pick], cols[pick]]), radius))
    return placed


# --------------------------------------------------------------------------- intensities

_CT_PHASES = ("non-contrast", "portal venous", "arterial")
#: Hounsfield units (mean, sd) per structure and CT phase
_CT_HU: dict[str, dict[str, tuple[float, float]]] = {
    "fat": {"*": (-100.0, 8.0)}, "visceral_fat": {"*": (-90.0, 10.0)}, "muscle": {"*": (48.0, 8.0)},
    "liver": {"non-contrast": (56.0, 6.0), "portal venous": (108.0, 12.0), "arterial": (76.0, 8.0)},
    "spleen": {"non-contrast": (46.0, 4.0), "portal venous": (116.0, 10.0), "arterial": (125.0, 15.0)},
    "kidney": {"non-contrast": (32.0, 4.0), "portal venous": (165.0, 20.0), "arterial": (190.0, 25.0)},
    "sinus": {"*": (-50.0, 15.0)},
    "aorta": {"non-contrast": (42.0, 5.0), "portal venous": (150.0, 20.0), "arterial": (290.0, 40.0)},
    "ivc": {"non-contrast": (40.0, 5.0), "portal venous": (135.0, 15.0), "arterial": (70.0, 10.0)},
    "vertebra": {"*": (240.0, 40.0)}, "cortex": {"*": (750.0, 100.0)}, "canal": {"*": (18.0, 5.0)},
    "gallbladder": {"*": (10.0, 6.0)}, "bowel": {"*": (38.0, 10.0)}, "gas": {"*": (-990.0, 8.0)},
    "fluid": {"*": (14.0, 6.0)}, "lung": {"*": (-860.0, 25.0)}, "vessel": {"non-contrast": (38.0, 6.0),
                                                                      "portal venous": (140.0, 20.0),
                                                                      "arterial": (200.0, 30.0)},
    "heart": {"non-contrast": (40.0, 5.0), "portal venous": (140.0, 20.0), "arterial": (260.0, 40.0)},
    "mediastinum": {"*": (-70.0, 20.0)}, "air": {"*": (-1000.0, 0.0)},
}
#: MR signal (arbitrary units, mean, sd) per structure for T1 and T2
_MR_SIGNAL: dict[str, dict[str, tuple[float, float]]] = {
    "fat": {"T1": (850.0, 40.0), "T2": (560.0, 40.0)}, "visceral_fat": {"T1": (800.0, 50.0), "T2": (520.0, 40.0)},
    "muscle": {"T1": (320.0, 25.0), "T2": (240.0, 20.0)}, "liver": {"T1": (520.0, 30.0), "T2": (280.0, 25.0)},
    "spleen": {"T1": (380.0, 25.0), "T2": (560.0, 30.0)}, "kidney": {"T1": (420.0, 30.0), "T2": (620.0, 40.0)},
    "sinus": {"T1": (780.0, 40.0), "T2": (500.0, 40.0)}, "aorta": {"T1": (60.0, 20.0), "T2": (50.0, 20.0)},
    "ivc": {"T1": (90.0, 20.0), "T2": (80.0, 20.0)}, "vertebra": {"T1": (600.0, 40.0), "T2": (420.0, 30.0)},
    "cortex": {"T1": (80.0, 20.0), "T2": (70.0, 20.0)}, "canal": {"T1": (150.0, 20.0), "T2": (1100.0, 60.0)},
    "gallbladder": {"T1": (120.0, 20.0), "T2": (1150.0, 60.0)}, "bowel": {"T1": (350.0, 40.0), "T2": (400.0, 60.0)},
    "gas": {"T1": (10.0, 5.0), "T2": (10.0, 5.0)}, "fluid": {"T1": (130.0, 20.0), "T2": (1050.0, 60.0)},
    "scalp": {"T1": (820.0, 50.0), "T2": (560.0, 50.0)}, "skull": {"T1": (70.0, 20.0), "T2": (60.0, 20.0)},
    "csf": {"T1": (180.0, 25.0), "T2": (1150.0, 60.0)}, "grey": {"T1": (480.0, 25.0), "T2": (720.0, 30.0)},
    "white": {"T1": (700.0, 25.0), "T2": (480.0, 25.0)}, "falx": {"T1": (200.0, 30.0), "T2": (600.0, 60.0)},
    "air": {"T1": (0.0, 0.0), "T2": (0.0, 0.0)},
}


def _value(table: dict[str, dict[str, tuple[float, float]]], name: str, mode: str,
           rng: np.random.Generator) -> float:
    entry = table[name]
    mean, sd = entry.get(mode, entry.get("*", (0.0, 0.0)))
    return float(rng.normal(mean, sd))


def _smooth_field(size: int, rng: np.random.Generator, cells: int = 4) -> np.ndarray:
    """A smooth random field in about [-1, 1] (bilinear up-sampling of a coarse grid)."""
    coarse = rng.uniform(-1, 1, (cells + 1, cells + 1))
    t = np.linspace(0, cells, size)
    i0 = np.clip(np.floor(t).astype(int), 0, cells - 1)
    f = t - i0
    rows = coarse[i0] * (1 - f)[:, None] + coarse[i0 + 1] * f[:, None]
    return (rows[:, i0] * (1 - f)[None, :] + rows[:, i0 + 1] * f[None, :]).astype(np.float32)


def _render(painter: _Painter, values: dict[str, float], texture: float, rng: np.random.Generator) -> np.ndarray:
    lookup = np.array([values.get(n, values["air"]) for n in painter.names], dtype=np.float32)
    image = lookup[painter.owner]
    if texture > 0:
        image = image + texture * _smooth_field(painter.owner.shape[0], rng, 12) * (painter.owner > 0)
    return image


def _blur(image: np.ndarray) -> np.ndarray:
    """3x3 box blur (partial-volume effect at edges)."""
    padded = np.pad(image, 1, mode="edge")
    out = np.zeros_like(image)
    for dr in range(3):
        for dc in range(3):
            out += padded[dr:dr + image.shape[0], dc:dc + image.shape[1]]
    return out / 9.0


# --------------------------------------------------------------------------- abdomen / chest


@dataclass
class _TrunkLayout:
    """Random geometry of one trunk phantom, shared by its slices."""

    W: float
    D: float
    fat: float
    wall: float
    r_v: float
    y_v: float
    extras: dict[str, Any]


def _trunk_layout(rng: np.random.Generator, chest: bool) -> _TrunkLayout:
    W = float(rng.uniform(150, 185) if chest else rng.uniform(135, 175))
    D = float(rng.uniform(100, 130) if chest else rng.uniform(95, 125))
    fat = float(rng.uniform(5, 25) if chest else rng.uniform(6, 30))
    wall = float(rng.uniform(6, 12) if chest else rng.uniform(5, 11))
    r_v = float(rng.uniform(15, 21))
    y_v = D - fat - 10.0 - 32.0 - r_v
    return _TrunkLayout(W, D, fat, wall, r_v, y_v, {})


def _draw_spine(canvas: Canvas, p: _Painter, lay: _TrunkLayout, inside: np.ndarray,
                wob: dict[str, Any]) -> None:
    r_v, y_v = lay.r_v, lay.y_v
    canal_y = y_v + r_v + 8.0
    p.paint("muscle", canvas.blob(-(r_v + 9), canal_y + 6, 17, 15, 0, wob["paraspinal_r"]), inside)
    p.paint("muscle", canvas.blob(r_v + 9, canal_y + 6, 17, 15, 0, wob["paraspinal_l"]), inside)
    body = canvas.blob(0, y_v, r_v, r_v * 0.85, 0, wob["vertebra"])
    arch = canvas.blob(0, canal_y, 13.5, 11.5) | canvas.blob(0, canal_y + 18, 3.5, 11)
    arch |= canvas.blob(-14, canal_y + 2, 8, 3.5, 25) | canvas.blob(14, canal_y + 2, 8, 3.5, -25)
    p.paint("cortex", body | arch, inside)
    inner = canvas.blob(0, y_v, r_v - 2.2, r_v * 0.85 - 2.2, 0, wob["vertebra"])
    p.paint("vertebra", inner, inside)
    p.paint("canal", canvas.disc(0, canal_y, 6.5), inside)


def _ct_or_mr(kind: str) -> tuple[str, dict[str, dict[str, tuple[float, float]]]]:
    return ("CT", _CT_HU) if kind.startswith("ct") else ("MR", _MR_SIGNAL)


def _draw_abdomen(kind: str, canvas: Canvas, lay: _TrunkLayout, z: float, rng: np.random.Generator,
                  ) -> tuple[_Painter, dict[str, np.ndarray]]:
    e = lay.extras
    p = _Painter(canvas.size)
    W, D, fat, wall = lay.W, lay.D, lay.fat, lay.wall
    body = canvas.blob(0, 0, W, D, 0, e["wob"]["body"])
    p.paint("fat", body)
    p.paint("muscle", canvas.blob(0, 0, W - fat, D - fat, 0, e["wob"]["body"]), body)
    cavity = canvas.blob(0, 0, W - fat - wall, D - fat - wall, 0, e["wob"]["body"])
    p.paint("visceral_fat", cavity, body)
    Wc, Dc = W - fat - wall, D - fat - wall
    for side, (rx, ry) in e["ribs"]:
        p.paint("cortex", canvas.blob(side * rx, ry, 5.5, 8.0, side * 30.0), body)
    # bowel and stomach (unlabelled distractors)
    for bx, by, br, content in e["bowel"]:
        p.paint("bowel", canvas.disc(bx * Wc, by * Dc, br), cavity)
        p.paint(content, canvas.disc(bx * Wc, by * Dc, br - 2.0), cavity)
    if e["stomach"]:
        sx, sy, sa, sb = e["stomach"]
        stomach = canvas.blob(sx * Wc, sy * Dc, sa * Wc, sb * Dc, 10, e["wob"]["stomach"])
        p.paint("bowel", stomach, cavity)
        p.paint("fluid", canvas.blob(sx * Wc, sy * Dc + 3, sa * Wc - 3, sb * Dc - 3, 10), cavity)
        p.paint("gas", stomach & (canvas.y < sy * Dc - sb * Dc * 0.35), cavity)
    s = _shrink(z, 90.0)
    liver = canvas.blob(e["liver"][0] * Wc, e["liver"][1] * Dc, e["liver"][2] * Wc * s, e["liver"][3] * Dc * s,
                        e["liver"][4], e["wob"]["liver"])
    liver |= canvas.blob(-0.02 * Wc, -0.55 * Dc, e["liver"][5] * Wc * s, e["liver"][6] * Dc * s, 5,
                         e["wob"]["liver2"])
    p.paint("liver", liver, cavity)
    sp = e["spleen"]
    s = _shrink(z, 55.0 * sp[4])
    p.paint("spleen", canvas.blob(sp[0] * Wc, sp[1] * Dc, sp[2] * Wc * s, sp[3] * Dc * s, 35, e["wob"]["spleen"]),
            cavity)
    if e["gallbladder"]:
        gx, gy, ga, gb = e["gallbladder"]
        p.paint("gallbladder", canvas.blob(gx * Wc, gy * Dc, ga, gb, -20), cavity)
    for side in ("right", "left"):
        kidney = e["kidneys"].get(side)
        if kidney is None:
            continue
        kx, ky, ka, kb, kang = kidney
        s = _shrink(z, 55.0)
        shape = canvas.blob(kx, ky, ka * s, kb * s, kang, e["wob"][f"kidney_{side}"])
        p.paint(f"{side}_kidney", shape, cavity)
        hilum_x = kx - math.copysign(ka * 0.55, kx)
        p.paint(f"{side}_sinus", canvas.blob(hilum_x, ky - 2, ka * 0.35 * s, kb * 0.3 * s, kang), shape)
    ax, ay, ar = e["aorta"]
    p.paint("aorta", canvas.disc(ax, ay, ar), cavity)
    p.paint("ivc", canvas.blob(e["ivc"][0], e["ivc"][1], 11, 8), cavity)
    _draw_spine(canvas, p, lay, body, e["wob"])
    masks = {
        "body": p.owner > 0,
        "liver": p.mask("liver"), "spleen": p.mask("spleen"),
        "right_kidney": p.mask("right_kidney", "right_sinus"), "left_kidney": p.mask("left_kidney", "left_sinus"),
        "aorta": p.mask("aorta"), "vertebra": p.mask("vertebra", "cortex") & ~_ribs_mask(canvas, e, body),
        "bone": p.mask("vertebra", "cortex"),
    }
    if e["gallbladder"]:
        masks["gallbladder"] = p.mask("gallbladder")
    return p, masks


def _ribs_mask(canvas: Canvas, e: dict[str, Any], body: np.ndarray) -> np.ndarray:
    out = np.zeros(body.shape, dtype=bool)
    for side, (rx, ry) in e["ribs"]:
        out |= canvas.blob(side * rx, ry, 5.5, 8.0, side * 30.0)
    return out & body


def _abdomen_extras(lay: _TrunkLayout, rng: np.random.Generator) -> None:
    Wc, Dc = lay.W - lay.fat - lay.wall, lay.D - lay.fat - lay.wall
    wob = {k: _wobble(rng, a) for k, a in (("body", 0.04), ("liver", 0.08), ("liver2", 0.1), ("spleen", 0.1),
                                           ("stomach", 0.1), ("kidney_left", 0.06), ("kidney_right", 0.06),
                                           ("vertebra", 0.03), ("paraspinal_l", 0.08), ("paraspinal_r", 0.08))}
    kidneys: dict[str, tuple[float, ...]] = {}
    missing = None
    if rng.random() < 0.08:
        missing = str(rng.choice(["left", "right"]))
    for side, sign in (("right", -1.0), ("left", 1.0)):
        if side == missing:
            continue
        scale = float(rng.uniform(0.72, 1.25))
        kidneys[side] = (sign * (lay.r_v + rng.uniform(26, 40)), lay.y_v + rng.uniform(-6, 8),
                         rng.uniform(14, 20) * scale, rng.uniform(23, 32) * scale, -sign * rng.uniform(15, 35))
    ribs = []
    for sign in (-1.0, 1.0):
        for _ in range(int(rng.integers(0, 3))):
            t = rng.uniform(0.15, 0.45) * math.pi
            ribs.append((sign, ((lay.W - lay.fat - lay.wall / 2) * math.sin(t) * 0.98,
                                (lay.D - lay.fat - lay.wall / 2) * math.cos(t) * 0.2)))
    bowel = [(rng.uniform(-0.5, 0.6), rng.uniform(-0.75, -0.2), rng.uniform(7, 16),
              str(rng.choice(["gas", "fluid", "bowel"]))) for _ in range(int(rng.integers(2, 8)))]
    lay.extras = {
        "wob": wob, "kidneys": kidneys, "missing_kidney": missing, "ribs": ribs, "bowel": bowel,
        "stomach": (rng.uniform(0.25, 0.45), rng.uniform(-0.55, -0.35), rng.uniform(0.18, 0.28),
                    rng.uniform(0.18, 0.28)) if rng.random() < 0.7 else None,
        "liver": (-rng.uniform(0.38, 0.48), -rng.uniform(0.0, 0.12), rng.uniform(0.5, 0.62), rng.uniform(0.6, 0.8),
                  rng.uniform(-25, 5), rng.uniform(0.22, 0.45), rng.uniform(0.16, 0.28)),
        "spleen": (rng.uniform(0.55, 0.68), rng.uniform(0.2, 0.38), rng.uniform(0.14, 0.2), rng.uniform(0.22, 0.32),
                   rng.uniform(0.8, 1.5)),
        "gallbladder": (-rng.uniform(0.18, 0.3), -rng.uniform(0.3, 0.42), rng.uniform(9, 14), rng.uniform(14, 22))
        if rng.random() < 0.4 else None,
        "aorta": (rng.uniform(4, 12), lay.y_v - lay.r_v - 12.0 - rng.uniform(1, 4), rng.uniform(8, 13)),
        "ivc": (-rng.uniform(16, 26), lay.y_v - lay.r_v - 9.0),
    }
    lay.extras["aorta"] = (lay.extras["aorta"][0], lay.y_v - lay.r_v - lay.extras["aorta"][2] - 2.0,
                           lay.extras["aorta"][2])
    # scale spleen size with its own factor
    sp = lay.extras["spleen"]
    lay.extras["spleen"] = (sp[0], sp[1], sp[2] * sp[4], sp[3] * sp[4], sp[4])
    del Wc, Dc


def _chest_extras(lay: _TrunkLayout, rng: np.random.Generator) -> None:
    wob = {k: _wobble(rng, a) for k, a in (("body", 0.04), ("lung_right", 0.06), ("lung_left", 0.06),
                                           ("heart", 0.06), ("vertebra", 0.03), ("paraspinal_l", 0.08),
                                           ("paraspinal_r", 0.08))}
    ribs = []
    for sign in (-1.0, 1.0):
        for t in np.linspace(0.12, 0.88, int(rng.integers(4, 8))) * math.pi:
            t = t + rng.uniform(-0.05, 0.05)
            ribs.append((sign, ((lay.W - lay.fat - lay.wall / 2) * math.sin(t) * 0.99,
                                -(lay.D - lay.fat - lay.wall / 2) * math.cos(t) * 0.99)))
    heart_scale = float(rng.uniform(0.9, 1.35))
    vessels = [(rng.uniform(-1, 1), rng.uniform(-0.8, 0.8), rng.uniform(0.8, 2.8)) for _ in range(int(rng.integers(10, 40)))]
    lay.extras = {
        "wob": wob, "ribs": ribs, "vessels": vessels, "sternum": rng.random() < 0.85,
        "lungs": {"right": (-rng.uniform(0.42, 0.5), rng.uniform(0.0, 0.1), rng.uniform(0.42, 0.5),
                            rng.uniform(0.72, 0.85)),
                  "left": (rng.uniform(0.42, 0.5), rng.uniform(0.0, 0.1), rng.uniform(0.4, 0.48),
                           rng.uniform(0.72, 0.85))},
        "heart": (rng.uniform(0.05, 0.18), -rng.uniform(0.2, 0.32), 0.33 * heart_scale, 0.36 * heart_scale,
                  rng.uniform(-30, -10)),
        "heart_scale": heart_scale,
        "aorta": (rng.uniform(8, 16), lay.y_v - lay.r_v - 14.0, rng.uniform(10, 14)),
        "ascending": (rng.uniform(-8, 4), -rng.uniform(0.45, 0.6), rng.uniform(12, 16)) if rng.random() < 0.5 else None,
    }
    a = lay.extras["aorta"]
    lay.extras["aorta"] = (a[0], lay.y_v - lay.r_v - a[2] - 2.0, a[2])


def _draw_chest(canvas: Canvas, lay: _TrunkLayout, z: float, rng: np.random.Generator,
                ) -> tuple[_Painter, dict[str, np.ndarray]]:
    e = lay.extras
    p = _Painter(canvas.size)
    W, D, fat, wall = lay.W, lay.D, lay.fat, lay.wall
    body = canvas.blob(0, 0, W, D, 0, e["wob"]["body"])
    p.paint("fat", body)
    p.paint("muscle", canvas.blob(0, 0, W - fat, D - fat, 0, e["wob"]["body"]), body)
    cavity = canvas.blob(0, 0, W - fat - wall, D - fat - wall, 0, e["wob"]["body"])
    Wc, Dc = W - fat - wall, D - fat - wall
    p.paint("mediastinum", cavity, body)
    lung_shapes = {}
    for side in ("right", "left"):
        lx, ly, la, lb = e["lungs"][side]
        shape = canvas.blob(lx * Wc, ly * Dc, la * Wc, lb * Dc, 0, e["wob"][f"lung_{side}"]) & cavity
        shape &= np.abs(canvas.x) > 6.0
        lung_shapes[side] = shape
        p.paint(f"{side}_lung", shape)
    hx, hy, ha, hb, hang = e["heart"]
    heart = canvas.blob(hx * Wc, hy * Dc, ha * Wc, hb * Dc, hang, e["wob"]["heart"]) & cavity
    p.paint("heart", heart)
    ax, ay, ar = e["aorta"]
    aorta = canvas.disc(ax, ay, ar)
    if e["ascending"]:
        bx, by, br = e["ascending"]
        aorta |= canvas.disc(bx, by * Dc, br)
    p.paint("aorta", aorta, cavity)
    p.paint("bowel", canvas.disc(ax - ar - 6, ay - 4, 6), cavity)  # oesophagus
    for vx, vy, vr in e["vessels"]:
        for side, shape in lung_shapes.items():
            cx = (e["lungs"][side][0] + vx * e["lungs"][side][2] * 0.7) * Wc
            cy = (e["lungs"][side][1] + vy * e["lungs"][side][3] * 0.7) * Dc
            p.paint(f"{side}_lung_vessel", canvas.disc(cx, cy, vr), shape & p.mask(f"{side}_lung"))
    for side, (rx, ry) in e["ribs"]:
        p.paint("cortex", canvas.blob(side * rx, ry, 5.0, 8.0, side * 60.0), body)
    if e["sternum"]:
        p.paint("cortex", canvas.blob(0, -(D - fat - wall / 2), 13, 5.5), body)
    _draw_spine(canvas, p, lay, body, e["wob"])
    masks = {
        "body": p.owner > 0,
        "right_lung": p.mask("right_lung", "right_lung_vessel"),
        "left_lung": p.mask("left_lung", "left_lung_vessel"),
        "heart": p.mask("heart"), "aorta": p.mask("aorta"),
        "vertebra": p.mask("vertebra", "cortex") & (np.abs(canvas.x) < lay.r_v + 16)
        & (canvas.y > lay.y_v - lay.r_v - 3),
        "bone": p.mask("vertebra", "cortex"),
    }
    return p, masks


# --------------------------------------------------------------------------- brain


def _brain_extras(rng: np.random.Generator) -> dict[str, Any]:
    vscale = float(rng.uniform(0.7, 1.8))
    return {
        "a": float(rng.uniform(62, 75)), "b": float(rng.uniform(78, 95)), "scalp": float(rng.uniform(4, 8)),
        "skull": float(rng.uniform(4, 8)), "csf": float(rng.uniform(1.5, 3.5)), "gm": float(rng.uniform(2.5, 4.5)),
        "wob": _wobble(rng, 0.03), "gyri": _wobble(rng, 0.03, tuple(range(9, 25, 3))),
        "ventricles": {side: (sign * rng.uniform(4, 9), rng.uniform(-12, 4),
                              rng.uniform(3, 7) * vscale * rng.uniform(0.85, 1.15),
                              rng.uniform(15, 24) * min(vscale, 1.3), sign * rng.uniform(5, 20))
                       for side, sign in (("right", -1.0), ("left", 1.0))},
        "ventricle_scale": vscale,
    }


def _draw_brain(canvas: Canvas, e: dict[str, Any], z: float, rng: np.random.Generator,
                ) -> tuple[_Painter, dict[str, np.ndarray]]:
    p = _Painter(canvas.size)
    s = _shrink(z, 120.0)
    a, b = e["a"] * s, e["b"] * s
    head = canvas.blob(0, 0, a, b, 0, e["wob"])
    p.paint("scalp", head)
    skull_out = a - e["scalp"], b - e["scalp"]
    p.paint("skull", canvas.blob(0, 0, *skull_out, 0, e["wob"]), head)
    inner = skull_out[0] - e["skull"], skull_out[1] - e["skull"]
    p.paint("csf", canvas.blob(0, 0, *inner, 0, e["wob"]), head)
    brain_a, brain_b = inner[0] - e["csf"], inner[1] - e["csf"]
    brain = canvas.blob(0, 0, brain_a, brain_b, 0, e["wob"]) & (np.abs(canvas.x) > 0.9)
    p.paint("grey", brain)
    gm = e["gm"]
    white = canvas.blob(0, 0, brain_a - gm, brain_b - gm, 0, e["wob"] + e["gyri"]) & (np.abs(canvas.x) > 0.9 + gm)
    p.paint("white", white, brain)
    ventricles = np.zeros_like(brain)
    vs = _shrink(z, 30.0)
    for side in ("right", "left"):
        vx, vy, va, vb, vang = e["ventricles"][side]
        ventricles |= canvas.blob(vx, vy, va * vs, vb * vs, vang)
    ventricles &= brain & (np.abs(canvas.x) > 1.5)
    p.paint("csf", ventricles)
    p.paint("falx", (np.abs(canvas.x) <= 0.9) & canvas.blob(0, 0, *inner, 0, e["wob"]), head)
    brain_mask = brain.copy()
    masks = {
        "head": head, "brain": brain_mask, "scalp_skull": head & ~brain_mask,
        "grey_matter": brain_mask & (p.owner == p.names.index("grey")),
        "white_matter": brain_mask & (p.owner == p.names.index("white")),
        "lateral_ventricles": ventricles,
        "right_cerebral_hemisphere": brain_mask & (canvas.x < 0),
        "left_cerebral_hemisphere": brain_mask & (canvas.x > 0),
    }
    return p, masks


# --------------------------------------------------------------------------- assembly


def draw_phantom(kind: str, rng: np.random.Generator, *, slices: int = 1, size: int | None = None,
                 ) -> Phantom:
    """Draw one phantom of ``kind`` with ``slices`` axial slices (odd; 1 = a 2-D image)."""
    if kind not in KINDS:
        raise ValueError(f"unknown phantom kind {kind!r} (known: {', '.join(KINDS)})")
    modality, table = _ct_or_mr(kind)
    sequence = None if modality == "CT" else str(rng.choice(["T1", "T2"]))
    phase = str(rng.choice(_CT_PHASES)) if modality == "CT" else None
    size = int(size or rng.choice([192, 224, 256, 288]))
    rotation = float(rng.uniform(-12, 12))
    thickness = float(rng.uniform(2.0, 5.0))
    region = "head" if kind == "mr-brain" else "chest" if kind == "ct-chest" else "abdomen"
    if kind == "mr-brain":
        extras = _brain_extras(rng)
        extent = 2 * max(extras["a"], extras["b"])
    else:
        lay = _trunk_layout(rng, chest=kind == "ct-chest")
        (_chest_extras if kind == "ct-chest" else _abdomen_extras)(lay, rng)
        extent = 2 * max(lay.W, lay.D)
    spacing = float(extent / (size * rng.uniform(0.78, 0.95)))
    shift = (float(rng.uniform(-0.04, 0.04) * size * spacing), float(rng.uniform(-0.04, 0.04) * size * spacing))
    canvas = Canvas(size, spacing, shift, rotation)
    mode = phase if modality == "CT" else sequence
    assert mode is not None
    names = list(table)  # a fixed order: the random draws must not depend on hash seeds
    values = {n: _value(table, n, mode, rng) for n in names}
    if modality == "MR":
        # per-tissue jitter small enough to keep the contrasts the knowledge base states
        values = {n: v * float(rng.uniform(0.9, 1.1)) if n != "air" else 0.0 for n, v in values.items()}
        gain = float(rng.uniform(0.5, 2.0))
        values = {n: v * gain for n, v in values.items()}
    lesion_plan = _plan_lesions(kind, rng)
    layers: list[np.ndarray] = []
    all_masks: list[dict[str, np.ndarray]] = []
    lesions: list[PhantomLesion] = []
    centre = (slices - 1) / 2.0
    placed_3d: dict[str, list[tuple[float, float, float, float]]] = {}
    for index in range(slices):
        z = (index - centre) * thickness
        if kind == "mr-brain":
            painter, masks = _draw_brain(canvas, extras, z, rng)
        elif kind == "ct-chest":
            painter, masks = _draw_chest(canvas, lay, z, rng)
        else:
            painter, masks = _draw_abdomen(kind, canvas, lay, z, rng)
        slice_values = _slice_values(values, painter, modality)
        image = _render(painter, slice_values, 12.0 if modality == "CT" else 0.04 * values.get("white", 500.0), rng)
        if index == 0:
            placed_3d, lesions = _position_lesions(kind, canvas, masks, lesion_plan, values, modality, rng,
                                                    thickness * max(slices - 1, 1) / 2.0)
        image = _paint_lesions(canvas, image, masks, placed_3d, lesions, z)
        layers.append(image)
        all_masks.append(masks)
    array = np.stack(layers)
    array = np.stack([_blur(s) for s in array])
    if modality == "CT":
        array = array + rng.normal(0, rng.uniform(5, 20), array.shape).astype(np.float32)
        array = np.clip(array, -1024, 3071)
    else:
        bias = 1.0 + float(rng.uniform(0.05, 0.2)) * _smooth_field(size, rng, 3)
        noise = float(rng.uniform(0.01, 0.04)) * float(np.percentile(array, 90))
        real = array * bias[None] + rng.normal(0, noise, array.shape)
        imag = rng.normal(0, noise, array.shape)
        array = np.sqrt(real * real + imag * imag)
    keys = all_masks[0].keys()
    masks3d = {k: np.stack([m[k] for m in all_masks]) for k in keys}
    for lesion in lesions:
        masks3d[f"{lesion.host}_lesions"] = np.stack([m.get(f"{lesion.host}_lesions", np.zeros((size, size), bool))
                                                       for m in all_masks])
    absent = {}
    if kind in ("ct-abdomen", "mr-abdomen"):
        missing = lay.extras["missing_kidney"]
        if missing:
            absent[f"{missing}_kidney"] = "it is missing, as after a nephrectomy"
        if lay.extras["gallbladder"] is None:
            absent["gallbladder"] = "it is not in this slice"
    facts: dict[str, Any] = {"kind": kind, "rotation_deg": round(rotation, 1), "pixel_mm": round(spacing, 3),
                             "size": size, "slices": slices, "slice_mm": round(thickness, 2)}
    if phase:
        facts["contrast_phase"] = phase
    if sequence:
        facts["sequence"] = sequence
    if kind == "mr-brain":
        facts["ventricle_scale"] = round(extras["ventricle_scale"], 2)
    elif kind == "ct-chest":
        facts["heart_scale"] = round(lay.extras["heart_scale"], 2)
    return Phantom(kind=kind, modality=modality, sequence=sequence, region=region,
                   array=array.astype(np.float32), spacing=(spacing, spacing, thickness), masks=masks3d,
                   lesions=lesions, absent=absent, facts=facts)


def _slice_values(values: dict[str, float], painter: _Painter, modality: str) -> dict[str, float]:
    out = dict(values)
    for name in painter.names:
        if name in out:
            continue
        if name.endswith("_kidney"):
            out[name] = values["kidney"]
        elif name.endswith("_sinus"):
            out[name] = values["sinus"]
        elif name.endswith("_lung_vessel"):
            out[name] = values["vessel"] if "vessel" in values else values["muscle"]
        elif name.endswith("_lung"):
            out[name] = values["lung"] if "lung" in values else 0.0
        elif name in ("heart", "mediastinum", "vessel"):
            out[name] = values.get(name, values["muscle"])
        else:
            out[name] = values["muscle"]
    return out


# --------------------------------------------------------------------------- lesion planning

_HOSTS = {"ct-abdomen": (("liver", 0.5), ("spleen", 0.2), ("right_kidney", 0.15), ("left_kidney", 0.15)),
          "mr-abdomen": (("liver", 0.55), ("spleen", 0.2), ("right_kidney", 0.125), ("left_kidney", 0.125)),
          "ct-chest": (("right_lung", 0.5), ("left_lung", 0.5)),
          "mr-brain": (("right_cerebral_hemisphere", 0.5), ("left_cerebral_hemisphere", 0.5))}


def _plan_lesions(kind: str, rng: np.random.Generator) -> list[tuple[str, str, list[float], float]]:
    """(host, density, diameters, relative intensity) for each lesion group."""
    if rng.random() < 0.3:
        return []
    hosts, weights = zip(*_HOSTS[kind])
    groups = 1 if kind in ("mr-brain",) or rng.random() < 0.75 else 2
    chosen = rng.choice(len(hosts), size=groups, replace=False, p=np.array(weights) / sum(weights))
    plan = []
    for index in chosen:
        host = hosts[int(index)]
        count = int(rng.choice([1, 1, 1, 2, 2, 3]))
        if kind == "ct-chest":
            density, diameters = "solid", [float(rng.uniform(5, 24)) for _ in range(count)]
            level = 0.0
        elif kind == "mr-brain":
            density = "hyperintense" if rng.random() < 0.7 else "hypointense"
            diameters = [float(rng.uniform(4, 18)) for _ in range(count)]
            level = float(rng.uniform(0.35, 0.7))
        else:
            dark = rng.random() < 0.65
            if kind == "ct-abdomen":
                density = "hypodense" if dark else "hyperdense"
            else:
                density = "hypointense" if dark else "hyperintense"
            diameters = [float(rng.uniform(5, 30)) for _ in range(count)]
            level = float(rng.uniform(0.35, 0.8))
        plan.append((host, density, sorted(diameters, reverse=True), level if density in ("hyperdense", "hyperintense",
                                                                                            "solid") else -level))
    return plan


def _position_lesions(kind: str, canvas: Canvas, masks: dict[str, np.ndarray],
                      plan: list[tuple[str, str, list[float], float]], values: dict[str, float], modality: str,
                      rng: np.random.Generator, half_slab: float,
                      ) -> tuple[dict[str, list[tuple[float, float, float, float]]], list[PhantomLesion]]:
    placed: dict[str, list[tuple[float, float, float, float]]] = {}
    lesions: list[PhantomLesion] = []
    for host, density, diameters, level in plan:
        if host not in masks or not masks[host].any():
            continue
        region = masks[host]
        if kind == "mr-brain":
            region = region & masks["white_matter"]
        discs = _place_lesions(canvas, region, len(diameters), diameters, rng)
        if not discs:
            continue
        host_value = _host_value(host, values)
        if kind == "ct-chest":
            value = values["muscle"] + float(rng.uniform(-20, 15))
        elif modality == "CT":
            value = host_value + (level * 150.0 if level > 0 else level * 110.0)
            if level < 0 and rng.random() < 0.4:
                value = float(rng.uniform(0, 20))  # a cyst
        else:
            scale = values["fluid"] if "fluid" in values else values["csf"]
            value = host_value + level * abs(scale - host_value) if level > 0 else host_value * (1 + level * 0.8)
        # a lesion is a sphere centred near the middle slice
        placed[host] = [(cx, cy, r, float(rng.uniform(-0.3, 0.3) * min(half_slab, r))) for cx, cy, r in discs]
        lesions.append(PhantomLesion(host=host, density=density,
                                     diameters_mm=[round(2 * r, 1) for _, _, r in discs], value=float(value)))
    return placed, lesions


def _host_value(host: str, values: dict[str, float]) -> float:
    if host.endswith("kidney"):
        return values["kidney"]
    if host.endswith("lung"):
        return values.get("lung", 0.0)
    if host.endswith("hemisphere"):
        return values["white"]
    return values[host]


def _paint_lesions(canvas: Canvas, image: np.ndarray, masks: dict[str, np.ndarray],
                   placed: dict[str, list[tuple[float, float, float, float]]], lesions: list[PhantomLesion],
                   z: float) -> np.ndarray:
    out = image.copy()
    for lesion in lesions:
        region = np.zeros(image.shape, dtype=bool)
        for cx, cy, r, cz in placed.get(lesion.host, []):
            dz = z - cz
            if abs(dz) >= r:
                continue
            region |= canvas.disc(cx, cy, math.sqrt(r * r - dz * dz))
        region &= masks[lesion.host]
        out[region] = lesion.value
        masks[f"{lesion.host}_lesions"] = region
    return out
