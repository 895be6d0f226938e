"""Models return ``(logits B×C, features B×K×h×w)`` — the features feed Grad-CAM.

A model whose head is "global average pool → linear" exposes that linear weight (C×K) as
``cam_head_weight``, which selects the analytic CAM path; otherwise it is ``None``. Ask through
:func:`cam_head_weight` (any module: one without the property has no closed form).

Inputs are the pixels the data gives; a pretrained timm model normalises them itself (buffers
``input_mean``/``input_std``). Pure PyTorch + timm: no Lightning or Hydra import here; messages go
to the ``logging`` module (printed as ``[ceod] …`` in a training run by :mod:`ceod.console`).
"""

from __future__ import annotations

from torch import Tensor, nn


def cam_head_weight(model: nn.Module) -> Tensor | None:
    """The C×K weight of ``model``'s GAP → linear head (selects the closed-form CAM), or None: the model has
    no such head (or declares none), and its Grad-CAM takes the autograd path. The one place that asks."""
    return getattr(model, "cam_head_weight", None)
