"""``python -m ceod.aoi fit`` at full size: held-out IoU from 8 drawn masks, and wall time (target ≥ 0.9, ≤ 5 min).

    python experiments/bench_aoi_fit.py                       # both models, both data sets
    python experiments/bench_aoi_fit.py --models net --data photos --steps 600

Data with a known AOI: the synthetic zipper set (128 px, ``ceod.benchmarks.synthetic``) and MVTec-like zipper
photos (256 px, bent zippers, background margins; ``ceod.benchmarks.zipper_photos``). 8 masks are "drawn"
(copied from the truth, spread over the set); the command holds 2 of them out and prints their IoU;
this script also scores every predicted mask against the truth. Wall time is the whole command
(features or training, prediction, writing), on however many cores the machine gives it; the 1-minute
load average before and after each run is printed beside it (other processes sharing the cores).
"""

from __future__ import annotations

import argparse
import os
import shutil
import tempfile
import time
from contextlib import redirect_stdout
from io import StringIO
from pathlib import Path

import numpy as np
from PIL import Image

from ceod.cli.aoi import main as aoi_main
from ceod.benchmarks.synthetic import config_for, generate
from ceod.benchmarks.zipper_photos import make_photo


def synthetic(out: Path, n: int) -> tuple[Path, Path]:
    root = generate(out, config_for("synthetic_zipper", n_good=n // 2, n_defect=n - n // 2, size=128))
    return root / "images", root / "masks"


def photos(out: Path, n: int) -> tuple[Path, Path]:
    for i in range(n):
        p = make_photo(9000 + i, 256, ["good", "rough", "combined", "fabric_interior"][i % 4])
        for sub, arr in (("images", p["image"]), ("masks", p["aoi"])):
            (out / sub).mkdir(parents=True, exist_ok=True)
            img = (arr * 255).astype(np.uint8) if arr.dtype != bool else arr.astype(np.uint8) * 255
            Image.fromarray(img).save(out / sub / f"{i:04d}.png")
    return out / "images", out / "masks"


def run(images: Path, truth: Path, work: Path, model: str, steps: int | None) -> dict:
    drawn = work / "drawn"
    masks = sorted(truth.rglob("*.png"))
    for m in masks[:: max(1, len(masks) // 8)][:8]:
        (drawn / m.relative_to(truth)).parent.mkdir(parents=True, exist_ok=True)
        shutil.copy(m, drawn / m.relative_to(truth))
    buf = StringIO()
    t = time.perf_counter()
    args = ["fit", "--images", str(images), "--masks", str(drawn), "--out", str(work / "out"), "--model", model]
    with redirect_stdout(buf):
        rc = aoi_main(args + (["--steps", str(steps)] if steps else []))
    wall = time.perf_counter() - t
    assert rc == 0, buf.getvalue()
    held = float(buf.getvalue().split("held-out IoU ")[1].split()[0])
    ious = []
    for m in masks:
        if not (drawn / m.relative_to(truth)).exists():
            a, b = np.asarray(Image.open(m)) > 0, np.asarray(Image.open(work / "out" / m.relative_to(truth))) > 0
            ious.append((a & b).sum() / (a | b).sum())
    return {"held": held, "mean": float(np.mean(ious)), "min": float(np.min(ious)), "n": len(ious), "wall": wall}


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    p.add_argument("--n", type=int, default=100, help="images per data set")
    p.add_argument("--models", nargs="+", default=["net", "forest"])
    p.add_argument("--data", nargs="+", default=["synthetic", "photos"])
    p.add_argument("--steps", type=int, default=None, help="net training steps (default: the command's)")
    a = p.parse_args()
    print(f"bench_aoi_fit: {a.n} images per set, 8 drawn masks (2 held out by the command); {os.cpu_count()} CPU cores")
    for data in a.data:
        with tempfile.TemporaryDirectory(prefix="ceod-aoifit-") as tmp:
            images, truth = (synthetic if data == "synthetic" else photos)(Path(tmp) / "data", a.n)
            for model in a.models:
                load = os.getloadavg()[0]
                r = run(images, truth, Path(tmp) / model, model, a.steps)
                print(f"{data:<10} {model:<7} held-out IoU {r['held']:.3f}  predicted vs truth: mean {r['mean']:.3f} "
                      f"min {r['min']:.3f} (n={r['n']})  wall {r['wall']:6.1f} s (load {load:.2f}→{os.getloadavg()[0]:.2f})  "
                      f"{'OK' if r['held'] >= 0.9 and r['wall'] <= 300 else 'MISS'} (≥ 0.9, ≤ 300 s)", flush=True)


if __name__ == "__main__":
    main()
