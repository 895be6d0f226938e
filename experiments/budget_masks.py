"""Training masks for the annotation-budget study (issue 18, experiments/README.md §7): a copy of a generated
benchmark in which only the masks a user drew are exact and the rest are covered another way.

    python experiments/budget_masks.py --bench digits_decoy --fraction 0.02 --way fit --data-dir data/zoo \
        --out data/budget [--mask-seed 0]

The drawn masks are the ones ``data.mask_fraction=F data.mask_seed=S`` keeps (the same seeded, stratified
choice as the ``partial`` way). ``--way``:

* ``fit`` — the other training images get the masks ``python -m ceod.aoi fit`` (its defaults, every drawn mask
  used for training: ``--holdout 0``) predicts from the drawn ones;
* ``shared`` — every training image gets one shared mask, the pixel-wise majority of the drawn ones (what a
  user with a fixed camera would draw once: ``data.aoi_mask``).

Validation and test keep their true masks (the AOI and reliance metrics). The copy keeps the benchmark's
``meta.json``, so the study trains on it with the benchmark's own config and ``data.root=<copy>``; images are a
symlink to the original. Prints (and writes into the copy as ``budget.json``) the IoU of the covered training
masks against the true ones and the wall time.
"""

from __future__ import annotations

import argparse
import csv
import json
import shutil
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import numpy as np
from PIL import Image

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT / "experiments"))


def drawn_training_images(bench: str, fraction: float, mask_seed: int, data_dir: Path) -> tuple[Path, list, set]:
    """(generated root, training samples, images whose mask the budget keeps) through the DataModule itself."""
    from hydra import compose, initialize_config_dir
    from hydra.core.global_hydra import GlobalHydra
    from hydra.utils import instantiate

    import ceod.training.pipeline  # noqa: F401  (resolvers)
    from study import BENCHMARKS

    overrides = [*BENCHMARKS[bench], f"paths.data_dir={data_dir.resolve()}", f"data.mask_fraction={fraction}",
                 f"data.mask_seed={mask_seed}", "data.manifest_out=null"]
    GlobalHydra.instance().clear()
    with initialize_config_dir(config_dir=str(ROOT / "conf"), version_base="1.3"):
        cfg = compose(config_name="train", overrides=overrides)
    dm = instantiate(cfg.data)
    dm.prepare_data()
    dm.setup("fit")
    train = dm.samples["train"]
    return Path(dm.source.root), train, {s.image for s in train if s.mask is not None}


def iou(a: np.ndarray, b: np.ndarray) -> float:
    union = np.logical_or(a, b).sum()
    return float(np.logical_and(a, b).sum() / union) if union else 1.0


def read_mask(path: Path) -> np.ndarray:
    return np.asarray(Image.open(path).convert("L")) >= 128


def predicted(src: Path, drawn: set, mask_of: dict, size: int, seed: int, tmp: Path) -> dict:
    """image → predicted mask path: ``ceod.aoi fit`` on the drawn masks, predicting every image of ``src``."""
    masks = tmp / "drawn"
    for img in drawn:
        rel = img.relative_to(src / "images")
        (masks / rel).parent.mkdir(parents=True, exist_ok=True)
        shutil.copy(mask_of[img], masks / rel)
    cmd = [sys.executable, "-m", "ceod.aoi", "fit", "--images", str(src / "images"), "--masks", str(masks),
           "--out", str(tmp / "pred"), "--holdout", "0", "--size", str(size), "--seed", str(seed)]
    subprocess.run(cmd, check=True)
    return {img: tmp / "pred" / img.relative_to(src / "images") for img in mask_of}


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    p.add_argument("--bench", required=True)
    p.add_argument("--fraction", type=float, required=True)
    p.add_argument("--way", choices=("fit", "shared"), required=True)
    p.add_argument("--mask-seed", type=int, default=0)
    p.add_argument("--data-dir", type=Path, default=ROOT / "data" / "zoo")
    p.add_argument("--out", type=Path, default=ROOT / "data" / "budget")
    a = p.parse_args(argv)
    dest = a.out / f"{a.bench}_{a.way}_f{a.fraction:g}_m{a.mask_seed}"
    if (dest / "budget.json").is_file():
        print(f"[budget] {dest} exists", flush=True)
        return 0
    t0 = time.time()
    src, train, drawn = drawn_training_images(a.bench, a.fraction, a.mask_seed, a.data_dir)
    with open(src / "manifest.csv", newline="") as f:
        rows = list(csv.DictReader(f))
    mask_of = {(src / r["image"]).resolve(): src / r["mask"] for r in rows}
    train_imgs = {s.image.resolve() for s in train}
    drawn = {d.resolve() for d in drawn}
    covered = sorted(train_imgs - drawn) if a.way == "fit" else sorted(train_imgs)
    size = Image.open(next(iter(mask_of.values()))).size[0]
    with tempfile.TemporaryDirectory() as t:
        tmp = Path(t) / "copy"
        shutil.copytree(src / "masks", tmp / "masks")
        for name in ("manifest.csv", "meta.json", "geometry.jsonl"):
            shutil.copy(src / name, tmp / name)
        (tmp / "images").symlink_to((src / "images").resolve())
        if a.way == "fit":
            new = predicted(src, drawn, mask_of, size, a.mask_seed, Path(t))
            new_masks = {img: read_mask(new[img]) for img in covered}
        else:
            shared = np.mean([read_mask(mask_of[d]) for d in drawn], axis=0) >= 0.5
            new_masks = {img: shared for img in covered}
        ious = [iou(m, read_mask(mask_of[img])) for img, m in new_masks.items()]
        for img, m in new_masks.items():
            Image.fromarray(m.astype(np.uint8) * 255, mode="L").save(tmp / mask_of[img].relative_to(src))
        rec = {"bench": a.bench, "way": a.way, "fraction": a.fraction, "mask_seed": a.mask_seed,
               "drawn": len(drawn), "drawn_defective": sum(s.label for s in train if s.image.resolve() in drawn),
               "covered": len(covered), "train": len(train_imgs), "iou_mean": float(np.mean(ious)),
               "iou_min": float(np.min(ious)), "seconds": round(time.time() - t0, 1)}
        (tmp / "budget.json").write_text(json.dumps(rec, indent=1) + "\n")
        dest.parent.mkdir(parents=True, exist_ok=True)
        shutil.move(str(tmp), dest)
    print(f"[budget] {json.dumps(rec)}", flush=True)
    return 0


if __name__ == "__main__":
    sys.exit(main())
