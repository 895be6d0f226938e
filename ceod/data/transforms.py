"""Joint image + AOI-mask augmentation (torchvision.transforms.v2) and an offline augmented-set writer.

"Augmented to change its shape and proportions": a random resized crop with an aspect-ratio change,
horizontal/vertical flips and a small rotation, applied to the image (``tv_tensors.Image``,
bilinear) and its AOI mask (``tv_tensors.Mask``, nearest) with the *same* random parameters, so
the mask always moves with the image and stays binary. Rotation corners are filled with 0 (black
image, no AOI). Keep ``scale`` near 1: a crop that cuts a defect off the AOI changes the true label.
:func:`batch_augment` draws the same kinds of parameters per sample but transforms a whole batch
at once on its device (``augment_on: device``) — for fast GPUs, where per-sample CPU work in two
loader workers could not keep up.

Offline: :func:`write_augmented_set` writes a deterministic augmented set of a chosen size (the
paper's 400 images) in the folder layout (``images/``, ``masks/``, ``manifest.csv`` with splits).
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from pathlib import Path
from typing import Callable, Sequence

import numpy as np
import torch
from PIL import Image
from torchvision import tv_tensors
from torchvision.transforms import v2

from ceod.data.layout import CLASS_DIRS, atomic_directory, require_empty, write_manifest
from ceod.errors import ConfigError, DataError



def train_transform(
    size: tuple[int, int], *, scale: Sequence[float], ratio: Sequence[float], hflip: float, vflip: float,
    degrees: float,
) -> v2.Compose:
    """The joint train-time augmentation; call it as ``t(tv_tensors.Image(x), tv_tensors.Mask(m))``. No defaults:
    the training data's live in conf/data/datamodule.yaml (``aug_*``), passed by :class:`Augment`."""
    scale, ratio = tuple(float(v) for v in scale), tuple(float(v) for v in ratio)
    if len(scale) != 2 or not 0 < scale[0] <= scale[1] <= 1:
        raise ConfigError(f"data.aug_scale must be [min, max] with 0 < min ≤ max ≤ 1, got {list(scale)}")
    if len(ratio) != 2 or not 0 < ratio[0] <= ratio[1]:
        raise ConfigError(f"data.aug_ratio must be [min, max] with 0 < min ≤ max, got {list(ratio)}")
    for name, p in (("aug_hflip", hflip), ("aug_vflip", vflip)):
        if not 0 <= p <= 1:
            raise ConfigError(f"data.{name} must be a probability in [0, 1], got {p}")
    if degrees < 0:
        raise ConfigError(f"data.aug_degrees must be ≥ 0, got {degrees}")
    steps: list = [v2.RandomResizedCrop(size=list(size), scale=scale, ratio=ratio, antialias=True)]
    if hflip > 0:
        steps.append(v2.RandomHorizontalFlip(hflip))
    if vflip > 0:
        steps.append(v2.RandomVerticalFlip(vflip))
    if degrees > 0:
        steps.append(v2.RandomRotation(degrees, interpolation=v2.InterpolationMode.BILINEAR, fill=0))
    return v2.Compose(steps)


def batch_augment(
    image: torch.Tensor,
    mask: torch.Tensor,
    *,
    scale: Sequence[float],
    ratio: Sequence[float],
    hflip: float,
    vflip: float,
    degrees: float,
    fill: torch.Tensor | None = None,
    generator: torch.Generator | None = None,
) -> tuple[torch.Tensor, torch.Tensor]:
    """The same augmentation for a whole batch at once, on the batch's device (e.g. the GPU).

    Per sample: a random resized crop (area fraction in ``scale``, aspect ratio log-uniform in
    ``ratio``, clamped to the image), flips, a rotation in ±``degrees`` — composed into one affine
    map, so B×C×H×W images (bilinear) and B×H×W masks (nearest) are resampled on the same grid.
    Outside the image: ``fill`` (per channel, default 0) for images, 0 for masks. No augmentation defaults
    (the training data's: conf/data/datamodule.yaml via :class:`Augment`).
    """
    b, c, h, w = image.shape
    dev = image.device
    opts = dict(device=dev, generator=generator)
    def uniform(lo: float, hi: float) -> torch.Tensor:
        return lo + (hi - lo) * torch.rand(b, **opts)

    area = uniform(float(scale[0]), float(scale[1]))
    r = uniform(math.log(ratio[0]), math.log(ratio[1])).exp()
    sx, sy = (area * r).sqrt().clamp(max=1), (area / r).sqrt().clamp(max=1)
    cx = uniform(-1, 1) * (1 - sx)
    cy = uniform(-1, 1) * (1 - sy)
    fx = torch.where(torch.rand(b, **opts) < hflip, -1.0, 1.0)
    fy = torch.where(torch.rand(b, **opts) < vflip, -1.0, 1.0)
    th = uniform(-math.radians(degrees), math.radians(degrees))
    cos, sin = th.cos(), th.sin()
    theta = torch.stack([  # input = centre + diag(sx·fx, sy·fy) · rotation (in pixel units) · output
        torch.stack([sx * fx * cos, -sx * fx * sin * h / w, cx], -1),
        torch.stack([sy * fy * sin * w / h, sy * fy * cos, cy], -1)], 1).to(image.dtype)
    grid = torch.nn.functional.affine_grid(theta, [b, c, h, w], align_corners=False)
    shift = fill.to(image).view(1, -1, 1, 1) if fill is not None else None
    x = image - shift if shift is not None else image
    x = torch.nn.functional.grid_sample(x, grid, mode="bilinear", padding_mode="zeros", align_corners=False)
    if shift is not None:
        x = x + shift
    m = torch.nn.functional.grid_sample(mask[:, None].to(image.dtype), grid, mode="nearest", padding_mode="zeros",
                                        align_corners=False)[:, 0]
    return x, m.to(mask.dtype)


@dataclass(frozen=True)
class Augment:
    """The train-only augmentation of a DataModule (``data.augment``, ``augment_on``, ``aug_*``): per sample in
    the loader workers (``on: loader``, :func:`train_transform`), or batched on the device after the transfer
    (``on: device``, :func:`batch_augment`). Bad parameters are a ConfigError when it is made. No defaults here:
    the DataModule passes its own (conf/data/datamodule.yaml's)."""

    enabled: bool
    on: str
    scale: Sequence[float]
    ratio: Sequence[float]
    hflip: float
    vflip: float
    degrees: float

    def __post_init__(self) -> None:
        if self.on not in ("loader", "device"):
            raise ConfigError(f"data.augment_on must be one of ['loader', 'device'], got {self.on!r}")
        object.__setattr__(self, "scale", tuple(self.scale))
        object.__setattr__(self, "ratio", tuple(self.ratio))
        if self.enabled:
            self.transform((8, 8))  # validate the parameters now

    def params(self) -> dict:
        return dict(scale=self.scale, ratio=self.ratio, hflip=self.hflip, vflip=self.vflip, degrees=self.degrees)

    def transform(self, size: tuple[int, int]) -> v2.Compose:
        return train_transform(size, **self.params())

    def loader_transform(self, size: tuple[int, int]) -> v2.Compose | None:
        """The per-sample transform of the training set (None: none there)."""
        return self.transform(size) if self.enabled and self.on == "loader" else None

    def device_batch(self, batch: dict, mean: Sequence[float] | None, std: Sequence[float] | None) -> dict:
        """``on: device``: a training batch augmented where it is; rotation corners black in normalised units."""
        if not (self.enabled and self.on == "device"):
            return batch
        fill = -torch.tensor(mean) / torch.tensor(std) if mean is not None else None
        batch = dict(batch)
        batch["image"], batch["mask"] = batch_augment(batch["image"], batch["mask"], fill=fill, **self.params())
        return batch


def apply_joint(transform: Callable, image: torch.Tensor, mask: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """(C×H×W image, H×W 0/1 mask) → the same, transformed together; plain tensors out."""
    img, m = transform(tv_tensors.Image(image), tv_tensors.Mask(mask[None]))
    return img.as_subclass(torch.Tensor).clamp_(0, 1), m.as_subclass(torch.Tensor)[0]


def _save_png(arr: torch.Tensor, path: Path) -> None:
    x = (arr.clamp(0, 1) * 255 + 0.5).to(torch.uint8).numpy()
    if x.ndim == 3:
        x = x[0] if x.shape[0] == 1 else np.moveaxis(x, 0, -1)
    Image.fromarray(x).save(path)


def write_augmented_set(
    items: Sequence[tuple[str, int, str]],
    load: Callable[[int], tuple[torch.Tensor, torch.Tensor]],
    out: str | Path,
    n: int,
    transform: Callable,
    seed: int = 0,
    keep_originals: bool = True,
    overwrite: bool = False,
    finalize: Callable[[Path], None] | None = None,
) -> Path:
    """Write ``n`` images (8-bit PNG) + AOI masks + ``manifest.csv`` to ``out``; deterministic.

    ``items[i] = (source name, label, split)`` and ``load(i) → (image C×H×W in [0,1], mask H×W)``
    describe the source set. Sources are visited in a seeded order, cycling: the first visit of a
    source writes it unaugmented when ``keep_originals`` (if n ≥ number of sources), every other
    visit an augmentation seeded by (``seed``, output index). Each output inherits its source's
    split, so augmented copies never leak across splits; ``n`` < sources keeps a class-stratified
    subset. ``finalize(tmp)`` may add files before the output appears. Atomic: nothing half-written
    is left.
    """
    out = Path(out)
    if n < 1:
        raise ConfigError(f"the augmented set needs n ≥ 1 images, got {n}")
    if not items:
        raise DataError("no source images to augment")
    require_empty(out, overwrite, "overwrite=True / --overwrite")
    rng = np.random.default_rng([seed, 11])
    # order: interleave the classes so any prefix is stratified
    by_label: dict[int, list[int]] = {}
    for i, (_, label, _) in enumerate(items):
        by_label.setdefault(label, []).append(i)
    queues = {k: list(rng.permutation(v)) for k, v in sorted(by_label.items())}
    order: list[int] = []
    total = len(items)
    taken = {k: 0 for k in queues}
    while len(order) < total:  # proportional interleave (largest remaining share first)
        k = max(queues, key=lambda c: (len(queues[c]) - taken[c]) / len(queues[c]) if taken[c] < len(queues[c]) else -1)
        order.append(int(queues[k][taken[k]]))
        taken[k] += 1
    with atomic_directory(out) as tmp:
        rows = []
        for k in range(n):
            i = order[k % total]
            name, label, split = items[i]
            img, mask = load(i)
            augmented = not (keep_originals and k < total)
            if augmented:
                with torch.random.fork_rng(devices=[]):
                    torch.manual_seed(int(np.random.default_rng([seed, k]).integers(2**62)))
                    img, mask = apply_joint(transform, img, mask)
            rel = f"{CLASS_DIRS[label]}/{k:05d}.png"
            _save_png(img, tmp / "images" / rel)
            _save_png(mask.float(), tmp / "masks" / rel)
            rows.append({"image": f"images/{rel}", "mask": f"masks/{rel}", "label": label, "split": split,
                         "source": name, "augmented": int(augmented)})
        write_manifest(tmp / "manifest.csv", rows, ["image", "mask", "label", "split", "source", "augmented"])
        if finalize is not None:
            finalize(tmp)
    return out
