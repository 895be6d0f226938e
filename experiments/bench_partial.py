"""Does a partially annotated batch cost more per training step than a fully annotated one? (issue 18)

    OMP_NUM_THREADS=1 python experiments/bench_partial.py --size 64 --reps 15 --warmup 3

A step is what ``CEODModule.training_step`` does: prepare_inputs → model → loss → backward → Adamax step, on
random B×1×H×W images with an AOI band, for each mask-taking loss (``conf/loss/<name>.yaml``). "full": every
image has its mask; "partial": only a stratified ``--fraction`` of the batch has one, the rest carry the
all-zero mask a ``data.mask_fraction`` / ``data.missing_masks=ce`` run gives them. Variants run interleaved
(full, partial, full, …) so machine noise hits both alike; the table gives medians and partial ÷ full.
"""

from __future__ import annotations

import argparse
import statistics
import sys
import time
from pathlib import Path

import torch

sys.path.insert(0, str(Path(__file__).resolve().parent))
from bench_step import build, loss_from_yaml  # noqa: E402

LOSSES = ("ceod", "energy", "rrr", "bg_random")


def train_step(model, opt, loss_fn, images, mask, y) -> float:
    """One training step as the LightningModule runs it; → seconds."""
    t0 = time.perf_counter()
    x = loss_fn.prepare_inputs(images, mask, y)
    logits, feats = model(x)
    out = loss_fn(logits, y, mask, features=feats, head_weight=getattr(model, "cam_head_weight", None), images=x)
    opt.zero_grad(set_to_none=True)
    out.total.backward()
    opt.step()
    return time.perf_counter() - t0


def batches(batch: int, size: int, fraction: float) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor, torch.Tensor]:
    """(images B×1×H×W, full masks B×H×W, partial masks B×H×W, labels B): the same images and labels, the
    partial masks zero outside a share ``fraction`` of each class."""
    g = torch.Generator().manual_seed(0)
    images = torch.rand(batch, 1, size, size, generator=g)
    y = torch.arange(batch) % 2
    full = torch.zeros(batch, size, size)
    full[:, :, size // 3: size // 2] = 1
    partial = full.clone()
    for label in (0, 1):
        idx = (y == label).nonzero()[:, 0]
        partial[idx[int(round(fraction * len(idx))):]] = 0
    return images, full, partial, y


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    p.add_argument("--size", type=int, default=64)
    p.add_argument("--batch", type=int, default=32)
    p.add_argument("--fraction", type=float, default=0.1)
    p.add_argument("--reps", type=int, default=15)
    p.add_argument("--warmup", type=int, default=3)
    p.add_argument("--losses", nargs="+", default=list(LOSSES))
    a = p.parse_args()
    torch.manual_seed(0)
    images, full, partial, y = batches(a.batch, a.size, a.fraction)
    print(f"torch {torch.__version__}, threads {torch.get_num_threads()}; custom_cnn {a.size}px batch {a.batch}, "
          f"masks on {int((partial.flatten(1).amax(1) > 0).sum())} of {a.batch} images (partial), "
          f"median of {a.reps} after {a.warmup} warm-up")
    print("| loss | full (ms) | partial (ms) | partial / full |")
    print("|---|---|---|---|")
    for name in a.losses:
        loss_fn = loss_from_yaml(name)
        model = build("custom_cnn", 1).train()
        opt = torch.optim.Adamax(model.parameters(), lr=0.002)
        times = {"full": [], "partial": []}
        for r in range(a.warmup + a.reps):
            for key, mask in (("full", full), ("partial", partial)):
                t = train_step(model, opt, loss_fn, images, mask, y)
                if r >= a.warmup:
                    times[key].append(t)
        f, q = (statistics.median(times[k]) for k in ("full", "partial"))
        print(f"| {name} | {f * 1e3:.1f} | {q * 1e3:.1f} | {q / f:.3f} |", flush=True)


if __name__ == "__main__":
    main()
