"""Generic folder+mask industrial data: (image, AOI mask, label) samples and their DataModule.

Layout read (folder and class names configurable)::

    ROOT/images/good/**/*.png     ROOT/masks/good/**/*.png    AOI masks mirror the image paths
    ROOT/images/defect/**/*.png   ROOT/masks/defect/**/*.png  (same stem; any image suffix)
    ROOT/manifest.csv             optional: image,mask,label[,split] — used instead when present
    AOI_MASK                      optional (``aoi_mask``): one AOI mask for every image instead
    TEST_ROOT/…                   optional separate test set, same layout

Splits: a manifest's ``split`` column (all rows) is used as given. Otherwise, per class
(stratified, seeded): ROOT → train/val/test by ``split`` (default 70/20/10), or — the industrial
protocol, with ``test_root`` — ROOT → train/val (default 80/20) and TEST_ROOT → test.

Everything is checked in :meth:`FolderDataModule.setup`, before training, and a problem is one
:class:`~ceod.errors.DataError` line (nothing is half-loaded):

* missing mask → error (``mask_dir: null`` trains without masks: CE only);
* mask size ≠ image size → error, or ``mask_size_mismatch: resize`` (nearest, to the image);
* non-binary mask → ``nonbinary_masks: threshold`` (≥ ``mask_threshold`` × full scale is AOI,
  counted in the log) or ``error``;
* unreadable/corrupt image or mask → error naming the file, or ``skip_corrupt: true`` (dropped,
  counted). ``check: decode`` (default) decodes every file once — which also catches truncated
  files — and, with ``cache: true``, keeps the resized tensors in memory so epochs never touch
  the disk; ``check: header`` reads headers only (big sets; corrupt pixels then fail when loaded);
* unknown label folder, an empty split, a class absent from a split, duplicate names (an image
  listed twice, or two images sharing one name and thus one mask) → error.

Training images are augmented (``augment: true``, train split only; val/test are only resized)
per sample in the loader workers with torchvision.transforms.v2 (``augment_on: loader``), or
batched on the device after the transfer (``augment_on: device``, for fast GPUs; see
:func:`ceod.data.transforms.batch_augment`).

With ``manifest_out`` (a run dir), the final samples are written to ``data_manifest.csv``
(image, mask, label, split, …) — feed it back as ``data.manifest`` to reuse the exact split.
"""

from __future__ import annotations

import csv
import os
from pathlib import Path
from typing import Sequence

import lightning as L
import torch
from lightning.pytorch.utilities import rank_zero_only
from torch.utils.data import DataLoader

from ceod.data.dataset import SegmentedImageDataset, size2
from ceod.data.discovery import FolderTree
from ceod.data.layout import atomic_write
from ceod.data.samples import SPLITS, Sample
from ceod.data.transforms import batch_augment, train_transform
from ceod.data.validate import Checks
from ceod.errors import ConfigError
from ceod.log import info

__all__ = ["FolderDataModule", "SegmentedImageDataset", "MANIFEST_NAME"]

MANIFEST_NAME = "data_manifest.csv"


def _choice(name: str, value: str, allowed: tuple[str, ...]) -> str:
    if value not in allowed:
        raise ConfigError(f"data.{name} must be one of {list(allowed)}, got {value!r}")
    return value


class FolderDataModule(L.LightningDataModule):
    """Reads ROOT (see the module docstring) and serves train/val/test loaders of dict batches."""

    def __init__(
        self,
        root: str,
        test_root: str | None = None,
        image_dir: str = "images",
        mask_dir: str | None = "masks",
        aoi_mask: str | None = None,
        class_dirs: dict | None = None,
        manifest: str | None = "manifest.csv",
        split: Sequence[float] | None = None,
        seed: int = 0,
        image_size: int | Sequence[int] = 128,
        channels: int = 1,
        mean: Sequence[float] | None = None,
        std: Sequence[float] | None = None,
        augment: bool = False,
        augment_on: str = "loader",
        aug_scale: Sequence[float] = (0.8, 1.0),
        aug_ratio: Sequence[float] = (0.75, 4 / 3),
        aug_hflip: float = 0.5,
        aug_vflip: float = 0.0,
        aug_degrees: float = 10.0,
        mask_threshold: float = 0.5,
        nonbinary_masks: str = "threshold",
        mask_size_mismatch: str = "error",
        check: str = "decode",
        skip_corrupt: bool = False,
        cache: bool = True,
        manifest_out: str | None = None,
        batch_size: int = 32,
        num_workers: int = 0,
        pin_memory: bool | str = "auto",
        persistent_workers: bool = True,
    ) -> None:
        super().__init__()
        self.root = Path(root)
        self.test_root = Path(test_root) if test_root else None
        self.image_dir, self.mask_dir = image_dir, mask_dir
        self.aoi_mask = Path(aoi_mask) if aoi_mask else None
        self.class_dirs = {str(k): int(v) for k, v in (class_dirs or {"good": 0, "defect": 1}).items()}
        if sorted(set(self.class_dirs.values())) != [0, 1]:
            raise ConfigError(f"data.class_dirs must map folder names to labels 0 (good) and 1 (defect), "
                              f"got {self.class_dirs}")
        self.manifest = manifest
        self.split = tuple(float(v) for v in split) if split is not None else None
        n_split = 2 if self.test_root else 3
        if self.split is not None and len(self.split) != n_split:
            what = "[train, val] (the test set is data.test_root)" if self.test_root else "[train, val, test]"
            raise ConfigError(f"data.split must be {what}, got {list(self.split)}")
        self.seed = seed
        self.image_size, self.channels = image_size, channels
        self.size = size2(image_size)
        if channels not in (1, 3):
            raise ConfigError(f"data.channels must be 1 or 3, got {channels}")
        self.mean = tuple(mean) if mean is not None else None
        self.std = tuple(std) if std is not None else None
        self.augment = augment
        self.augment_on = _choice("augment_on", augment_on, ("loader", "device"))
        self.aug = dict(scale=tuple(aug_scale), ratio=tuple(aug_ratio), hflip=aug_hflip, vflip=aug_vflip,
                        degrees=aug_degrees)
        if augment:
            train_transform(self.size, **self.aug)  # validate the parameters now
        if not 0 < mask_threshold <= 1:
            raise ConfigError(f"data.mask_threshold must lie in (0, 1], got {mask_threshold}")
        self.mask_threshold = mask_threshold
        self.nonbinary_masks = _choice("nonbinary_masks", nonbinary_masks, ("threshold", "error"))
        self.mask_size_mismatch = _choice("mask_size_mismatch", mask_size_mismatch, ("error", "resize"))
        self.check = _choice("check", check, ("decode", "header"))
        self.skip_corrupt = skip_corrupt
        self.cache = cache
        self.manifest_out = Path(manifest_out) if manifest_out else None
        self.batch_size, self.num_workers = batch_size, num_workers
        self.pin_memory = torch.cuda.is_available() if pin_memory == "auto" else bool(pin_memory)
        self.persistent_workers = persistent_workers
        self.samples: dict[str, list[Sample]] = {}
        self.datasets: dict[str, SegmentedImageDataset] = {}
        self.extra: dict[Path, dict] = {}  # per-image audit columns for the written manifest
        self.report: dict[str, int] = {}

    # ------------------------------------------------------------------ discovery and validation
    def discover(self) -> list[Sample]:
        """All samples with splits assigned (:class:`~ceod.data.discovery.FolderTree`); DataError on a bad
        tree, before any decoding. Subclasses (MVTec) discover their own way."""
        return FolderTree(self.root, self.test_root, self.image_dir, self.mask_dir, self.aoi_mask, self.class_dirs,
                          self.manifest, self.split, self.seed).discover()

    def checks(self) -> Checks:
        return Checks(self.root, self.size, self.channels, self.class_dirs, self.aoi_mask, self.check, self.cache,
                      self.mask_threshold, self.nonbinary_masks, self.mask_size_mismatch, self.skip_corrupt)

    def check_splits(self, samples: list[Sample]) -> None:
        """Every split holds both classes (a hook: MVTec adds a hint about its AOIs)."""
        self.checks().check_splits(samples)

    def validate(self, samples: list[Sample]) -> tuple[list[Sample], list | None]:
        """All setup checks (:mod:`ceod.data.validate`); → (samples to use, cache or None)."""
        checks = self.checks()
        checks.check_names(samples)
        checks.check_masks_exist(samples)
        samples, cache = checks.check_files(samples)
        self.report = checks.report
        self.check_splits(samples)
        return samples, cache

    # ------------------------------------------------------------------ manifest
    def _rel(self, p: Path | None) -> str:
        if p is None:
            return ""
        try:
            return str(Path(p).relative_to(self.root))
        except ValueError:
            return str(Path(os.path.abspath(p)))

    def write_manifest(self, samples: list[Sample]) -> Path | None:
        """``manifest_out/data_manifest.csv``: image, mask, label, split (+ audit columns); atomic."""
        if self.manifest_out is None or not rank_zero_only.rank == 0:
            return None
        extra_cols = list(dict.fromkeys(k for e in self.extra.values() for k in e))

        def write(tmp: Path) -> None:
            with open(tmp, "w", newline="") as f:
                w = csv.DictWriter(f, fieldnames=["image", "mask", "label", "split", *extra_cols])
                w.writeheader()
                for s in sorted(samples, key=lambda s: (SPLITS.index(s.split), str(s.image))):
                    w.writerow({"image": self._rel(s.image), "mask": self._rel(s.mask), "label": s.label,
                                "split": s.split, **self.extra.get(s.image, {})})

        path = atomic_write(self.manifest_out / MANIFEST_NAME, write)
        return path

    # ------------------------------------------------------------------ Lightning hooks
    def check_normalization(self) -> None:
        """data.mean/std: both or neither, one value per channel, std > 0."""
        if (self.mean is None) != (self.std is None):
            raise ConfigError("set both data.mean and data.std, or neither")
        if self.mean is not None:
            if len(self.mean) != self.channels or len(self.std) != self.channels:
                raise ConfigError(f"data.mean/std need {self.channels} value(s) (data.channels), "
                                  f"got {list(self.mean)} / {list(self.std)}")
            if min(self.std) <= 0:
                raise ConfigError(f"data.std must be > 0, got {list(self.std)}")

    def setup(self, stage: str | None = None) -> None:
        if self.datasets:
            return
        self.check_normalization()
        samples = self.discover()
        samples, cache = self.validate(sorted(samples, key=lambda s: str(s.image)))
        path = self.write_manifest(samples)
        transform = train_transform(self.size, **self.aug) if self.augment and self.augment_on == "loader" else None
        split_samples, datasets = {}, {}
        for split in SPLITS:
            idx = [i for i, s in enumerate(samples) if s.split == split]
            split_samples[split] = [samples[i] for i in idx]
            datasets[split] = SegmentedImageDataset(
                split_samples[split], self.size, self.channels, self.mean, self.std,
                transform=transform if split == "train" else None,
                cache=[cache[i] for i in idx] if cache is not None else None, mask_threshold=self.mask_threshold)
        self.samples, self.datasets = split_samples, datasets  # all or nothing
        counts = ", ".join(f"{k} {len(v)} ({sum(s.label for s in v)} defective)" for k, v in split_samples.items())
        info(f"data: {counts}" + (f"; manifest {path}" if path else ""))

    def on_after_batch_transfer(self, batch, dataloader_idx: int):
        """``augment_on: device``: augment training batches where they are (GPU), batched."""
        trainer = self.trainer
        if (self.augment and self.augment_on == "device" and trainer is not None and trainer.training
                and isinstance(batch, dict)):
            fill = None
            if self.mean is not None:  # black, in normalised units
                fill = -torch.tensor(self.mean) / torch.tensor(self.std)
            batch = dict(batch)
            batch["image"], batch["mask"] = batch_augment(batch["image"], batch["mask"], fill=fill, **self.aug)
        return batch

    def _loader(self, split: str, shuffle: bool) -> DataLoader:
        if not self.datasets:
            self.setup()
        return DataLoader(
            self.datasets[split], batch_size=self.batch_size, shuffle=shuffle, num_workers=self.num_workers,
            pin_memory=self.pin_memory, persistent_workers=self.persistent_workers and self.num_workers > 0)

    def train_dataloader(self) -> DataLoader:
        return self._loader("train", True)

    def val_dataloader(self) -> DataLoader:
        return self._loader("val", False)

    def test_dataloader(self) -> DataLoader:
        return self._loader("test", False)
