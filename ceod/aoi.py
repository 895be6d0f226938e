"""AOI masks for every image from a few drawn ones: fit a small segmentation model, write the rest.

    python -m ceod.aoi fit --images DIR --masks DIR --out DIR [--model forest|net] [--holdout K]

``--images``: the images (any depth; a ``ground_truth`` folder — MVTec's defect masks — is skipped).
``--masks``: AOI masks for a few of them (~8), mirroring ``--images`` (same relative path and stem,
any image suffix, ``_mask`` stem suffix accepted). The model is fitted on all drawn masks but ``K``
held out (default a quarter, at least 1), on greyscale copies at most ``--size`` px wide; the
held-out IoU is printed. Models:

* ``forest`` (default): a per-pixel random forest (scikit-learn) on multi-scale filter responses
  (Gaussian means and standard deviations, directional gradient energies, Laplacians; scipy) — the
  ilastik recipe: every drawn pixel is a training sample, so 8 masks are plenty, in seconds;
* ``net``: a timm MobileNetV3-Small encoder with torchvision's LR-ASPP head, trained from scratch
  (no pretrained weights can be downloaded) with joint flips / crops / rotations — needs many more
  steps for the same IoU on a CPU (see ``experiments/bench_aoi_fit.py``).

``--out`` receives a mask for every image (drawn ones copied as they are, the others predicted and
upsampled to the image's size) in the same layout, so it serves as ``data.aoi_dir`` (MVTec:
``--images ROOT/zipper``) or ``data.mask_dir`` (``data=folder``), plus ``aoi_fit.json`` (masks used,
held-out IoU, settings).
"""

from __future__ import annotations

import argparse
import json
import sys
import time
from pathlib import Path

import numpy as np
import torch
import torch.nn.functional as F
from PIL import Image
from scipy import ndimage

from ceod.data.layout import atomic_directory, require_empty
from ceod.data.samples import IMAGE_SUFFIXES, index_masks, load_image, load_mask, resize_image, resize_mask
from ceod.data.transforms import apply_joint, train_transform
from ceod.data.zipper_aoi import work_gray
from ceod.cli import exit_status, one_thread
from ceod.errors import ConfigError, DataError

MODELS = ("forest", "net")


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


# ----------------------------------------------------------------------------- forest
def pixel_features(g: np.ndarray) -> np.ndarray:
    """h×w grey in [0, 1] → h×w×20 filter responses at scales 1–8 px (texture, edges, orientation)."""
    fs = []
    for s in (1, 2, 4, 8):
        m = ndimage.gaussian_filter(g, s)
        fs += [m, np.sqrt(np.clip(ndimage.gaussian_filter(g * g, s) - m * m, 0, None))]
    gy, gx = np.abs(ndimage.sobel(g, 0)), np.abs(ndimage.sobel(g, 1))
    for s in (2, 4, 8):
        ey, ex = ndimage.gaussian_filter(gy, s), ndimage.gaussian_filter(gx, s)
        fs += [ey, ex, ey - ex, ndimage.gaussian_laplace(g, s / 2)]
    return np.stack(fs, -1).astype(np.float32)


class ForestAOI:
    """Per-pixel random forest on :func:`pixel_features`; ``predict`` → h×w AOI probability."""

    def __init__(self, seed: int = 0, samples: int = 60_000, trees: int = 60) -> None:
        from sklearn.ensemble import RandomForestClassifier

        self.seed, self.samples = seed, samples
        self.forest = RandomForestClassifier(trees, max_depth=14, min_samples_leaf=5, n_jobs=1, random_state=seed)

    def fit(self, data: list[tuple[np.ndarray, np.ndarray]]) -> None:
        x = np.concatenate([pixel_features(g).reshape(-1, 20) for g, _ in data])
        y = np.concatenate([m.ravel() for _, m in data])
        idx = np.random.default_rng(self.seed).permutation(len(y))[: self.samples]
        self.forest.fit(x[idx], y[idx])

    def predict(self, g: np.ndarray) -> np.ndarray:
        p = self.forest.predict_proba(pixel_features(g).reshape(-1, 20))
        p = p[:, list(self.forest.classes_).index(True)] if True in self.forest.classes_ else np.zeros(len(p))
        return ndimage.gaussian_filter(p.reshape(g.shape), 2)


# ----------------------------------------------------------------------------- net
class AOINet(torch.nn.Module):
    """A timm MobileNetV3-Small encoder (strides 4 and 16) with torchvision's LR-ASPP head, one output
    channel, random weights (nothing downloaded). B×3×H×W → B×1×H×W logits."""

    def __init__(self, encoder: str = "mobilenetv3_small_100") -> None:
        super().__init__()
        import timm
        from torchvision.models.segmentation.lraspp import LRASPPHead

        self.encoder = timm.create_model(encoder, features_only=True, out_indices=(1, 4), output_stride=16,
                                         pretrained=False)
        low, high = self.encoder.feature_info.channels()
        self.head = LRASPPHead(low, high, 1, 128)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        low, high = self.encoder(x)
        out = self.head({"low": low, "high": high})
        return F.interpolate(out, size=x.shape[-2:], mode="bilinear", align_corners=False)


class NetAOI:
    """:class:`AOINet` trained with joint augmentation, BCE + soft Dice, AdamW one-cycle; BatchNorm
    statistics recomputed on the unaugmented training images at the end."""

    def __init__(self, seed: int = 0, steps: int = 600, batch: int = 8, lr: float = 3e-3) -> None:
        self.seed, self.steps, self.batch, self.lr = seed, steps, batch, lr
        torch.manual_seed(seed)
        self.model = AOINet()

    @staticmethod
    def _input(g: np.ndarray) -> torch.Tensor:
        x = torch.from_numpy(g)[None]
        return ((x - x.mean()) / (x.std() + 1e-6)).expand(3, -1, -1).contiguous()

    def fit(self, data: list[tuple[np.ndarray, np.ndarray]]) -> None:
        size = data[0][0].shape
        pairs = [(self._input(resize_image(torch.from_numpy(g)[None], size)[0].numpy()),
                  resize_mask(torch.from_numpy(m).float(), size)) for g, m in data]
        transform = train_transform(size, scale=(0.5, 1.0), hflip=0.5, vflip=0.5, degrees=10)
        gen = torch.Generator().manual_seed(self.seed)
        opt = torch.optim.AdamW(self.model.parameters(), lr=self.lr, weight_decay=1e-4)
        sched = torch.optim.lr_scheduler.OneCycleLR(opt, max_lr=self.lr, total_steps=self.steps, pct_start=0.15)
        self.model.train()
        for _ in range(self.steps):
            idx = torch.randint(len(pairs), (self.batch,), generator=gen).tolist()
            xs, ys = zip(*(apply_joint(transform, *pairs[i]) for i in idx))
            logits = self.model(torch.stack(xs))[:, 0]
            y = torch.stack(ys).float()
            p = logits.sigmoid()
            dice = 1 - (2 * (p * y).sum((1, 2)) + 1) / (p.sum((1, 2)) + y.sum((1, 2)) + 1)
            loss = F.binary_cross_entropy_with_logits(logits, y) + dice.mean()
            opt.zero_grad(set_to_none=True)
            loss.backward()
            opt.step()
            sched.step()
        for mod in self.model.modules():  # running statistics of the images as they will be seen
            if isinstance(mod, torch.nn.modules.batchnorm._BatchNorm):
                mod.reset_running_stats()
                mod.momentum = None
        with torch.no_grad():
            self.model(torch.stack([x for x, _ in pairs]))
        self.model.eval()

    @torch.no_grad()
    def predict(self, g: np.ndarray) -> np.ndarray:
        return self.model(self._input(g)[None])[0, 0].sigmoid().numpy()


# ----------------------------------------------------------------------------- command
def _gray(path: Path, width: int) -> np.ndarray:
    return work_gray(load_image(path, 1), width)


def predict_mask(model, image: Path, width: int) -> np.ndarray:
    """H×W bool AOI at the image's own size (probability upsampled bilinearly, threshold 0.5)."""
    prob = torch.from_numpy(np.ascontiguousarray(model.predict(_gray(image, width)), dtype=np.float32))
    h, w = load_image(image, 1).shape[-2:]
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


def run_fit(a: argparse.Namespace) -> str:
    """The ``fit`` command; → its summary line."""
    if a.size < 32 or a.steps < 1 or a.holdout < -1 or a.model not in MODELS:
        raise ConfigError(f"--size must be ≥ 32, --steps ≥ 1, --holdout ≥ 0 and --model one of {list(MODELS)}; "
                          f"got {a.size}, {a.steps}, {a.holdout}, {a.model!r}")
    out = Path(a.out)
    require_empty(out, a.overwrite)
    found, drawn = find_pairs(Path(a.images), Path(a.masks))
    held, train = _split(sorted(drawn), a.holdout, a.seed)
    t0 = time.perf_counter()
    model = ForestAOI(a.seed) if a.model == "forest" else NetAOI(a.seed, a.steps)
    data = []
    for key in train:
        g = _gray(found[key], a.size)
        data.append((g, load_mask(drawn[key], 0.5, g.shape).numpy() > 0))
    with one_thread():
        model.fit(data)
    with one_thread():
        scores = [iou(predict_mask(model, found[key], a.size), load_mask(drawn[key]).numpy() > 0) for key in held]
    held_iou = float(np.mean(scores)) if scores else float("nan")
    with atomic_directory(out, class_dirs=False) as tmp, one_thread():
        for key, image in found.items():
            dest = tmp / key.with_suffix(".png")
            dest.parent.mkdir(parents=True, exist_ok=True)
            mask = load_mask(drawn[key]).numpy() > 0 if key in drawn else predict_mask(model, image, a.size)
            Image.fromarray(mask.astype(np.uint8) * 255).save(dest)
        report = {"images": len(found), "drawn": len(drawn), "trained_on": [str(x) for x in train],
                  "held_out": [str(x) for x in held], "held_out_iou": round(held_iou, 4) if held else None,
                  "model": a.model,
                  "size": a.size, "steps": a.steps if a.model == "net" else None, "seed": a.seed,
                  "seconds": round(time.perf_counter() - t0, 1)}
        (tmp / "aoi_fit.json").write_text(json.dumps(report, indent=2) + "\n")
    held_text = f"held-out IoU {held_iou:.3f}" if held else "held-out IoU n/a"
    return (f"{held_text} ({len(held)} of {len(drawn)} drawn masks held out, {a.model} trained on "
            f"{len(train)}, {report['seconds']:.0f} s); wrote {len(found)} AOI masks to {out} "
            f"({len(found) - len(drawn)} predicted) — use it as data.aoi_dir (MVTec) or data.mask_dir (data=folder)")


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(prog="python -m ceod.aoi", description=__doc__.split("\n")[0])
    sub = p.add_subparsers(dest="command", required=True)
    f = sub.add_parser("fit", help="fit on a few drawn AOI masks, write masks for every image")
    f.add_argument("--images", required=True, help="image folder (any depth)")
    f.add_argument("--masks", required=True, help="drawn AOI masks mirroring --images (a few, ~8)")
    f.add_argument("--out", required=True, help="output folder (must be empty or absent)")
    f.add_argument("--model", default="forest", help="forest (default) | net")
    f.add_argument("--holdout", type=int, default=-1, help="drawn masks held out to measure IoU (default: a quarter)")
    f.add_argument("--size", type=int, default=256, help="working width in px (images are downscaled to it)")
    f.add_argument("--steps", type=int, default=600, help="net: training steps (batch 8)")
    f.add_argument("--seed", type=int, default=0)
    f.add_argument("--overwrite", action="store_true")
    a = p.parse_args(argv)
    return exit_status(lambda: run_fit(a))


if __name__ == "__main__":
    sys.exit(main())
