"""The eval-mode network for scoring: batch norm folded into the convolution before it, channels-last.

Both are standard inference rewrites that leave the outputs equal up to float rounding (≈ 1e-6
relative): an eval-mode ``Conv2d → BatchNorm2d`` is one affine map, so the pair becomes one
convolution (``torch.nn.utils.fusion.fuse_conv_bn_eval``) and the batch norm an ``nn.Identity`` (the
module indices stay, so a CAM layer chosen by position is still the same activation); NHWC memory
lets oneDNN / cuDNN pick their faster convolution kernels. ``python -m ceod.predict`` uses it;
``experiments/bench_predict.py`` measures it against the network as trained.
"""

from __future__ import annotations

import copy

import torch
from torch import Tensor, nn
from torch.nn.utils.fusion import fuse_conv_bn_eval


def fold_batchnorm(model: nn.Module) -> int:
    """Fold, in place, every ``Conv2d`` directly followed by a plain ``BatchNorm2d`` with running
    statistics inside an ``nn.Sequential`` (the model must be in eval mode); → the number folded.
    Subclasses of BatchNorm2d (timm's BatchNormAct2d carries an activation) are left alone."""
    if model.training:
        raise ValueError("fold_batchnorm needs a model in eval mode (training-mode BN uses batch statistics)")
    folded = 0
    for seq in [m for m in model.modules() if isinstance(m, nn.Sequential)]:
        for i in range(len(seq) - 1):
            conv, bn = seq[i], seq[i + 1]
            if type(conv) is nn.Conv2d and type(bn) is nn.BatchNorm2d and bn.track_running_stats \
                    and bn.running_mean is not None:
                seq[i], seq[i + 1] = fuse_conv_bn_eval(conv, bn), nn.Identity()
                folded += 1
    return folded


def for_inference(model: nn.Module, device: torch.device | str = "cpu") -> nn.Module:
    """A copy of ``model`` in eval mode on ``device``, batch norm folded, parameters channels-last.
    Feed it :func:`as_input` batches (B×C×H×W); it returns what ``model`` returns."""
    net = copy.deepcopy(model).eval()
    fold_batchnorm(net)
    return net.to(device=device, memory_format=torch.channels_last)


def as_input(images: Tensor) -> Tensor:
    """B×C×H×W images in the channels-last layout :func:`for_inference` networks run fastest on."""
    return images.contiguous(memory_format=torch.channels_last)
