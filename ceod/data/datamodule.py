"""The one DataModule: given a discovery source, it validates, caches and serves (image, AOI mask, label) batches.

``setup`` asks the source (:mod:`ceod.data.sources`: a folder tree, a generated benchmark, MVTec AD) for its
samples, checks them (:mod:`ceod.data.validate`: a problem is one DataError line, nothing is half-loaded),
writes the final samples to ``manifest_out/data_manifest.csv`` (image, mask, label, split, the source's audit
columns — feed it back as ``data.manifest`` to reuse the exact split) and builds the
:class:`~ceod.data.dataset.SegmentedImageDataset` of each split. Training images are augmented
(:class:`~ceod.data.transforms.Augment`, train split only; val/test are only resized).

Fewer and rougher masks (:mod:`ceod.data.masks`, training split only): ``mask_fraction`` keeps the masks of a
seeded (``mask_seed``), stratified share of the training images, ``missing_masks: ce`` accepts images without a
mask file (both train those images with CE only: all-zero mask, batch key ``annotated`` False), ``mask_noise``
perturbs the training masks (box, dilate:K, erode:K, shift:K, drop:P). The written manifest leaves the
``mask`` cell of an image trained without a mask empty and names the perturbation in a ``mask_noise`` column.

The data config is flat: the keys below are the DataModule's; every other key is the source's
(``source`` is a class or ``functools.partial`` called with ``root`` and them, or a ready source object).
"""

from __future__ import annotations

import inspect
from dataclasses import dataclass
from pathlib import Path
from typing import Callable, Sequence

import lightning as L
import torch
from lightning.pytorch.utilities import rank_zero_only
from torch.utils.data import DataLoader, Dataset

from ceod.data.dataset import SegmentedImageDataset, size2
from ceod.data.sources import Context, FolderTree, Found, Source, write_data_manifest
from ceod.data.masks import MaskNoise, check_annotated, check_fraction, drop_masks, mask_counts, parse_noise
from ceod.data.samples import SPLITS
from ceod.data.transforms import Augment
from ceod.data.validate import Checks
from ceod.errors import ConfigError
from ceod.console import info
from ceod.data.resumable_loader import ResumableLoader

MANIFEST_NAME = "data_manifest.csv"


@dataclass(frozen=True)
class Loaders:
    """``data.batch_size``, ``num_workers``, ``pin_memory`` (auto: on with CUDA), ``persistent_workers``; no defaults
    here: the DataModule passes its own (the one place below)."""

    batch_size: int
    num_workers: int
    pin_memory: bool | str
    persistent_workers: bool

    def __post_init__(self) -> None:
        pin = torch.cuda.is_available() if self.pin_memory == "auto" else bool(self.pin_memory)
        object.__setattr__(self, "pin_memory", pin)

    def __call__(self, dataset: Dataset, shuffle: bool) -> DataLoader:
        workers = self.num_workers
        loader = ResumableLoader if shuffle else DataLoader  # the train loader: resumable mid-epoch (ceod.data.resumable_loader)
        return loader(dataset, batch_size=self.batch_size, shuffle=shuffle, num_workers=workers,
                      pin_memory=self.pin_memory, persistent_workers=self.persistent_workers and workers > 0)


def make_source(source: Source | Callable[..., Source], root: str | None, options: dict) -> Source:
    """``source`` itself when it is a source object, else ``source(root=root, **options)``; a key the source
    does not take is a ConfigError naming it."""
    if hasattr(source, "discover") and not isinstance(source, type):
        given = ["root"] * (root is not None) + list(options)
        if given:
            raise ConfigError(f"data: {', '.join(given)} go to the source's constructor, not with a ready source")
        return source
    params = inspect.signature(source).parameters
    name = getattr(getattr(source, "func", source), "__name__", str(source))
    if not any(p.kind is p.VAR_KEYWORD for p in params.values()):
        for key in ["root", *options]:
            if key not in params:
                raise ConfigError(f"data.{key} does not apply to {name} (its keys: {', '.join(params)})")
    if root is None:
        raise ConfigError(f"data.root is required ({name})")
    return source(root=root, **options)


class DefectDataModule(L.LightningDataModule):
    """Serves train/val/test loaders of dict batches from the samples of ``source`` (see the module docstring).

    The keyword defaults are those of ``conf/data/datamodule.yaml`` (the user-facing defaults, which every
    ``conf/data`` config inherits), so a DataModule made in Python trains as ``data=folder`` does;
    tests/data/test_defaults.py fails when the two differ (``mask_seed``/``manifest_out`` are wired to the run
    there: ``${seed}``, ``${paths.output_dir}``)."""

    def __init__(self, root: str | None = None, source: Source | Callable[..., Source] = FolderTree, *,
                 image_size: int | Sequence[int] = 128, channels: int = 1, mean: Sequence[float] | None = None,
                 std: Sequence[float] | None = None, augment: bool = True, augment_on: str = "loader",
                 aug_scale: Sequence[float] = (0.8, 1.0), aug_ratio: Sequence[float] = (0.75, 4 / 3),
                 aug_hflip: float = 0.5, aug_vflip: float = 0.0, aug_degrees: float = 10.0,
                 mask_threshold: float = 0.5, nonbinary_masks: str = "threshold", mask_size_mismatch: str = "error",
                 check: str = "decode", skip_corrupt: bool = False, cache: bool = True,
                 mask_fraction: float = 1.0, missing_masks: str = "error", mask_noise: str | None = None,
                 mask_seed: int = 0,
                 manifest_out: str | None = None, batch_size: int = 32, num_workers: int = 2,
                 pin_memory: bool | str = "auto", persistent_workers: bool = True, **source_options) -> None:
        super().__init__()
        self.source = make_source(source, root, source_options)
        self.size, self.channels = size2(image_size), channels
        self.mean = tuple(mean) if mean is not None else None
        self.std = tuple(std) if std is not None else None
        self.checks = Checks(self.size, channels, check, cache, mask_threshold, nonbinary_masks, mask_size_mismatch,
                             skip_corrupt, missing_masks)
        self.mask_fraction, self.mask_seed = check_fraction(mask_fraction), int(mask_seed)
        self.mask_noise = mask_noise if parse_noise(mask_noise) else None
        self.aug = Augment(augment, augment_on, aug_scale, aug_ratio, aug_hflip, aug_vflip, aug_degrees)
        self.manifest_out = Path(manifest_out) if manifest_out else None
        self.loaders = Loaders(batch_size, num_workers, pin_memory, persistent_workers)
        self.pin_memory = self.loaders.pin_memory
        self.samples: dict[str, list] = {}
        self.datasets: dict[str, SegmentedImageDataset] = {}
        self.report: dict[str, int] = {}

    @property
    def context(self) -> Context:
        return Context(self.size, self.checks.mask_threshold, self.checks.skip_corrupt, self.manifest_out)

    def discover(self) -> Found:
        """The source's samples with their splits (nothing decoded)."""
        return self.source.discover(self.context)

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

    def prepare_data(self) -> None:
        prepare = getattr(self.source, "prepare", None)
        if prepare is not None:
            prepare(self.context)

    def setup(self, stage: str | None = None) -> None:
        if self.datasets:
            return
        self.check_normalization()
        found = self.discover()
        report = self.checks.run(found)
        kept = self.annotate(report.samples, report.counts.get("mask_missing", 0))
        path = None
        if self.manifest_out is not None and rank_zero_only.rank == 0:
            columns = found.columns
            if self.mask_noise:
                columns = {**columns, **{s.image: {**columns.get(s.image, {}), "mask_noise": self.mask_noise}
                                         for s in kept if s.split == "train" and s.mask is not None}}
            path = write_data_manifest(self.manifest_out / MANIFEST_NAME, kept, found.root, columns)
        transform = self.aug.loader_transform(self.size)
        samples, datasets = {}, {}
        for split in SPLITS:
            idx = [i for i, s in enumerate(kept) if s.split == split]
            samples[split] = [kept[i] for i in idx]
            noise = (MaskNoise(self.mask_noise, len(idx), self.mask_seed)
                     if self.mask_noise and split == "train" else None)
            datasets[split] = SegmentedImageDataset(
                samples[split], self.size, self.channels, self.mean, self.std,
                transform=transform if split == "train" else None, mask_threshold=self.checks.mask_threshold,
                cache=[report.cache[i] for i in idx] if report.cache is not None else None, perturb=noise)
        self.samples, self.datasets, self.report = samples, datasets, report.counts  # all or nothing
        self.warn_emptied(datasets["train"])
        counts = ", ".join(f"{k} {len(v)} ({mask_counts(v)})" for k, v in samples.items())
        noise = f"; training masks perturbed: {self.mask_noise} (data.mask_noise)" if self.mask_noise else ""
        info(f"data: {counts}{noise}" + (f"; manifest {path}" if path else ""))

    def warn_emptied(self, train: SegmentedImageDataset) -> None:
        """``mask_noise`` on a cached set: say how many training masks it emptied (e.g. erode:K on thin AOIs)."""
        if not self.mask_noise or train.cache is None:
            return
        emptied = [s for s, (_, m) in zip(train.samples, train.cache) if s.mask is not None and not m.any()]
        if emptied:
            defective = sum(s.label for s in emptied)
            info(f"warning: data.mask_noise={self.mask_noise} left {len(emptied)} training mask(s) empty "
                 f"({defective} defective; they add no mask term): {', '.join(str(s.image) for s in emptied[:3])}")

    def annotate(self, samples: list, missing: int) -> list:
        """``samples`` after ``mask_fraction`` (training split); a DataError when no defective training image
        keeps a mask although some were dropped (``missing``: images ``missing_masks: ce`` left without one)."""
        kept = drop_masks(samples, self.mask_fraction, self.mask_seed)
        if self.mask_fraction < 1:
            check_annotated(kept, f"data.mask_fraction={self.mask_fraction:g}")
        elif missing:
            check_annotated(kept, "data.missing_masks=ce")
        return kept

    def on_after_batch_transfer(self, batch, dataloader_idx: int):
        """``augment_on: device``: augment training batches where they are (GPU), batched."""
        if self.trainer is not None and self.trainer.training and isinstance(batch, dict):
            return self.aug.device_batch(batch, self.mean, self.std)
        return batch

    def _loader(self, split: str, shuffle: bool) -> DataLoader:
        if not self.datasets:
            self.setup()
        return self.loaders(self.datasets[split], shuffle)

    def train_dataloader(self) -> DataLoader:
        return self._loader("train", True)

    def val_dataloader(self) -> DataLoader:
        return self._loader("val", False)

    def test_dataloader(self) -> DataLoader:
        return self._loader("test", False)
