"""Drawing one synthetic "shapes" image: textured background + shapes with tight boxes."""
from __future__ import annotations

import colorsys
import math

import numpy as np
from PIL import Image, ImageDraw

__all__ = ["CLASSES", "draw_image"]

CLASSES = ("circle", "square", "triangle", "star")
Box = tuple[int, int, int, int]  # x0, y0, x1, y1 (exclusive)


def _color(rng: np.random.Generator, sat: tuple[float, float], val: tuple[float, float]) -> tuple[int, int, int]:
    r, g, b = colorsys.hsv_to_rgb(rng.uniform(0, 1), rng.uniform(*sat), rng.uniform(*val))
    return int(r * 255), int(g * 255), int(b * 255)


def background(rng: np.random.Generator, h: int, w: int) -> np.ndarray:
    """``uint8 [h, w, 3]``: gradient, stripes or blotches of muted colours, plus noise."""
    c0 = np.array(_color(rng, (0.0, 0.3), (0.2, 0.8)), np.float32)
    c1 = np.array(_color(rng, (0.0, 0.3), (0.2, 0.8)), np.float32)
    yy, xx = np.mgrid[0:h, 0:w].astype(np.float32)
    kind = rng.integers(3)
    angle = rng.uniform(0, math.pi)
    proj = xx * math.cos(angle) + yy * math.sin(angle)
    if kind == 0:  # gradient
        t = (proj - proj.min()) / max(float(np.ptp(proj)), 1.0)
    elif kind == 1:  # stripes
        t = 0.5 + 0.5 * np.sin(proj * 2 * math.pi / rng.uniform(6, 30))
    else:  # blotches: a few soft blobs
        t = np.zeros((h, w), np.float32)
        for _ in range(4):
            cy, cx, r = rng.uniform(0, h), rng.uniform(0, w), rng.uniform(0.1, 0.4) * max(h, w)
            t += np.exp(-((yy - cy) ** 2 + (xx - cx) ** 2) / (2 * r * r))
        t = t / max(float(t.max()), 1e-6)
    img = c0 + (c1 - c0) * t[..., None]
    img += rng.normal(0, 8, size=(h, w, 1)).astype(np.float32)
    return np.clip(img, 0, 255).astype(np.uint8)


def _vertices(kind: str, cx: float, cy: float, s: float) -> list[tuple[float, float]]:
    r = s / 2
    if kind == "square":
        return [(cx - r, cy - r), (cx + r, cy - r), (cx + r, cy + r), (cx - r, cy + r)]
    if kind == "triangle":
        return [(cx, cy - r), (cx + r, cy + r), (cx - r, cy + r)]
    pts = []  # star: 5 outer + 5 inner points
    for i in range(10):
        rad = r if i % 2 == 0 else r * 0.45
        a = -math.pi / 2 + i * math.pi / 5
        pts.append((cx + rad * math.cos(a), cy + rad * math.sin(a)))
    return pts


def _draw(draw: ImageDraw.ImageDraw, kind: str, cx: float, cy: float, s: float, color: tuple[int, int, int]) -> Box:
    """Draw one shape; return its tight pixel box (x1/y1 exclusive)."""
    if kind == "circle":
        x0, y0 = round(cx - s / 2), round(cy - s / 2)
        x1, y1 = x0 + max(round(s), 2) - 1, y0 + max(round(s), 2) - 1
        draw.ellipse([x0, y0, x1, y1], fill=color)
        return x0, y0, x1 + 1, y1 + 1
    pts = [(round(x), round(y)) for x, y in _vertices(kind, cx, cy, s)]
    draw.polygon(pts, fill=color)
    xs, ys = [p[0] for p in pts], [p[1] for p in pts]
    return min(xs), min(ys), max(xs) + 1, max(ys) + 1


def _covered(a: Box, b: Box) -> float:
    """Fraction of box ``a`` covered by box ``b``."""
    iw = min(a[2], b[2]) - max(a[0], b[0])
    ih = min(a[3], b[3]) - max(a[1], b[1])
    if iw <= 0 or ih <= 0:
        return 0.0
    return iw * ih / ((a[2] - a[0]) * (a[3] - a[1]))


def _size(rng: np.random.Generator, lo: float, hi: float, sampling: str) -> float:
    if sampling == "log":
        return math.exp(rng.uniform(math.log(lo), math.log(hi)))
    if sampling == "uniform":
        return float(rng.uniform(lo, hi))
    raise ValueError(f"size_sampling must be 'log' or 'uniform', got {sampling!r}.")


def draw_image(
    rng: np.random.Generator, h: int, w: int, min_size: float, max_size: float, max_objects: int,
    max_occlusion: float = 0.5, size_sampling: str = "log",
) -> tuple[Image.Image, list[tuple[int, Box]]]:
    """One image and its ``[(class_index, box), ...]``. Object sizes are drawn in
    ``[min_size, max_size]``, log-uniformly ("log": as many 8-16 px as 32-64 px objects) or
    uniformly ("uniform": fewer small ones); a new shape may cover at most ``max_occlusion``
    of an earlier one."""
    img = Image.fromarray(background(rng, h, w))
    draw = ImageDraw.Draw(img)
    objects: list[tuple[int, Box]] = []
    count = 0 if rng.uniform() < 0.04 else int(rng.integers(1, max_objects + 1))  # ~4% negatives
    for _ in range(count):
        for _attempt in range(10):
            s = _size(rng, min_size, max_size, size_sampling)
            cx, cy = rng.uniform(s / 2 + 1, w - s / 2 - 1), rng.uniform(s / 2 + 1, h - s / 2 - 1)
            guess = (int(cx - s / 2), int(cy - s / 2), int(cx + s / 2) + 1, int(cy + s / 2) + 1)
            if all(_covered(b, guess) <= max_occlusion and _covered(guess, b) < 0.9 for _, b in objects):
                break
        else:
            continue
        cls = int(rng.integers(len(CLASSES)))
        box = _draw(draw, CLASSES[cls], cx, cy, s, _color(rng, (0.6, 1.0), (0.7, 1.0)))
        objects.append((cls, box))
    return img, objects
