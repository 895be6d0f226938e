"""Differentiable Grad-CAM, pure torch (no Lightning, no Hydra).

Shapes: ``features`` B×K×h×w (activations of the last conv layer), ``logits`` B×C.
Grad-CAM of class ``c``: α_k = mean_ij ∂logit_c/∂A_kij, heat = ReLU(Σ_k α_k A_k) (B×h×w).

Two paths give the same heat:

* general: α from ``torch.autograd.grad(..., create_graph=True)`` so a loss on the heat
  can be back-propagated (second order) into the network;
* analytic: for a "global average pool → linear" head, ∂logit_c/∂A_kij = W[c,k]/P exactly
  (P = h·w), so α_k = W[c,k]/P needs no autograd call at all.

:func:`grad_cam` picks the analytic path when it is given the head weight. :class:`HeatSpec` names *which*
heat map (class, score, sign) — the target object every user of the defect-class heat holds (the loss, the
metrics, the figures, predict, export; recorded in checkpoints) — and :meth:`HeatSpec.heat` is the one call.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch
import torch.nn.functional as F
from torch import Tensor


FP16_CAM_SCALE = 1024.0
CAM_SCORES = ("logit", "margin")
HEAT_SIGNS = ("relu", "abs")


def _promote(t: Tensor) -> Tensor:
    """Half-precision tensors to fp32; fp32/fp64 unchanged."""
    return t.float() if t.dtype in (torch.float16, torch.bfloat16) else t


def _class_index(target: int | Tensor, batch: int, device: torch.device) -> Tensor:
    if isinstance(target, Tensor):
        idx = target.to(device=device, dtype=torch.long).reshape(-1)
        if idx.numel() == 1:
            idx = idx.expand(batch)
        if idx.numel() != batch:
            raise ValueError(f"target has {idx.numel()} entries for a batch of {batch}")
        return idx
    return torch.full((batch,), int(target), dtype=torch.long, device=device)


def class_score(logits: Tensor, idx: Tensor, score: str = "logit") -> Tensor:
    """Per-sample score B whose Grad-CAM is taken: the class logit, or its margin over the mean of the
    other logits (``margin``; for two classes the log-odds, which is all a softmax classifier uses)."""
    chosen = logits.gather(1, idx[:, None])[:, 0]
    if score == "logit":
        return chosen
    if score == "margin":
        others = (logits.sum(dim=1) - chosen) / (logits.shape[1] - 1)
        return chosen - others
    raise ValueError(f"CAM score must be one of {CAM_SCORES}, got {score!r}")


def grad_cam_weights(
    logits: Tensor, features: Tensor, target: int | Tensor = 1, create_graph: bool = True, score: str = "logit"
) -> Tensor:
    """α (B×K): spatial mean of ∂logit_target/∂features, via autograd.

    ``features`` must be part of the graph that produced ``logits``. With
    ``create_graph=True`` the result is itself differentiable (second order).
    """
    if not features.requires_grad:
        raise RuntimeError(
            "features do not require grad: compute the forward pass under torch.enable_grad() "
            "(Lightning: Trainer(inference_mode=False))"
        )
    idx = _class_index(target, logits.shape[0], logits.device)
    # Samples are independent after the feature map, so the gradient of the summed
    # scores w.r.t. the features is each sample's own gradient.
    total = class_score(_promote(logits), idx, score).sum()
    # fp16 (AMP) features: scale the score so small gradients do not flush to zero, unscale in fp32
    scale = FP16_CAM_SCALE if features.dtype == torch.float16 else 1.0
    (grads,) = torch.autograd.grad(total * scale, features, create_graph=create_graph, retain_graph=True)
    return _promote(grads).mean(dim=(2, 3)) / scale


def analytic_cam_weights(head_weight: Tensor, features: Tensor, target: int | Tensor = 1, score: str = "logit") -> Tensor:
    """α (B×K) for a GAP → linear head with weight ``head_weight`` (C×K): α_k = W[c,k]/(h·w)."""
    b, k, h, w = features.shape
    if head_weight.ndim != 2 or head_weight.shape[1] != k:
        raise ValueError(f"head weight of shape {tuple(head_weight.shape)} does not match {k} feature channels")
    idx = _class_index(target, b, features.device)
    if score == "margin":
        others = (head_weight.sum(dim=0, keepdim=True) - head_weight[idx]) / (head_weight.shape[0] - 1)
        return (head_weight[idx] - others) / (h * w)
    if score != "logit":
        raise ValueError(f"CAM score must be one of {CAM_SCORES}, got {score!r}")
    return head_weight[idx] / (h * w)


def cam_from_weights(alpha: Tensor, features: Tensor, sign: str = "relu") -> Tensor:
    """heat (B×h×w) = ReLU(Σ_k α_k A_k) (``relu``, Grad-CAM) or |Σ_k α_k A_k| (``abs``: evidence against
    the class counts too), in fp32 or fp64 (half-precision features are promoted)."""
    if sign not in HEAT_SIGNS:
        raise ValueError(f"heat sign must be one of {HEAT_SIGNS}, got {sign!r}")
    dtype = torch.float64 if torch.float64 in (alpha.dtype, features.dtype) else torch.float32
    with torch.autocast(device_type=features.device.type, enabled=False):
        signed = torch.einsum("bk,bkhw->bhw", alpha.to(dtype), features.to(dtype))
        return F.relu(signed) if sign == "relu" else signed.abs()


def grad_cam(
    features: Tensor,
    logits: Tensor | None = None,
    target: int | Tensor = 1,
    head_weight: Tensor | None = None,
    create_graph: bool = True,
    size: tuple[int, int] | None = None,
    score: str = "logit",
    sign: str = "relu",
) -> Tensor:
    """Grad-CAM heat of class ``target``: B×h×w, or B×H×W when ``size`` is given.

    Uses the analytic path when ``head_weight`` (the C×K weight of a GAP → linear head)
    is given, the autograd path otherwise (then ``logits`` is required). ``size`` upsamples
    bilinearly (align_corners=False) to the image size. ``score``: ``logit`` (the papers' Grad-CAM of
    the class logit) or ``margin`` (of logit_c minus the other logits' mean); ``sign``: ``relu`` (Grad-CAM)
    or ``abs`` (the magnitude of the signed map: negative evidence is not hidden).
    """
    if head_weight is not None:
        alpha = analytic_cam_weights(head_weight, features, target, score)
    else:
        if logits is None:
            raise ValueError("grad_cam needs logits when no head weight is given")
        alpha = grad_cam_weights(logits, features, target, create_graph=create_graph, score=score)
    heat = cam_from_weights(alpha, features, sign)
    if size is not None:
        heat = upsample(heat, size)
    return heat


def upsample(heat: Tensor, size: tuple[int, int]) -> Tensor:
    """Bilinear resize of a B×h×w heat map to B×H×W."""
    if tuple(heat.shape[-2:]) == tuple(size):
        return heat
    with torch.autocast(device_type=heat.device.type, enabled=False):
        return F.interpolate(heat[:, None], size=tuple(size), mode="bilinear", align_corners=False)[:, 0]


@dataclass(frozen=True)
class HeatSpec:
    """Which heat map: the Grad-CAM of class ``defect_class``'s ``score`` (``logit`` | ``margin``, see
    :func:`class_score`) with ``sign`` (``relu`` | ``abs``, see :func:`cam_from_weights`).

    The target object of the defect-class heat map (as pytorch-grad-cam's class targets), built from a loss's
    options (``loss.heat_spec``) and written into checkpoints (:meth:`record`), so that training, metrics,
    figures, predict and export compute the same map through :meth:`heat`.
    """

    defect_class: int = 1
    score: str = "logit"
    sign: str = "relu"

    def __post_init__(self) -> None:
        if self.score not in CAM_SCORES:
            raise ValueError(f"CAM score must be one of {CAM_SCORES}, got {self.score!r}")
        if self.sign not in HEAT_SIGNS:
            raise ValueError(f"heat sign must be one of {HEAT_SIGNS}, got {self.sign!r}")
        if isinstance(self.defect_class, bool) or not isinstance(self.defect_class, int) or self.defect_class < 0:
            raise ValueError(f"defect class must be an int ≥ 0, got {self.defect_class!r}")

    def heat(self, features: Tensor, logits: Tensor | None = None, head_weight: Tensor | None = None,
             size: tuple[int, int] | None = None, differentiable: bool = False) -> Tensor:
        """Heat B×h×w (``size`` None: the CAM's own resolution) or B×H×W of ``features`` B×K×h×w (and
        ``logits`` B×C, from the same graph, unless ``head_weight`` C×K gives the closed form).

        ``differentiable``: in the graph (second order on the autograd path). Otherwise detached, and computed
        without a graph on the closed-form path; the autograd path enables grad for its one ``autograd.grad``
        call (the features must come from a forward pass under grad).
        """
        with torch.set_grad_enabled(differentiable or head_weight is None):
            heat = grad_cam(features, logits, self.defect_class, head_weight, create_graph=differentiable,
                            size=size, score=self.score, sign=self.sign)
        return heat if differentiable else heat.detach()

    def record(self) -> dict:
        """Plain values for a checkpoint: {"defect_class", "cam_score", "heat_sign"} (the ``loss.*`` key names)."""
        return {"defect_class": int(self.defect_class), "cam_score": self.score, "heat_sign": self.sign}

    @classmethod
    def from_record(cls, record: dict) -> "HeatSpec":
        """The spec of a :meth:`record` (a checkpoint's ``ceod_inference``); a missing key takes the default
        (a record written by hand, or before ``heat_sign`` existed: the papers' Grad-CAM)."""
        d = cls()
        return cls(int(record.get("defect_class", d.defect_class)), str(record.get("cam_score", d.score)),
                   str(record.get("heat_sign", d.sign)))
