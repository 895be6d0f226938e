"""Fewer and rougher AOI masks, for studies of how many masks a user must draw and how precisely.

* :func:`keep_fraction` — which training images keep their mask under ``data.mask_fraction=F``: per class,
  a seeded permutation of the images that have one; the first round(F·n_class) keep it. Nested: with the same
  seed a larger F keeps a superset, so the points of a budget study differ only in the added masks.
* :class:`MaskNoise` — ``data.mask_noise``: the ways hand-drawn AOIs are wrong, applied to training masks
  only (val/test keep the exact masks the metrics need), at the DataModule's resolution (``data.image_size``).
  One perturbation or several chained with ``+`` (applied left to right, e.g. ``box+dilate:2``):

  ``box``       each connected AOI component (8-connected) replaced by its bounding box
  ``dilate:K``  grown by K px (Euclidean distance ≤ K)
  ``erode:K``   shrunk by K px (pixels farther than K from the outside stay; the image border is not outside)
  ``shift:K``   moved K px in a seeded random direction per mask (zeros shifted in)
  ``drop:P``    a seeded share P of the masks lose one half of their bounding box (side drawn per mask)

  Every random choice is drawn once per run from ``(seed, position of the mask in the sorted training
  list)``: the same mask is perturbed the same way in every epoch, with or without the cache, on every rank.

An image without a mask trains with an all-zero mask: every loss reads that as "no mask term for this image".
"""

from __future__ import annotations

from dataclasses import dataclass, field, replace

import numpy as np
import torch
from torch import Tensor

from ceod.data.samples import Sample
from ceod.errors import ConfigError, DataError

NOISE_KINDS = ("box", "dilate", "erode", "shift", "drop")
NOISE_HELP = "box, dilate:K, erode:K, shift:K (K ≥ 1 px), drop:P (0 < P ≤ 1), chained with + (e.g. box+dilate:2)"


def check_fraction(fraction) -> float:
    """``data.mask_fraction`` as a float in [0, 1], else a ConfigError naming the key."""
    try:
        f = float(fraction)
    except (TypeError, ValueError):
        raise ConfigError(f"data.mask_fraction={fraction!r}: must be a number in [0, 1]") from None
    if isinstance(fraction, bool) or not 0.0 <= f <= 1.0:
        raise ConfigError(f"data.mask_fraction={fraction!r}: must lie in [0, 1]")
    return f


def keep_fraction(labels: list[int], has_mask: list[bool], fraction: float, seed: int) -> list[bool]:
    """Per item (N): does it keep its mask? Per label, the items with a mask are permuted with
    ``default_rng([seed, 18, label])`` and the first round(fraction·n_label) keep it (nested in ``fraction``)."""
    keep = [False] * len(labels)
    for label in sorted(set(labels)):
        idx = [i for i, (lab, m) in enumerate(zip(labels, has_mask)) if lab == label and m]
        order = np.random.default_rng([seed, 18, label]).permutation(len(idx))
        for rank in order[: int(round(fraction * len(idx)))]:
            keep[idx[rank]] = True
    return keep


def _parse_one(part: str) -> tuple[str, float]:
    name, _, arg = part.partition(":")
    name = name.strip()
    if name not in NOISE_KINDS:
        raise ConfigError(f"unknown perturbation {name!r}")
    if name == "box":
        if arg:
            raise ConfigError("box takes no argument")
        return name, 0.0
    try:
        value = float(arg)
    except ValueError:
        raise ConfigError(f"{name} needs a number ({name}:{'P' if name == 'drop' else 'K'})") from None
    if name == "drop" and not 0 < value <= 1:
        raise ConfigError("drop:P needs 0 < P ≤ 1")
    if name != "drop" and (value < 1 or value != int(value)):
        raise ConfigError(f"{name}:K needs a whole number of pixels K ≥ 1")
    return name, value


def noise_problem(spec: str | None) -> str | None:
    """What is wrong with a ``data.mask_noise`` value (None: nothing)."""
    try:
        parse_noise(spec)
    except ConfigError as e:
        return str(e).removeprefix(f"data.mask_noise={spec!r}: ")
    return None


def parse_noise(spec: str | None) -> tuple[tuple[str, float], ...]:
    """``data.mask_noise`` → ((kind, argument), …); None, '' or 'none' → (). A bad spec is one ConfigError
    ``data.mask_noise='…': <problem>; choose from …``."""
    if spec is None or str(spec).strip().lower() in ("", "none"):
        return ()
    try:
        return tuple(_parse_one(p) for p in str(spec).split("+"))
    except ConfigError as e:
        raise ConfigError(f"data.mask_noise={spec!r}: {e}; choose from {NOISE_HELP}") from None


# ----------------------------------------------------------------------------- the perturbations (H×W bool)
def boxes(m: np.ndarray) -> np.ndarray:
    """Each 8-connected component of ``m`` (H×W bool) filled to its bounding box."""
    from scipy import ndimage

    labels, _ = ndimage.label(m, structure=np.ones((3, 3), bool))
    out = np.zeros_like(m)
    for sl in ndimage.find_objects(labels):
        out[sl] = True
    return out


def dilate(m: np.ndarray, k: float) -> np.ndarray:
    """Pixels within Euclidean distance ``k`` of ``m`` (H×W bool)."""
    from scipy import ndimage

    return ndimage.distance_transform_edt(~m) <= k if m.any() else m.copy()


def erode(m: np.ndarray, k: float) -> np.ndarray:
    """Pixels of ``m`` farther than ``k`` from every pixel outside it (the image border is not outside)."""
    from scipy import ndimage

    return ndimage.distance_transform_edt(m) > k if not m.all() else m.copy()


def shift(m: np.ndarray, dy: int, dx: int) -> np.ndarray:
    """``m`` moved by (dy, dx) px, zeros shifted in."""
    h, w = m.shape
    out = np.zeros_like(m)
    if abs(dy) >= h or abs(dx) >= w:
        return out
    ys, yd = (slice(0, h - dy), slice(dy, h)) if dy >= 0 else (slice(-dy, h), slice(0, h + dy))
    xs, xd = (slice(0, w - dx), slice(dx, w)) if dx >= 0 else (slice(-dx, w), slice(0, w + dx))
    out[yd, xd] = m[ys, xs]
    return out


def drop_half(m: np.ndarray, side: int) -> np.ndarray:
    """``m`` without one half of its bounding box: ``side`` 0 top, 1 bottom, 2 left, 3 right."""
    if not m.any():
        return m.copy()
    ys, xs = np.flatnonzero(m.any(axis=1)), np.flatnonzero(m.any(axis=0))
    cy, cx = (ys[0] + ys[-1] + 1) // 2, (xs[0] + xs[-1] + 1) // 2
    out = m.copy()
    region = {0: (slice(None, cy), slice(None)), 1: (slice(cy, None), slice(None)),
              2: (slice(None), slice(None, cx)), 3: (slice(None), slice(cx, None))}[side]
    out[region] = False
    return out


@dataclass(frozen=True)
class MaskNoise:
    """The ``data.mask_noise`` perturbations of ``n`` training masks, their random choices drawn once from
    ``seed``; ``noise(i, mask)`` perturbs the i-th mask (H×W, any dtype, 0/1) → H×W of the same dtype."""

    spec: str
    n: int
    seed: int = 0
    ops: tuple = field(init=False, repr=False)  # ((kind, argument), …)
    params: list = field(init=False, repr=False)  # per op, per mask: its random choice (or None)

    def __post_init__(self) -> None:
        ops, params = parse_noise(self.spec), []
        for j, (kind, value) in enumerate(ops):
            rng = np.random.default_rng([self.seed, 18, 100 + j])
            if kind == "shift":
                angle = rng.uniform(0, 2 * np.pi, self.n)
                params.append([(int(round(value * np.sin(a))), int(round(value * np.cos(a)))) for a in angle])
            elif kind == "drop":
                chosen = set(rng.permutation(self.n)[: int(round(value * self.n))].tolist())
                sides = rng.integers(0, 4, self.n)
                params.append([int(sides[i]) if i in chosen else None for i in range(self.n)])
            else:
                params.append([None] * self.n)
        object.__setattr__(self, "ops", ops)
        object.__setattr__(self, "params", params)

    def apply_array(self, i: int, m: np.ndarray) -> np.ndarray:
        """The i-th mask as H×W bool, perturbed."""
        for (kind, value), param in zip(self.ops, self.params):
            p = param[i]
            if kind == "box":
                m = boxes(m)
            elif kind == "dilate":
                m = dilate(m, value)
            elif kind == "erode":
                m = erode(m, value)
            elif kind == "shift":
                m = shift(m, *p)
            elif p is not None:  # drop, chosen for this mask
                m = drop_half(m, p)
        return m

    def __call__(self, i: int, mask: Tensor) -> Tensor:
        out = self.apply_array(i, mask.detach().cpu().numpy() > 0.5)
        return torch.from_numpy(np.ascontiguousarray(out)).to(mask.dtype)


# ----------------------------------------------------------------------------- partial annotation of samples
def drop_masks(samples: list[Sample], fraction: float, seed: int) -> list[Sample]:
    """``samples`` with the masks of the training images outside :func:`keep_fraction` removed (val/test keep
    theirs: the AOI metrics need them). ``fraction`` 1 returns ``samples`` unchanged."""
    if fraction >= 1.0:
        return samples
    train = [i for i, s in enumerate(samples) if s.split == "train"]
    keep = keep_fraction([samples[i].label for i in train], [samples[i].mask is not None for i in train], fraction, seed)
    out = list(samples)
    for i, k in zip(train, keep):
        if not k:
            out[i] = replace(out[i], mask=None)
    return out


def check_annotated(samples: list[Sample], why: str) -> None:
    """A DataError when no defective training image keeps a mask (``why`` names the setting that did it)."""
    defective = [s for s in samples if s.split == "train" and s.label == 1]
    if defective and not any(s.mask is not None for s in defective):
        raise DataError(f"{why} leaves no defective training image with an AOI mask (0 of {len(defective)}): "
                        "the mask term (OD) would never act — keep more masks, or train with loss=ce")


def mask_counts(samples: list[Sample]) -> str:
    """'12 defective, 5 with AOI mask' for one split's samples."""
    return f"{sum(s.label for s in samples)} defective, {sum(s.mask is not None for s in samples)} with AOI mask"
