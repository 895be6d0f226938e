"""Validation of discovered samples, before training: → a :class:`Report`, or one DataError line.

:class:`Checks` holds the policies; :meth:`Checks.run` checks a source's :class:`~ceod.data.sources.Found`:

* missing mask → error (``mask_dir: null`` trains without masks: CE only), also when a manifest leaves the
  ``mask`` cell of some rows empty; ``missing_masks: ce`` accepts both: those images train with CE only
  (all-zero mask; counted in the log);
* mask size ≠ image size → error, or ``mask_size_mismatch: resize`` (nearest, to the image);
* non-binary mask → ``nonbinary_masks: threshold`` (≥ ``mask_threshold`` × full scale is AOI,
  counted in the log) or ``error``;
* unreadable/corrupt image or mask → error naming the file, or ``skip_corrupt: true`` (dropped,
  counted). ``check: decode`` (default) decodes every file once — which also catches truncated
  files — and, with ``cache: true``, keeps the resized tensors in memory so epochs never touch
  the disk; ``check: header`` reads headers only (big sets; corrupt pixels then fail when loaded);
* unknown label folder, an empty split, a class absent from a split, duplicate names (an image
  listed twice, or two images sharing one name and thus one mask) → error.
"""

from __future__ import annotations

import os
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, replace
from pathlib import Path
from typing import TYPE_CHECKING

import torch

from ceod.data.samples import (
    SPLITS,
    Sample,
    image_size_of,
    mask_is_binary,
    mask_tensor,
    read_array,
    resize_image,
    resize_mask,
    to_image_tensor,
)
from ceod.errors import ConfigError, DataError
from ceod.console import info, progress_bar

MISSING_MASKS = ("error", "ce")

if TYPE_CHECKING:
    from ceod.data.sources import Found


def first(items: list, k: int = 3) -> str:
    """The first ``k`` items as text, and how many more."""
    shown = ", ".join(str(x) for x in items[:k])
    return shown + (f" … (+{len(items) - k} more)" if len(items) > k else "")


def choice(name: str, value: str, allowed: tuple[str, ...]) -> None:
    if value not in allowed:
        raise ConfigError(f"data.{name} must be one of {list(allowed)}, got {value!r}")


@dataclass
class Report:
    """What validation kept: the samples, their decoded tensors (``check: decode`` + ``cache``) and counts."""

    samples: list[Sample]
    cache: list | None
    counts: dict[str, int]


@dataclass(frozen=True)
class Checks:
    """The validation policies of a DataModule (see the module docstring)."""

    size: tuple[int, int]
    channels: int = 1
    check: str = "decode"
    cache: bool = True
    mask_threshold: float = 0.5
    nonbinary_masks: str = "threshold"
    mask_size_mismatch: str = "error"
    skip_corrupt: bool = False
    missing_masks: str = "error"

    def __post_init__(self) -> None:
        if self.channels not in (1, 3):
            raise ConfigError(f"data.channels must be 1 or 3, got {self.channels}")
        if not 0 < self.mask_threshold <= 1:
            raise ConfigError(f"data.mask_threshold must lie in (0, 1], got {self.mask_threshold}")
        choice("nonbinary_masks", self.nonbinary_masks, ("threshold", "error"))
        choice("mask_size_mismatch", self.mask_size_mismatch, ("error", "resize"))
        choice("check", self.check, ("decode", "header"))
        choice("missing_masks", self.missing_masks, MISSING_MASKS)

    def run(self, found: Found) -> Report:
        """Every check, in order: names, masks present, files (per the policies), splits."""
        samples = sorted(found.samples, key=lambda s: str(s.image))
        self.check_names(samples, found.shared_mask)
        samples, missing = self.check_masks_exist(samples)
        report = self.check_files(samples)
        report.counts["mask_missing"] = missing
        try:
            self.check_splits(report.samples, found.root, found.class_dirs)
        except DataError as e:
            if not found.split_hint:
                raise
            raise DataError(f"{e} — {found.split_hint}") from None
        return report

    def check_names(self, samples: list[Sample], shared_mask: bool = False) -> None:
        """Duplicates: an image listed twice, or two images that share one name (and one mask)."""
        seen: dict[Path, Sample] = {}
        for s in samples:
            key = Path(os.path.abspath(s.image))
            if key in seen:
                raise DataError(f"duplicate image {s.image}: listed twice (splits {seen[key].split}, {s.split})")
            seen[key] = s
        stems: dict[Path, Path] = {}
        for s in samples:
            key = Path(os.path.abspath(s.image)).with_suffix("")
            if key in stems:
                raise DataError(f"duplicate name: {stems[key]} and {s.image} share the name {key.name!r} "
                                "(and would share one AOI mask); rename one")
            stems[key] = s.image
        masks: dict[Path, Path] = {}
        for s in samples:
            if s.mask is None or shared_mask:  # one shared AOI is data.aoi_mask's point
                continue
            key = Path(os.path.abspath(s.mask))
            if key in masks:
                raise DataError(f"duplicate mask: {masks[key]} and {s.image} both use {s.mask}")
            masks[key] = s.image

    def check_masks_exist(self, samples: list[Sample]) -> tuple[list[Sample], int]:
        """Mask files named but absent, or some images without a mask while others have one: an error, or with
        ``missing_masks: ce`` those images lose their mask (CE only). → (samples, how many lack a mask)."""
        absent = [i for i, s in enumerate(samples) if s.mask is not None and not s.mask.is_file()]
        named = sum(s.mask is not None for s in samples)
        unnamed = len(samples) - named if named else 0  # none named at all: CE only by design (mask_dir: null)
        hint = "data.missing_masks=ce trains images without a mask with CE only"
        if self.missing_masks == "ce":
            out = list(samples)
            for i in absent:
                out[i] = replace(out[i], mask=None)
            if absent or unnamed:
                info(f"{len(absent) + unnamed} of {len(samples)} image(s) have no AOI mask and train with CE only "
                     f"(data.missing_masks=ce): {first([s.image for s in out if s.mask is None])}")
            return out, len(absent) + unnamed
        if absent:
            s = samples[absent[0]]
            raise DataError(f"AOI mask missing for {len(absent)} image(s), first: {s.image} (expected {s.mask}); {hint}")
        if unnamed:
            s = next(s for s in samples if s.mask is None)
            raise DataError(f"{unnamed} image(s) have no AOI mask (an empty mask cell) while {named} have one, "
                            f"first: {s.image}; {hint}")
        return samples, 0

    def _inspect(self, s: Sample) -> dict:
        """Read one sample as the ``check`` policy says; problems are returned, not raised."""
        out: dict = {}
        decode = self.check == "decode"
        try:
            if decode:
                img = to_image_tensor(read_array(s.image), self.channels, s.image)
                h, w = img.shape[-2:]
            else:
                w, h = image_size_of(s.image)
        except DataError as e:
            return {"corrupt": str(e)}
        if s.mask is not None:
            try:
                if decode:
                    arr = read_array(s.mask)
                    mh, mw = arr.shape[:2]
                    if not mask_is_binary(arr):
                        out["nonbinary"] = True
                    mask = mask_tensor(arr, self.mask_threshold)
                    out["empty"] = not bool(mask.any())
                else:
                    mw, mh = image_size_of(s.mask)
            except DataError as e:
                return {"corrupt": str(e).replace("image", "AOI mask", 1)}
            if (mw, mh) != (w, h):
                out["size"] = f"AOI mask {mw}×{mh} ≠ image {w}×{h}"
        if decode and self.cache:
            m = resize_mask(mask, self.size).bool() if s.mask is not None else torch.zeros(self.size, dtype=torch.bool)
            out["cache"] = (resize_image(img, self.size).half(), m)
        return out

    def check_files(self, samples: list[Sample]) -> Report:
        """Read every file per ``check``; apply the corrupt/size/binary policies."""
        threads = max(1, min(8, os.cpu_count() or 1))
        bar = dict(desc=f"check images ({self.check})", total=len(samples), unit="image")
        if threads > 1 and len(samples) > 8:
            with ThreadPoolExecutor(threads) as pool:
                results = list(progress_bar(pool.map(self._inspect, samples), **bar))
        else:
            results = [self._inspect(s) for s in progress_bar(samples, **bar)]
        corrupt = [(s, r["corrupt"]) for s, r in zip(samples, results) if "corrupt" in r]
        if corrupt and not self.skip_corrupt:
            raise DataError(f"{corrupt[0][1]} ({len(corrupt)} unreadable file(s); "
                            "data.skip_corrupt=true skips them)")
        keep = [(s, r) for s, r in zip(samples, results) if "corrupt" not in r]
        sized = [s for s, r in keep if "size" in r]
        if sized and self.mask_size_mismatch == "error":
            r = next(r for s, r in keep if "size" in r)
            raise DataError(f"{r['size']} for {sized[0].image} (mask {sized[0].mask}); {len(sized)} such image(s) "
                            "— set data.mask_size_mismatch=resize to resize masks (nearest)")
        nonbinary = [s for s, r in keep if r.get("nonbinary")]
        if nonbinary and self.nonbinary_masks == "error":
            raise DataError(f"AOI mask {nonbinary[0].mask} is not binary ({len(nonbinary)} such mask(s)); "
                            "set data.nonbinary_masks=threshold to threshold them at data.mask_threshold")
        empty = [s for s, r in keep if r.get("empty") and s.label == 1]
        counts = {"checked": len(samples), "corrupt_skipped": len(corrupt), "mask_resized": len(sized),
                  "mask_thresholded": len(nonbinary), "defect_empty_aoi": len(empty)}
        if corrupt:
            info(f"skipped {len(corrupt)} unreadable file(s) (data.skip_corrupt=true): "
                 f"{first([str(s.image) for s, _ in corrupt])}")
        if sized:
            info(f"{len(sized)} AOI mask(s) of another size than their image resized (nearest): {first([s.mask for s in sized])}")
        if nonbinary:
            info(f"{len(nonbinary)} non-binary AOI mask(s) thresholded at {self.mask_threshold} of full scale: "
                 f"{first([s.mask for s in nonbinary])}")
        if empty:
            info(f"warning: {len(empty)} defective image(s) have an empty AOI mask: {first([s.image for s in empty])}")
        cache = [r["cache"] for _, r in keep] if self.check == "decode" and self.cache else None
        return Report([s for s, _ in keep], cache, counts)

    def check_splits(self, samples: list[Sample], root: Path, class_dirs: dict) -> None:
        names = {v: k for k, v in class_dirs.items()}
        for split in SPLITS:
            part = [s for s in samples if s.split == split]
            if not part:
                raise DataError(f"split {split!r} is empty ({len(samples)} samples under {root}); "
                                "add images or change data.split")
            for label in (0, 1):
                if not any(s.label == label for s in part):
                    counts = {k: sum(s.split == k for s in samples if s.label == label) for k in SPLITS}
                    raise DataError(f"class {names.get(label, label)!r} (label {label}) is absent from split "
                                    f"{split!r} (its images per split: {counts}); add images or change data.split")
