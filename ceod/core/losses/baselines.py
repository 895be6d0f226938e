"""Literature baselines behind CEOD's (images, label, AOI mask) contract — pure torch.

* :class:`RRRLoss` — "Right for the Right Reasons" (Ross et al. 2017): CE + λ·Σ_pixels((1 − A)·∂Σ_k log p_k/∂x)²,
  the input gradient of the summed log-probabilities penalised outside the AOI (second order); an image
  without an AOI (all-zero mask: not annotated) adds no penalty.
* :class:`EnergyLoss` — the energy-pointing-game loss (Rao et al. 2023): CE + λ·y·(1 − Σ A⁺·AOI / Σ A⁺),
  one minus the share of positive attribution (here the defect-class Grad-CAM) inside the AOI.
* :class:`BackgroundRandomizationLoss` — plain CE on training images whose pixels outside the AOI are
  replaced by noise with the image's own mean and spread: a shortcut outside the AOI cannot be learnt
  because it is never seen. The first thing a user would try.

All take ``omega`` (λ) and the options of :class:`ceod.core.losses.base.LossOptions` (the heat map they log and the
metrics use, counterfactual images); ``penalty`` returns a :class:`ceod.core.losses.base.LossOutput` whose ``penalty``
is the baseline's own term, logged under its name: ``outside_grad`` (RRR), ``outside_heat`` (energy); bg_random has none.
An all-zero AOI mask means "no mask for this image" for every one of them: it adds no mask term (RRR,
energy) and its background is not randomised (bg_random) — so partially annotated batches train the
unannotated images with plain CE.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import Tensor

from ceod.errors import ConfigError
from ceod.core.losses.base import AttributionLoss, LossOptions, LossOutput
from ceod.core.losses.ceod import annotated_count

SWAP_KEYS = ("outside_swap", "swap_p", "consistency", "swap_dilation", "swap_feather")  # counterfactual training images (ceod.core.reliance), any loss
CAM_KEYS = ("omega", "defect_class", "cam_score", "heat_sign", "omega_warmup_steps", "y_weighting", *SWAP_KEYS)


def _fp(t: Tensor) -> Tensor:
    """Half precision (AMP) promoted to fp32; fp32/fp64 kept."""
    return t.float() if t.dtype in (torch.float16, torch.bfloat16) else t


def _options(kind: str, keys: tuple[str, ...], options: dict, **fixed) -> LossOptions:
    """The shared option record from the options this baseline takes (anything else is a ConfigError)."""
    extra = sorted(set(options) - set(keys))
    if extra:
        raise ConfigError(f"loss.{extra[0]} is not an option of loss={kind}; its options: {', '.join(keys)}")
    return LossOptions.from_kwargs(**{**fixed, **options})


def _output(ce_i: Tensor, term_i: Tensor | None, contributes: Tensor, omega: float, aoi_mask: Tensor) -> LossOutput:
    """total = mean CE + ω·Σ term/N_a (N_a: images with an AOI, as CEOD's); penalty = mean term over contributing
    images. ``term_i`` None: the loss measures no term here (penalty None, nothing contributes, total = mean CE)."""
    measured = term_i is not None
    term_i = torch.where(contributes, term_i, torch.zeros_like(term_i)) if measured else torch.zeros_like(ce_i)
    count = contributes.sum().clamp(min=1)
    return LossOutput(total=ce_i.mean() + omega * term_i.sum() / annotated_count(aoi_mask), ce=ce_i.mean(),
                      penalty=term_i.sum() / count if measured else None, overlap=torch.zeros_like(ce_i),
                      contributes=contributes, active=(contributes & (term_i > 0)).sum() / count)


def input_gradient_penalty(logits: Tensor, images: Tensor, aoi_mask: Tensor) -> Tensor:
    """Per image (B): Σ_pixels ((1 − AOI)·∂Σ_k log p_k/∂x)², summed over channels; in the graph (second order).

    ``images`` B×C×H×W must require grad and be the input that produced ``logits`` (B×K);
    ``aoi_mask`` B×H×W in [0, 1].
    """
    if not images.requires_grad:
        raise ConfigError("loss=rrr needs input gradients: the images reaching the model do not require grad")
    logp = F.log_softmax(_fp(logits), dim=1).sum()
    (grad,) = torch.autograd.grad(logp, images, create_graph=True, allow_unused=True)
    if grad is None:
        raise ConfigError("loss=rrr needs input gradients, but the model's output does not depend on its input")
    outside = (1.0 - aoi_mask.to(grad.dtype))[:, None]
    return _fp(((grad * outside) ** 2).sum(dim=(1, 2, 3)))


class RRRLoss(AttributionLoss):
    """CE + λ·mean_i Σ((1 − AOI)·∇_x Σ log p)² (Ross et al. 2017); every image with a non-empty AOI contributes
    (their setting: every image has one), good and defective alike; an image without one (all-zero mask) adds 0."""

    needs_input_grad = True
    penalty_name = "outside_grad"  # Σ((1 − AOI)·∇_x Σ log p)², training only

    def __init__(self, **options) -> None:
        super().__init__(_options("rrr", CAM_KEYS, options, y_weighting=False))

    @property
    def uses_cam(self) -> bool:
        return False  # the heat is only for logging and metrics

    def prepare_inputs(self, images: Tensor, aoi_mask: Tensor, target: Tensor) -> Tensor:
        return images.detach().requires_grad_(True) if torch.is_grad_enabled() else images

    def penalty(self, logits, target, heat, aoi_mask, images, step) -> LossOutput:
        ce_i = F.cross_entropy(_fp(logits), target, reduction="none")
        weight = (target == self.defect_class) if self.opts.y_weighting else torch.ones_like(target, dtype=torch.bool)
        if images is None or not images.requires_grad or not torch.is_grad_enabled():
            return _output(ce_i, None, torch.zeros_like(weight), 0.0, aoi_mask)  # eval: no input gradient
        if aoi_mask.shape[-2:] != images.shape[-2:]:
            raise ValueError(f"AOI mask {tuple(aoi_mask.shape)} does not match images {tuple(images.shape)}")
        term = input_gradient_penalty(logits, images, aoi_mask)
        annotated = aoi_mask.flatten(1).amax(dim=1) > 0  # B: an all-zero mask is "no AOI", not "all outside"
        return _output(ce_i, term, weight & annotated, self.opts.omega_at(step), aoi_mask)


class EnergyLoss(AttributionLoss):
    """CE + λ·y·(1 − share of the positive defect-class heat inside the AOI) (Rao et al. 2023)."""

    penalty_name = "outside_heat"  # share of the positive heat outside the AOI

    def __init__(self, **options) -> None:
        super().__init__(_options("energy", CAM_KEYS + ("resolution",), options))

    def penalty(self, logits, target, heat, aoi_mask, images, step) -> LossOutput:
        ce_i = F.cross_entropy(_fp(logits), target, reduction="none")
        heat = _fp(heat)
        total = heat.sum(dim=(-2, -1))
        inside = heat * aoi_mask.to(heat.dtype)  # 0/1 at image size, covered share of a cell at CAM size
        valid = (total > 0) & (aoi_mask.sum(dim=(-2, -1)) > 0)
        share = inside.sum(dim=(-2, -1)) / torch.where(valid, total, torch.ones_like(total))
        weight = (target == self.defect_class) if self.opts.y_weighting else torch.ones_like(valid)
        return _output(ce_i, 1.0 - share, valid & weight, self.opts.omega_at(step), aoi_mask)


class BackgroundRandomizationLoss(AttributionLoss):
    """Plain CE on images whose pixels outside the AOI are replaced by noise (training only)."""

    def __init__(self, **options) -> None:
        super().__init__(_options("bg_random", ("defect_class", "cam_score", "heat_sign", *SWAP_KEYS), options,
                                  omega=0.0))

    def prepare_inputs(self, images: Tensor, aoi_mask: Tensor, target: Tensor) -> Tensor:
        return randomize_background(images, aoi_mask)

    def penalty(self, logits, target, heat, aoi_mask, images, step) -> LossOutput:
        ce_i = F.cross_entropy(_fp(logits), target, reduction="none")
        return _output(ce_i, None, torch.zeros_like(target, dtype=torch.bool), 0.0, aoi_mask)


def randomize_background(images: Tensor, aoi_mask: Tensor, generator: torch.Generator | None = None) -> Tensor:
    """images B×C×H×W with the pixels outside ``aoi_mask`` (B×H×W, 0/1) replaced by Gaussian noise of each
    image's own per-channel mean and standard deviation outside the AOI. Images without an AOI are kept."""
    m = (aoi_mask > 0.5).to(images.dtype)[:, None]
    out_m = 1.0 - m
    n_out = out_m.sum(dim=(2, 3), keepdim=True).clamp(min=1)
    mean = (images * out_m).sum(dim=(2, 3), keepdim=True) / n_out
    std = (((images - mean) * out_m) ** 2).sum(dim=(2, 3), keepdim=True).div(n_out).sqrt()
    noise = torch.randn(images.shape, generator=generator, dtype=images.dtype, device=images.device) * std + mean
    has_aoi = m.sum(dim=(1, 2, 3), keepdim=True) > 0
    return torch.where(has_aoi, images * m + noise * out_m, images)
