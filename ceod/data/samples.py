"""Sample records, image/mask reading and stratified splits (no Lightning).

Image files: PNG, JPEG, BMP, TIFF; 8- and 16-bit; greyscale, RGB (alpha dropped), palette. Values
are scaled by the file's full scale (255 or 65535) to [0, 1].

AOI masks: a mask is *binary* when its values are {0, full scale} or {0, 1} (both common); any
other mask is thresholded: pixels ≥ ``threshold`` × full scale are AOI (colour masks: the
brightest channel counts).
"""

from __future__ import annotations

import csv
from collections.abc import Iterator, Sequence
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch
import torch.nn.functional as F
from PIL import Image, UnidentifiedImageError

from ceod.errors import DataError

IMAGE_SUFFIXES = (".png", ".jpg", ".jpeg", ".bmp", ".tif", ".tiff")
SPLITS = ("train", "val", "test")
CLASS_NAMES = ("good", "defect")  # label 0, label 1: the one spelling (folders, CSVs, figures, tables)
Image.MAX_IMAGE_PIXELS = None  # industrial scans can be large; they are trusted local files


@dataclass(frozen=True)
class Sample:
    """One image with its AOI mask path (None: no mask), label (0 good, 1 defect) and split."""

    image: Path
    mask: Path | None
    label: int
    split: str | None = None


# ----------------------------------------------------------------------------- manifests and splits
def read_manifest(path: Path, root: Path, label_names: dict[str, int] | None = None) -> list[Sample]:
    """Read ``image,mask,label[,split]`` rows; relative paths are taken from ``root``.

    ``label`` is 0/1 or a class name of ``label_names`` (e.g. ``{"good": 0, "defect": 1}``).
    Other columns are ignored (manifests written by the DataModules carry audit columns).
    """
    names = {str(k): int(v) for k, v in (label_names or {}).items()}
    try:
        with open(path, newline="") as f:
            reader = csv.DictReader(f)
            missing = {"image", "label"} - set(reader.fieldnames or [])
            if missing:
                raise DataError(f"manifest {path} lacks column(s) {sorted(missing)}")
            samples = []
            for n, row in enumerate(reader, start=2):
                label = (row["label"] or "").strip()
                if label in names:
                    label = str(names[label])
                if label not in ("0", "1"):
                    allowed = ["0", "1", *names]
                    raise DataError(f"manifest {path} line {n}: label must be one of {allowed}, got {label!r}")
                split = (row.get("split") or "").strip() or None
                if split is not None and split not in SPLITS:
                    raise DataError(f"manifest {path} line {n}: split must be one of {SPLITS}, got {split!r}")
                image = (row["image"] or "").strip()
                if not image:
                    raise DataError(f"manifest {path} line {n}: empty image path")
                mask = (row.get("mask") or "").strip()
                samples.append(Sample(root / image, root / mask if mask else None, int(label), split))
    except OSError as e:
        raise DataError(f"cannot read manifest {path}: {e.strerror}") from None
    return samples


def split_by_class(labels: Sequence[int], fractions: Sequence[float], rng: np.random.Generator,
                   names: tuple[str, ...] = SPLITS, cumulative: bool = True) -> list[str]:
    """The one stratified split: a split name per item (``labels`` N). Each class, in ascending label order,
    is shuffled with ``rng``; rank r goes to ``names[j]`` for the first j with r < bound_j, the rest to the
    last name. Bounds: round((f₀+…+f_j)·n) (``cumulative``: every split gets its rounded share, so a small
    class still reaches the last split), or f₀·n, f₁·n, … each rounded and summed (the rule the generated
    benchmarks were written with; kept so they stay the same bytes). Deterministic for a given ``rng``."""
    if len(fractions) != len(names) or abs(sum(fractions) - 1) > 1e-6 or min(fractions) < 0:
        raise DataError(f"split fractions {tuple(fractions)} must be {len(names)} non-negative numbers summing to 1")
    labels = np.asarray(labels)
    out = [""] * len(labels)
    for cls in sorted(set(labels.tolist())):
        idx = np.flatnonzero(labels == cls)
        rng.shuffle(idx)
        n = len(idx)
        bounds = (np.round(np.cumsum(fractions[:-1]) * n).astype(int) if cumulative
                  else np.cumsum([int(round(f * n)) for f in fractions[:-1]]))
        for rank, i in enumerate(idx):
            out[i] = names[int(np.searchsorted(bounds, rank, side="right"))]
    return out


def stratified_split(
    samples: list[Sample], fractions: tuple[float, ...], seed: int, names: tuple[str, ...] = SPLITS
) -> list[Sample]:
    """``samples`` (sorted by path) with splits from :func:`split_by_class`, shuffled with ``seed``."""
    group = sorted(samples, key=lambda s: str(s.image))
    splits = split_by_class([s.label for s in group], fractions, np.random.default_rng(seed), names)
    return [Sample(s.image, s.mask, s.label, split) for s, split in zip(group, splits)]


# ----------------------------------------------------------------------------- reading files
def index_masks(base: Path) -> dict[Path, Path]:
    """Mask files under ``base`` keyed by their relative path without suffix (a ``_mask`` suffix on the
    stem is dropped), so ``good/001.png`` finds ``good/001.png``, ``good/001.bmp`` or ``good/001_mask.png``."""
    index: dict[Path, Path] = {}
    for p in sorted(base.rglob("*")):
        if p.suffix.lower() in IMAGE_SUFFIXES:
            key = p.relative_to(base).with_suffix("")
            if key.name.endswith("_mask"):
                key = key.with_name(key.name[: -len("_mask")])
            index.setdefault(key, p)
    return index


@contextmanager
def open_image(path: Path) -> Iterator[Image.Image]:
    """``PIL.Image.open`` whose failures become one-line DataErrors naming the file."""
    try:
        with Image.open(path) as im:
            yield im
    except FileNotFoundError:
        raise DataError(f"image not found: {path}") from None
    except UnidentifiedImageError:
        raise DataError(f"cannot read image {path}: not a readable image file (corrupt?)") from None
    except (OSError, SyntaxError, ValueError) as e:
        raise DataError(f"cannot read image {path}: {e} (corrupt?)") from None


def image_size_of(path: Path) -> tuple[int, int]:
    """(width, height) from the file header only (cheap; no decode)."""
    with open_image(path) as im:
        return im.size


def read_array(path: Path) -> np.ndarray:
    """The decoded pixels as H×W or H×W×3 (uint8, uint16, int32, float32 or bool); alpha dropped."""
    with open_image(path) as im:
        im.load()
        mode = im.mode
        if mode in ("1", "L", "I", "F", "RGB") or mode.startswith("I;16"):
            arr = np.asarray(im)
        elif mode in ("LA", "La"):
            arr = np.asarray(im.convert("L"))
        else:  # P, PA, RGBA, RGBa, CMYK, YCbCr, LAB, HSV, …
            arr = np.asarray(im.convert("RGB"))
    if arr.dtype.kind == "u" and arr.dtype.itemsize == 2:
        arr = arr.astype(np.uint16)  # big-endian 16-bit → native
    return arr


def full_scale(arr: np.ndarray) -> float:
    """The value of "white" for this array's file type."""
    if arr.dtype == bool:
        return 1.0
    if arr.dtype == np.uint8:
        return 255.0
    if arr.dtype.kind in "ui":
        return 65535.0
    return 1.0  # float images (mode F) are taken as [0, 1]


def to_image_tensor(arr: np.ndarray, channels: int, path: Path | str = "") -> torch.Tensor:
    """C×H×W float in [0, 1] with ``channels`` channels (grey → RGB repeats, RGB → grey by luma)."""
    x = np.clip(arr.astype(np.float32) / full_scale(arr), 0.0, 1.0)
    if x.ndim == 2:
        x = x[..., None]
    t = torch.from_numpy(np.ascontiguousarray(x)).permute(2, 0, 1)
    if t.shape[0] == channels:
        return t.contiguous()
    if channels == 3 and t.shape[0] == 1:
        return t.expand(3, -1, -1).contiguous()
    if channels == 1 and t.shape[0] == 3:
        return (0.299 * t[0] + 0.587 * t[1] + 0.114 * t[2])[None]
    raise DataError(f"image {path} has {t.shape[0]} channels; cannot make {channels}")


def load_image(path: Path, channels: int) -> torch.Tensor:
    """C×H×W float in [0, 1]; 8- and 16-bit, greyscale or RGB files."""
    return to_image_tensor(read_array(path), channels, path)


def mask_plane(arr: np.ndarray) -> np.ndarray:
    """One plane of a mask array (colour masks: the brightest channel)."""
    return arr.max(axis=2) if arr.ndim == 3 else arr


def mask_is_binary(arr: np.ndarray) -> bool:
    """True for {0, full scale} or {0, 1} masks (bool masks always)."""
    m = mask_plane(arr)
    if m.dtype == bool:
        return True
    top = full_scale(m)
    if not np.count_nonzero((m != 0) & (m != top)):
        return True
    return m.dtype.kind in "ui" and int(m.max(initial=0)) <= 1 and int(m.min(initial=0)) >= 0


def binarize_mask(arr: np.ndarray, threshold: float = 0.5) -> np.ndarray:
    """H×W bool AOI: binary masks as they are, others thresholded at ``threshold`` × full scale."""
    m = mask_plane(arr)
    if m.dtype == bool:
        return m
    if m.dtype.kind in "ui" and int(m.max(initial=0)) <= 1:
        return m > 0
    return m.astype(np.float64) >= threshold * full_scale(m)


def mask_tensor(arr: np.ndarray, threshold: float = 0.5, size: tuple[int, int] | None = None) -> torch.Tensor:
    """The one binarise-and-resize: a mask array → H×W (or ``size``) float 0/1 (thresholded as the module
    docstring says, resized nearest)."""
    m = torch.from_numpy(binarize_mask(arr, threshold).astype(np.float32))
    return resize_mask(m, tuple(size)) if size is not None else m


def load_mask(path: Path, threshold: float = 0.5, size: tuple[int, int] | None = None) -> torch.Tensor:
    """H×W (or ``size``) float 0/1 AOI mask read from ``path`` (see :func:`mask_tensor`)."""
    return mask_tensor(read_array(path), threshold, size)


# ----------------------------------------------------------------------------- resizing
def resize_image(img: torch.Tensor, size: tuple[int, int]) -> torch.Tensor:
    """C×H×W → C×size, bilinear with antialiasing (no-op at the right size)."""
    if tuple(img.shape[-2:]) == tuple(size):
        return img
    return F.interpolate(img[None], size=size, mode="bilinear", align_corners=False, antialias=True)[0].clamp_(0, 1)


def resize_mask(mask: torch.Tensor, size: tuple[int, int]) -> torch.Tensor:
    """H×W 0/1 → size, nearest (stays binary)."""
    if tuple(mask.shape[-2:]) == tuple(size):
        return mask
    return F.interpolate(mask[None, None].float(), size=size, mode="nearest")[0, 0]
