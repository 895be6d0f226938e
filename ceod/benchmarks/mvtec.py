"""MVTec AD zipper as a discovery source: pooled, relabelled (only defects on the zipper count), re-split.

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
2. **AOIs**, one of three sources: ``aoi_dir`` (a mask per image, hand-drawn, corrected estimates or
   written by ``python -m ceod.aoi fit``), ``aoi_mask`` (one mask for every image: fixed camera and
   fixture), or — neither given — estimated per image (:mod:`ceod.aoi.zipper`) into
   ``manifest_out/aoi_estimated/`` (a temporary folder, removed at exit, without ``manifest_out``).
3. **Relabel** (only defects on the zipper count). ``relabel: geometry``: an image is defective iff
   one of its connected ground-truth defect regions has ≥ ``min_share`` of its pixels inside the AOI
   (``combined`` images can carry their defects on the fabric only). ``relabel: type``: the per-type
   map ``type_labels`` (fabric_* → good). ``auto`` (default): geometry with ``aoi_dir``/``aoi_mask``,
   else type. ``data_manifest.csv`` in ``manifest_out`` records per image the type, the regions,
   their shares inside the AOI, the rule that decided, and whether the label changed.
4. **Sanity checks**: an AOI mostly on saturated background, an estimate that found no teeth texture,
   or geometry turning most teeth-type defects good, is a warning naming the images (an error with ``require_aoi: true``); the preview
   ``manifest_out/aoi_preview.png`` shows a sample across types with AOI and defect outlines.

CLI (:mod:`ceod.cli.mvtec`): ``python -m ceod.mvtec aoi --root ROOT --out DIR`` writes the estimated AOIs in the
``data.aoi_dir`` layout (to inspect, correct and reuse); ``python -m ceod.mvtec augment --root
ROOT --out OUT --n 400`` writes the paper's offline augmented set in the folder layout.
"""

from __future__ import annotations

import shutil
import tempfile
import weakref
from dataclasses import dataclass
from pathlib import Path

from lightning.pytorch.utilities import rank_zero_only

from ceod.aoi.preview import pick_across_types, write_preview
from ceod.data.sources import Context, Found
from ceod.aoi.mvtec import attach_aois, relabel, sanity_messages
from ceod.data.samples import IMAGE_SUFFIXES, Sample, index_masks, stratified_split
from ceod.errors import ConfigError, DataError
from ceod.console import info

MVTEC_URL = "https://www.mvtec.com/company/research/datasets/mvtec-ad"
DEFAULT_TYPE_LABELS = {"good": 0, "broken_teeth": 1, "combined": 1, "fabric_border": 0, "fabric_interior": 0,
                       "rough": 1, "split_teeth": 1, "squeezed_teeth": 1}
PREVIEW_NAME = "aoi_preview.png"


def category_dir(root: Path, category: str = "zipper") -> Path:
    """``root/category`` or ``root`` itself, whichever holds train/good and test/."""
    for cand in (root / category, root):
        if (cand / "train" / "good").is_dir() and (cand / "test").is_dir():
            return cand
    raise DataError(
        f"MVTec AD {category} not found under {root}: expected {root / category}/"
        "{train/good,test/<type>,ground_truth/<type>} — download MVTec AD from "
        f"{MVTEC_URL}, extract it and set data.root=/path/to/mvtec_anomaly_detection")


def records(cat: Path, type_labels: dict[str, int]) -> list[dict]:
    """One record per image: image, origin (train/test), type, gt (defect mask path or None)."""
    test = cat / "test"
    types = sorted(p.name for p in test.iterdir() if p.is_dir())
    unknown = [t for t in types if t not in type_labels]
    if unknown:
        raise DataError(f"unknown defect type folder(s) {unknown} in {test}; known: {sorted(type_labels)} "
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


def aois_from_dir(recs: list[dict], base: Path, category: str) -> None:
    """Set ``r["aoi"]`` from a folder mirroring the category folder; one error for missing masks."""
    if not base.is_dir():
        raise DataError(f"AOI folder not found: {base} (data.aoi_dir)")
    if (base / category / "test").is_dir() or (base / category / "train").is_dir():
        base = base / category
    index = index_masks(base)
    missing = []
    for r in recs:
        key = Path(r["origin"], r["type"], r["image"].stem)
        r["aoi"] = index.get(key)
        if r["aoi"] is None:
            missing.append(base / key.with_suffix(".png"))
    if missing:
        raise DataError(f"AOI mask missing for {len(missing)} image(s), first: expected {missing[0]} "
                        f"(data.aoi_dir mirrors {category}/: <aoi_dir>/test/<type>/NNN.png)")


@dataclass
class MVTecZipperSource:
    """MVTec AD zipper as a discovery source (see the module docstring)."""

    root: Path
    category: str = "zipper"
    aoi_dir: Path | None = None
    aoi_mask: Path | None = None
    require_aoi: bool = False
    relabel: str = "auto"
    min_share: float = 0.5
    type_labels: dict | None = None
    aoi_margin: float = 0.03
    aoi_preview: int = 16
    split: tuple[float, ...] | None = None
    seed: int = 0

    def __post_init__(self) -> None:
        self.root = Path(self.root)
        if self.aoi_dir and self.aoi_mask:
            raise ConfigError("set data.aoi_dir (a mask per image) or data.aoi_mask (one for all), not both")
        self.aoi_dir = Path(self.aoi_dir) if self.aoi_dir else None
        self.aoi_mask = Path(self.aoi_mask) if self.aoi_mask else None
        if self.relabel not in ("auto", "geometry", "type"):
            raise ConfigError(f"data.relabel must be one of ['auto', 'geometry', 'type'], got {self.relabel!r}")
        if not 0 < self.min_share <= 1:
            raise ConfigError(f"data.min_share must lie in (0, 1] (share of a defect region inside the AOI), "
                              f"got {self.min_share}")
        self.type_labels = {str(k): int(v) for k, v in (self.type_labels or DEFAULT_TYPE_LABELS).items()}
        bad = {k: v for k, v in self.type_labels.items() if v not in (0, 1)}
        if bad or self.type_labels.get("good", 0) != 0:
            raise ConfigError(f"data.type_labels must map defect types to 0 or 1 (good → 0), got {self.type_labels}")
        if not 0 <= self.aoi_margin < 0.5:
            raise ConfigError(f"data.aoi_margin must lie in [0, 0.5) (fraction of the width), got {self.aoi_margin}")
        self.split = tuple(float(v) for v in self.split) if self.split is not None else None
        given = self.aoi_dir is not None or self.aoi_mask is not None
        self.rule = "geometry" if self.relabel == "geometry" or (self.relabel == "auto" and given) else "type"

    @staticmethod
    def check_root(data: dict) -> None:
        """The paths of a data config (``data.root``, ``aoi_dir``, ``aoi_mask``), checked at start-up before
        anything is built (:func:`ceod.training.schema.check_data_root`); a missing one is one DataError line."""
        category_dir(Path(data["root"]), str(data.get("category") or "zipper"))
        if data.get("aoi_dir") and not Path(data["aoi_dir"]).is_dir():
            raise DataError(f"AOI folder not found: {data['aoi_dir']} (data.aoi_dir)")
        if data.get("aoi_mask") and not Path(data["aoi_mask"]).is_file():
            raise DataError(f"AOI mask not found: {data['aoi_mask']} (data.aoi_mask)")

    def _aoi_source(self, recs: list[dict], cat: Path, run_dir: Path | None) -> tuple[str, Path | None]:
        """Point each record at its AOI file; → (source name, folder for estimates or None)."""
        if self.aoi_dir is not None:
            aois_from_dir(recs, self.aoi_dir, self.category)
            return "aoi_dir", None
        if self.aoi_mask is not None:
            if not self.aoi_mask.is_file():
                raise DataError(f"AOI mask not found: {self.aoi_mask} (data.aoi_mask)")
            for r in recs:
                r["aoi"] = self.aoi_mask
            return "aoi_mask", None
        if self.require_aoi:
            raise DataError("data.require_aoi=true but no AOI is given: set data.aoi_dir=/path/to/aoi_masks "
                            f"(mirroring {cat}) or data.aoi_mask=<one mask for all>, or data.require_aoi=false "
                            "to estimate zipper AOIs")
        if run_dir is not None and rank_zero_only.rank == 0:  # other DDP ranks use their own tmp dir
            out = run_dir / "aoi_estimated"
            shutil.rmtree(out, ignore_errors=True)
        else:
            out = Path(tempfile.mkdtemp(prefix="ceod-aoi-"))
            weakref.finalize(self, shutil.rmtree, str(out), True)
        return "estimated", out

    def _check_aois(self, recs: list[dict], source: str, out: Path | None, ctx: Context) -> None:
        """Sanity warnings (errors with require_aoi) and the preview grid."""
        where = ctx.run_dir if ctx.run_dir is not None else out
        preview = where / PREVIEW_NAME if where is not None else None
        msgs, flagged = sanity_messages(recs, self.rule, self.type_labels,
                                        str(preview) if preview else f"{PREVIEW_NAME} (set data.manifest_out)")
        if preview is not None and self.aoi_preview and rank_zero_only.rank == 0 and (source == "estimated" or msgs):
            write_preview(pick_across_types(recs, self.aoi_preview, flagged), preview, threshold=ctx.mask_threshold)
        if source == "estimated":
            info(f"no data.aoi_dir: zipper AOIs estimated per image into {out}"
                 + (f"; check them in {preview}" if preview else ""))
        for m in msgs:
            if self.require_aoi:
                raise DataError(m + " (data.require_aoi=true)")
            info(f"warning: {m}")

    def discover(self, ctx: Context) -> Found:
        cat = category_dir(self.root, self.category)
        recs = records(cat, self.type_labels)
        source, out = self._aoi_source(recs, cat, ctx.run_dir)
        recs = attach_aois(recs, "estimated" if source == "estimated" else "given", out, self.aoi_margin,
                           ctx.mask_threshold, geometry=self.rule == "geometry", skip_corrupt=ctx.skip_corrupt)
        relabel(recs, self.rule, self.type_labels, self.min_share)
        self._check_aois(recs, source, out, ctx)
        changed: dict[str, int] = {}
        for r in recs:
            if r["label"] != r["mvtec_label"]:
                changed[r["type"]] = changed.get(r["type"], 0) + 1
        n_defective = sum(r["label"] for r in recs)
        info(f"MVTec AD {self.category}: {len(recs)} images pooled, {sum(r['mvtec_label'] for r in recs)} defective "
             f"by MVTec, {n_defective} after relabelling by {self.rule}"
             + (f" (to good: {changed})" if changed else ""))
        samples = stratified_split([Sample(r["image"], r["aoi"], r["label"]) for r in recs],
                                   self.split or (0.7, 0.2, 0.1), self.seed)
        hint = (f"relabelling by geometry left {n_defective} defective image(s): check the AOIs ({PREVIEW_NAME} in "
                "the run dir) or set data.relabel=type") if self.rule == "geometry" else ""
        return Found(samples, self.root, shared_mask=self.aoi_mask is not None, columns=audit_columns(recs, source),
                     split_hint=hint)


def audit_columns(recs: list[dict], source: str) -> dict[Path, dict]:
    """Per image, the data_manifest.csv columns that say how it was labelled."""
    return {r["image"]: {
        "type": r["type"], "mvtec_split": r["origin"], "mvtec_label": r["mvtec_label"], "rule": r["rule"],
        "regions": r["regions"], "region_shares": r["region_shares"],
        "relabelled": int(r["label"] != r["mvtec_label"]), "aoi_source": source,
        "aoi_saturated": r["saturated"], "gt_mask": r["gt"]} for r in recs}
