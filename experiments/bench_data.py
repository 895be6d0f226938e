"""Does loading keep up with training? DataModule images/s (0 and 2 workers) vs the custom CNN's training images/s.

    python experiments/bench_data.py                        # 400 images, 128 px, batch 32
    python experiments/bench_data.py --size 224 --source-size 1024 --epochs 4
    python experiments/bench_data.py --aoi-only                 # zipper AOI estimate, ms per 1024 px image

The zipper AOI estimate (``ceod.aoi.zipper``, used by ``+experiment=mvtec_zipper`` without AOIs)
is timed on one thread on generated 1024 px MVTec-like photos (target ≤ 50 ms per image), alone
and with the PNG decode it needs.

The data is a generated synthetic_zipper set in the folder layout (``--source-size`` > ``--size``
upsamples the files first, to mimic large camera images such as MVTec's 1024 px). The loader is
the DefectDataModule's (``data=folder``) train loader exactly as trained (joint augmentation on), timed per epoch:
"first" includes starting the workers, "steady" is the median of the later epochs (persistent
workers). ``cache=on`` is the default (files decoded and resized once at setup, during the
validation pass); ``cache=off`` decodes and resizes every image every epoch (the worst case);
``augment_on=device`` serves unaugmented cached batches and augments them batched on the model's
device (its cost is timed with the model: "CEOD + batch augment").
The model rate is a full training step (forward, loss, backward, Adamax) of the custom CNN on
random batches of the same size, on CUDA when available, for CE and CEOD. Loader and model are
timed one after the other, never concurrently.
"""

from __future__ import annotations

import argparse
import os
import statistics
import tempfile
import time
from pathlib import Path

import torch
from PIL import Image

from ceod.data.datamodule import DefectDataModule
from ceod.benchmarks.synthetic import config_for, generate
from ceod.data.transforms import batch_augment
from omegaconf import OmegaConf
from ceod.core.losses.ceod import CEODLoss
from ceod.models.custom_cnn import CustomCNN


_YAML = OmegaConf.load(Path(__file__).resolve().parents[1] / "conf" / "data" / "datamodule.yaml")
AUG = {k: _YAML[f"aug_{k}"] for k in ("scale", "ratio", "hflip", "vflip", "degrees")}  # the training data's defaults


def make_data(out: Path, n: int, size: int, source_size: int) -> Path:
    n_defect = round(n * 184 / 400)
    generate(out, config_for("synthetic_zipper", n_good=n - n_defect, n_defect=n_defect, size=size))
    if source_size != size:
        for p in sorted(out.rglob("*.png")):
            im = Image.open(p)
            resample = Image.NEAREST if "masks" in p.parts else Image.BICUBIC
            im.resize((source_size, source_size), resample).save(p)
    return out


def loader_rate(root: Path, size: int, batch: int, workers: int, cache: bool, on: str, epochs: int) -> dict:
    t0 = time.perf_counter()
    dm = DefectDataModule(str(root), image_size=size, batch_size=batch, num_workers=workers, cache=cache,
                          augment=True, augment_on=on, pin_memory="auto", persistent_workers=True)
    dm.setup("fit")
    setup_s = time.perf_counter() - t0
    loader = dm.train_dataloader()
    n = len(dm.datasets["train"])
    rates = []
    for _ in range(epochs):
        t = time.perf_counter()
        for b in loader:
            if dm.pin_memory:
                b["image"].cuda(non_blocking=True)
        rates.append(n / (time.perf_counter() - t))
    del loader
    return {"setup_s": setup_s, "n_total": sum(len(v) for v in dm.datasets.values()), "first": rates[0],
            "steady": statistics.median(rates[1:]) if len(rates) > 1 else rates[0]}


def model_rate(size: int, batch: int, omega: float, device: torch.device, steps: int, augment: bool = False) -> float:
    torch.manual_seed(0)
    model = CustomCNN(in_chans=1).to(device)
    opt = torch.optim.Adamax(model.parameters(), lr=2e-3)
    loss_fn = CEODLoss(omega=omega)
    x = torch.rand(batch, 1, size, size, device=device)
    mask = torch.zeros(batch, size, size, device=device)
    mask[:, :, size // 3: 2 * size // 3] = 1
    y = torch.randint(0, 2, (batch,), device=device)

    def step():
        xb, mb = batch_augment(x, mask, **AUG) if augment else (x, mask)
        logits, feats = model(xb)
        out = loss_fn(logits, y, mb, features=feats, head_weight=model.cam_head_weight)
        opt.zero_grad(set_to_none=True)
        out.total.backward()
        opt.step()

    for _ in range(3):
        step()
    if device.type == "cuda":
        torch.cuda.synchronize()
    t = time.perf_counter()
    for _ in range(steps):
        step()
    if device.type == "cuda":
        torch.cuda.synchronize()
    return steps * batch / (time.perf_counter() - t)


def aoi_estimate_ms(n: int = 8, size: int = 1024) -> tuple[float, float]:
    """Median ms per image of the zipper AOI estimate on one thread: (estimate alone, decode + estimate)."""
    from ceod.data.samples import load_image
    from ceod.aoi.zipper import estimate_zipper_aoi
    from ceod.benchmarks.zipper_photos import make_photo

    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    alone, with_decode = [], []
    try:
        with tempfile.TemporaryDirectory(prefix="ceod-bench-aoi-") as tmp:
            for i in range(n):
                path = Path(tmp) / f"{i}.png"
                Image.fromarray((make_photo(i, size, "rough")["image"] * 255).astype("uint8")).save(path)
                estimate_zipper_aoi(load_image(path, 1))  # warm-up
                t = time.perf_counter()
                img = load_image(path, 1)
                t1 = time.perf_counter()
                estimate_zipper_aoi(img)
                t2 = time.perf_counter()
                alone.append(1000 * (t2 - t1))
                with_decode.append(1000 * (t2 - t))
    finally:
        torch.set_num_threads(threads)
    return statistics.median(alone), statistics.median(with_decode)


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    p.add_argument("--n", type=int, default=400, help="images in the set (the paper's 400)")
    p.add_argument("--size", type=int, default=128, help="training image size")
    p.add_argument("--source-size", type=int, help="size of the files on disk (default: --size)")
    p.add_argument("--batch-size", type=int, default=32)
    p.add_argument("--epochs", type=int, default=5)
    p.add_argument("--workers", type=int, nargs="+", default=[0, 2])
    p.add_argument("--steps", type=int, default=10, help="timed model steps")
    p.add_argument("--aoi-only", action="store_true", help="only time the zipper AOI estimate")
    a = p.parse_args()
    alone, decoded = aoi_estimate_ms()
    print(f"aoi     zipper AOI estimate, 1024 px, 1 thread: {alone:5.1f} ms/image ({decoded:5.1f} ms with the PNG "
          f"decode)  {'OK' if alone <= 50 else 'ABOVE'} (target ≤ 50 ms)", flush=True)
    if a.aoi_only:
        return
    source = a.source_size or a.size
    device = torch.device("cuda" if torch.cuda.is_available() else "cpu")
    where = torch.cuda.get_device_name() if device.type == "cuda" else f"cpu ({torch.get_num_threads()} threads)"
    print(f"bench_data: {a.n} images, files {source} px → {a.size} px, batch {a.batch_size}, augment on; "
          f"model on {where}; {os.cpu_count()} CPU cores")
    with tempfile.TemporaryDirectory(prefix="ceod-bench-") as tmp:
        root = make_data(Path(tmp) / "data", a.n, a.size, source)
        rows = []
        for cache, on in ((True, "loader"), (False, "loader"), (True, "device")):
            for w in a.workers:
                r = loader_rate(root, a.size, a.batch_size, w, cache, on, a.epochs)
                rows.append((w, cache, on, r))
                print(f"loader  augment_on={on:<6} cache={'on ' if cache else 'off'} workers={w}  setup "
                      f"{r['setup_s']:5.2f} s  train images/s: first epoch {r['first']:7.0f}  steady {r['steady']:7.0f}",
                      flush=True)
    rates = {}
    for name, omega, aug in (("CE", 0.0, False), ("CEOD", 0.001, False), ("CEOD + batch augment", 0.001, True)):
        rates[name] = model_rate(a.size, a.batch_size, omega, device, a.steps, aug)
        print(f"model   custom CNN train step, {name:<21}  images/s: {rates[name]:8.0f}", flush=True)
    need = max(rates["CE"], rates["CEOD"])
    for w, cache, on, r in rows:
        if w == max(a.workers):
            ratio = r["steady"] / need
            print(f"ratio   loader (augment_on={on}, cache={'on' if cache else 'off'}, workers={w}, steady) / fastest "
                  f"model step: {ratio:6.1f}×  {'OK' if ratio >= 2 else 'BELOW'} (target ≥ 2×)")


if __name__ == "__main__":
    main()
