"""metrics.png: the training curves, drawn with numpy and written as PNG with zlib.

matplotlib is not a dependency (tens of MB for four line charts), so this is a
tiny raster renderer: panels with a frame, a polyline per series, and labels in
a 3x5 bitmap font.
"""

from __future__ import annotations

import math
import struct
import zlib
from pathlib import Path

import numpy as np

# 3x5 glyphs: five rows of three bits (4 = left pixel).
_FONT = {
    "0": (7, 5, 5, 5, 7), "1": (2, 6, 2, 2, 7), "2": (7, 1, 7, 4, 7), "3": (7, 1, 7, 1, 7),
    "4": (5, 5, 7, 1, 1), "5": (7, 4, 7, 1, 7), "6": (7, 4, 7, 5, 7), "7": (7, 1, 1, 1, 1),
    "8": (7, 5, 7, 5, 7), "9": (7, 5, 7, 1, 7), "a": (2, 5, 7, 5, 5), "b": (6, 5, 6, 5, 6),
    "c": (3, 4, 4, 4, 3), "d": (6, 5, 5, 5, 6), "e": (7, 4, 6, 4, 7), "f": (7, 4, 6, 4, 4),
    "g": (3, 4, 5, 5, 3), "h": (5, 5, 7, 5, 5), "i": (7, 2, 2, 2, 7), "j": (1, 1, 1, 5, 2),
    "k": (5, 5, 6, 5, 5), "l": (4, 4, 4, 4, 7), "m": (5, 7, 7, 5, 5), "n": (6, 5, 5, 5, 5),
    "o": (2, 5, 5, 5, 2), "p": (6, 5, 6, 4, 4), "q": (2, 5, 5, 6, 3), "r": (6, 5, 6, 5, 5),
    "s": (3, 4, 2, 1, 6), "t": (7, 2, 2, 2, 2), "u": (5, 5, 5, 5, 7), "v": (5, 5, 5, 5, 2),
    "w": (5, 5, 7, 7, 5), "x": (5, 5, 2, 5, 5), "y": (5, 5, 2, 2, 2), "z": (7, 1, 2, 4, 7),
    ".": (0, 0, 0, 0, 2), "-": (0, 0, 7, 0, 0), "/": (1, 1, 2, 4, 4), "_": (0, 0, 0, 0, 7),
    ":": (0, 2, 0, 2, 0), " ": (0, 0, 0, 0, 0), "+": (0, 2, 7, 2, 0),
}
TRAIN_COLOR, EVAL_COLOR, INK, GRID = (31, 119, 180), (214, 39, 40), (40, 40, 40), (225, 225, 225)
PANEL_W, PANEL_H, MARGIN = 380, 220, 34
DPO_KEYS = ("loss", "rewards/margins", "rewards/accuracies", "logps/chosen", "grad_norm",
            "learning_rate")
SFT_KEYS = ("loss", "grad_norm", "learning_rate", "tokens_per_second")


def write_png(path: Path, image: np.ndarray) -> None:
    """Write an RGB uint8 image [H, W, 3] as a PNG file."""
    h, w, _ = image.shape
    raw = b"".join(b"\x00" + image[y].tobytes() for y in range(h))  # filter 0 per row

    def chunk(kind: bytes, data: bytes) -> bytes:
        return struct.pack(">I", len(data)) + kind + data + struct.pack(">I", zlib.crc32(kind + data))

    png = (b"\x89PNG\r\n\x1a\n" + chunk(b"IHDR", struct.pack(">IIBBBBB", w, h, 8, 2, 0, 0, 0))
           + chunk(b"IDAT", zlib.compress(raw, 6)) + chunk(b"IEND", b""))
    Path(path).write_bytes(png)


def draw_text(img: np.ndarray, x: int, y: int, text: str, color=INK, scale: int = 2) -> None:
    for ch in text.lower():
        rows = _FONT.get(ch, _FONT[" "])
        for r, bits in enumerate(rows):
            for c in range(3):
                if bits & (4 >> c):
                    img[y + r * scale: y + (r + 1) * scale, x + c * scale: x + (c + 1) * scale] = color
        x += 4 * scale


def _line(img, x0, y0, x1, y1, color) -> None:
    n = int(max(abs(x1 - x0), abs(y1 - y0))) + 1
    xs = np.linspace(x0, x1, n).round().astype(int)
    ys = np.linspace(y0, y1, n).round().astype(int)
    ok = (xs >= 0) & (xs < img.shape[1]) & (ys >= 0) & (ys < img.shape[0])
    img[ys[ok], xs[ok]] = color


def _fmt(v: float) -> str:
    return f"{v:.3g}" if math.isfinite(v) else "nan"


def draw_panel(img, ox, oy, title, series) -> None:
    """A framed chart of (steps, values, color) series with its title and y range."""
    x0, y0, x1, y1 = ox + MARGIN, oy + 24, ox + PANEL_W - 10, oy + PANEL_H - 22
    img[y0:y1, x0:x1] = 255
    for gy in np.linspace(y0, y1, 5)[1:-1]:
        _line(img, x0, gy, x1, gy, GRID)
    for a, b, c, d in ((x0, y0, x1, y0), (x0, y1, x1, y1), (x0, y0, x0, y1), (x1, y0, x1, y1)):
        _line(img, a, b, c, d, INK)
    draw_text(img, ox + MARGIN, oy + 6, title)
    pts = [(s, v) for steps, vals, _ in series for s, v in zip(steps, vals) if math.isfinite(v)]
    if not pts:
        return
    smin, smax = min(p[0] for p in pts), max(p[0] for p in pts)
    vmin, vmax = min(p[1] for p in pts), max(p[1] for p in pts)
    if vmax - vmin < 1e-12:
        vmin, vmax = vmin - 0.5, vmax + 0.5

    def sx(s):
        return x0 + 3 + (s - smin) / max(smax - smin, 1) * (x1 - x0 - 6)

    def sy(v):
        return y1 - 3 - (v - vmin) / (vmax - vmin) * (y1 - y0 - 6)

    for steps, vals, color in series:
        xy = [(sx(s), sy(v)) for s, v in zip(steps, vals) if math.isfinite(v)]
        for (a, b), (c, d) in zip(xy, xy[1:]):
            _line(img, a, b, c, d, color)
        for a, b in xy:
            img[int(b) - 1: int(b) + 2, int(a) - 1: int(a) + 2] = color
    draw_text(img, ox + 2, y0, _fmt(vmax), scale=1)
    draw_text(img, ox + 2, y1 - 5, _fmt(vmin), scale=1)
    draw_text(img, x0, y1 + 6, f"step {smin}", scale=1)
    draw_text(img, x1 - 40, y1 + 6, f"step {smax}", scale=1)


def plot_metrics(records: list[dict], path: Path) -> None:
    """Draw metrics.jsonl records (train blue, eval red) into a PNG grid."""
    train = [r for r in records if "loss" in r]
    keys = DPO_KEYS if any("rewards/margins" in r for r in train) else SFT_KEYS
    keys = [k for k in keys if any(k in r for r in records) or any(f"eval/{k}" in r for r in records)]
    cols = 2
    rows = max(1, math.ceil(len(keys) / cols))
    img = np.full((rows * PANEL_H, cols * PANEL_W, 3), 246, dtype=np.uint8)
    for i, key in enumerate(keys):
        series = []
        for name, color in ((key, TRAIN_COLOR), (f"eval/{key}", EVAL_COLOR)):
            rs = [r for r in records if name in r]
            if rs:
                series.append(([r["step"] for r in rs], [float(r[name]) for r in rs], color))
        title = key + ("  (eval red)" if len(series) > 1 else "")
        draw_panel(img, (i % cols) * PANEL_W, (i // cols) * PANEL_H, title, series)
    write_png(path, img)
