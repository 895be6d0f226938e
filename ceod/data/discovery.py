"""Sample discovery for the folder layout: scan or read the manifest, one AOI for all, assign splits.

See :mod:`ceod.data.folder` for the layout. Nothing is decoded here; a bad tree is one DataError.
"""

from __future__ import annotations

from dataclasses import dataclass, replace
from pathlib import Path

from ceod.data.samples import IMAGE_SUFFIXES, Sample, index_masks, read_manifest, stratified_split
from ceod.errors import ConfigError, DataError


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

    def discover(self) -> list[Sample]:
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
            if self.aoi_mask is not None:
                samples = [replace(s, mask=self.aoi_mask) for s in samples]
            return samples
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
