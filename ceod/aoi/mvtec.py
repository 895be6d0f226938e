"""Zipper AOIs for MVTec AD records — from masks or estimated — relabelling by defect region, sanity checks.

A *record* is a dict per image: ``image`` (path), ``origin`` (train/test), ``type`` (MVTec folder),
``gt`` (ground-truth defect mask path or None), and after :func:`attach_aois` ``aoi`` (mask path),
``aoi_source``, ``saturated`` (share of the AOI on saturated background) and, for geometry,
``shares`` (per connected defect region: the share of its pixels inside the AOI).
"""

from __future__ import annotations

import os
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import numpy as np
import torch
from PIL import Image
from scipy import ndimage

from ceod.console import progress_bar
from ceod.data.samples import binarize_mask, read_array, resize_mask, to_image_tensor
from ceod.aoi.zipper import background, estimate_zipper_aoi, work_gray
from ceod.errors import DataError

SATURATED_MAX = 0.5  # warn when more of an AOI than this lies on saturated background
MIN_CONFIDENCE = 3.0  # warn when an estimate's teeth score is below this many times the fabric's
EIGHT = np.ones((3, 3), bool)


def _resized(mask: np.ndarray, shape: tuple[int, int]) -> np.ndarray:
    """H×W bool → ``shape`` bool (nearest)."""
    if mask.shape == tuple(shape):
        return mask
    return resize_mask(torch.from_numpy(mask).float(), tuple(shape)).numpy() > 0


def region_shares(defect: np.ndarray, aoi: np.ndarray) -> list[float]:
    """Per 8-connected region of the H×W bool ``defect``: the share of its pixels inside ``aoi`` (any size)."""
    aoi = _resized(aoi, defect.shape)
    labels, n = ndimage.label(defect, structure=EIGHT)
    if n == 0:
        return []
    sizes = np.bincount(labels.ravel(), minlength=n + 1)[1:]
    inside = np.bincount(labels[aoi].ravel(), minlength=n + 1)[1:]
    return [round(float(i / s), 4) for i, s in zip(inside, sizes)]


def _one(r: dict, source: str, out: Path | None, margin: float, threshold: float, geometry: bool) -> dict:
    """Attach the AOI of one record (reading/estimating/writing it); problems come back as ``error``."""
    try:
        img = to_image_tensor(read_array(r["image"]), 1, r["image"])
    except DataError as e:
        return {"error": str(e)}
    g = work_gray(img)
    res: dict = {}
    if source == "estimated":
        est = estimate_zipper_aoi(img, margin=margin)
        aoi, res["confidence"] = est.mask, round(est.confidence, 2)
        path = out / r["origin"] / r["type"] / f"{r['image'].stem}.png"
        path.parent.mkdir(parents=True, exist_ok=True)
        Image.fromarray(aoi.astype(np.uint8) * 255).save(path)
        res["aoi"] = path
    else:
        try:
            aoi = binarize_mask(read_array(r["aoi"]), threshold)
        except DataError as e:
            return {"error": str(e).replace("image", "AOI mask", 1)}
    small = _resized(aoi, g.shape)
    res["saturated"] = round(float(background(g)[small].mean()), 4) if small.any() else 0.0
    if geometry and r["type"] != "good":
        if r["gt"] is None or not r["gt"].is_file():
            return {"error": f"ground-truth mask missing for {r['image']} (expected {r['gt']}); relabel by "
                             "geometry needs it (or set data.relabel=type)"}
        res["shares"] = region_shares(binarize_mask(read_array(r["gt"]), 0.5), aoi)
    return res


def attach_aois(recs: list[dict], source: str, out: Path | None = None, margin: float = 0.03,
                threshold: float = 0.5, geometry: bool = True, skip_corrupt: bool = False) -> list[dict]:
    """Fill each record's AOI fields (see the module docstring); ``source``: ``estimated`` (written to
    ``out``, mirroring MVTec's tree) or ``given`` (``r["aoi"]`` already set). → the kept records."""
    threads = max(1, min(4, os.cpu_count() or 1))
    args = (source, out, margin, threshold, geometry)
    desc = "estimate AOIs" if source == "estimated" else "read AOIs"
    with ThreadPoolExecutor(threads) as pool:
        results = list(progress_bar(pool.map(lambda r: _one(r, *args), recs), desc, len(recs), "image"))
    kept = []
    for r, res in zip(recs, results):
        if "error" in res:
            if not (skip_corrupt and "cannot read" in res["error"]):
                hint = " (data.skip_corrupt=true skips unreadable files)" if "cannot read" in res["error"] else ""
                raise DataError(res["error"] + hint)
            continue
        r.update(res)
        kept.append(r)
    return kept


def relabel(recs: list[dict], rule: str, type_labels: dict[str, int], min_share: float) -> None:
    """Set ``label``, ``rule`` (the rule that decided, in words), ``regions`` and ``mvtec_label`` per record.

    ``geometry``: defective iff some connected defect region has ≥ ``min_share`` of its pixels in the
    AOI. ``type``: ``type_labels[type]``.
    """
    for r in recs:
        r["mvtec_label"] = int(r["type"] != "good")
        shares = r.get("shares")
        r["regions"] = len(shares) if shares is not None else ""
        r["region_shares"] = ";".join(f"{v:.3f}" for v in shares) if shares else ""
        if r["type"] == "good":
            r["label"], r["rule"] = 0, "good"
        elif rule == "type":
            r["label"], r["rule"] = type_labels[r["type"]], f"type: {r['type']} -> {type_labels[r['type']]}"
        else:
            r["label"] = int(any(v >= min_share for v in shares))
            r["rule"] = f"geometry: a defect region >= {min_share:g} inside the AOI"


def sanity_messages(recs: list[dict], rule: str, type_labels: dict[str, int], preview: str) -> tuple[list[str], list[dict]]:
    """Warnings about AOIs that cannot be right, naming images and pointing at ``preview``. → (messages,
    flagged records)."""
    def names(rs: list[dict]) -> str:
        shown = ", ".join(f"{r['origin']}/{r['type']}/{r['image'].name}" for r in rs[:4])
        return shown + (f" … (+{len(rs) - 4} more)" if len(rs) > 4 else "")

    msgs, flagged = [], []
    sat = [r for r in recs if r.get("saturated", 0) > SATURATED_MAX]
    if sat:
        msgs.append(f"the AOI of {len(sat)} image(s) lies mostly (> {SATURATED_MAX:.0%}) on saturated background, not "
                    f"on the zipper: {names(sat)} — check {preview}")
        flagged += sat
    weak = [r for r in recs if r.get("confidence", MIN_CONFIDENCE) < MIN_CONFIDENCE]
    if weak:
        msgs.append(f"no zipper teeth texture found in {len(weak)} image(s) (teeth score < {MIN_CONFIDENCE:g}× the "
                    f"fabric's): {names(weak)} — their estimated AOI is a guess; check {preview}")
        flagged += [r for r in weak if r not in flagged]
    teeth = [r for r in recs if type_labels.get(r["type"]) == 1 and r["type"] != "combined"]
    lost = [r for r in teeth if r["label"] == 0]
    if rule == "geometry" and teeth and len(lost) > len(teeth) / 2:
        msgs.append(f"relabelling by geometry turns {len(lost)} of {len(teeth)} teeth-type defects good (their defect "
                    f"regions lie outside the AOI): {names(lost)} — the AOIs probably miss the zipper; check "
                    f"{preview} (or set data.relabel=type)")
        flagged += [r for r in lost if r not in flagged]
    return msgs, flagged
