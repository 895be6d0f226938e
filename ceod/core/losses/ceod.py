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
    CEOD      = (1/N) Σ_i CE_i + ω · (1/N_a) Σ_{i annotated} y_i · OD_i

N_a counts the images that have an AOI (a non-empty mask): with every image annotated (the papers) N_a = N
and this is (1/N) Σ_i [CE_i + ω·y_i·OD_i]; with partial annotation (``data.mask_fraction``,
``data.missing_masks=ce``: an all-zero mask) the mask term keeps the weight it has with every mask.

An overlap that is undefined (empty AOI, all-zero heat) contributes OD = 0 and no gradient:
the loss is finite for every input. All options live in one frozen :class:`CEODOptions` (the options every loss
takes, :class:`ceod.core.losses.base.LossOptions`, plus CEOD's own), validated once.
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import torch
import torch.nn.functional as F
from torch import Tensor

from ceod.core.losses.base import AttributionLoss, LossOptions, LossOutput

FILTER_NORMALIZE = ("none", "clip", "sum")
THRESHOLD_MODES = ("hard", "soft")
OD_VARIANTS = ("log", "linear", "outside")


def annotated_count(aoi_mask: Tensor) -> Tensor:
    """N_a: how many of the B masks (B×H×W) are non-empty — the images with an AOI (≥ 1, so it can divide)."""
    return (aoi_mask.flatten(1).amax(dim=1) > 0).sum().clamp(min=1)


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
    raise ValueError(f"OD variant must be one of ('log', 'linear'), got {variant!r}")


def outside_evidence(heat: Tensor, a_gt: Tensor) -> tuple[Tensor, Tensor]:
    """Per image (B): mean over pixels of (1 − min(A_gt*, 1))·heat — with a GAP → linear head and the
    ``abs`` heat of the ``margin`` score, a bound (in logit units) on how far the pixels outside the AOI
    move the decision. Not normalised by the heat's peak, so it cannot be met by inflating the heat
    inside. Returns (evidence, valid: the AOI is non-empty)."""
    outside = 1.0 - a_gt.clamp(max=1.0)
    valid = a_gt.sum(dim=(-2, -1)) > 0
    return (outside * heat).mean(dim=(-2, -1)), valid


@dataclass(frozen=True)
class CEODOptions(LossOptions):
    """Every option of the CEOD loss: those of every loss (:class:`ceod.core.losses.base.LossOptions`) and the
    overlap distance's own, validated once (a bad value is a one-line ``loss.<key>`` error).

    Papers: ω = 0.001, τ = 0.5, filter 3×3 of 0.5 as is, CAM of the class logit, ReLU heat. Beyond the
    papers: ``filter_normalize`` (the literal filter saturates the clipped overlap), ``cam_score=margin``
    (the log-odds a softmax classifier uses), ``heat_sign=abs`` (evidence *against* the defect class
    outside the AOI is penalised too — Grad-CAM's ReLU hides it), ``resolution=cam`` (overlap at the CAM's
    own resolution, mask area-downsampled), ``omega_warmup_steps`` (ω ramps linearly from 0).
    """

    variant: str = "log"  # log | linear | outside
    eps: float = 1e-7
    tau: float = 0.5
    threshold: str = "hard"  # hard | soft
    temperature: float = 0.05
    kernel_size: int = 3
    kernel_value: float = 0.5
    filter_normalize: str = "none"  # none | clip | sum

    def __post_init__(self) -> None:
        super().__post_init__()
        self._check_choices((("variant", OD_VARIANTS), ("threshold", THRESHOLD_MODES),
                             ("filter_normalize", FILTER_NORMALIZE)))
        self._check_values((
            ("eps", 0.0 < self.eps < 0.5, "in (0, 0.5)"), ("tau", 0.0 <= self.tau < 1.0, "in [0, 1)"),
            ("temperature", self.temperature > 0, "> 0"),
            ("kernel_size", self.kernel_size >= 1 and self.kernel_size % 2 == 1, "a positive odd number"),
            ("kernel_value", self.kernel_value > 0, "> 0"),
        ))


def ceod_loss(logits: Tensor, target: Tensor, heat: Tensor, aoi_mask: Tensor, options: CEODOptions | None = None,
              step: int | None = None, **kwargs) -> LossOutput:
    """CEOD = mean_i(CE_i + ω·y_i·OD_i) for logits B×C, target B, heat and aoi_mask B×h×w (same size).

    ``heat`` is the defect-class heat (:meth:`ceod.core.cam.HeatSpec.heat`); options come from ``options`` or
    keyword arguments (``ceod_loss(..., omega=0.1, tau=0)``). ``y_weighting=False`` lets every image
    contribute its OD (the workshop variant). ``step`` drives the ω warm-up.
    """
    o = options if options is not None else CEODOptions.from_kwargs(**kwargs)
    if heat.shape != aoi_mask.shape:
        raise ValueError(f"heat {tuple(heat.shape)} and AOI mask {tuple(aoi_mask.shape)} differ in shape")
    with torch.autocast(device_type=heat.device.type, enabled=False):  # AMP: the loss stays fp32/fp64
        # half-precision inputs (AMP) are promoted: the loss is computed in fp32 or fp64
        dtype = torch.float64 if torch.float64 in (heat.dtype, logits.dtype) else torch.float32
        ce_i = F.cross_entropy(logits.to(dtype), target, reduction="none")
        a_gt = filter_mask(aoi_mask.to(dtype), o.kernel_size, o.kernel_value, o.filter_normalize)
        if o.variant == "outside":
            od_i, valid = outside_evidence(heat.to(dtype), a_gt)
            overlap = torch.zeros_like(od_i)
        else:
            a_d = hottest_pixels(heat.to(dtype), o.tau, o.threshold, o.temperature)
            overlap, valid = overlap_coefficient(a_d, a_gt)
            od_i = overlap_distance(overlap, o.variant, o.eps)
        weight = (target == o.defect_class) if o.y_weighting else torch.ones_like(valid)
        contributes = valid & weight
        od_i = torch.where(contributes, od_i, torch.zeros_like(od_i))
        ce = ce_i.mean()
        total = ce + o.omega_at(step) * od_i.sum() / annotated_count(aoi_mask)
        od = od_i.sum() / contributes.sum().clamp(min=1)
        # share of contributing images whose overlap lies inside (ε, 1−ε): the others get no OD gradient
        # (with the papers' unnormalised filter the overlap saturates at 1 early)
        if o.variant == "log":
            live = contributes & (overlap > o.eps) & (overlap < 1 - o.eps)
        elif o.variant == "outside":
            live = contributes & (od_i > 0)
        else:
            live = contributes & (overlap < 1)
        active = live.sum() / contributes.sum().clamp(min=1)
        return LossOutput(total=total, ce=ce, penalty=od, overlap=overlap, contributes=contributes, active=active)


class CEODLoss(AttributionLoss):
    """CE + ω·y·OD with the Grad-CAM computed inside (second order when it needs autograd).

    ``CEODLoss(omega=1e-3, tau=0.5, ...)`` — keyword options of :class:`CEODOptions`. ``omega = 0`` is
    plain cross-entropy: the OD is still computed, without a graph, for logging (``train/od``).
    """

    penalty_name = "od"

    def __init__(self, **options) -> None:
        super().__init__(CEODOptions.from_kwargs(**options))

    def penalty(self, logits, target, heat, aoi_mask, images, step) -> LossOutput:
        return ceod_loss(logits, target, heat, aoi_mask, self.opts, step=step)
