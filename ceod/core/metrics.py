"""AOI-attention metrics (torchmetrics): where does the defect-class heat map fall?

Inputs: heat B×H×W (≥ 0, image size), AOI mask B×H×W (0/1), target B. Only defective images
(target == defect class) with a non-empty AOI count: an image without a mask (all-zero, e.g. under
``data.missing_masks=ce``) is left out, so a partially annotated split is scored on its annotated images.
An all-zero heat map scores 0 (a miss).
"""

from __future__ import annotations

import torch
from torch import Tensor
from torchmetrics import Metric
from torchmetrics.functional.classification import binary_roc


class _DefectiveImageMean(Metric):
    full_state_update = False
    higher_is_better = True

    def __init__(self, defect_class: int = 1, **kwargs) -> None:
        super().__init__(**kwargs)
        self.defect_class = defect_class
        self.add_state("total", default=torch.tensor(0.0, dtype=torch.float64), dist_reduce_fx="sum")
        self.add_state("count", default=torch.tensor(0, dtype=torch.long), dist_reduce_fx="sum")

    def score(self, heat: Tensor, mask: Tensor) -> Tensor:  # B×H×W, B×H×W -> B
        raise NotImplementedError

    def update(self, heat: Tensor, mask: Tensor, target: Tensor) -> None:
        mask = (mask > 0.5).to(heat.dtype)
        keep = (target == self.defect_class) & (mask.sum(dim=(-2, -1)) > 0)
        if keep.any():
            s = self.score(heat[keep].detach().float(), mask[keep].float())
            self.total += s.sum().double()
            self.count += int(keep.sum())

    def compute(self) -> Tensor:
        if self.count == 0:
            return torch.tensor(float("nan"))
        return (self.total / self.count).float()


class AOIEnergy(_DefectiveImageMean):
    """Mean over defective images of Σ heat·mask / Σ heat (share of heat inside the AOI)."""

    def score(self, heat: Tensor, mask: Tensor) -> Tensor:
        total = heat.sum(dim=(-2, -1))
        inside = (heat * mask).sum(dim=(-2, -1))
        return torch.where(total > 0, inside / torch.where(total > 0, total, torch.ones_like(total)), torch.zeros_like(total))


class PointingGame(_DefectiveImageMean):
    """Share of defective images whose heat-map argmax lies inside the AOI."""

    def score(self, heat: Tensor, mask: Tensor) -> Tensor:
        flat = heat.flatten(1)
        hit = mask.flatten(1).gather(1, flat.argmax(dim=1, keepdim=True))[:, 0]
        return hit * (flat.amax(dim=1) > 0).to(hit.dtype)


def youden_threshold(prob: Tensor, target: Tensor) -> float:
    """Decision threshold on P(defect) that maximises Youden's J = TPR − FPR on (prob B, target B ∈ {0,1}).

    Returned half-way between the chosen score and the next lower one, so ``prob > t`` and ``prob ≥ t``
    agree; 0.5 when either class is missing.
    """
    if prob.numel() == 0 or target.min() == target.max():
        return 0.5
    fpr, tpr, thr = binary_roc(prob.float(), target.long())
    k = int(torch.argmax(tpr - fpr))
    lower = thr[k + 1] if k + 1 < thr.numel() else torch.zeros(())
    return float((thr[k].clamp(max=1.0) + lower) / 2)
