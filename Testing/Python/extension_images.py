"""Draws the extension's icon (``MedSegR/Resources/Icons/MedSegR.png``, 128x128).

A chat bubble over an axial slice of a head with a lesion highlighted as a segment: a
question, and the structure the answer names, outlined on the image. Run this file to
redraw the icon; the packaging test checks that the committed icon is this drawing.
"""

from __future__ import annotations

from pathlib import Path

from PIL import Image, ImageDraw, ImageFilter

ICON = Path(__file__).resolve().parents[2] / "MedSegR" / "Resources" / "Icons" / "MedSegR.png"
SIZE = 128
SCALE = 4  # draw large, then downsample (anti-aliasing)


def draw_icon() -> Image.Image:
    n = SIZE * SCALE
    image = Image.new("RGBA", (n, n), (0, 0, 0, 0))
    draw = ImageDraw.Draw(image)

    def box(x0: float, y0: float, x1: float, y1: float) -> tuple[int, int, int, int]:
        return (round(x0 * SCALE), round(y0 * SCALE), round(x1 * SCALE), round(y1 * SCALE))

    # rounded tile, dark blue vertical gradient
    tile = Image.new("RGBA", (n, n))
    for y in range(n):
        t = y / (n - 1)
        color = (round(24 + 20 * t), round(48 + 30 * t), round(92 + 40 * t), 255)
        ImageDraw.Draw(tile).line([(0, y), (n, y)], fill=color)
    mask = Image.new("L", (n, n), 0)
    ImageDraw.Draw(mask).rounded_rectangle(box(2, 2, 126, 126), radius=22 * SCALE, fill=255)
    image.paste(tile, (0, 0), mask)

    # an axial slice of a head: skin, skull, brain with its midline and ventricles
    draw.ellipse(box(34, 28, 116, 122), fill=(226, 218, 204, 255))
    draw.ellipse(box(39, 33, 111, 117), fill=(245, 242, 232, 255))
    draw.ellipse(box(43, 37, 107, 113), fill=(150, 152, 160, 255))
    draw.line([box(75, 39, 0, 0)[:2], box(75, 111, 0, 0)[:2]], fill=(110, 112, 122, 255), width=2 * SCALE)
    draw.arc(box(60, 62, 76, 92), start=100, end=260, fill=(60, 62, 72, 255), width=3 * SCALE)
    draw.arc(box(74, 62, 90, 92), start=280, end=80, fill=(60, 62, 72, 255), width=3 * SCALE)
    # the answer's segment: a lesion in one hemisphere, filled and outlined
    lesion = [(86, 48), (97, 52), (101, 63), (97, 74), (88, 77), (81, 70), (80, 58)]
    segment = Image.new("RGBA", (n, n), (0, 0, 0, 0))
    ImageDraw.Draw(segment).polygon([box(x, y, 0, 0)[:2] for x, y in lesion], fill=(245, 110, 50, 190))
    image.alpha_composite(segment)
    draw.line([box(x, y, 0, 0)[:2] for x, y in lesion + lesion[:1]], fill=(255, 170, 60, 255),
              width=3 * SCALE, joint="curve")

    # the question: a white chat bubble with a question mark
    shadow = Image.new("RGBA", (n, n), (0, 0, 0, 0))
    ImageDraw.Draw(shadow).rounded_rectangle(box(10, 12, 66, 50), radius=12 * SCALE, fill=(0, 0, 0, 110))
    image.alpha_composite(shadow.filter(ImageFilter.GaussianBlur(3 * SCALE)))
    draw.rounded_rectangle(box(8, 9, 64, 47), radius=12 * SCALE, fill=(255, 255, 255, 255))
    draw.polygon([box(22, 44, 0, 0)[:2], box(36, 44, 0, 0)[:2], box(18, 58, 0, 0)[:2]], fill=(255, 255, 255, 255))
    draw.arc(box(27, 15, 45, 31), start=180, end=90, fill=(24, 48, 92, 255), width=4 * SCALE)
    draw.line([box(36, 31, 0, 0)[:2], box(36, 36, 0, 0)[:2]], fill=(24, 48, 92, 255), width=4 * SCALE)
    draw.ellipse(box(33.5, 38.5, 38.5, 43.5), fill=(24, 48, 92, 255))

    return image.resize((SIZE, SIZE), Image.LANCZOS)


if __name__ == "__main__":
    ICON.parent.mkdir(parents=True, exist_ok=True)
    draw_icon().save(ICON, optimize=True)
    print(f"wrote {ICON}")
