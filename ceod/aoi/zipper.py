"""Estimate the zipper band (the AOI) of a zipper photograph such as MVTec AD's, bent or slanted.

Method, on a greyscale copy at most ``WORK_WIDTH`` px wide (area-averaged):

1. **Product extent.** Background is bright and flat (local mean ≥ ``BG_LEVEL``, local std ≤
   ``BG_STD``); it is dilated by ``EDGE_GUARD`` × width so the fabric edge cannot score.
2. **Teeth score.** Teeth are stripes periodic along y: the local mean |∂I/∂y| minus the local mean
   |∂I/∂x| is high on teeth, ≈ 0 on an isotropic weave, 0 on background, negative on the fabric
   edge.
3. **Per horizontal strip** (``STRIPS`` of them): the strip's column profile of the score, smoothed;
   its peak (never within the guard of the image edge or the background) and the half-maximum run
   around it give the chain's centre and width in that strip.
4. **Smooth.** Strip centres that jump away from their neighbours are dropped, the rest fitted by a
   quadratic in y (a smooth elastic bend); the width is the median over strips. The band is the
   chain ± ``margin`` × width (default 3 %: teeth defects spill past the chain), per row.

:func:`estimate_zipper_aoi` returns the H×W mask at the image's own resolution and diagnostics
(``saturated``: share of AOI pixels on background, ``confidence``: peak score over the fabric's).
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
import torch
import torch.nn.functional as F
from scipy import ndimage

WORK_WIDTH = 256
BG_LEVEL, BG_STD = 0.75, 0.06
EDGE_GUARD = 0.03
STRIPS = 16
MARGIN = 0.03
RUN_LEVEL = 0.3  # the chain: columns scoring ≥ this share of the strip peak


@dataclass
class ZipperAOI:
    """The estimate: ``mask`` H×W bool; per work row ``centre``/``half`` in image pixels; diagnostics."""

    mask: np.ndarray
    centre: np.ndarray
    half: float
    saturated: float
    confidence: float


def work_gray(image: torch.Tensor | np.ndarray, width: int = WORK_WIDTH) -> np.ndarray:
    """C×H×W (or H×W) image in [0, 1] → greyscale h×w float32 with w ≤ ``width`` (area-averaged)."""
    t = torch.as_tensor(image, dtype=torch.float32)
    if t.ndim == 2:
        t = t[None]
    if t.shape[0] == 3:
        t = (0.299 * t[0] + 0.587 * t[1] + 0.114 * t[2])[None]
    h, w = t.shape[-2:]
    if w > width:
        t = F.interpolate(t[None], size=(max(1, round(h * width / w)), width), mode="area")[0]
    return t[0].numpy()


def background(g: np.ndarray) -> np.ndarray:
    """h×w bool: bright, flat pixels (the white background beyond the fabric); the window spans
    several teeth, so bright teeth never pass as flat."""
    k = max(9, g.shape[1] // 24)
    mean = ndimage.uniform_filter(g, k)
    sd = np.sqrt(np.clip(ndimage.uniform_filter(g * g, k) - mean * mean, 0, None))
    return (mean >= BG_LEVEL) & (sd <= BG_STD)


def teeth_score(g: np.ndarray) -> np.ndarray:
    """h×w: local mean |∂I/∂y| − local mean |∂I/∂x| (high on stripes periodic along y)."""
    dy = np.abs(np.diff(g, axis=0, append=g[-1:]))
    dx = np.abs(np.diff(g, axis=1, append=g[:, -1:]))
    k = max(3, g.shape[1] // 32)
    return ndimage.uniform_filter(dy - dx, (2 * k + 1, k))


def _strip_runs(score: np.ndarray, allowed: np.ndarray, strips: int) -> list[tuple[float, float, float, float]]:
    """Per strip (centre row, run start, run end, peak height over the strip median), in work-pixel edge
    coordinates (pixel j spans [j, j + 1))."""
    h, w = score.shape
    k = max(3, w // 32)
    out = []
    for i in range(strips):
        r0, r1 = i * h // strips, max(i * h // strips + 1, (i + 1) * h // strips)
        prof = ndimage.uniform_filter1d(np.median(score[r0:r1], axis=0), k)
        ok = allowed[r0:r1].all(0)
        if not ok.any():
            continue
        base = float(np.median(prof[ok]))
        peak = int(np.argmax(np.where(ok, prof, -np.inf)))
        height = float(prof[peak]) - base
        if height <= 0:
            continue
        on = (prof - base >= RUN_LEVEL * height) & ok
        on = ndimage.binary_closing(on, np.ones(2 * k + 1, bool)) & ok  # bridge the dip where the teeth interlock
        a, b = peak, peak
        while a > 0 and on[a - 1]:
            a -= 1
        while b < w - 1 and on[b + 1]:
            b += 1
        out.append(((r0 + r1) / 2, a, b + 1, height))
    return out


def _fit_centre_line(ys, centres, widths, height) -> tuple[np.ndarray, float, np.ndarray]:
    """Robust quadratic centre(y) through the strips whose run has the full width (a defect on the
    teeth splits or shortens a strip's run); strips off the fit by > 15 % of the width are dropped."""
    width = float(np.percentile(widths, 75))  # defects only ever shorten a strip's run
    keep = np.abs(widths - width) <= 0.25 * width
    if keep.sum() < 3:
        keep = np.ones_like(keep)
    coef = np.array([np.median(centres[keep])])
    for _ in range(3):
        deg = min(2, int(keep.sum()) - 1)
        if deg > 0:
            coef = np.polyfit(ys[keep], centres[keep], deg, w=np.sqrt(height[keep] + 1e-9))
        resid = np.abs(np.polyval(coef, ys) - centres)
        new = keep & (resid <= max(0.15 * width, 1.0))
        if new.sum() < 3 or (new == keep).all():
            break
        keep = new
    return coef, float(np.median(widths[keep])), keep


def estimate_zipper_aoi(image: torch.Tensor | np.ndarray, margin: float = MARGIN, strips: int = STRIPS) -> ZipperAOI:
    """The zipper band of a C×H×W (or H×W) image in [0, 1]; see the module docstring."""
    full_h, full_w = np.asarray(image.shape[-2:]) if np.ndim(image) == 3 else np.asarray(image.shape)
    g = work_gray(image)
    h, w = g.shape
    bg = background(g)
    guard = max(1, int(round(EDGE_GUARD * w)))
    allowed = ~ndimage.binary_dilation(bg, iterations=guard) if bg.any() else np.ones_like(bg)
    allowed[:, :guard] = allowed[:, w - guard:] = False
    score = teeth_score(g)
    runs = _strip_runs(score, allowed, strips)
    if not runs:  # nothing zipper-like: a centred band, reported with confidence 0
        runs = [(h / 2, w * 0.4, w * 0.6, 0.0)]
    ys, a, b, height = (np.array(v, np.float64) for v in zip(*runs))
    coef, width, keep = _fit_centre_line(ys, (a + b) / 2, b - a, height)
    sx, sy = full_w / w, full_h / h
    centre = np.polyval(coef, (np.arange(full_h) + 0.5) / sy) * sx  # edge coordinates, full resolution
    half = (width / 2) * sx + margin * full_w
    mask = np.abs(np.arange(full_w)[None, :] + 0.5 - centre[:, None]) <= half
    work_mask = np.abs(np.arange(w)[None, :] + 0.5 - np.polyval(coef, np.arange(h) + 0.5)[:, None]) <= half / sx
    saturated = float(bg[work_mask].mean()) if work_mask.any() else 1.0
    fabric = allowed & ~work_mask
    level = float(np.abs(score[fabric]).mean()) if fabric.any() else 0.0
    confidence = float(np.median(height[keep]) / (level + 1e-6))
    return ZipperAOI(mask, centre, half, saturated, confidence)
