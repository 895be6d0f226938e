"""Training-step cost of CEOD vs CE: time and memory, interleaved, median of N steps.

    python experiments/bench_step.py                       # custom CNN 128 px + EfficientNet-B0 224 px, batch 32
    python experiments/bench_step.py --models custom_cnn --reps 15
    python experiments/bench_step.py --models tf_efficientnet_lite0 --size 128 --finetune transfer last_n full \
        --variants ce ceod --threads 1                     # the pretrained Lite0's regimes

A step is forward → loss → backward → Adamax step, on random images with a random AOI band.
Variants run interleaved (CE, CEOD, CE, CEOD, …) so machine noise hits both alike; ratios are
CEOD/CE medians from the same run. Memory: on CUDA the peak allocated bytes of the step; on CPU
the peak bytes of tensors saved for backward (activation memory — where CEOD's extra graph would
show; torch does not track CPU allocations itself).

Variants: ``ce_plain`` (F.cross_entropy alone), ``ce`` (ceod's CE: ω = 0, the OD still computed
without a graph for the train/od log), ``ceod_paper`` and ``ceod`` (``conf/loss/ceod_paper.yaml`` and
``conf/loss/ceod.yaml``, the recommended setting; analytic CAM when the head is GAP→linear, else autograd with
create_graph), ``ceod_cam_res`` (``ceod`` with the overlap at the CAM's resolution) and ``ceod_autograd``
(``ceod`` with the autograd Grad-CAM forced, second-order graph), ``swap`` / ``ceod_swap`` (``conf/loss/swap.yaml``,
``ceod_swap.yaml``: counterfactual images made inside the step) and ``swap_kl`` (``swap`` with the consistency
term: the composites added to the batch). ``--finetune`` freezes the timm model as
``finetune=transfer|last_n`` would (n = 20; the optimizer gets the trainable parameters only), one table each.
"""

from __future__ import annotations

import argparse
import statistics
import time

import torch
from torch import nn

from pathlib import Path

from hydra.utils import instantiate
from omegaconf import OmegaConf

from ceod.core.losses.ceod import CEODLoss

CONF = Path(__file__).resolve().parents[1] / "conf" / "loss"


def loss_from_yaml(name: str, **over) -> CEODLoss:
    """The loss of conf/loss/<name>.yaml with ``over`` applied."""
    return instantiate(OmegaConf.merge(loss_from_yaml_cfg(name), over))


def loss_from_yaml_cfg(name: str):
    """conf/loss/<name>.yaml with its defaults list followed."""
    cfg = OmegaConf.load(CONF / f"{name}.yaml")
    for parent in cfg.pop("defaults", []):
        if parent != "_self_":
            cfg = OmegaConf.merge(loss_from_yaml_cfg(parent), cfg)
    return cfg


class SavedBytes:
    """Peak bytes of tensors saved for backward (unique storages) while active."""

    def __init__(self) -> None:
        self.current = self.peak = 0
        self.seen: set[int] = set()

    def pack(self, t: torch.Tensor):
        key = t.untyped_storage().data_ptr()
        if key not in self.seen:
            self.seen.add(key)
            self.current += t.untyped_storage().nbytes()
            self.peak = max(self.peak, self.current)
        return t

    @staticmethod
    def unpack(t):
        return t


def build(name: str, channels: int, regime: str = "full") -> nn.Module:
    """The model, frozen per ``regime`` (random weights: timing does not depend on their values)."""
    from ceod.models.finetune import apply_finetune

    if name == "custom_cnn":
        from ceod.models.custom_cnn import CustomCNN

        model = CustomCNN(in_chans=channels)
    else:
        from ceod.models.timm_backbone import TimmClassifier

        model = TimmClassifier(name=name, in_chans=channels, pretrained=False)
    return apply_finetune(model, regime, n=20, verbose=False)


def step(model, opt, loss_fn, x, mask, y, head_weight, device, dtype=None) -> tuple[float, int]:
    meter = SavedBytes()
    if device.type == "cuda":
        torch.cuda.synchronize()
        torch.cuda.reset_peak_memory_stats()
    t0 = time.perf_counter()
    with torch.autograd.graph.saved_tensors_hooks(meter.pack, meter.unpack), \
            torch.autocast(device.type, dtype=dtype or torch.float32, enabled=dtype is not None):
        pairs = 0
        if loss_fn is not None:  # counterfactual images (loss.outside_swap) are made inside the timed step
            x, mask, y, pairs = loss_fn.counterfactuals(x, mask, y)
        logits, feats = model(x)
        if loss_fn is None:
            total = nn.functional.cross_entropy(logits, y)
        else:
            total = loss_fn(logits, y, mask, features=feats, head_weight=head_weight, pairs=pairs).total
    opt.zero_grad(set_to_none=True)
    total.backward()
    opt.step()
    if device.type == "cuda":
        torch.cuda.synchronize()
        mem = torch.cuda.max_memory_allocated()
    else:
        mem = meter.peak
    return time.perf_counter() - t0, mem


def bench(model_name: str, size: int, batch: int, reps: int, warmup: int, device: torch.device,
          dtype: torch.dtype | None = None, regime: str = "full", only: list[str] | None = None) -> None:
    torch.manual_seed(0)
    channels = 1 if model_name == "custom_cnn" else 3
    model = build(model_name, channels, regime).to(device).train()
    opt = torch.optim.Adamax([p for p in model.parameters() if p.requires_grad], lr=0.002)
    x = torch.rand(batch, channels, size, size, device=device)
    mask = torch.zeros(batch, size, size, device=device)
    mask[:, :, size // 3: size // 2] = 1
    y = (torch.arange(batch, device=device) % 2)
    analytic = getattr(model, "cam_head_weight", None)
    variants = {
        "ce_plain": (None, None),
        "ce": (loss_from_yaml("ce"), analytic),
        "ceod_paper": (loss_from_yaml("ceod_paper"), analytic),
        "ceod": (loss_from_yaml("ceod"), analytic),
        "ceod_cam_res": (loss_from_yaml("ceod", resolution="cam"), analytic),
        "ceod_autograd": (loss_from_yaml("ceod"), None),
        "swap": (loss_from_yaml("swap"), analytic),  # CE on counterfactual images (issue 16)
        "ceod_swap": (loss_from_yaml("ceod_swap"), analytic),
        "swap_kl": (loss_from_yaml("swap", consistency=1.0), analytic),  # 2B images per step
    }
    variants = {k: v for k, v in variants.items() if k == "ce_plain" or not only or k in only}
    times = {k: [] for k in variants}
    mems = {k: [] for k in variants}
    for r in range(warmup + reps):
        for name, (loss_fn, hw) in variants.items():
            hw_now = model.cam_head_weight if hw is not None else None  # fresh after each step
            t, m = step(model, opt, loss_fn, x, mask, y, hw_now, device, dtype)
            if r >= warmup:
                times[name].append(t)
                mems[name].append(m)
    med = {k: statistics.median(v) for k, v in times.items()}
    mem = {k: max(v) for k, v in mems.items()}
    head = "analytic" if analytic is not None else "autograd"
    print(f"\n{model_name} ({regime}) {size}px batch {batch} on {device.type} ({dtype or 'fp32'} autocast), median of {reps} (after {warmup} warm-up), "
          f"CAM path for 'ceod': {head}")
    print("| variant | step time (ms) | time / ce_plain | memory (MiB) | memory / ce_plain |")
    print(f"|---|---|---|---|---|")
    for k in variants:
        print(f"| {k} | {med[k] * 1e3:.1f} | {med[k] / med['ce_plain']:.3f} | {mem[k] / 2**20:.1f} "
              f"| {mem[k] / mem['ce_plain']:.3f} |")


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    p.add_argument("--models", nargs="+", default=["custom_cnn", "efficientnet_b0"])
    p.add_argument("--size", type=int, help="image size (default: 128 custom_cnn, 224 timm models)")
    p.add_argument("--batch", type=int, default=32)
    p.add_argument("--threads", type=int, default=0, help="torch.set_num_threads (0: leave as is)")
    p.add_argument("--reps", type=int, default=11)
    p.add_argument("--warmup", type=int, default=2)
    p.add_argument("--device", default="cuda" if torch.cuda.is_available() else "cpu")
    p.add_argument("--amp", choices=["none", "fp16", "bf16"], default="none", help="autocast forward + loss")
    p.add_argument("--finetune", nargs="+", default=["full"], choices=["full", "last_n", "transfer"],
                   help="training regimes to time (timm models; last_n with n = 20)")
    p.add_argument("--variants", nargs="+", default=None, help="loss variants to time besides ce_plain (default: all)")
    a = p.parse_args()
    if a.threads:
        torch.set_num_threads(a.threads)
    print(f"torch {torch.__version__}, threads {torch.get_num_threads()}")
    for name in a.models:
        size = a.size or (128 if name == "custom_cnn" else 224)
        for regime in a.finetune:
            bench(name, size, a.batch, a.reps, a.warmup, torch.device(a.device),
                  {"none": None, "fp16": torch.float16, "bf16": torch.bfloat16}[a.amp], regime, a.variants)


if __name__ == "__main__":
    main()
