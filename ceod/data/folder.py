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
from concurrent.futures import ThreadPoolExecutor
from dataclasses import replace
from pathlib import Path
from typing import Sequence

import lightning as L
import torch
from lightning.pytorch.utilities import rank_zero_only
from torch.utils.data import DataLoader, Dataset, get_worker_info

from ceod.data.layout import atomic_write
from ceod.data.samples import (
    IMAGE_SUFFIXES,
    index_masks,
    SPLITS,
    Sample,
    binarize_mask,
    image_size_of,
    mask_is_binary,
    read_array,
    read_manifest,
    resize_image,
    resize_mask,
    stratified_split,
    to_image_tensor,
)
from ceod.data.transforms import apply_joint, batch_augment, train_transform
from ceod.errors import ConfigError, DataError
from ceod.log import info

MANIFEST_NAME = "data_manifest.csv"


def _first(items: list, k: int = 3) -> str:
    shown = ", ".join(str(x) for x in items[:k])
    return shown + (f" … (+{len(items) - k} more)" if len(items) > k else "")


class SegmentedImageDataset(Dataset):
    """Items: {"image": C×H×W float, "mask": H×W float 0/1, "label": long, "index": long}.

    ``cache``: per sample (image C×H×W float16 in [0,1], mask H×W bool) already resized; without
    it, files are read and resized on access. ``transform``: joint augmentation (train only).
    """

    def __init__(self, samples: list[Sample], image_size: int | Sequence[int], channels: int,
                 mean: Sequence[float] | None = None, std: Sequence[float] | None = None,
                 transform=None, cache: list[tuple[torch.Tensor, torch.Tensor]] | None = None,
                 mask_threshold: float = 0.5) -> None:
        self.samples = samples
        self.size = _size2(image_size)
        self.channels = channels
        self.mean = torch.tensor(mean, dtype=torch.float32).view(-1, 1, 1) if mean is not None else None
        self.std = torch.tensor(std, dtype=torch.float32).view(-1, 1, 1) if std is not None else None
        self.transform = transform
        self.cache = cache
        self.mask_threshold = mask_threshold

    def __len__(self) -> int:
        return len(self.samples)

    def raw(self, i: int) -> tuple[torch.Tensor, torch.Tensor]:
        """(image C×H×W float in [0,1], mask H×W float 0/1) at ``image_size``, before augmentation."""
        if self.cache is not None:
            img, mask = self.cache[i]
            return img.float(), mask.float()
        s = self.samples[i]
        img = resize_image(to_image_tensor(read_array(s.image), self.channels, s.image), self.size)
        if s.mask is None:
            return img, torch.zeros(self.size)
        m = torch.from_numpy(binarize_mask(read_array(s.mask), self.mask_threshold)).float()
        return img, resize_mask(m, self.size)

    def __getitem__(self, i: int) -> dict:
        img, mask = self.raw(i)
        if self.transform is not None:
            if get_worker_info() is None and torch.get_num_threads() > 1:
                # in the main process (num_workers=0): per-sample ops are tiny, and intra-op threads
                # only add synchronisation (10-30× slower on a busy CPU); workers run 1 thread anyway
                threads = torch.get_num_threads()
                torch.set_num_threads(1)
                try:
                    img, mask = apply_joint(self.transform, img, mask)
                finally:
                    torch.set_num_threads(threads)
            else:
                img, mask = apply_joint(self.transform, img, mask)
        if self.mean is not None:
            img = (img - self.mean) / self.std
        return {"image": img, "mask": mask, "label": torch.tensor(self.samples[i].label), "index": torch.tensor(i)}


def _size2(size) -> tuple[int, int]:
    if isinstance(size, int):
        return (size, size)
    size = tuple(int(v) for v in size)
    if len(size) != 2:
        raise ConfigError(f"data.image_size must be an int or [height, width], got {list(size)}")
    return size  # type: ignore[return-value]


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
        self.size = _size2(image_size)
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

    # ------------------------------------------------------------------ discovery
    def discover(self) -> list[Sample]:
        """All samples with splits assigned; raises DataError on a bad tree (before any decoding)."""
        if not self.root.is_dir():
            raise DataError(f"data root not found: {self.root} (set data.root)")
        if self.aoi_mask is not None and not self.aoi_mask.is_file():
            raise DataError(f"AOI mask not found: {self.aoi_mask} (data.aoi_mask)")
        samples = self._read_tree(self.root)
        explicit = [s.split is not None for s in samples]
        if self.test_root is not None:
            if any(explicit):
                raise ConfigError(f"the manifest of {self.root} gives explicit splits; data.test_root cannot be "
                                  "used with them (drop its split column or unset data.test_root)")
            if not self.test_root.is_dir():
                raise DataError(f"test root not found: {self.test_root} (set data.test_root)")
            test = [replace(s, split="test") for s in self._read_tree(self.test_root)]
            return stratified_split(samples, self.split or (0.8, 0.2), self.seed, ("train", "val")) + test
        if all(explicit):
            return samples
        if any(explicit):
            n = explicit.count(False)
            raise DataError(f"the manifest of {self.root} gives a split for some rows only ({n} without); "
                            "give every row a split or none")
        return stratified_split(samples, self.split or (0.7, 0.2, 0.1), self.seed)

    def _read_tree(self, root: Path) -> list[Sample]:
        manifest = root / self.manifest if self.manifest else None
        if manifest is not None and manifest.is_file():
            samples = read_manifest(manifest, root, self.class_dirs)
            if not samples:
                raise DataError(f"manifest {manifest} lists no images")
            if self.aoi_mask is not None:
                samples = [replace(s, mask=self.aoi_mask) for s in samples]
            return samples
        samples = self._scan(root)
        if not samples:
            raise DataError(f"no images found under {root / self.image_dir}")
        if self.aoi_mask is not None:  # one AOI for every image (fixed camera, fixed fixture)
            samples = [replace(s, mask=self.aoi_mask) for s in samples]
        return samples

    def _scan(self, root: Path) -> list[Sample]:
        images = root / self.image_dir
        if not images.is_dir():
            raise DataError(f"image folder not found: {images}")
        unknown = sorted(p.name for p in images.iterdir() if p.is_dir() and p.name not in self.class_dirs)
        if unknown:
            raise DataError(f"unknown label folder(s) {unknown} in {images}; expected {sorted(self.class_dirs)} "
                            "(set data.class_dirs)")
        found: list[tuple[Path, int]] = []
        for name, label in self.class_dirs.items():
            folder = images / name
            if folder.is_dir():
                found += [(p, label) for p in sorted(folder.rglob("*"))
                          if p.suffix.lower() in IMAGE_SUFFIXES and p.is_file()]
        if not found or not self.mask_dir or self.aoi_mask is not None:
            return [Sample(p, None, label) for p, label in found]
        masks = root / self.mask_dir
        if not masks.is_dir():
            raise DataError(f"AOI mask folder not found: {masks} (set data.mask_dir; "
                            "data.mask_dir=null trains without masks, CE only)")
        mask_index = index_masks(masks)
        samples = []
        for p, label in found:
            rel = p.relative_to(images)
            samples.append(Sample(p, mask_index.get(rel.with_suffix(""), masks / rel.with_suffix(".png")), label))
        return samples

    # ------------------------------------------------------------------ validation
    def check_names(self, samples: list[Sample]) -> None:
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
            if s.mask is None or self.aoi_mask is not None:  # one shared AOI is data.aoi_mask's point
                continue
            key = Path(os.path.abspath(s.mask))
            if key in masks:
                raise DataError(f"duplicate mask: {masks[key]} and {s.image} both use {s.mask}")
            masks[key] = s.image

    def check_masks_exist(self, samples: list[Sample]) -> None:
        missing = [s for s in samples if s.mask is not None and not s.mask.is_file()]
        if missing:
            s = missing[0]
            raise DataError(f"AOI mask missing for {len(missing)} image(s), first: {s.image} (expected {s.mask})")

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
                    mask = torch.from_numpy(binarize_mask(arr, self.mask_threshold))
                    out["empty"] = not bool(mask.any())
                else:
                    mw, mh = image_size_of(s.mask)
            except DataError as e:
                return {"corrupt": str(e).replace("image", "AOI mask", 1)}
            if (mw, mh) != (w, h):
                out["size"] = f"AOI mask {mw}×{mh} ≠ image {w}×{h}"
        if decode and self.cache:
            m = resize_mask(mask.float(), self.size).bool() if s.mask is not None else torch.zeros(self.size, dtype=torch.bool)
            out["cache"] = (resize_image(img, self.size).half(), m)
        return out

    def check_files(self, samples: list[Sample]) -> tuple[list[Sample], list | None]:
        """Read every file per ``check``; apply the corrupt/size/binary policies. → (kept samples, cache)."""
        threads = max(1, min(8, os.cpu_count() or 1))
        if threads > 1 and len(samples) > 8:
            with ThreadPoolExecutor(threads) as pool:
                results = list(pool.map(self._inspect, samples))
        else:
            results = [self._inspect(s) for s in samples]
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
        self.report = {"checked": len(samples), "corrupt_skipped": len(corrupt), "mask_resized": len(sized),
                       "mask_thresholded": len(nonbinary), "defect_empty_aoi": len(empty)}
        if corrupt:
            info(f"skipped {len(corrupt)} unreadable file(s) (data.skip_corrupt=true): "
                 f"{_first([str(s.image) for s, _ in corrupt])}")
        if sized:
            info(f"{len(sized)} AOI mask(s) of another size than their image resized (nearest): {_first([s.mask for s in sized])}")
        if nonbinary:
            info(f"{len(nonbinary)} non-binary AOI mask(s) thresholded at {self.mask_threshold} of full scale: "
                 f"{_first([s.mask for s in nonbinary])}")
        if empty:
            info(f"warning: {len(empty)} defective image(s) have an empty AOI mask: {_first([s.image for s in empty])}")
        cache = [r["cache"] for _, r in keep] if self.check == "decode" and self.cache else None
        return [s for s, _ in keep], cache

    def check_splits(self, samples: list[Sample]) -> None:
        names = {v: k for k, v in self.class_dirs.items()}
        for split in SPLITS:
            part = [s for s in samples if s.split == split]
            if not part:
                raise DataError(f"split {split!r} is empty ({len(samples)} samples under {self.root}); "
                                "add images or change data.split")
            for label in (0, 1):
                if not any(s.label == label for s in part):
                    counts = {k: sum(s.split == k for s in samples if s.label == label) for k in SPLITS}
                    raise DataError(f"class {names.get(label, label)!r} (label {label}) is absent from split "
                                    f"{split!r} (its images per split: {counts}); add images or change data.split")

    def validate(self, samples: list[Sample]) -> tuple[list[Sample], list | None]:
        """All setup checks; → (samples to use, cache or None)."""
        self.check_names(samples)
        self.check_masks_exist(samples)
        samples, cache = self.check_files(samples)
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
