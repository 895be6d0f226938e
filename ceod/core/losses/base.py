"""The contract shared by CEOD and the baselines: (images, logits, features, label, AOI mask) → loss.

Pure torch. A loss is an :class:`AttributionLoss` holding a :class:`ceod.core.losses.ceod.CEODOptions`; the
LightningModule calls ``prepare_inputs`` → model → ``forward`` in training and ``heat`` (the one place the
defect-class heat map is computed) for the AOI metrics in validation and test.
"""

from __future__ import annotations

from dataclasses import asdict
from typing import TYPE_CHECKING

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from ceod.core.cam import grad_cam
from ceod.core.reliance import consistency, fill_outside

if TYPE_CHECKING:
    from ceod.core.losses.ceod import CEODOptions, CEODOutput


def area_downsample(mask: Tensor, size: tuple[int, int]) -> Tensor:
    """B×H×W mask → B×h×w share of each CAM cell covered by the mask (adaptive average pooling)."""
    if tuple(mask.shape[-2:]) == tuple(size):
        return mask
    return F.adaptive_avg_pool2d(mask[:, None], tuple(size))[:, 0]


def annotated_partners(aoi_mask: Tensor) -> Tensor:
    """B random partners for the ``swap`` composites, drawn among the images with an AOI (non-empty mask, B×H×W):
    a partner without one could show a second product outside the image's AOI. Every image annotated: a random
    permutation of the batch."""
    n = aoi_mask.shape[0]
    annotated = aoi_mask.flatten(1).amax(dim=1) > 0
    if bool(annotated.all()) or not bool(annotated.any()):
        return torch.randperm(n, device=aoi_mask.device)
    idx = annotated.nonzero()[:, 0]
    return idx[torch.randint(len(idx), (n,), device=aoi_mask.device)]


class AttributionLoss(nn.Module):
    """The (images, logits, features, label, AOI mask) contract shared by CEOD and the baselines.

    ``prepare_inputs`` may change the training images before the forward pass (background
    randomisation, or marking them for input gradients); ``heat`` is the one place the defect-class
    heat map is computed (loss and metrics alike); ``forward`` returns a :class:`CEODOutput`.
    """

    needs_input_grad = False

    def __init__(self, options: CEODOptions) -> None:
        super().__init__()
        self.opts = options

    @property
    def omega(self) -> float:
        return self.opts.omega

    @property
    def defect_class(self) -> int:
        return self.opts.defect_class

    @property
    def cam_score(self) -> str:
        return self.opts.cam_score

    @property
    def uses_cam(self) -> bool:
        """True when the heat map is part of the gradient."""
        return self.opts.omega > 0

    def prepare_inputs(self, images: Tensor, aoi_mask: Tensor, target: Tensor) -> Tensor:
        """Training images B×C×H×W as the network should see them (unchanged here)."""
        return images

    def counterfactuals(self, images: Tensor, aoi_mask: Tensor, target: Tensor) -> tuple[Tensor, Tensor, Tensor, int]:
        """Training batch with ``outside_swap`` applied: (images, masks, targets, pairs). Each image's outside
        is replaced (another image's of the batch, a random partner, for ``swap``) in a share ``swap_p``; with
        ``consistency`` > 0 the composites are appended instead (2B images, pairs = B: image i and i + B).
        Off (``none``) or without grad: the batch as given, pairs = 0."""
        o = self.opts
        if o.outside_swap == "none" or not torch.is_grad_enabled():
            return images, aoi_mask, target, 0
        n = images.shape[0]
        partner = annotated_partners(aoi_mask)
        comp = fill_outside(images, aoi_mask, o.outside_swap, partner, o.swap_dilation, o.swap_feather)
        if o.consistency > 0:
            return torch.cat([images, comp]), torch.cat([aoi_mask, aoi_mask]), torch.cat([target, target]), n
        chosen = (torch.rand(n, device=images.device) < o.swap_p)[:, None, None, None]
        return torch.where(chosen, comp, images), aoi_mask, target, 0

    def heat(self, logits: Tensor, features: Tensor, head_weight: Tensor | None, size: tuple[int, int] | None,
             differentiable: bool) -> Tensor:
        """Defect-class heat map B×h×w (``size`` None: the CAM's own resolution) or B×H×W; with
        ``differentiable`` it stays in the graph (second order when the CAM needs autograd)."""
        with torch.set_grad_enabled(differentiable or head_weight is None):
            heat = grad_cam(features, logits, self.opts.defect_class, head_weight, create_graph=differentiable,
                            size=size, score=self.opts.cam_score, sign=self.opts.heat_sign)
        return heat if differentiable else heat.detach()

    def penalty(self, logits: Tensor, target: Tensor, heat: Tensor, aoi_mask: Tensor, images: Tensor | None,
                step: int | None) -> CEODOutput:
        raise NotImplementedError

    def forward(self, logits: Tensor, target: Tensor, aoi_mask: Tensor, features: Tensor | None = None,
                heat: Tensor | None = None, head_weight: Tensor | None = None, images: Tensor | None = None,
                step: int | None = None, pairs: int = 0) -> CEODOutput:
        """logits B×C, target B, aoi_mask B×H×W; ``features`` (B×K×h×w, part of the graph of ``logits``)
        or a precomputed ``heat``; ``images`` the (prepared) inputs, for input-gradient losses; ``pairs``
        (from :meth:`counterfactuals`): the first ``pairs`` images and the next ``pairs`` are image ↔ composite,
        and ``consistency`` · their mean symmetric KL is added."""
        if heat is None:
            if features is None:
                raise ValueError(f"{type(self).__name__} needs the CAM layer's features or a precomputed heat map")
            at_cam = self.opts.resolution == "cam"
            size = None if at_cam else tuple(aoi_mask.shape[-2:])
            heat = self.heat(logits, features, head_weight, size, self.uses_cam and torch.is_grad_enabled())
        if heat.shape != aoi_mask.shape:  # a CAM-resolution heat: compare with the area-downsampled mask
            aoi_mask = area_downsample(aoi_mask.to(heat.dtype), tuple(heat.shape[-2:]))
        out = self.penalty(logits, target, heat, aoi_mask, images, step)
        if pairs:
            out.consistency = consistency(logits[:pairs], logits[pairs:2 * pairs]).mean()
            out.total = out.total + self.opts.consistency * out.consistency
        return out

    def extra_repr(self) -> str:
        return ", ".join(f"{k}={v}" for k, v in asdict(self.opts).items())
