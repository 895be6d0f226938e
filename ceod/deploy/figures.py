"""Pictures of results, pure matplotlib/PIL/numpy/torch (no Lightning): heat-map overlays and grids, the
confusion matrix, the ROC curve; PNG writing.

Shapes: ``image`` C×H×W (any normalisation; shown min-max scaled), ``heat`` H×W (≥ 0),
``mask`` H×W (0/1). Figures are built with :class:`matplotlib.figure.Figure` (the Agg canvas; no
pyplot, no global backend state).
"""

from __future__ import annotations

from pathlib import Path
from typing import Sequence

import numpy as np
import torch
from matplotlib import colormaps
from matplotlib.figure import Figure

from ceod.data.layout import atomic_write  # the one atomic writer (temp file + rename, shared permissions)
from ceod.data.samples import CLASS_NAMES
JET = (colormaps["jet"](np.linspace(0, 1, 256))[:, :3] * 255).astype(np.uint8)  # 256×3 lookup table


def display_image(image: np.ndarray, stretch: bool = True) -> np.ndarray:
    """C×H×W → H×W×3 float in [0, 1] (grey repeated): min-max scaled per image (``stretch``, for
    normalised images) or clipped (images already in [0, 1])."""
    x = np.asarray(image, dtype=np.float32)
    x = x[:1] if x.shape[0] not in (1, 3) else x
    if stretch:
        lo, hi = float(x.min()), float(x.max())
        x = (x - lo) / (hi - lo) if hi > lo else np.zeros_like(x)
    else:
        x = np.clip(x, 0.0, 1.0)
    x = np.repeat(x, 3, axis=0) if x.shape[0] == 1 else x
    return x.transpose(1, 2, 0)


def overlay(image: np.ndarray, heat: np.ndarray, alpha: float = 0.45, stretch: bool = True) -> np.ndarray:
    """H×W×3 uint8: the image (see :func:`display_image`) with the heat map (scaled to its own max, jet
    colours) blended on top, more where it is hotter — :func:`overlays` for one image."""
    base = torch.from_numpy(np.ascontiguousarray(display_image(image, stretch).transpose(2, 0, 1)))
    heat = torch.as_tensor(np.asarray(heat, dtype=np.float32))
    return overlays(base[None], heat[None], {}, alpha)[0].numpy()


def heat_grid(images: np.ndarray, heats: np.ndarray, masks: np.ndarray | None, labels: Sequence[int],
              probs: Sequence[float], threshold: float = 0.5, tau: float = 0.5, ncols: int = 4,
              title: str = "") -> Figure:
    """N panels: Grad-CAM overlay of the defect class, AOI contour (green), hottest pixels (heat ≥ τ·max,
    magenta dashes), true label and P(defect) (red when the prediction at ``threshold`` is wrong).

    images N×C×H×W, heats N×H×W, masks N×H×W or None. The panels are tiles of one mosaic in one axes
    (one image, two contour calls): a figure of many axes takes seconds to build on a busy CPU.
    """
    n, (h, w) = len(images), heats.shape[-2:]
    ncols = max(1, min(ncols, n))
    nrows = max(1, -(-n // ncols))
    gap, band = max(2, w // 24), max(8, round(0.2 * h))  # between tiles; text band above each row
    height, width = nrows * (h + band) + gap, ncols * (w + gap) + gap
    mosaic = np.full((height, width, 3), 255, dtype=np.uint8)
    aoi, hot = np.zeros((height, width), np.float32), np.zeros((height, width), np.float32)
    head = 0.3 if title else 0.0
    fig = Figure(figsize=(2.4 * ncols, 2.4 * ncols * height / width + head))
    ax = fig.add_axes((0, 0, 1, 1 - head / fig.get_figheight()))
    ax.set_axis_off()
    for i in range(n):
        r, c = divmod(i, ncols)
        y, x = r * (h + band) + band, c * (w + gap) + gap
        mosaic[y:y + h, x:x + w] = overlay(images[i], heats[i])
        if masks is not None:
            aoi[y:y + h, x:x + w] = masks[i]
        top = float(heats[i].max())
        if top > 0:
            hot[y:y + h, x:x + w] = heats[i] / top
        wrong = (probs[i] >= threshold) != bool(labels[i])
        ax.text(x + w / 2, y - 1, f"{CLASS_NAMES[int(labels[i])]}  p={probs[i]:.2f}", ha="center", va="bottom",
                fontsize=9, color="red" if wrong else "black")
    ax.imshow(mosaic, interpolation="nearest")
    if aoi.any():
        ax.contour(aoi, levels=[0.5], colors="lime", linewidths=1.0)
    if tau > 0 and hot.any():
        ax.contour(hot, levels=[tau], colors="magenta", linewidths=1.0, linestyles="dashed")
    if title:
        fig.text(0.5, 1 - 0.05 / fig.get_figheight(), title, ha="center", va="top", fontsize=10)
    return fig


def confusion_figure(labels: Sequence[int], probs: Sequence[float], threshold: float = 0.5, title: str = "") -> Figure:
    """The confusion matrix at ``threshold`` (scikit-learn's display)."""
    from sklearn.metrics import ConfusionMatrixDisplay

    fig = Figure(figsize=(3.6, 3.2), layout="constrained")
    ax = fig.add_subplot()
    pred = (np.asarray(probs) >= threshold).astype(int)
    ConfusionMatrixDisplay.from_predictions(np.asarray(labels, dtype=int), pred, labels=[0, 1],
                                            display_labels=list(CLASS_NAMES), ax=ax, colorbar=False)
    ax.set_title(title or f"threshold {threshold:.2f}", fontsize=10)
    return fig


def roc_figure(labels: Sequence[int], probs: Sequence[float], title: str = "") -> Figure | None:
    """The ROC curve with its AUC (scikit-learn's display); None when only one class is present."""
    from sklearn.metrics import RocCurveDisplay

    y = np.asarray(labels, dtype=int)
    if len(set(y.tolist())) < 2:
        return None
    fig = Figure(figsize=(3.6, 3.4), layout="constrained")
    ax = fig.add_subplot()
    RocCurveDisplay.from_predictions(y, np.asarray(probs, dtype=float), ax=ax, name=CLASS_NAMES[1])
    ax.plot([0, 1], [0, 1], ls=":", c="grey")
    if title:
        ax.set_title(title, fontsize=10)
    return fig


def save_figure(fig: Figure, path: Path, dpi: int = 100) -> Path:
    """Write ``fig`` as a PNG atomically."""
    return atomic_write(path, lambda tmp: fig.savefig(tmp, format="png", dpi=dpi))


def save_png(array: np.ndarray, path: Path) -> Path:
    """Write an H×W×3 uint8 array as a PNG atomically (PIL; fast, for one overlay per image)."""
    return atomic_write(path, lambda tmp: write_png(array, Path(tmp)))


def overlays(images: torch.Tensor, heats: torch.Tensor, preprocess: dict, alpha: float = 0.45) -> torch.Tensor:
    """B×H×W×3 uint8 heat-map overlays, batched in torch on the images' device (the one blend; images
    clipped to [0, 1]): preprocessed images B×C×H×W (the ``preprocess`` record's normalisation undone here)
    and heats B×H×W (≥ 0, scaled to their maximum per image, jet colours, weight α·heat)."""
    x = images.float()
    if preprocess.get("mean") is not None:
        mean, std = (torch.tensor(preprocess[k], device=x.device).view(1, -1, 1, 1) for k in ("mean", "std"))
        x = x * std + mean
    base = x.clamp_(0, 1).mul_(255).permute(0, 2, 3, 1)  # B×H×W×C, C = 1 (broadcast) or 3
    rel = heats.float() / heats.flatten(1).amax(dim=1).clamp_min(1e-12).view(-1, 1, 1)
    lut = torch.from_numpy(JET).to(device=x.device, dtype=torch.float32)
    colour = torch.index_select(lut, 0, (rel * 255).round_().long().flatten()).view(*rel.shape, 3)
    weight = rel.mul_(alpha).unsqueeze_(-1)  # cold pixels show the image, hot ones the colour
    return colour.sub_(base).mul_(weight).add_(base).round_().clamp_(0, 255).to(torch.uint8)


def write_png(picture: np.ndarray, path: Path) -> None:
    """An H×W×3 uint8 picture as a fast-compressed PNG, parent folders created; not atomic (for files in a
    temporary folder that is renamed into place as a whole)."""
    from PIL import Image

    path.parent.mkdir(parents=True, exist_ok=True)
    Image.fromarray(picture).save(path, format="PNG", compress_level=1)
