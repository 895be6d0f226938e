"""A few dozen optimiser steps on a toy problem: CEOD moves the heat into the AOI, CE does not."""

from __future__ import annotations

import torch

from ceod.core.cam import grad_cam
from ceod.core.losses.ceod import CEODLoss
from ceod.core.metrics import AOIEnergy
from ceod.models.custom_cnn import CustomCNN


def toy_batch(n=32, size=32, seed=0):
    """Defective images carry a spot in the AOI (left half) AND an identical one outside (right half):
    both predict the label perfectly, so CE has no reason to prefer the AOI."""
    g = torch.Generator().manual_seed(seed)
    x = 0.1 * torch.rand(n, 1, size, size, generator=g)
    y = torch.arange(n) % 2
    mask = torch.zeros(n, size, size)
    mask[:, :, : size // 2] = 1
    for i in range(n):
        if y[i]:
            for lo in (0, size // 2):
                r, c = torch.randint(2, size - 6, (1,), generator=g).item(), lo + torch.randint(2, size // 2 - 6, (1,), generator=g).item()
                x[i, 0, r:r + 4, c:c + 4] += 1.0
    return x, mask, y


def train_and_measure(omega: float, steps: int = 40) -> float:
    torch.manual_seed(0)
    model = CustomCNN(in_chans=1, channels=(8, 8, 16, 16, 16, 16, 32, 32))
    loss_fn = CEODLoss(omega=omega, tau=0.0, filter_normalize="sum")
    opt = torch.optim.Adamax(model.parameters(), lr=0.01)
    x, mask, y = toy_batch()
    for _ in range(steps):
        logits, feats = model(x)
        out = loss_fn(logits, y, mask, features=feats, head_weight=model.cam_head_weight)
        opt.zero_grad()
        out.total.backward()
        opt.step()
    model.eval()
    xt, mt, yt = toy_batch(seed=1)
    logits, feats = model(xt)
    heat = grad_cam(feats, logits, 1, model.cam_head_weight, size=(32, 32)).detach()
    metric = AOIEnergy()
    metric.update(heat, mt, yt)
    return metric.compute().item()


def test_ceod_raises_aoi_energy_more_than_ce():
    ce = train_and_measure(0.0)
    ceod = train_and_measure(1.0)
    assert ceod > ce + 0.15 and ceod > 0.6, (ce, ceod)
