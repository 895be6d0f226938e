"""MVTec AD zipper as a CEOD DataModule: pooled, relabelled (only defects on the zipper count), re-split.

Layout read (the standard MVTec AD tree; ``data.root`` is the folder holding ``zipper/``, or
``zipper/`` itself)::

    ROOT/zipper/train/good/000.png …                 MVTec's train split: good only
    ROOT/zipper/test/<type>/000.png …                types: good broken_teeth combined fabric_border
                                                     fabric_interior rough split_teeth squeezed_teeth
    ROOT/zipper/ground_truth/<type>/000_mask.png …   MVTec's defect masks (not AOIs)
    AOI_DIR/train/good/000.png, AOI_DIR/test/<type>/000.png …   optional zipper AOI masks
                                                     (mirroring zipper/; ``000_mask.png`` also accepted)

1. **Pool and re-split.** MVTec's train split has no defects, so — as in the paper — all images
   are pooled and split 70/20/10 per final label (stratified, ``seed``).
2. **Relabel** (only defects on the zipper count). ``relabel: geometry``: an image is defective
   iff its ground-truth defect mask overlaps the AOI by at least ``min_overlap`` × image area
   (and ≥ 1 pixel), at the ground truth's resolution — ``combined`` images can carry their
   defects on the fabric only. ``relabel: type``: the per-type map ``type_labels`` (fabric_* →
   good; tooth types, rough, combined → defective). ``auto`` (default): geometry when
   ``aoi_dir`` is given, else type. Every decision is written to ``data_manifest.csv`` in
   ``manifest_out`` (the run dir): type, MVTec label, rule, overlap, relabelled.
3. **AOI masks** from ``aoi_dir``; without one, estimated per image (refused with
   ``require_aoi: true``) — see :func:`estimate_zipper_band` — written as mask files to
   ``manifest_out/aoi_estimated/`` (mirroring zipper/, reusable as ``data.aoi_dir`` once checked
   or fixed) with a preview grid ``manifest_out/aoi_preview.png`` to check them.
4. Greyscale as read (``channels: 3`` repeats it); ``image_size`` resizes (the paper's runs do).

Offline augmented set (the paper's 400 images) in the folder layout, for ``data=folder``::

    python -m ceod.data.mvtec --root ROOT --out OUT --n 400 [--aoi-dir AOI_DIR] [--image-size 256]
"""

from __future__ import annotations

import argparse
import math
import shutil
import sys
import tempfile
from pathlib import Path

import numpy as np
import torch
import torch.nn.functional as F
from lightning.pytorch.utilities import rank_zero_only
from PIL import Image

from ceod.data.folder import FolderDataModule, _first, info
from ceod.data.samples import (
    IMAGE_SUFFIXES,
    index_masks,
    Sample,
    binarize_mask,
    read_array,
    stratified_split,
    to_image_tensor,
)
from ceod.errors import CeodError, ConfigError, DataError

MVTEC_URL = "https://www.mvtec.com/company/research/datasets/mvtec-ad"
ZIPPER_TYPES = ("good", "broken_teeth", "combined", "fabric_border", "fabric_interior", "rough", "split_teeth",
                "squeezed_teeth")
DEFAULT_TYPE_LABELS = {"good": 0, "broken_teeth": 1, "combined": 1, "fabric_border": 0, "fabric_interior": 0,
                       "rough": 1, "split_teeth": 1, "squeezed_teeth": 1}


# ----------------------------------------------------------------------------- AOI estimate
def otsu_threshold(values: np.ndarray, bins: int = 64) -> float:
    """Otsu's threshold of a 1-D sample (maximises the between-class variance)."""
    lo, hi = float(values.min()), float(values.max())
    if hi - lo < 1e-12:
        return hi
    hist, edges = np.histogram(values, bins=bins, range=(lo, hi))
    p = hist / hist.sum()
    centres = (edges[:-1] + edges[1:]) / 2
    w0 = np.cumsum(p)
    m0 = np.cumsum(p * centres)
    mt = m0[-1]
    with np.errstate(divide="ignore", invalid="ignore"):
        between = (mt * w0 - m0) ** 2 / (w0 * (1 - w0))
    between[~np.isfinite(between)] = -1
    return float(edges[int(np.argmax(between)) + 1])


def estimate_zipper_band(gray: np.ndarray, smooth: float = 0.03, margin: float = 0.0) -> tuple[int, int]:
    """Columns ``[x0, x1)`` of a vertical zipper in a greyscale H×W image in [0, 1].

    Method: per column, the standard deviation down the column (teeth alternate along the zipper,
    fabric is uniform) and the deviation of the column mean from the median column (the zipper
    is brighter or darker than the fabric); each robustly standardised (median / MAD over
    columns — assumes the zipper covers less than half the width), summed, smoothed with a box
    filter of ``smooth`` × width; Otsu's threshold on this profile; the largest contiguous run of
    columns above it (ties: the strongest), widened by ``margin`` × width on each side. A straight
    vertical zipper is assumed, as in MVTec AD; use ``data.aoi_dir`` for anything else.
    """
    h, w = gray.shape

    def robust_z(x: np.ndarray) -> np.ndarray:
        med = np.median(x)
        mad = 1.4826 * np.median(np.abs(x - med)) + 1e-6 * (np.abs(x).max() + 1e-12)
        return np.clip((x - med) / mad, 0, None)

    mean = gray.mean(axis=0)
    profile = robust_z(gray.std(axis=0)) + robust_z(np.abs(mean - np.median(mean)))
    k = max(1, int(round(smooth * w)))
    if k > 1:
        padded = np.pad(profile, (k // 2, k - 1 - k // 2), mode="edge")
        profile = np.convolve(padded, np.ones(k) / k, mode="valid")
    on = profile > otsu_threshold(profile)
    best, best_key, x = (0, w), (-1, -1.0), 0
    while x < w:
        if on[x]:
            start = x
            while x < w and on[x]:
                x += 1
            key = (x - start, float(profile[start:x].sum()))
            if key > best_key:
                best, best_key = (start, x), key
        else:
            x += 1
    pad = int(round(margin * w))
    return max(0, best[0] - pad), min(w, best[1] + pad)


def _work_gray(arr: np.ndarray, width: int = 256) -> np.ndarray:
    """A greyscale [0,1] copy at most ``width`` columns wide (area-averaged) for the estimate."""
    t = to_image_tensor(arr, 1)[None]
    h, w = t.shape[-2:]
    if w > width:
        t = F.interpolate(t, size=(max(1, round(h * width / w)), width), mode="area")
    return t[0, 0].numpy()


def _preview(images: list[tuple[np.ndarray, np.ndarray, str]], path: Path, thumb: int = 128, cols: int = 4) -> None:
    """A grid of thumbnails with the AOI tinted red and its edges drawn."""
    rows = math.ceil(len(images) / cols)
    grid = np.full((rows * (thumb + 4), cols * (thumb + 4), 3), 255, np.uint8)
    for n, (gray, aoi, _) in enumerate(images):
        g = np.asarray(Image.fromarray((gray * 255).astype(np.uint8)).resize((thumb, thumb), Image.BILINEAR),
                       np.float32) / 255
        a = np.asarray(Image.fromarray(aoi.astype(np.uint8) * 255).resize((thumb, thumb), Image.NEAREST)) > 0
        rgb = np.stack([g, g, g], -1)
        rgb[a] = 0.6 * rgb[a] + 0.4 * np.array([1.0, 0.1, 0.1])
        edge = a ^ np.roll(a, 1, axis=1)
        edge[:, 0] = a[:, 0]
        rgb[edge] = (1.0, 0.0, 0.0)
        r, c = divmod(n, cols)
        y, x = r * (thumb + 4) + 2, c * (thumb + 4) + 2
        grid[y:y + thumb, x:x + thumb] = (rgb * 255).astype(np.uint8)
    Image.fromarray(grid).save(path)


# ----------------------------------------------------------------------------- the DataModule
class MVTecZipperDataModule(FolderDataModule):
    """MVTec AD zipper (see the module docstring); other arguments as :class:`FolderDataModule`."""

    def __init__(self, root: str, category: str = "zipper", aoi_dir: str | None = None, require_aoi: bool = False,
                 relabel: str = "auto", min_overlap: float = 1e-4, type_labels: dict | None = None,
                 aoi_margin: float = 0.0, aoi_preview: int = 16, **kwargs) -> None:
        for key in ("test_root", "manifest", "image_dir", "mask_dir", "class_dirs"):
            if key in kwargs:
                raise ConfigError(f"data.{key} does not apply to MVTec AD (its layout is fixed)")
        kwargs.setdefault("image_size", 224)
        kwargs.setdefault("augment", True)
        kwargs.setdefault("aug_vflip", 0.5)
        super().__init__(root=root, manifest=None, mask_dir=None, **kwargs)
        self.category = category
        self.aoi_dir = Path(aoi_dir) if aoi_dir else None
        self.require_aoi = require_aoi
        if relabel not in ("auto", "geometry", "type"):
            raise ConfigError(f"data.relabel must be one of ['auto', 'geometry', 'type'], got {relabel!r}")
        self.relabel = relabel
        if not 0 <= min_overlap < 1:
            raise ConfigError(f"data.min_overlap must lie in [0, 1) (fraction of the image area), got {min_overlap}")
        self.min_overlap = min_overlap
        self.type_labels = {str(k): int(v) for k, v in (type_labels or DEFAULT_TYPE_LABELS).items()}
        bad = {k: v for k, v in self.type_labels.items() if v not in (0, 1)}
        if bad or self.type_labels.get("good", 0) != 0:
            raise ConfigError(f"data.type_labels must map defect types to 0 or 1 (good → 0), got {self.type_labels}")
        self.aoi_margin = aoi_margin
        self.aoi_preview = aoi_preview
        self.rule = "geometry" if relabel == "geometry" or (relabel == "auto" and self.aoi_dir) else "type"
        self.estimated_dir: Path | None = None

    def category_dir(self) -> Path:
        for cand in (self.root / self.category, self.root):
            if (cand / "train" / "good").is_dir() and (cand / "test").is_dir():
                return cand
        raise DataError(
            f"MVTec AD {self.category} not found under {self.root}: expected {self.root / self.category}/"
            "{train/good,test/<type>,ground_truth/<type>} — download MVTec AD from "
            f"{MVTEC_URL}, extract it and set data.root=/path/to/mvtec_anomaly_detection")

    def _records(self, cat: Path) -> list[dict]:
        test = cat / "test"
        types = sorted(p.name for p in test.iterdir() if p.is_dir())
        unknown = [t for t in types if t not in self.type_labels]
        if unknown:
            raise DataError(f"unknown defect type folder(s) {unknown} in {test}; known: {sorted(self.type_labels)} "
                            "(add them to data.type_labels)")
        recs = []
        for origin, kind in [("train", "good")] + [("test", t) for t in types]:
            for p in sorted((cat / origin / kind).iterdir()):
                if p.is_file() and p.suffix.lower() in IMAGE_SUFFIXES:
                    gt = cat / "ground_truth" / kind / f"{p.stem}_mask.png" if kind != "good" else None
                    recs.append({"image": p, "origin": origin, "type": kind, "gt": gt})
        if not recs:
            raise DataError(f"no images found under {cat}/train/good or {cat}/test")
        return recs

    def _aoi_from_dir(self, recs: list[dict]) -> None:
        base = self.aoi_dir
        if not base.is_dir():
            raise DataError(f"AOI folder not found: {base} (data.aoi_dir)")
        if (base / self.category / "test").is_dir() or (base / self.category / "train").is_dir():
            base = base / self.category
        index = index_masks(base)
        missing = []
        for r in recs:
            key = Path(r["origin"], r["type"], r["image"].stem)
            r["aoi"] = index.get(key)
            if r["aoi"] is None:
                missing.append(base / key.with_suffix(".png"))
        if missing:
            raise DataError(f"AOI mask missing for {len(missing)} image(s), first: expected {missing[0]} "
                            f"(data.aoi_dir mirrors {self.category}/: <aoi_dir>/test/<type>/NNN.png)")
        for r in recs:
            r["aoi_source"] = "aoi_dir"

    def _aoi_estimated(self, recs: list[dict]) -> list[dict]:
        rank0 = rank_zero_only.rank == 0
        if self.manifest_out is not None and rank0:  # other DDP ranks estimate the same into their own tmp dir
            out = self.manifest_out / "aoi_estimated"
            if out.exists():
                shutil.rmtree(out)
        else:
            out = Path(tempfile.mkdtemp(prefix="ceod-aoi-"))
        self.estimated_dir = out
        kept, corrupt, shown = [], [], []
        step = max(1, len(recs) // max(1, self.aoi_preview)) if self.aoi_preview else 0
        for n, r in enumerate(recs):
            try:
                arr = read_array(r["image"])
            except DataError as e:
                if not self.skip_corrupt:
                    raise DataError(f"{e} (data.skip_corrupt=true skips unreadable files)") from None
                corrupt.append(r["image"])
                continue
            gray = _work_gray(arr)
            x0, x1 = estimate_zipper_band(gray, margin=self.aoi_margin)
            h, w = arr.shape[:2]
            sx = w / gray.shape[1]
            mask = np.zeros((h, w), np.uint8)
            mask[:, int(round(x0 * sx)):int(round(x1 * sx))] = 255
            path = out / r["origin"] / r["type"] / f"{r['image'].stem}.png"
            path.parent.mkdir(parents=True, exist_ok=True)
            Image.fromarray(mask).save(path)
            r["aoi"], r["aoi_source"] = path, "estimated"
            kept.append(r)
            if step and n % step == 0 and len(shown) < self.aoi_preview:
                band = np.zeros(gray.shape, bool)
                band[:, x0:x1] = True
                shown.append((gray, band, r["image"].name))
        if corrupt:
            info(f"skipped {len(corrupt)} unreadable image(s) (data.skip_corrupt=true): {_first(corrupt)}")
        msg = f"no data.aoi_dir: zipper AOIs estimated per image (column profile + Otsu) into {out}"
        if shown and rank0:
            preview = (self.manifest_out or out) / "aoi_preview.png"
            _preview(shown, preview)
            msg += f"; check them in {preview}"
        info(msg)
        return kept

    def _relabel(self, recs: list[dict]) -> None:
        for r in recs:
            r["mvtec_label"] = int(r["type"] != "good")
            r["overlap"] = ""
            if r["type"] == "good":
                r["label"], r["rule"] = 0, "good"
                continue
            if self.rule == "type":
                r["label"], r["rule"] = self.type_labels[r["type"]], "type"
                continue
            if not r["gt"].is_file():
                raise DataError(f"ground-truth mask missing for {r['image']} (expected {r['gt']}); "
                                "relabel by geometry needs it (or set data.relabel=type)")
            gt = binarize_mask(read_array(r["gt"]), 0.5)
            aoi = binarize_mask(read_array(r["aoi"]), self.mask_threshold)
            if aoi.shape != gt.shape:
                aoi = F.interpolate(torch.from_numpy(aoi)[None, None].float(), size=gt.shape,
                                    mode="nearest")[0, 0].numpy() > 0
            overlap = int(np.count_nonzero(gt & aoi))
            need = max(1, math.ceil(self.min_overlap * gt.size))
            r["label"], r["rule"] = int(overlap >= need), "geometry"
            r["overlap"] = f"{overlap / gt.size:.6f}"

    def discover(self) -> list[Sample]:
        cat = self.category_dir()
        recs = self._records(cat)
        if self.aoi_dir is not None:
            self._aoi_from_dir(recs)
        elif self.require_aoi:
            raise DataError("data.require_aoi=true but no data.aoi_dir is given: set data.aoi_dir=/path/to/aoi_masks "
                            f"(mirroring {cat}) or data.require_aoi=false to estimate zipper AOIs")
        else:
            recs = self._aoi_estimated(recs)
        self._relabel(recs)
        samples = [Sample(r["image"], r["aoi"], r["label"]) for r in recs]
        self.extra = {r["image"]: {
            "type": r["type"], "mvtec_split": r["origin"], "mvtec_label": r["mvtec_label"], "rule": r["rule"],
            "overlap": r["overlap"], "relabelled": int(r["label"] != r["mvtec_label"]), "aoi_source": r["aoi_source"],
            "gt_mask": self._rel(r["gt"]) if r["gt"] is not None else ""} for r in recs}
        changed: dict[str, int] = {}
        for r in recs:
            if r["label"] != r["mvtec_label"]:
                changed[r["type"]] = changed.get(r["type"], 0) + 1
        info(f"MVTec AD {self.category}: {len(recs)} images pooled, {sum(r['mvtec_label'] for r in recs)} defective "
             f"by MVTec, {sum(r['label'] for r in recs)} after relabelling by {self.rule}"
             + (f" (to good: {changed})" if changed else ""))
        return stratified_split(samples, self.split or (0.7, 0.2, 0.1), self.seed)


# ----------------------------------------------------------------------------- offline augmented set
def main(argv: list[str] | None = None) -> int:
    from ceod.data.transforms import train_transform, write_augmented_set

    p = argparse.ArgumentParser(prog="python -m ceod.data.mvtec",
                                description="Write a deterministic augmented MVTec zipper set in the folder layout.")
    p.add_argument("--root", required=True, help="folder holding zipper/ (or zipper/ itself)")
    p.add_argument("--out", required=True, help="output folder (must be empty or absent)")
    p.add_argument("--n", type=int, default=400, help="images to write (default: the paper's 400)")
    p.add_argument("--aoi-dir", help="zipper AOI masks mirroring zipper/ (default: estimated)")
    p.add_argument("--relabel", default="auto", choices=["auto", "geometry", "type"])
    p.add_argument("--image-size", type=int, default=256)
    p.add_argument("--channels", type=int, default=1, choices=[1, 3])
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--no-originals", action="store_true", help="augment every image, sources included")
    p.add_argument("--overwrite", action="store_true")
    a = p.parse_args(argv)
    out = Path(a.out)
    try:
        if out.exists() and any(out.iterdir()) and not a.overwrite:
            raise DataError(f"output folder {out} exists and is not empty (pass --overwrite)")
        with tempfile.TemporaryDirectory(prefix="ceod-mvtec-") as audit:
            dm = MVTecZipperDataModule(a.root, aoi_dir=a.aoi_dir, relabel=a.relabel, image_size=a.image_size,
                                       channels=a.channels, seed=a.seed, augment=False, manifest_out=audit)
            dm.setup()
            items, loaders = [], []
            for split, ds in dm.datasets.items():
                for j, s in enumerate(ds.samples):
                    items.append((dm._rel(s.image), s.label, split))
                    loaders.append((ds, j))
            transform = train_transform(dm.size, **dm.aug)
            write_augmented_set(items, lambda i: loaders[i][0].raw(loaders[i][1]), out, a.n, transform, seed=a.seed,
                                keep_originals=not a.no_originals, overwrite=a.overwrite)
            shutil.copy(Path(audit) / "data_manifest.csv", out / "source_manifest.csv")
            if (Path(audit) / "aoi_preview.png").is_file():
                shutil.copy(Path(audit) / "aoi_preview.png", out / "aoi_preview.png")
    except CeodError as e:
        print(f"error: {e}", file=sys.stderr)
        return 2
    print(f"wrote {a.n} images to {out} (folder layout; train with data=folder data.root={out})")
    return 0


if __name__ == "__main__":
    sys.exit(main())
