"""A preview grid of AOIs to check by eye: each tile keeps its image's aspect ratio and carries the file
name, defect type and label, the AOI outline (red) and the ground-truth defect outline (cyan)."""

from __future__ import annotations

import math
from pathlib import Path

import numpy as np

from ceod.data.layout import atomic_write
from ceod.data.samples import CLASS_NAMES, load_mask, read_array, to_image_tensor
from ceod.aoi.zipper import work_gray

THUMB = 256  # tiles are drawn from copies at most this wide


def pick_across_types(recs: list[dict], n: int, first: list[dict] | None = None) -> list[dict]:
    """Up to ``n`` records, ``first`` ones (e.g. flagged by a check) first, then round-robin over types."""
    chosen = list((first or [])[: n // 2])
    by_type: dict[str, list[dict]] = {}
    for r in recs:
        if r not in chosen:
            by_type.setdefault(r["type"], []).append(r)
    queues = [list(v) for _, v in sorted(by_type.items())]
    while len(chosen) < n and any(queues):
        for q in queues:
            if q and len(chosen) < n:
                step = max(1, len(q) // 3)  # spread over the folder, not its first files
                chosen.append(q.pop(min(len(q) - 1, step - 1)))
    return chosen


def _tile(r: dict, threshold: float) -> tuple[np.ndarray, np.ndarray, np.ndarray | None]:
    """(grey h×w, AOI h×w bool, defect h×w bool or None) at most THUMB wide."""
    gray = work_gray(to_image_tensor(read_array(r["image"]), 1), THUMB)
    size = gray.shape

    def small(path) -> np.ndarray:
        return load_mask(path, threshold, size).numpy() > 0

    aoi = small(r["aoi"]) if r.get("aoi") is not None else np.zeros(size, bool)
    gt = small(r["gt"]) if r.get("gt") is not None and Path(r["gt"]).is_file() else None
    return gray, aoi, gt


def write_preview(recs: list[dict], path: Path, cols: int = 4, threshold: float = 0.5) -> Path:
    """Draw ``recs`` (dicts with image, aoi, gt, type, label) into ``path`` (PNG), atomically."""
    import matplotlib

    matplotlib.use("Agg", force=False)
    import matplotlib.pyplot as plt

    cols = max(1, min(cols, len(recs)))
    rows = math.ceil(len(recs) / cols)
    fig, axes = plt.subplots(rows, cols, figsize=(3.0 * cols, 3.4 * rows), squeeze=False)
    for ax in axes.flat:
        ax.set_axis_off()
    for ax, r in zip(axes.flat, recs):
        gray, aoi, gt = _tile(r, threshold)
        ax.imshow(gray, cmap="gray", vmin=0, vmax=1, interpolation="antialiased")
        if aoi.any() and not aoi.all():
            ax.contour(aoi, levels=[0.5], colors="red", linewidths=1.0)
        if gt is not None and gt.any():
            ax.contour(gt, levels=[0.5], colors="cyan", linewidths=0.8)
        label = dict(enumerate(CLASS_NAMES)).get(r.get("label"), "?")
        name = f"{r['origin']}/{r['type']}/{Path(r['image']).name}" if "origin" in r else Path(r["image"]).name
        ax.set_title(f"{name}\n{r['type']} → {label}", fontsize=7)
    fig.suptitle("AOI (red), ground-truth defect (cyan)", fontsize=9)
    fig.tight_layout()
    try:
        return atomic_write(Path(path), lambda tmp: fig.savefig(tmp, dpi=80, format="png"))
    finally:
        plt.close(fig)
