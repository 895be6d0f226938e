"""Decoy digits — the DecoyMNIST protocol (Ross et al. 2017) on real handwritten scans, offline.

The 1,797 handwritten digits (8×8 scans, 17 grey levels) that scikit-learn ships inside its wheel
(``sklearn.datasets.load_digits``; no download) are printed as dark ink on a textured metal plate.
Binary task: "defect" ⇔ the digit is one of ``defect_digits`` (default 3, 5, 8), "good" ⇔ one of
``good_digits`` (0, 6, 9) — curved strokes that differ in detail, so the task is learnable but not
trivial. AOI = the digit's box. A decoy — a small square in a random image corner, outside the AOI —
is bright on defective and dark on good images with probability ``decoy_p`` in train/val (1.0: a
perfect shortcut), and bright or dark at random in the test split: a model that reads the decoy
instead of the digit loses its test AUROC. ``decoy_p = 0.5`` is the control (decoy independent of
the label everywhere).

Layout written: the same folder+mask layout as :mod:`ceod.benchmarks.synthetic` (images/, masks/,
manifest.csv, geometry.jsonl, meta.json), so ``data=decoy_digits`` reads it like any folder set.
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from pathlib import Path

import numpy as np
from PIL import Image

from ceod.benchmarks import decoys
from ceod.benchmarks.generated import check_split_and_decoy, preset, seeded_split, write_generated
from ceod.errors import CeodError

GENERATOR_VERSION = 1
GENERATOR_ID = "ceod.data.digits"  # the name meta.json records (the module's path when caches were first written): caches stay valid


@dataclass(frozen=True)
class DigitsConfig:
    """Parameters of one decoy-digits dataset; two equal configs give byte-identical datasets."""

    seed: int = 0
    size: int = 64
    digit_scale: int = 3  # 8×8 scan → 24×24 px
    defect_digits: tuple[int, ...] = (3, 5, 8)
    good_digits: tuple[int, ...] = (0, 6, 9)
    split: tuple[float, float, float] = (0.4, 0.15, 0.45)  # test ≥ 400 images
    ink: float = 0.35  # ink darkness against the plate (± ink_jitter relative)
    ink_jitter: float = 0.3
    decoy_p: float | None = 1.0
    decoy_size: int = 6
    decoy_contrast: float = 0.3
    decoy_kind: str = "square"  # the shipped corner square, or a kind of ceod.benchmarks.decoys (the zoo)
    noise: float = 0.03

    def __post_init__(self) -> None:
        if set(self.defect_digits) & set(self.good_digits) or not self.defect_digits or not self.good_digits:
            raise CeodError(f"defect_digits {self.defect_digits} and good_digits {self.good_digits} must be "
                            "non-empty and disjoint")
        if not set(self.defect_digits) | set(self.good_digits) <= set(range(10)):
            raise CeodError("digits must lie in 0..9")
        if self.size < 8 * self.digit_scale + 2 * (self.decoy_size + 4):
            raise CeodError(f"size {self.size} too small for a {8 * self.digit_scale} px digit and corner decoys")
        check_split_and_decoy(self.split, self.decoy_p, self.decoy_kind, "square")


VARIANTS: dict[str, DigitsConfig] = {
    "decoy_digits": DigitsConfig(decoy_p=1.0),  # train-only shortcut
    "decoy_digits_control": DigitsConfig(decoy_p=0.5),  # same images, decoy independent of the label
    # the zoo: decoy_digits_<kind> and its control decoy_digits_<kind>_control for each kind of ceod.benchmarks.decoys
    **{f"decoy_digits_{k}{c}": DigitsConfig(decoy_p=p, decoy_kind=k) for k in decoys.KINDS
       for c, p in (("", 1.0), ("_control", 0.5))},
}


def _load_scans() -> tuple[np.ndarray, np.ndarray]:
    """(images N×8×8 in [0, 1], digits N) from scikit-learn's bundled copy."""
    from sklearn.datasets import load_digits

    d = load_digits()
    return d.images.astype(np.float64) / 16.0, d.target.astype(int)


def _plate(rng, size: int) -> np.ndarray:
    """Brushed-metal plate: streaks along a random direction, smooth lighting gradient, grain."""
    yy, xx = np.mgrid[0:size, 0:size].astype(np.float64) + 0.5
    phi = rng.uniform(-0.3, 0.3)
    u = -xx * math.sin(phi) + yy * math.cos(phi)
    streaks = sum(a * np.sin(2 * math.pi * u / p + rng.uniform(0, 2 * math.pi))
                  for a, p in zip(rng.uniform(0.01, 0.03, 4), rng.uniform(1.5, 7.0, 4)))
    g = rng.uniform(-1, 1, 2)
    light = 0.08 * (g[0] * (xx / size - 0.5) + g[1] * (yy / size - 0.5))
    return 0.55 + rng.uniform(-0.05, 0.05) + streaks + light


def _upscale(scan: np.ndarray, k: int) -> np.ndarray:
    img = Image.fromarray((scan * 255).astype(np.uint8), mode="L").resize((8 * k, 8 * k), Image.BILINEAR)
    return np.asarray(img, dtype=np.float64) / 255.0


def make_sample(cfg: DigitsConfig, scan: np.ndarray, index: int, label: int, split: str):
    """One image (size×size float in [0,1]), its AOI (bool) and its geometry record."""
    rng = np.random.default_rng([cfg.seed, index, 1])
    size, d = cfg.size, 8 * cfg.digit_scale
    lo = cfg.decoy_size + 4  # the digit box never reaches a corner square
    x0, y0 = (int(v) for v in rng.integers(lo, size - lo - d + 1, 2))
    img = _plate(rng, size)
    ink = cfg.ink * (1 + cfg.ink_jitter * rng.uniform(-1, 1))
    img[y0:y0 + d, x0:x0 + d] -= ink * _upscale(scan, cfg.digit_scale)
    aoi = np.zeros((size, size), dtype=bool)
    aoi[y0:y0 + d, x0:x0 + d] = True
    decoy = None
    if cfg.decoy_p is not None and cfg.decoy_kind != "square":
        code = decoys.decoy_code(rng, label, split, cfg.decoy_p)
        decoy = decoys.draw(img, aoi, cfg.decoy_kind, code, rng, size / 64, cfg.decoy_contrast)
    elif cfg.decoy_p is not None:
        p_bright = 0.5 if split == "test" else (cfg.decoy_p if label == 1 else 1.0 - cfg.decoy_p)
        bright = bool(rng.uniform() < p_bright)
        cx, cy = (2, size - 2 - cfg.decoy_size)[rng.integers(2)], (2, size - 2 - cfg.decoy_size)[rng.integers(2)]
        img[cy:cy + cfg.decoy_size, cx:cx + cfg.decoy_size] += cfg.decoy_contrast * (1 if bright else -1)
        decoy = {"x": int(cx), "y": int(cy), "size": cfg.decoy_size, "bright": bright}
    img += rng.normal(0.0, cfg.noise, img.shape)
    return np.clip(img, 0.0, 1.0), aoi, {"box": [x0, y0, d, d], "decoy": decoy}


def generate(out: str | Path, cfg: DigitsConfig | None = None, overwrite: bool = False) -> Path:
    """Write a dataset to ``out`` (layout in the module docstring); atomic: nothing half-written is left."""
    cfg = cfg or DigitsConfig()
    scans, digits = _load_scans()
    keep = np.flatnonzero(np.isin(digits, cfg.defect_digits + cfg.good_digits))
    labels = np.isin(digits[keep], cfg.defect_digits).astype(int)
    splits = seeded_split(cfg.seed, labels, cfg.split)

    def samples():
        for i, (src, label, split) in enumerate(zip(keep.tolist(), labels.tolist(), splits)):
            img, aoi, geom = make_sample(cfg, scans[src], i, label, split)
            yield img, aoi, label, split, {"digit": int(digits[src]), "scan": src, **geom}

    return write_generated(Path(out), samples(), GENERATOR_ID, GENERATOR_VERSION, cfg, overwrite, len(keep))


def config_for(variant: str = "decoy_digits", **overrides) -> DigitsConfig:
    """The named variant's config with ``overrides`` applied (None values are ignored)."""
    return preset(VARIANTS, variant, "digits", **overrides)
