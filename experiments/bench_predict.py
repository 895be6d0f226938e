"""Is ``ceod.deploy.predict`` as fast as the bare model? Images/s on CPU, same batch size, with and without heat maps.

    python experiments/bench_predict.py                   # 512 images, 128 px, batch 32, custom CNN
    python experiments/bench_predict.py --ckpt run/checkpoints/last.ckpt --images DIR

"bare forward": the network alone on batches already decoded, resized and normalised in memory (no
grad). "predict": ``ceod.deploy.predict.predict`` end to end from the image files — decode, resize, normalise,
forward, (Grad-CAM + overlay PNG per image), CSV — timed from the call to its return (the checkpoint
and model loading included). Without ``--ckpt`` the checkpoint is an untrained custom CNN with an
inference record (speed does not depend on the weights). Each variant runs ``--repeats`` times,
interleaved; the best rate is reported (this machine is shared), in images per wall-clock second and
per CPU-second of this process (all threads: the cost, which other jobs on the machine disturb less).
"""

from __future__ import annotations

import argparse
import tempfile
import time
from pathlib import Path

import torch

from ceod.benchmarks.synthetic import config_for, generate
from ceod.deploy.network import as_input, for_inference
from ceod.deploy.predict import ImageFiles, build_model, find_images, load_checkpoint, predict


def untrained_checkpoint(path: Path, size: int) -> Path:
    """A ceod checkpoint of an untrained custom CNN (what the InferenceRecord callback writes)."""
    from ceod.models.custom_cnn import CustomCNN

    net = CustomCNN(in_chans=1)
    record = {"model": {"_target_": "ceod.models.custom_cnn.CustomCNN", "in_chans": 1, "num_classes": 2},
              "preprocess": {"image_size": [size, size], "channels": 1, "mean": [0.45], "std": [0.15]},
              "cam_score": "logit", "defect_class": 1}
    torch.save({"state_dict": {f"model.{k}": v for k, v in net.state_dict().items()}, "ceod_inference": record}, path)
    return path


def bare_rate(ckpt: Path, images: str, batch: int, optimised: bool = False, device: str = "cpu") -> tuple[float, float]:
    """(images/s, images per CPU-second) of the network alone on preprocessed in-memory batches: as
    trained (eager, fp32, NCHW), or ``optimised`` as predict runs it (BN folded, channels-last)."""
    checkpoint = load_checkpoint(ckpt)
    model = build_model(checkpoint)
    data = ImageFiles([p for p, _ in find_images(images)], checkpoint["ceod_inference"]["preprocess"])
    x = torch.stack([data[i]["image"] for i in range(len(data))])
    model, x = model.to(device), x.to(device)
    if optimised:
        model, x = for_inference(model, device), as_input(x)
    with torch.no_grad():
        model(x[:batch])  # warm-up
        _sync(device)
        t, cpu = time.perf_counter(), time.process_time()
        for i in range(0, len(x), batch):
            model(x[i:i + batch])
        _sync(device)
        return len(x) / (time.perf_counter() - t), len(x) / (time.process_time() - cpu)


def _sync(device: str) -> None:
    if device.startswith("cuda"):
        torch.cuda.synchronize()


def predict_rate(ckpt: Path, images: str, out: Path, batch: int, heatmaps: bool, device: str = "cpu",
                 workers: int = 0) -> tuple[float, float]:
    """(images/s, images per CPU-second) of ``ceod.deploy.predict`` end to end."""
    t, cpu = time.perf_counter(), time.process_time()
    r = predict(str(ckpt), images, str(out), heatmaps=heatmaps, batch_size=batch, device=device, progress=False,
                num_workers=workers)
    return r["n"] / (time.perf_counter() - t), r["n"] / (time.process_time() - cpu)


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--images", help="image folder (default: a generated synthetic_zipper set)")
    ap.add_argument("--ckpt", help="a ceod checkpoint (default: an untrained custom CNN)")
    ap.add_argument("--n", type=int, default=512)
    ap.add_argument("--size", type=int, default=128)
    ap.add_argument("--batch", type=int, default=32)
    ap.add_argument("--repeats", type=int, default=3)
    ap.add_argument("--device", default="cpu", help="cpu | cuda (the bare forward runs there too)")
    ap.add_argument("--workers", type=int, default=0, help="predict's num_workers (image decoding processes)")
    args = ap.parse_args()
    with tempfile.TemporaryDirectory() as tmp:
        tmp = Path(tmp)
        images = args.images
        if images is None:
            generate(tmp / "data", config_for("synthetic_zipper", n_good=args.n // 2, n_defect=args.n - args.n // 2,
                                              size=args.size))
            images = str(tmp / "data" / "images")
        ckpt = Path(args.ckpt) if args.ckpt else untrained_checkpoint(tmp / "model.ckpt", args.size)
        rates: dict[str, list[tuple[float, float]]] = {"bare forward": [], "bare forward, optimised": [],
                                                       "predict, heatmaps=false": [], "predict, heatmaps=true": []}
        dev, nw = args.device, args.workers
        predict_rate(ckpt, images, tmp / "warm", args.batch, False, dev, nw)  # warm-up (imports, caches)
        for k in range(args.repeats):
            rates["bare forward"].append(bare_rate(ckpt, images, args.batch, device=dev))
            rates["bare forward, optimised"].append(bare_rate(ckpt, images, args.batch, True, dev))
            rates["predict, heatmaps=false"].append(predict_rate(ckpt, images, tmp / f"a{k}", args.batch, False, dev, nw))
            rates["predict, heatmaps=true"].append(predict_rate(ckpt, images, tmp / f"b{k}", args.batch, True, dev, nw))
    n = len(find_images(images)) if args.images else args.n
    print(f"{n} images, batch {args.batch}, {args.device}, predict num_workers={args.workers}, "
          f"{torch.get_num_threads()} threads; best of {args.repeats}")
    bare = [max(v[k] for v in rates["bare forward"]) for k in (0, 1)]
    print(f"{'variant':<26}{'images/s':>10}{'÷ bare':>8}{'img/CPU-s':>11}{'÷ bare':>8}   all runs (images/s)")
    for name, values in rates.items():
        wall, cpu = (max(v[k] for v in values) for k in (0, 1))
        print(f"{name:<26}{wall:>10.1f}{wall / bare[0]:>8.2f}{cpu:>11.1f}{cpu / bare[1]:>8.2f}   "
              + ", ".join(f"{v[0]:.1f}" for v in values))


if __name__ == "__main__":
    main()
