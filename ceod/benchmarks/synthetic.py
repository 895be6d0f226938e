"""Synthetic "zipper" distractor dataset — the embedded default and the shippable benchmark.

Each greyscale image shows a fabric-like texture crossed by a zipper-like band (the AOI) whose
width, horizontal position and tilt vary per image. Defect-looking marks (dark blobs, scratches,
flat "missing teeth" patches) are drawn with the same appearance inside and outside the band.
Label 1 ⇔ at least one mark overlaps the AOI; marks outside keep a margin from it, so the label is
unambiguous. Knobs:

* ``contrast`` — mark contrast against the surface (lower = subtler defects);
* ``p_fabric_good`` / ``p_fabric_defect`` — chance of fabric-only marks, so "a mark somewhere"
  does not predict the label;
* ``decoy_p`` — a bright fixture mark outside the AOI present in a fraction P of defective and
  1 − P of good train/val images, and with chance 0.5 regardless of the label in the test split:
  a shortcut only the training data offers (the DecoyMNIST protocol). ``None``: no decoy.

Layout written: the folder+mask layout of :mod:`ceod.benchmarks.generated` (images/, masks/ 0/255, manifest.csv,
geometry.jsonl — per image: band, marks with type and geometry, decoy — and meta.json).

CLI: ``python -m ceod.cli.synthetic --out DIR --seed S [--variant V] [--n-good --n-defect --size]``.
"""

from __future__ import annotations

import math
from dataclasses import dataclass, replace
from pathlib import Path

import numpy as np

from ceod.benchmarks import decoys
from ceod.benchmarks.generated import check_split_and_decoy, preset, seeded_split, write_generated
from ceod.errors import CeodError

GENERATOR_VERSION = 1
GENERATOR_ID = "ceod.data.synthetic"  # the name meta.json records (the module's path when caches were first written): caches stay valid
MARK_TYPES = ("blob", "scratch", "patch")


@dataclass(frozen=True)
class SyntheticConfig:
    """Parameters of one synthetic dataset; two equal configs give byte-identical datasets."""

    seed: int = 0
    n_good: int = 216
    n_defect: int = 184
    size: int = 128
    split: tuple[float, float, float] = (0.7, 0.2, 0.1)
    contrast: float = 0.14
    contrast_jitter: float = 0.3
    p_fabric_good: float = 0.85
    p_fabric_defect: float = 0.5
    decoy_p: float | None = None
    decoy_contrast: float = 0.35
    decoy_kind: str = "fixture"  # the shipped fixture ring (present ⇔ code +1), or a kind of ceod.benchmarks.decoys
    noise: float = 0.04
    band_width: tuple[float, float] = (0.14, 0.24)  # fraction of the image width
    band_tilt_deg: float = 15.0
    margin: int = 3  # px between an outside mark and the AOI

    def __post_init__(self) -> None:
        if self.n_good < 1 or self.n_defect < 1:
            raise CeodError(f"synthetic data needs n_good ≥ 1 and n_defect ≥ 1, got {self.n_good}, {self.n_defect}")
        if self.size < 32:
            raise CeodError(f"synthetic image size must be ≥ 32 px, got {self.size}")
        if not 0.0 < self.contrast <= 1.0:
            raise CeodError(f"contrast must lie in (0, 1], got {self.contrast}")
        check_split_and_decoy(self.split, self.decoy_p, self.decoy_kind, "fixture")


VARIANTS: dict[str, SyntheticConfig] = {
    # distractors: marks on the fabric that must not count
    "synthetic_zipper": SyntheticConfig(),
    # distractors + subtle defects + a train-only shortcut (decoy ⇔ defective in train/val)
    "synthetic_zipper_decoy": SyntheticConfig(contrast=0.13, decoy_p=1.0),
    # control for the above: same data, decoy independent of the label everywhere
    "synthetic_zipper_decoy_control": SyntheticConfig(contrast=0.13, decoy_p=0.5),
    # the zoo: synthetic_zipper_decoy_<kind> (+ _control) for each kind of ceod.benchmarks.decoys
    **{f"synthetic_zipper_decoy_{k}{c}": SyntheticConfig(contrast=0.13, decoy_p=p, decoy_kind=k)
       for k in decoys.KINDS for c, p in (("", 1.0), ("_control", 0.5))},
}


# ----------------------------------------------------------------------------- geometry
def band_mask(band: dict, size: int) -> np.ndarray:
    """Boolean AOI (size×size) of a band {x0, tilt_deg, width}: |perpendicular distance| ≤ width/2."""
    yy, xx = np.mgrid[0:size, 0:size].astype(np.float64) + 0.5
    t = math.radians(band["tilt_deg"])
    d = (xx - band["x0"]) * math.cos(t) - (yy - size / 2) * math.sin(t)
    return np.abs(d) <= band["width"] / 2


def mark_footprint(mark: dict, size: int) -> np.ndarray:
    """Boolean footprint (size×size) of a recorded mark: the pixels its rendering changes."""
    return _mark_profile(mark, size) > 0


def _mark_profile(mark: dict, size: int) -> np.ndarray:
    """Strength in [0, 1] of a mark at each pixel; exactly 0 outside its footprint."""
    yy, xx = np.mgrid[0:size, 0:size].astype(np.float64) + 0.5
    kind = mark["type"]
    if kind == "blob":
        a = math.radians(mark["angle_deg"])
        u = (xx - mark["cx"]) * math.cos(a) + (yy - mark["cy"]) * math.sin(a)
        v = -(xx - mark["cx"]) * math.sin(a) + (yy - mark["cy"]) * math.cos(a)
        r2 = (u / mark["rx"]) ** 2 + (v / mark["ry"]) ** 2
        return np.clip(1.6 * (1.0 - r2), 0.0, 1.0)
    if kind == "scratch":
        p0 = np.array([mark["x0"], mark["y0"]])
        p1 = np.array([mark["x1"], mark["y1"]])
        seg = p1 - p0
        t = ((xx - p0[0]) * seg[0] + (yy - p0[1]) * seg[1]) / max(float(seg @ seg), 1e-9)
        t = np.clip(t, 0.0, 1.0)
        dist = np.hypot(xx - (p0[0] + t * seg[0]), yy - (p0[1] + t * seg[1]))
        return np.clip(2.0 * (1.0 - dist / mark["half_width"]), 0.0, 1.0)
    if kind == "patch":
        a = math.radians(mark["angle_deg"])
        u = (xx - mark["cx"]) * math.cos(a) + (yy - mark["cy"]) * math.sin(a)
        v = -(xx - mark["cx"]) * math.sin(a) + (yy - mark["cy"]) * math.cos(a)
        inside = np.minimum(mark["length"] / 2 - np.abs(u), mark["breadth"] / 2 - np.abs(v))
        return np.clip(inside, 0.0, 1.0)
    raise ValueError(f"unknown mark type {kind!r}")


def _sample_mark(rng: np.random.Generator, size: int, contrast: float) -> dict:
    kind = MARK_TYPES[rng.integers(len(MARK_TYPES))]
    s = size / 128.0
    cx, cy = rng.uniform(4 * s, size - 4 * s, 2)
    mark: dict = {"type": kind, "contrast": float(contrast)}
    if kind == "blob":
        mark.update(cx=cx, cy=cy, rx=rng.uniform(2.5, 6) * s, ry=rng.uniform(2, 4.5) * s, angle_deg=rng.uniform(0, 180))
    elif kind == "scratch":
        length, ang = rng.uniform(10, 26) * s, rng.uniform(0, math.pi)
        dx, dy = math.cos(ang) * length / 2, math.sin(ang) * length / 2
        mark.update(x0=cx - dx, y0=cy - dy, x1=cx + dx, y1=cy + dy, half_width=rng.uniform(1.2, 2.0) * s, cx=cx, cy=cy)
    else:
        mark.update(cx=cx, cy=cy, length=rng.uniform(6, 12) * s, breadth=rng.uniform(4, 7) * s, angle_deg=rng.uniform(0, 180))
    return {k: (round(float(v), 4) if isinstance(v, (float, np.floating)) else v) for k, v in mark.items()}


def _dilate(mask: np.ndarray, r: int) -> np.ndarray:
    out = mask.copy()
    for dy in range(-r, r + 1):
        for dx in range(-r, r + 1):
            if dx * dx + dy * dy <= r * r:
                out |= np.roll(np.roll(mask, dy, 0), dx, 1)
    return out


def _place_marks(rng, n: int, aoi: np.ndarray, inside: bool, cfg: SyntheticConfig, taken: np.ndarray) -> list[dict]:
    """Rejection-sample ``n`` marks that either overlap the AOI (centre inside) or keep a margin from it."""
    size = cfg.size
    forbidden = _dilate(aoi, cfg.margin) if not inside else None
    marks: list[dict] = []
    for _ in range(400):
        if len(marks) == n:
            break
        c = cfg.contrast * (1 + cfg.contrast_jitter * rng.uniform(-1, 1))
        m = _sample_mark(rng, size, c)
        fp = mark_footprint(m, size)
        if not fp.any() or (fp & taken).any():
            continue
        if inside:
            ci, cj = int(m["cy"]), int(m["cx"])
            if not aoi[min(ci, size - 1), min(cj, size - 1)]:
                continue
        elif (fp & forbidden).any():
            continue
        marks.append(m)
        taken |= _dilate(fp, 2)
    return marks


# ----------------------------------------------------------------------------- rendering
def _render(rng, cfg: SyntheticConfig, band: dict, marks: list[dict], decoy: dict | None) -> np.ndarray:
    size = cfg.size
    yy, xx = np.mgrid[0:size, 0:size].astype(np.float64) + 0.5
    # fabric: a woven cross pattern at a random orientation and pitch, uneven lighting, noise
    phi = rng.uniform(0, math.pi)
    p1, p2 = rng.uniform(3.0, 6.0, 2) * size / 128
    u = xx * math.cos(phi) + yy * math.sin(phi)
    v = -xx * math.sin(phi) + yy * math.cos(phi)
    img = 0.42 + rng.uniform(-0.05, 0.05) + 0.06 * np.sin(2 * math.pi * u / p1) * np.sin(2 * math.pi * v / p2)
    g = rng.uniform(-1, 1, 2)
    img += 0.05 * (g[0] * (xx / size - 0.5) + g[1] * (yy / size - 0.5))
    # zipper: tape edges and interlocking teeth along the band
    t = math.radians(band["tilt_deg"])
    d = (xx - band["x0"]) * math.cos(t) - (yy - size / 2) * math.sin(t)
    along = (xx - band["x0"]) * math.sin(t) + (yy - size / 2) * math.cos(t)
    half = band["width"] / 2
    pitch = band["pitch"]
    phase = np.mod(along / pitch, 1.0)
    teeth = np.where(d < 0, phase < 0.5, phase >= 0.5) & (np.abs(d) < 0.7 * half)
    tape = np.abs(d) <= half
    img = np.where(tape, 0.30 + 0.02 * np.sin(2 * math.pi * along / 2.0), img)
    img = np.where(teeth, 0.62 + 0.08 * np.cos(math.pi * d / (0.7 * half)), img)
    # marks: dark blobs and scratches, flat patches ("missing teeth" on the band)
    for m in marks:
        prof = _mark_profile(m, size)
        if m["type"] == "patch":
            img = img * (1 - prof) + prof * (0.40 - m["contrast"])
        else:
            img = img - m["contrast"] * prof
    if decoy is not None:  # a bright fixture ring with a dark centre, outside the AOI
        r = np.hypot(xx - decoy["cx"], yy - decoy["cy"])
        ring = np.clip(1.5 - np.abs(r - decoy["r"]) , 0, 1)
        img = img + decoy["contrast"] * ring
    return img


def _place_decoy(rng, aoi: np.ndarray, cfg: SyntheticConfig) -> dict:
    size = cfg.size
    r = 5.0 * size / 128
    far = ~_dilate(aoi, int(r + 3 + cfg.margin))
    corners = [(r + 4, r + 4), (size - r - 4, r + 4), (r + 4, size - r - 4), (size - r - 4, size - r - 4)]
    free = [c for c in corners if far[int(c[1]), int(c[0])]]
    cx, cy = free[rng.integers(len(free))] if free else corners[0]
    cx, cy = cx + rng.uniform(-2, 2), cy + rng.uniform(-2, 2)
    return {"type": "decoy", "cx": round(float(cx), 4), "cy": round(float(cy), 4), "r": r, "contrast": cfg.decoy_contrast}


def make_sample(cfg: SyntheticConfig, index: int, label: int, split: str) -> tuple[np.ndarray, np.ndarray, dict]:
    """One image (size×size float in [0,1]), its AOI (bool) and its geometry record."""
    rng = np.random.default_rng([cfg.seed, index, 1])
    size = cfg.size
    band = {
        "x0": round(float(rng.uniform(0.3, 0.7) * size), 4),
        "tilt_deg": round(float(rng.uniform(-cfg.band_tilt_deg, cfg.band_tilt_deg)), 4),
        "width": round(float(rng.uniform(*cfg.band_width) * size), 4),
        "pitch": round(float(rng.uniform(4.0, 6.0) * size / 128), 4),
    }
    aoi = band_mask(band, size)
    taken = np.zeros_like(aoi)
    marks: list[dict] = []
    if label == 1:
        marks += _place_marks(rng, int(rng.integers(1, 3)), aoi, True, cfg, taken)
        if rng.uniform() < cfg.p_fabric_defect:
            marks += _place_marks(rng, int(rng.integers(1, 3)), aoi, False, cfg, taken)
    elif rng.uniform() < cfg.p_fabric_good:
        marks += _place_marks(rng, int(rng.integers(1, 4)), aoi, False, cfg, taken)
    if label == 1 and not any(mark_footprint(m, size)[aoi].any() for m in marks):
        raise RuntimeError(f"could not place a defect inside the AOI of image {index}")  # pragma: no cover
    decoy, zoo = None, cfg.decoy_p is not None and cfg.decoy_kind != "fixture"
    if zoo:
        code = decoys.decoy_code(rng, label, split, cfg.decoy_p)
    elif cfg.decoy_p is not None:
        p = 0.5 if split == "test" else (cfg.decoy_p if label == 1 else 1.0 - cfg.decoy_p)
        if rng.uniform() < p:
            decoy = _place_decoy(rng, aoi, cfg)
    img = _render(rng, cfg, band, marks, decoy)
    if zoo:
        decoy = decoys.draw(img, aoi, cfg.decoy_kind, code, rng, size / 64, cfg.decoy_contrast)
    img += rng.normal(0.0, cfg.noise, img.shape)
    return np.clip(img, 0.0, 1.0), aoi, {"band": band, "marks": marks, "decoy": decoy}


def generate(out: str | Path, cfg: SyntheticConfig | None = None, overwrite: bool = False, **overrides) -> Path:
    """Write a dataset to ``out`` (see the module docstring); atomic: nothing half-written is left.

    ``overrides`` replace fields of ``cfg`` (default: the ``synthetic_zipper`` variant).
    """
    cfg = replace(cfg or SyntheticConfig(), **overrides)
    labels = np.array([0] * cfg.n_good + [1] * cfg.n_defect)
    labels = labels[np.random.default_rng([cfg.seed, 3]).permutation(len(labels))]
    splits = seeded_split(cfg.seed, labels, cfg.split)

    def samples():
        for i, (label, split) in enumerate(zip(labels.tolist(), splits)):
            img, aoi, geom = make_sample(cfg, i, label, split)
            yield img, aoi, label, split, geom

    return write_generated(Path(out), samples(), GENERATOR_ID, GENERATOR_VERSION, cfg, overwrite, len(labels))


def config_for(variant: str = "synthetic_zipper", **overrides) -> SyntheticConfig:
    """The named variant's config with ``overrides`` applied (None values are ignored)."""
    return preset(VARIANTS, variant, "synthetic", **overrides)
