"""The decoy zoo: train-only shortcuts outside the AOI, drawn the same way on every generated benchmark.

A decoy carries a binary ``code`` (+1 / −1). In train/val the code agrees with the label (+1 ⇔ defective)
with probability ``decoy_p`` (1.0: a perfect shortcut; 0.5: the control, independent of the label); in the
test split it is random, so a model that reads the decoy loses its test AUROC. Each kind encodes the code
differently — by brightness, by texture, by position, or by a shift of the whole background — so that a
defence tuned to one appearance is found out on the others:

========  ==========================================================================================
kind      +1 / −1
========  ==========================================================================================
ring      a hollow ring in a random free corner, bright / dark
bar       a thin bar along a random image border, bright / dark
stripes   a square patch of stripes in a random free corner, horizontal / vertical (same mean grey)
beside    a small square just outside the AOI (a few px from its edge), bright / dark
position  a bright square in a top / bottom corner
shade     the whole background outside the AOI a little brighter / darker (fixture lighting; no edge)
========  ==========================================================================================

Pure numpy. ``draw(img, aoi, kind, code, rng, scale, contrast)`` changes ``img`` (H×W float) in place and
returns the decoy's geometry record; ``scale`` is the image size over 64 px.
"""

from __future__ import annotations

import numpy as np

KINDS = ("ring", "bar", "stripes", "beside", "position", "shade")


def decoy_code(rng: np.random.Generator, label: int, split: str, decoy_p: float) -> int:
    """+1 or −1: agrees with the label (+1 ⇔ label 1) with probability ``decoy_p`` in train/val, random in test."""
    p_plus = 0.5 if split == "test" else (decoy_p if label == 1 else 1.0 - decoy_p)
    return 1 if rng.uniform() < p_plus else -1


def _free(aoi: np.ndarray, y: int, x: int, h: int, w: int, gap: int) -> bool:
    """True when the h×w box at (y, x), widened by ``gap`` px, lies in the image and off the AOI."""
    size_y, size_x = aoi.shape
    y0, x0, y1, x1 = y - gap, x - gap, y + h + gap, x + w + gap
    if y < 0 or x < 0 or y + h > size_y or x + w > size_x:
        return False
    return not aoi[max(y0, 0):y1, max(x0, 0):x1].any()


def _corner(rng, aoi: np.ndarray, side: int, pad: int, gap: int, rows: tuple[str, ...] = ("top", "bottom")):
    """(y, x) of a side×side box in a random corner (of the given rows) that keeps ``gap`` px from the AOI."""
    n = aoi.shape[0]
    ys = {"top": pad, "bottom": n - pad - side}
    options = [(ys[r], x) for r in rows for x in (pad, n - pad - side)]
    free = [c for c in options if _free(aoi, *c, side, side, gap)]
    pool = free or options
    return pool[int(rng.integers(len(pool)))]


def _ring(img, aoi, code, rng, scale, contrast) -> dict:
    r = 3.0 * scale
    side = int(np.ceil(2 * r + 3))
    y, x = _corner(rng, aoi, side, int(2 * scale), int(2 * scale))
    yy, xx = np.mgrid[0:side, 0:side] + 0.5
    prof = np.clip(1.2 - np.abs(np.hypot(yy - side / 2, xx - side / 2) - r), 0, 1)
    img[y:y + side, x:x + side] += code * contrast * prof
    return {"y": int(y), "x": int(x), "r": float(r)}


def _bar(img, aoi, code, rng, scale, contrast) -> dict:
    n, t = img.shape[0], max(1, int(round(1.5 * scale)))
    length = int(0.6 * n)
    start = int(rng.integers(0, n - length + 1))
    border = ("top", "bottom", "left", "right")[int(rng.integers(4))]
    edge = 1 if border in ("top", "left") else n - 1 - t
    sl = (slice(edge, edge + t), slice(start, start + length)) if border in ("top", "bottom") else \
        (slice(start, start + length), slice(edge, edge + t))
    keep = ~aoi[sl]  # never over the AOI
    img[sl] += code * contrast * keep
    return {"border": border, "start": start, "length": length, "thickness": t}


def _stripes(img, aoi, code, rng, scale, contrast) -> dict:
    side, period = int(round(8 * scale)), max(2, int(round(2 * scale)))
    y, x = _corner(rng, aoi, side, int(2 * scale), int(2 * scale))
    yy, xx = np.mgrid[0:side, 0:side]
    phase = yy if code > 0 else xx
    img[y:y + side, x:x + side] += contrast * np.where((phase // (period // 2 or 1)) % 2 == 0, 1.0, -1.0)
    return {"y": int(y), "x": int(x), "side": side, "horizontal": code > 0}


def _beside(img, aoi, code, rng, scale, contrast) -> dict:
    n, side, gap = img.shape[0], max(2, int(round(3 * scale))), max(2, int(round(2 * scale)))
    rows = np.flatnonzero(aoi.any(axis=1))
    for _ in range(50):
        y = int(rng.integers(max(rows.min(), 0), max(rows.max() - side, rows.min()) + 1))
        cols = np.flatnonzero(aoi[y:y + side].any(axis=0))
        left = bool(rng.integers(2))
        x = int(cols.min()) - gap - side if left else int(cols.max()) + 1 + gap
        if _free(aoi, y, x, side, side, gap - 1):
            img[y:y + side, x:x + side] += code * contrast
            return {"y": y, "x": x, "side": side, "gap": gap}
    return {"y": None}  # pragma: no cover  (no room beside this AOI: the image carries no decoy)


def _position(img, aoi, code, rng, scale, contrast) -> dict:
    side = max(2, int(round(4 * scale)))
    y, x = _corner(rng, aoi, side, int(2 * scale), int(2 * scale), ("top",) if code > 0 else ("bottom",))
    img[y:y + side, x:x + side] += contrast
    return {"y": int(y), "x": int(x), "side": side}


def _shade(img, aoi, code, rng, scale, contrast) -> dict:
    from scipy.ndimage import distance_transform_edt

    ramp = np.clip(distance_transform_edt(~aoi) / (4 * scale), 0, 1)  # 0 at the AOI, full 4·scale px away: no edge
    img += code * contrast * ramp
    return {}


# a kind's strength relative to the benchmark's decoy contrast (a background shift is seen over thousands of
# pixels, a thin bar over a few dozen)
STRENGTH = {"ring": 1.0, "bar": 1.0, "stripes": 0.6, "beside": 1.0, "position": 1.0, "shade": 0.2}
_DRAW = {"ring": _ring, "bar": _bar, "stripes": _stripes, "beside": _beside, "position": _position, "shade": _shade}


def draw(img: np.ndarray, aoi: np.ndarray, kind: str, code: int, rng: np.random.Generator, scale: float,
         contrast: float) -> dict:
    """Draw decoy ``kind`` with ``code`` (±1) onto ``img`` (H×W float, changed in place) off ``aoi`` (H×W bool);
    returns its geometry record (``kind``, ``code`` and where it is)."""
    if kind not in _DRAW:
        raise ValueError(f"unknown decoy kind {kind!r}; choose one of {KINDS}")
    return {"kind": kind, "code": int(code), **_DRAW[kind](img, aoi, code, rng, scale, contrast * STRENGTH[kind])}
