"""CEOD: cross-entropy plus the overlap distance between a Grad-CAM and the area of interest.

Pure torch (no Lightning, no Hydra), so it can be used in any training loop::

    logits, features = model(images)                 # B×C, B×K×h×w
    out = CEODLoss(omega=1e-3)(logits, labels, aoi_masks, features=features)
    out.total.backward()                             # one loss, one backward

Shapes: ``heat`` and ``aoi_mask`` are B×H×W (the image size), ``logits`` B×C, ``target`` B.

Per image i: A_gt* = filter(A_gt) (3×3 kernel of 0.5 by default), A_d = hottest pixels of
the heat, overlap = Σ A_d·A_gt* / min(Σ A_d, Σ A_gt*), and

    OD_log    = −ln clip_[ε, 1−ε](overlap)      (journal version, default)
    OD_linear = 1 − clip_[0, 1](overlap)        (workshop version)
    CEOD      = (1/N) Σ_i [CE_i + ω · y_i · OD_i]

An overlap that is undefined (empty AOI, all-zero heat) contributes OD = 0 and no gradient:
the loss is finite for every input.
"""

from __future__ import annotations

from dataclasses import dataclass

import math

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from ceod.cam import grad_cam, upsample
from ceod.errors import ConfigError

FILTER_NORMALIZE = ("none", "clip", "sum")
THRESHOLD_MODES = ("hard", "soft")
OD_VARIANTS = ("log", "linear")


def filter_mask(mask: Tensor, kernel_size: int = 3, value: float = 0.5, normalize: str = "none") -> Tensor:
    """A_gt*: the AOI mask (B×H×W, 0/1) convolved with a k×k kernel of ``value`` (zero padding).

    ``normalize``: ``none`` — the papers' literal filter (interior reaches k²·value, 4.5 for 3×3 of 0.5);
    ``clip`` — the same, clipped to ≤ 1; ``sum`` — kernel divided by its sum (interior = 1, edges fade).
    """
    if normalize not in FILTER_NORMALIZE:
        raise ValueError(f"filter normalize must be one of {FILTER_NORMALIZE}, got {normalize!r}")
    if kernel_size < 1 or kernel_size % 2 == 0:
        raise ValueError(f"kernel_size must be a positive odd number, got {kernel_size}")
    m = mask.to(torch.get_default_dtype() if not mask.is_floating_point() else mask.dtype)
    kernel = torch.full((1, 1, kernel_size, kernel_size), float(value), dtype=m.dtype, device=m.device)
    if normalize == "sum":
        kernel = kernel / kernel.sum()
    out = F.conv2d(m[:, None], kernel, padding=kernel_size // 2)[:, 0]
    if normalize == "clip":
        out = out.clamp(max=1.0)
    return out


def hottest_pixels(heat: Tensor, tau: float = 0.5, mode: str = "hard", temperature: float = 0.05) -> Tensor:
    """A_d (B×H×W): the heat divided by its per-image max, keeping the part ≥ τ.

    ``hard`` keeps the (normalised) heat values where heat ≥ τ·max and zeroes the rest — the values,
    not a 0/1 mask, so gradients flow. ``soft`` weights by sigmoid((heat/max − τ)/temperature).
    τ = 0 keeps the whole heat map. An all-zero heat map stays all zero.
    """
    if mode not in THRESHOLD_MODES:
        raise ValueError(f"threshold mode must be one of {THRESHOLD_MODES}, got {mode!r}")
    peak = heat.amax(dim=(-2, -1), keepdim=True)
    # a peak this small is numerically zero heat: 1/peak would blow the gradient up to inf/NaN
    alive = peak > math.sqrt(torch.finfo(heat.dtype).tiny)
    rel = torch.where(alive, heat / torch.where(alive, peak, torch.ones_like(peak)), torch.zeros_like(heat))
    if mode == "soft":
        return rel * torch.sigmoid((rel - tau) / temperature)
    if tau <= 0:
        return rel
    return rel * (rel >= tau).to(rel.dtype)


def overlap_coefficient(a_d: Tensor, a_gt: Tensor) -> tuple[Tensor, Tensor]:
    """Szymkiewicz–Simpson overlap per image: Σ a_d·a_gt / min(Σ a_d, Σ a_gt).

    Returns (overlap B, valid B); where either sum is 0 the overlap is undefined: valid is False
    and the overlap is 0 (with a finite, zero gradient).
    """
    inter = (a_d * a_gt).sum(dim=(-2, -1))
    denom = torch.minimum(a_d.sum(dim=(-2, -1)), a_gt.sum(dim=(-2, -1)))
    valid = denom > 0
    overlap = inter / torch.where(valid, denom, torch.ones_like(denom))
    return torch.where(valid, overlap, torch.zeros_like(overlap)), valid


def overlap_distance(overlap: Tensor, variant: str = "log", eps: float = 1e-7) -> Tensor:
    """OD per image: ``log`` −ln clip_[ε,1−ε](overlap); ``linear`` 1 − clip_[0,1](overlap)."""
    if variant == "log":
        return -torch.log(overlap.clamp(eps, 1.0 - eps))
    if variant == "linear":
        return 1.0 - overlap.clamp(0.0, 1.0)
    raise ValueError(f"OD variant must be one of {OD_VARIANTS}, got {variant!r}")


@dataclass
class CEODOutput:
    """``total`` is what to back-propagate; the rest are detached-friendly parts for logging."""

    total: Tensor  # scalar: mean CE + ω · Σ y·OD / N
    ce: Tensor  # scalar: mean cross-entropy
    od: Tensor  # scalar: mean OD over the images that contribute (0 when none do)
    overlap: Tensor  # B: per-image overlap coefficient (0 where undefined)
    contributes: Tensor  # B bool: images whose OD enters the loss
    active: Tensor  # scalar: share of contributing images whose OD has a gradient (not clipped)


def ceod_loss(
    logits: Tensor,
    target: Tensor,
    heat: Tensor,
    aoi_mask: Tensor,
    omega: float = 1e-3,
    variant: str = "log",
    eps: float = 1e-7,
    tau: float = 0.5,
    threshold: str = "hard",
    temperature: float = 0.05,
    kernel_size: int = 3,
    kernel_value: float = 0.5,
    filter_normalize: str = "none",
    y_weighting: bool = True,
    defect_class: int = 1,
) -> CEODOutput:
    """CEOD = mean_i(CE_i + ω·y_i·OD_i) for logits B×C, target B, heat and aoi_mask B×H×W.

    ``heat`` is the Grad-CAM of the defect class at image size; ``y_weighting=False`` lets every
    image contribute its OD (the workshop variant).
    """
    if heat.shape != aoi_mask.shape:
        raise ValueError(f"heat {tuple(heat.shape)} and AOI mask {tuple(aoi_mask.shape)} differ in shape")
    with torch.autocast(device_type=heat.device.type, enabled=False):  # AMP: the loss stays fp32/fp64
        # half-precision inputs (AMP) are promoted: the loss is computed in fp32 or fp64
        dtype = torch.float64 if torch.float64 in (heat.dtype, logits.dtype) else torch.float32
        ce_i = F.cross_entropy(logits.to(dtype), target, reduction="none")
        a_gt = filter_mask(aoi_mask.to(dtype), kernel_size, kernel_value, filter_normalize)
        a_d = hottest_pixels(heat.to(dtype), tau, threshold, temperature)
        overlap, valid = overlap_coefficient(a_d, a_gt)
        od_i = overlap_distance(overlap, variant, eps)
        weight = (target == defect_class) if y_weighting else torch.ones_like(valid)
        contributes = valid & weight
        od_i = torch.where(contributes, od_i, torch.zeros_like(od_i))
        n = logits.shape[0]
        ce = ce_i.mean()
        total = ce + omega * od_i.sum() / n
        od = od_i.sum() / contributes.sum().clamp(min=1)
        # share of contributing images whose overlap lies inside (ε, 1−ε): the others get no OD gradient
        # (with the papers' unnormalised filter the overlap saturates at 1 early)
        live = contributes & (overlap > eps) & (overlap < 1 - eps) if variant == "log" else contributes & (overlap < 1)
        active = live.sum() / contributes.sum().clamp(min=1)
        return CEODOutput(total=total, ce=ce, od=od, overlap=overlap, contributes=contributes, active=active)


class CEODLoss(nn.Module):
    """CE + ω·y·OD with the Grad-CAM computed inside (second order when it needs autograd).

    ``omega = 0`` is plain cross-entropy: the OD is still computed, without a graph, for logging.
    """

    def __init__(
        self,
        omega: float = 1e-3,
        variant: str = "log",
        eps: float = 1e-7,
        tau: float = 0.5,
        threshold: str = "hard",
        temperature: float = 0.05,
        kernel_size: int = 3,
        kernel_value: float = 0.5,
        filter_normalize: str = "none",
        y_weighting: bool = True,
        defect_class: int = 1,
        cam_score: str = "logit",
    ) -> None:
        super().__init__()
        # Validate now so a bad config fails at start-up, not at the first step.
        if variant not in OD_VARIANTS:
            raise ConfigError(f"loss.variant must be one of {OD_VARIANTS}, got {variant!r}")
        if threshold not in THRESHOLD_MODES:
            raise ConfigError(f"loss.threshold must be one of {THRESHOLD_MODES}, got {threshold!r}")
        if filter_normalize not in FILTER_NORMALIZE:
            raise ConfigError(f"loss.filter_normalize must be one of {FILTER_NORMALIZE}, got {filter_normalize!r}")
        if cam_score not in ("logit", "margin"):
            raise ConfigError(f"loss.cam_score must be 'logit' or 'margin', got {cam_score!r}")
        if temperature <= 0:
            raise ConfigError(f"loss.temperature must be > 0, got {temperature}")
        if kernel_size < 1 or kernel_size % 2 == 0:
            raise ConfigError(f"loss.kernel_size must be a positive odd number, got {kernel_size}")
        if kernel_value <= 0:
            raise ConfigError(f"loss.kernel_value must be > 0, got {kernel_value}")
        if defect_class not in (0, 1):
            raise ConfigError(f"loss.defect_class must be 0 or 1 (two classes), got {defect_class}")
        if omega < 0:
            raise ConfigError(f"loss.omega must be ≥ 0, got {omega}")
        if not 0.0 < eps < 0.5:
            raise ConfigError(f"loss.eps must lie in (0, 0.5), got {eps}")
        if not 0.0 <= tau < 1.0:
            raise ConfigError(f"loss.tau must lie in [0, 1), got {tau}")
        self.omega = float(omega)
        self.defect_class = int(defect_class)
        self.cam_score = cam_score
        self.options = dict(
            variant=variant, eps=eps, tau=tau, threshold=threshold, temperature=temperature,
            kernel_size=kernel_size, kernel_value=kernel_value, filter_normalize=filter_normalize,
            y_weighting=y_weighting, defect_class=defect_class,
        )

    @property
    def uses_cam(self) -> bool:
        """True when the OD term is part of the gradient (ω > 0)."""
        return self.omega > 0

    def forward(
        self,
        logits: Tensor,
        target: Tensor,
        aoi_mask: Tensor,
        features: Tensor | None = None,
        heat: Tensor | None = None,
        head_weight: Tensor | None = None,
    ) -> CEODOutput:
        """logits B×C, target B, aoi_mask B×H×W; give either ``features`` (B×K×h×w, the CAM layer's
        activations, part of the graph of ``logits``) or a precomputed ``heat`` (B×H×W)."""
        if heat is None:
            if features is None:
                raise ValueError("CEODLoss needs the CAM layer's features or a precomputed heat map")
            differentiable = self.uses_cam and torch.is_grad_enabled()
            with torch.set_grad_enabled(differentiable or head_weight is None):
                heat = grad_cam(features, logits, self.defect_class, head_weight, create_graph=differentiable,
                                score=self.cam_score)
            if not differentiable:
                heat = heat.detach()
            heat = upsample(heat, tuple(aoi_mask.shape[-2:]))
        return ceod_loss(logits, target, heat, aoi_mask, omega=self.omega, **self.options)

    def extra_repr(self) -> str:
        return f"omega={self.omega}, cam_score={self.cam_score}, " + ", ".join(f"{k}={v}" for k, v in self.options.items())
