"""Batch-norm running statistics recomputed over the training set (pure torch).

With few training images and a fast optimizer, BN running statistics (an exponential average over
the last batches, taken while the weights moved) can disagree badly with the batch statistics the
network was trained with: eval-mode predictions then collapse to one class. Recomputing them with
the final weights — an exact average over the training images, no momentum — removes the gap.
"""

from __future__ import annotations

from collections.abc import Iterable

import torch
from torch import Tensor, nn

_BN = (nn.BatchNorm1d, nn.BatchNorm2d, nn.BatchNorm3d)


def trainable_batchnorms(model: nn.Module) -> list[nn.modules.batchnorm._BatchNorm]:
    """BN layers that track running statistics and are being trained (frozen ones are left alone)."""
    return [m for m in model.modules() if isinstance(m, _BN) and m.track_running_stats
            and (m.weight is None or m.weight.requires_grad)]


@torch.no_grad()
def recompute_batchnorm_stats(model: nn.Module, batches: Iterable[Tensor]) -> int:
    """Reset the running mean/var of :func:`trainable_batchnorms` and re-estimate them as the exact
    (cumulative) average over ``batches`` (B×C×H×W images) in one forward pass each. Returns the
    number of images seen; with none, the statistics are left unchanged."""
    layers = trainable_batchnorms(model)
    if not layers:
        return 0
    saved = [(m, m.momentum, m.training, m.running_mean.clone(), m.running_var.clone(),
              m.num_batches_tracked.clone()) for m in layers]
    modes = {m: m.training for m in model.modules()}
    for m in layers:
        m.reset_running_stats()
        m.momentum = None  # cumulative moving average = exact mean over the batches
    model.eval()
    for m in layers:
        m.train()
    seen = 0
    try:
        for images in batches:
            model(images)
            seen += images.shape[0]
    finally:
        for m, momentum, _, mean, var, count in saved:
            m.momentum = momentum
            if seen == 0:
                m.running_mean.copy_(mean), m.running_var.copy_(var), m.num_batches_tracked.copy_(count)
        for m, mode in modes.items():
            m.training = mode
    return seen
