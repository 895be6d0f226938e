"""Where samples come from: the discovery providers a :class:`~ceod.data.datamodule.DefectDataModule` is given.

A *source* has ``discover(ctx) -> Found`` (every sample with its split, nothing decoded; a bad tree is one
DataError) and may have ``prepare(ctx)`` (make the data once: Lightning's ``prepare_data``). Three ship:

* :class:`FolderTree` (``data=folder``), the generic layout (folder and class names configurable)::

      ROOT/images/good/**/*.png     ROOT/masks/good/**/*.png    AOI masks mirror the image paths
      ROOT/images/defect/**/*.png   ROOT/masks/defect/**/*.png  (same stem; any image suffix)
      ROOT/manifest.csv             optional: image,mask,label[,split] — used instead when present
      AOI_MASK                      optional (``aoi_mask``): one AOI mask for every image instead
      TEST_ROOT/…                   optional separate test set, same layout

  Splits: a manifest's ``split`` column (all rows) is used as given. Otherwise, per class (stratified,
  seeded): ROOT → train/val/test by ``split`` (default 70/20/10), or — the industrial protocol, with
  ``test_root`` — ROOT → train/val (default 80/20) and TEST_ROOT → test. ``mask_dir: null``: no masks (CE only).
* :class:`ceod.benchmarks.registry.GeneratedSource` (``data=synthetic_zipper``, ``data=decoy_digits``…): a
  generated benchmark, made once into ROOT (cached, locked for parallel jobs), then read as a folder tree.
* :class:`ceod.benchmarks.mvtec.MVTecZipperSource` (``data=mvtec_zipper``).
"""

from __future__ import annotations

import os
from dataclasses import dataclass, field, replace
from pathlib import Path
from typing import Protocol


from ceod.data.layout import atomic_write, write_manifest
from ceod.data.samples import CLASS_NAMES, IMAGE_SUFFIXES, SPLITS, Sample, index_masks, read_manifest, stratified_split
from ceod.errors import ConfigError, DataError

DEFAULT_CLASS_DIRS = {name: label for label, name in enumerate(CLASS_NAMES)}


@dataclass(frozen=True)
class Context:
    """What a source may need from its DataModule."""

    size: tuple[int, int] = (128, 128)
    mask_threshold: float = 0.5
    skip_corrupt: bool = False
    run_dir: Path | None = None  # data.manifest_out: where audit files go (None: nowhere)


@dataclass
class Found:
    """A source's answer: the samples (splits assigned) and what validation and the written manifest need."""

    samples: list[Sample]
    root: Path  # manifest paths are written relative to it
    class_dirs: dict = field(default_factory=lambda: dict(DEFAULT_CLASS_DIRS))
    shared_mask: bool = False  # one AOI for every image (data.aoi_mask): not a duplicate
    columns: dict[Path, dict] = field(default_factory=dict)  # per image: audit columns for data_manifest.csv
    split_hint: str = ""  # appended to a split error (e.g. MVTec: check the AOIs)


def relative(p: Path, root: Path) -> str:
    """``p`` relative to ``root`` where it lies below it, else absolute (paths as data manifests write them)."""
    try:
        return str(Path(p).relative_to(root))
    except ValueError:
        return str(Path(os.path.abspath(p)))


def write_data_manifest(path: Path, samples: list[Sample], root: Path, columns: dict[Path, dict]) -> Path:
    """The final samples as ``path`` (image, mask, label, split + audit columns; paths :func:`relative` to
    ``root``); atomic."""

    def cell(v: object) -> object:
        return relative(v, root) if isinstance(v, Path) else "" if v is None else v

    extra = list(dict.fromkeys(k for c in columns.values() for k in c))
    rows = [{"image": cell(s.image), "mask": cell(s.mask), "label": s.label, "split": s.split,
             **{k: cell(v) for k, v in columns.get(s.image, {}).items()}}
            for s in sorted(samples, key=lambda s: (SPLITS.index(s.split), str(s.image)))]
    return atomic_write(path, lambda tmp: write_manifest(tmp, rows, ["image", "mask", "label", "split", *extra]))


class Source(Protocol):
    def discover(self, ctx: Context) -> Found: ...


@dataclass
class FolderTree:
    """Where the samples of a folder-layout data set are and how they split."""

    root: Path
    test_root: Path | None = None
    image_dir: str = "images"
    mask_dir: str | None = "masks"
    aoi_mask: Path | None = None
    class_dirs: dict | None = None
    manifest: str | None = "manifest.csv"
    split: tuple[float, ...] | None = None
    seed: int = 0

    def __post_init__(self) -> None:
        self.root = Path(self.root)
        self.test_root = Path(self.test_root) if self.test_root else None
        self.aoi_mask = Path(self.aoi_mask) if self.aoi_mask else None
        self.class_dirs = {str(k): int(v) for k, v in (self.class_dirs or DEFAULT_CLASS_DIRS).items()}
        if sorted(set(self.class_dirs.values())) != [0, 1]:
            raise ConfigError(f"data.class_dirs must map folder names to labels 0 (good) and 1 (defect), "
                              f"got {self.class_dirs}")
        self.split = tuple(float(v) for v in self.split) if self.split is not None else None
        if self.split is not None and len(self.split) != (2 if self.test_root else 3):
            what = "[train, val] (the test set is data.test_root)" if self.test_root else "[train, val, test]"
            raise ConfigError(f"data.split must be {what}, got {list(self.split)}")

    def discover(self, ctx: Context | None = None) -> Found:
        return Found(self.samples(), self.root, self.class_dirs, shared_mask=self.aoi_mask is not None)

    def samples(self) -> list[Sample]:
        """All samples with splits assigned; raises DataError on a bad tree (before any decoding)."""
        if not self.root.is_dir():
            raise DataError(f"data root not found: {self.root} (set data.root)")
        if self.aoi_mask is not None and not self.aoi_mask.is_file():
            raise DataError(f"AOI mask not found: {self.aoi_mask} (data.aoi_mask)")
        samples = self.read_tree(self.root)
        explicit = [s.split is not None for s in samples]
        if self.test_root is not None:
            if any(explicit):
                raise ConfigError(f"the manifest of {self.root} gives explicit splits; data.test_root cannot be "
                                  "used with them (drop its split column or unset data.test_root)")
            if not self.test_root.is_dir():
                raise DataError(f"test root not found: {self.test_root} (set data.test_root)")
            test = [replace(s, split="test") for s in self.read_tree(self.test_root)]
            return stratified_split(samples, self.split or (0.8, 0.2), self.seed, ("train", "val")) + test
        if all(explicit):
            return samples
        if any(explicit):
            n = explicit.count(False)
            raise DataError(f"the manifest of {self.root} gives a split for some rows only ({n} without); "
                            "give every row a split or none")
        return stratified_split(samples, self.split or (0.7, 0.2, 0.1), self.seed)

    def read_tree(self, root: Path) -> list[Sample]:
        manifest = root / self.manifest if self.manifest else None
        if manifest is not None and manifest.is_file():
            samples = read_manifest(manifest, root, self.class_dirs)
            if not samples:
                raise DataError(f"manifest {manifest} lists no images")
        else:
            samples = self.scan(root)
            if not samples:
                raise DataError(f"no images found under {root / self.image_dir}")
        if self.aoi_mask is not None:  # one AOI for every image (fixed camera, fixed fixture)
            samples = [replace(s, mask=self.aoi_mask) for s in samples]
        return samples

    def scan(self, root: Path) -> list[Sample]:
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
