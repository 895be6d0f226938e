"""Zipper photographs like MVTec AD's, generated with their truth: for testing AOI estimates honestly.

Each image (S×S, greyscale or RGB, values in [0, 1]) shows what real MVTec AD zipper photos show:
a vertical zipper — an interlocking chain of teeth, periodic along y, bordered by a stitched seam —
crossing woven fabric (a fine plain weave or, in 30 % of images, horizontal ribs — texture along y
off the zipper too — with shading), and white, partly saturated background
beyond a wavy fabric edge on one side, both sides or neither. The zipper is off-centre, slanted and
smoothly bent (its centre line ``cx(y)`` is a line plus a half-sine). Defects are ellipses on the
teeth (they may spill onto the seam, never further), on the fabric (interior or across the fabric
edge), or both (MVTec's ``combined``: teeth, fabric or both).

The truth returned per image: ``aoi`` — the zipper band, the chain widened by the seam
(``SEAM`` × S on each side; the AOI a correct estimate must find), ``teeth`` / ``fabric`` — the
defect pixels of each kind. :func:`build_mvtec_tree` writes them in MVTec AD's layout plus
``aoi/`` (mirroring ``zipper/``, usable as ``data.aoi_dir``) and ``truth/{teeth,fabric}/``.
"""

from __future__ import annotations

from pathlib import Path

import numpy as np
from PIL import Image

from ceod.console import progress_bar

SEAM = 0.03  # seam width beside the chain, fraction of S (part of the AOI)
TEETH_TYPES = ("broken_teeth", "rough", "split_teeth", "squeezed_teeth")
FABRIC_TYPES = ("fabric_border", "fabric_interior")
# the layout of the test fixture: (MVTec folder, count)
LAYOUT = (("train/good", 6), ("test/good", 3), ("test/broken_teeth", 3), ("test/combined", 4),
          ("test/fabric_border", 3), ("test/fabric_interior", 3), ("test/rough", 2), ("test/split_teeth", 2),
          ("test/squeezed_teeth", 2))


def _geometry(rng: np.random.Generator, s: int) -> dict:
    """Background margins, fabric-edge waviness and the zipper's centre line (pixels)."""
    sides = rng.choice(["left", "right", "both", "none"], p=[0.3, 0.3, 0.3, 0.1])
    left = rng.uniform(0.04, 0.16) * s if sides in ("left", "both") else -0.05 * s
    right = rng.uniform(0.04, 0.16) * s if sides in ("right", "both") else -0.05 * s
    half = rng.uniform(0.055, 0.085) * s  # half the chain width
    room = (left + half + 0.12 * s, s - right - half - 0.12 * s)
    return {"left": left, "right": right, "half": half,
            "wave_amp": rng.uniform(0.005, 0.02) * s, "wave_len": rng.uniform(0.25, 0.6) * s,
            "wave_phase": rng.uniform(0, 2 * np.pi, 2),
            "cx": rng.uniform(max(room[0], 0.3 * s), min(room[1], 0.7 * s)),
            "slope": np.tan(np.radians(rng.uniform(-5, 5))), "bend": rng.uniform(-0.05, 0.05) * s,
            "pitch": rng.uniform(0.022, 0.035) * s, "weave": rng.uniform(0.008, 0.014) * s,
            "ribbed": bool(rng.uniform() < 0.3)}


def centre_line(g: dict, y: np.ndarray, s: int) -> np.ndarray:
    """x of the zipper's centre at rows ``y`` (a slanted line plus a smooth bend)."""
    return g["cx"] + g["slope"] * (y - s / 2) + g["bend"] * np.sin(np.pi * y / s)


def _ellipse(xx, yy, cx, cy, rx, ry, angle=0.0) -> np.ndarray:
    c, s_ = np.cos(angle), np.sin(angle)
    u, v = (xx - cx) * c + (yy - cy) * s_, -(xx - cx) * s_ + (yy - cy) * c
    return (u / rx) ** 2 + (v / ry) ** 2 <= 1


def _teeth_defect(rng, g, xx, yy, s) -> np.ndarray:
    cy = rng.uniform(0.1, 0.9) * s
    c = float(centre_line(g, np.array(cy), s))
    reach = g["half"] + 0.6 * SEAM * s  # may spill onto the seam, never past it
    rx = rng.uniform(0.25, 0.7) * g["half"]
    off = rng.uniform(-1, 1) * max(0.0, reach - rx)
    return _ellipse(xx, yy, c + off, cy, rx, rng.uniform(0.02, 0.06) * s, rng.uniform(-0.3, 0.3))


def _fabric_defect(rng, g, xx, yy, s, border: bool) -> np.ndarray:
    cy = rng.uniform(0.1, 0.9) * s
    c = float(centre_line(g, np.array(cy), s))
    r = rng.uniform(0.015, 0.035) * s
    keep = g["half"] + SEAM * s + 0.04 * s + 1.6 * r  # clear of the zipper band
    spans = {"left": (max(g["left"], 0.0), c - keep), "right": (c + keep, s - max(g["right"], 0.0))}
    sides = [k for k, (lo, hi) in spans.items() if hi - lo > 2 * r]
    lo, hi = spans[sides[int(rng.integers(len(sides)))]]
    if border:  # across the fabric edge (or at the image edge without background)
        u = rng.uniform(-0.3, 0.5) * r
        x = lo + u if lo < c else hi - u
    else:
        x = rng.uniform(lo + r, max(lo + r, hi - 1.6 * r))
    return _ellipse(xx, yy, x, cy, r * rng.uniform(0.8, 1.6), r, rng.uniform(0, np.pi))


def make_photo(seed: int, size: int = 256, kind: str = "good", rgb: bool = False) -> dict:
    """One zipper photo: {"image": S×S or S×S×3 float, "aoi", "teeth", "fabric": S×S bool, "geometry"}."""
    rng = np.random.default_rng([seed, 17])
    s = size
    g = _geometry(rng, s)
    yy, xx = np.mgrid[0:s, 0:s].astype(np.float32)
    cx = centre_line(g, yy[:, :1], s)
    d = xx - cx  # signed distance (in x) to the centre line
    ph = g["wave_phase"]
    wave = g["wave_amp"] * np.sin(2 * np.pi * yy[:, :1] / g["wave_len"] + ph[0])
    fabric_on = (xx >= g["left"] + wave) & (xx < s - g["right"] + g["wave_amp"] * np.sin(
        2 * np.pi * yy[:, :1] / g["wave_len"] + ph[1]))
    q = g["weave"]
    if g["ribbed"]:  # a tape woven in horizontal ribs: texture along y off the zipper too
        weave = 0.05 * np.sin(2 * np.pi * yy / (1.5 * q)) + 0.02 * np.sin(2 * np.pi * xx / q)
    else:  # a plain weave: isotropic
        weave = 0.06 * np.sin(2 * np.pi * xx / q) * np.sin(2 * np.pi * yy / q)
    img = 0.30 + weave + 0.04 * np.sin(xx / s * 5 + yy / s * 3)
    chain = np.abs(d) <= g["half"]
    seam = ~chain & (np.abs(d) <= g["half"] + SEAM * s)
    img[seam] = (0.24 + 0.05 * np.sin(2 * np.pi * d / (0.007 * s)))[seam]
    t = d / g["half"]
    phase = (yy / g["pitch"] + np.where(t > 0, 0.5, 0.0)) % 1.0
    tooth = np.where(phase < 0.55, 0.72 + 0.18 * np.cos(np.pi * t / 2), 0.16)
    img[chain] = tooth[chain]
    teeth = np.zeros((s, s), bool)
    fabric = np.zeros((s, s), bool)
    n_teeth = int(kind in TEETH_TYPES) * int(rng.integers(1, 3))
    n_fabric = int(kind in FABRIC_TYPES) * int(rng.integers(1, 3))
    if kind == "combined":
        n_teeth, n_fabric = [(1, 1), (1, 0), (0, 1), (2, 1)][seed % 4]  # consecutive seeds: every mix
    for _ in range(n_teeth):
        teeth |= _teeth_defect(rng, g, xx, yy, s)
    for _ in range(n_fabric):
        fabric |= _fabric_defect(rng, g, xx, yy, s, border=kind == "fabric_border" or rng.uniform() < 0.3)
    img[teeth] = rng.choice([0.08, 0.95]) + 0.05 * np.sin(yy[teeth] / 3)
    img[fabric & fabric_on] = rng.choice([0.08, 0.6])
    img = img + rng.normal(0, 0.02, (s, s))
    background = rng.uniform(0.93, 1.02) + rng.normal(0, 0.01, (s, s)) + 0.02 * (yy / s)
    img = np.clip(np.where(fabric_on, img, background), 0, 1).astype(np.float32)
    aoi = np.abs(d) <= g["half"] + SEAM * s
    if rgb:
        img = np.clip(img[..., None] * np.array([1.0, 0.97, 0.92], np.float32), 0, 1)
    return {"image": img, "aoi": aoi, "teeth": teeth, "fabric": fabric, "geometry": g}


def _save(arr: np.ndarray, path: Path) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    Image.fromarray((arr * 255 + 0.5).astype(np.uint8) if arr.dtype != bool else arr.astype(np.uint8) * 255).save(path)


def build_mvtec_tree(root: str | Path, layout=LAYOUT, size: int = 256, large: int = 2, large_size: int = 1024,
                     rgb_every: int = 0, seed: int = 0) -> Path:
    """Write root/zipper/{train,test,ground_truth}/…, root/aoi/… and root/truth/{teeth,fabric}/…

    The first ``large`` images are ``large_size`` px (like MVTec's 1024 px originals), the rest
    ``size``; every ``rgb_every``-th image is RGB (0: all greyscale). Returns ``root``.
    """
    root = Path(root)
    n = 0
    bar = progress_bar(desc="generate", total=sum(count for _, count in layout), unit="image")
    for folder, count in layout:
        kind = folder.split("/")[1]
        for i in range(count):
            p = make_photo(seed * 100_000 + n, large_size if n < large else size, kind,
                           rgb=bool(rgb_every) and n % rgb_every == rgb_every - 1)
            n += 1
            _save(p["image"], root / "zipper" / folder / f"{i:03d}.png")
            _save(p["aoi"], root / "aoi" / folder / f"{i:03d}.png")
            if kind != "good":
                _save(p["teeth"] | p["fabric"], root / "zipper" / "ground_truth" / kind / f"{i:03d}_mask.png")
                _save(p["teeth"], root / "truth" / "teeth" / folder / f"{i:03d}.png")
                _save(p["fabric"], root / "truth" / "fabric" / folder / f"{i:03d}.png")
            bar.update()
    bar.close()
    return root
