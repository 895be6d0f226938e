"""The contract shared by CEOD and the baselines: (images, logits, features, label, AOI mask) → loss.

Pure torch. A loss is an :class:`AttributionLoss` holding :class:`LossOptions` (or a subclass: CEOD's
:class:`ceod.core.losses.ceod.CEODOptions` adds its own) and returning a :class:`LossOutput`. The
LightningModule calls ``counterfactuals`` → ``prepare_inputs`` → model → ``forward`` in training, and model →
``forward`` in validation and test (the loss module in eval mode: its heat is then detached); the loss computes
the defect-class heat through its :class:`ceod.core.cam.HeatSpec` and returns it for the AOI metrics.
"""

from __future__ import annotations

from dataclasses import asdict, dataclass, fields

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from ceod.core.cam import CAM_SCORES, HEAT_SIGNS, HeatSpec
from ceod.core.reliance import DILATION_PX, FEATHER_PX, FILLS, consistency, fill_outside
from ceod.errors import ConfigError

RESOLUTIONS = ("image", "cam")


@dataclass(frozen=True)
class LossOptions:
    """The options every loss takes (a bad value is a one-line ``loss.<key>`` error): ω and its warm-up, the
    heat map's class, score and sign (:class:`ceod.core.cam.HeatSpec`), where the heat meets the mask
    (``resolution``: image, or the CAM's own with the mask area-downsampled), whether only defective images
    contribute (``y_weighting``), and counterfactual training images (:mod:`ceod.core.reliance`): each training
    image's outside replaced by another image's (swap) or by noise/blur; with ``consistency`` > 0 the composites
    are added to the batch and the symmetric KL between an image's prediction and its composite's is penalised."""

    omega: float = 1e-3
    y_weighting: bool = True
    defect_class: int = 1
    cam_score: str = "logit"  # logit | margin
    heat_sign: str = "relu"  # relu | abs
    resolution: str = "image"  # image | cam
    omega_warmup_steps: int = 0
    outside_swap: str = "none"  # none | swap | blur | noise
    swap_p: float = 1.0  # share of the images replaced by their composite (consistency = 0)
    consistency: float = 0.0
    swap_dilation: int = DILATION_PX  # px the AOI is widened by before its outside is replaced
    swap_feather: int = FEATHER_PX  # px the seam is blended over

    def __post_init__(self) -> None:
        self._check_choices((("cam_score", CAM_SCORES), ("heat_sign", HEAT_SIGNS), ("resolution", RESOLUTIONS),
                             ("outside_swap", ("none", *FILLS))))
        self._check_values((
            ("omega", self.omega >= 0, "≥ 0"), ("defect_class", self.defect_class in (0, 1), "0 or 1"),
            ("omega_warmup_steps", self.omega_warmup_steps >= 0, "≥ 0"),
            ("swap_p", 0.0 <= self.swap_p <= 1.0, "in [0, 1]"), ("consistency", self.consistency >= 0, "≥ 0"),
            ("swap_dilation", self.swap_dilation >= 0, "≥ 0"), ("swap_feather", self.swap_feather >= 0, "≥ 0"),
        ))

    def _check_choices(self, choices: tuple[tuple[str, tuple[str, ...]], ...]) -> None:
        for key, allowed in choices:
            if getattr(self, key) not in allowed:
                raise ConfigError(f"loss.{key} must be one of {allowed}, got {getattr(self, key)!r}")

    def _check_values(self, checks: tuple[tuple[str, bool, str], ...]) -> None:
        for key, ok, what in checks:
            if not ok:
                raise ConfigError(f"loss.{key} must be {what}, got {getattr(self, key)}")

    @classmethod
    def from_kwargs(cls, **kwargs) -> "LossOptions":
        """Options from keyword arguments; an unknown or mistyped one is a ConfigError naming ``loss.<key>``."""
        known = {f.name: f.type for f in fields(cls)}
        for key, value in kwargs.items():
            if key not in known:
                raise ConfigError(f"loss.{key} is not an option of this loss; options: {', '.join(known)}")
            want = {"float": (int, float), "int": (int,), "bool": (bool,), "str": (str,)}[known[key]]
            if not isinstance(value, want) or (isinstance(value, bool) and known[key] != "bool"):
                raise ConfigError(f"loss.{key} must be a {known[key]}, got {value!r}")
        return cls(**kwargs)

    def omega_at(self, step: int | None) -> float:
        """ω at a training step (linear warm-up over ``omega_warmup_steps``; the full ω when step is None)."""
        if step is None or self.omega_warmup_steps == 0:
            return self.omega
        return self.omega * min(1.0, (step + 1) / self.omega_warmup_steps)


@dataclass
class LossOutput:
    """``total`` is what to back-propagate; the rest are parts for logging and metrics."""

    total: Tensor  # scalar: mean CE + ω · Σ y·penalty / N_a (N_a: images with an AOI)
    ce: Tensor  # scalar: mean cross-entropy
    penalty: Tensor | None  # scalar: the mask term's mean over the contributing images (0 when none does);
    # CEOD's OD, a baseline's own term (see its ``penalty_name``); None where the loss measures none
    overlap: Tensor  # B: per-image overlap coefficient (0 where undefined; 0 for the baselines)
    contributes: Tensor  # B bool: images whose penalty enters the loss
    active: Tensor  # scalar: share of contributing images whose penalty has a gradient (not clipped / > 0)
    consistency: Tensor | None = None  # scalar: mean symmetric KL image ↔ composite (loss.consistency > 0)
    heat: Tensor | None = None  # B×h×w: the defect-class heat compared with the mask (set by AttributionLoss)


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
    randomisation, or marking them for input gradients); ``heat_spec`` (from the options) names the
    defect-class heat map; ``forward`` returns a :class:`LossOutput` whose ``penalty`` is logged as
    ``<stage>/<penalty_name>`` (None: the loss has no mask term to log).
    """

    needs_input_grad = False
    penalty_name: str | None = None

    def __init__(self, options: LossOptions) -> None:
        super().__init__()
        self.opts = options
        self.heat_spec = HeatSpec(options.defect_class, options.cam_score, options.heat_sign)

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

    def penalty(self, logits: Tensor, target: Tensor, heat: Tensor, aoi_mask: Tensor, images: Tensor | None,
                step: int | None) -> LossOutput:
        """The loss's parts from logits B×C, target B, heat and aoi_mask B×h×w (same size)."""
        raise NotImplementedError

    def forward(self, logits: Tensor, target: Tensor, aoi_mask: Tensor, features: Tensor | None = None,
                heat: Tensor | None = None, head_weight: Tensor | None = None, images: Tensor | None = None,
                step: int | None = None, pairs: int = 0) -> LossOutput:
        """logits B×C, target B, aoi_mask B×H×W; ``features`` (B×K×h×w, part of the graph of ``logits``)
        or a precomputed ``heat``; ``images`` the (prepared) inputs, for input-gradient losses; ``pairs``
        (from :meth:`counterfactuals`): the first ``pairs`` images and the next ``pairs`` are image ↔ composite,
        and ``consistency`` · their mean symmetric KL is added. The heat (B×H×W, or B×h×w with
        ``resolution=cam``) is in the graph when it is part of the gradient (ω > 0, grad enabled, the module in
        training mode), detached otherwise; it is returned as ``heat``."""
        if heat is None:
            if features is None:
                raise ValueError(f"{type(self).__name__} needs the CAM layer's features or a precomputed heat map")
            size = None if self.opts.resolution == "cam" else tuple(aoi_mask.shape[-2:])
            differentiable = self.uses_cam and self.training and torch.is_grad_enabled()
            heat = self.heat_spec.heat(features, logits, head_weight, size, differentiable)
        if heat.shape != aoi_mask.shape:  # a CAM-resolution heat: compare with the area-downsampled mask
            aoi_mask = area_downsample(aoi_mask.to(heat.dtype), tuple(heat.shape[-2:]))
        out = self.penalty(logits, target, heat, aoi_mask, images, step)
        out.heat = heat
        if pairs:
            out.consistency = consistency(logits[:pairs], logits[pairs:2 * pairs]).mean()
            out.total = out.total + self.opts.consistency * out.consistency
        return out

    def extra_repr(self) -> str:
        return ", ".join(f"{k}={v}" for k, v in asdict(self.opts).items())
