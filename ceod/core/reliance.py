"""Outside reliance by intervention: how much the decision changes when what lies outside the AOI is replaced.

Pure torch. A heat map only says where the CAM layer's cells are hot, and a cell inside the AOI can see far
outside it; an intervention on the input measures what the decision depends on. For each image the content
outside its AOI (widened by ``dilation`` px) is replaced while the inside is kept:

* ``swap`` — by the outside of another image of the batch (a real background with its own marks and decoy:
  in distribution). Where the partner's own AOI lies, the image keeps its own content, so the composite never
  shows a second product. The seam is blended over ``feather`` px.
* ``blur`` — by a blurred copy of the image itself (fine marks gone, lighting kept).
* ``noise`` — by noise of the outside's own mean and spread.

``outside_reliance`` = mean |P(defect | x) − P(defect | composite)| over the images with an AOI;
``outside_flip`` = the share of them whose predicted label (at the decision threshold) changes. The same
composites serve as counterfactual training images (``loss.outside_swap``) — see :mod:`ceod.core.losses.base`.

Shapes: images B×C×H×W, AOI masks B×H×W in [0, 1], partner B (an index into the batch).
"""

from __future__ import annotations

from typing import Callable

import torch
import torch.nn.functional as F
from torch import Tensor

FILLS = ("swap", "blur", "noise")
DILATION_PX = 1  # the AOI widened by 1 px before the outside is replaced (the mask's own edge stays)
FEATHER_PX = 1  # the seam blended over 1 px


def dilate(mask: Tensor, px: int) -> Tensor:
    """B×H×W mask → the same, widened by ``px`` pixels (a (2px+1)² max filter); px = 0 returns it as is."""
    if px <= 0:
        return mask
    return F.max_pool2d(mask[:, None], 2 * px + 1, stride=1, padding=px)[:, 0]


def _box_blur(x: Tensor, r: int) -> Tensor:
    """B×C×H×W → a (2r+1)² mean filter (borders: the mean of the pixels inside the image)."""
    return F.avg_pool2d(x, 2 * r + 1, stride=1, padding=r, count_include_pad=False)


def keep_weight(aoi: Tensor, partner_aoi: Tensor | None, dilation: int = DILATION_PX,
                feather: int = FEATHER_PX) -> Tensor:
    """B×1×H×W weight of the image's own content in a composite: 1 on its (dilated) AOI and on the partner's,
    fading to 0 over ``feather`` px outside them."""
    keep = dilate((aoi > 0.5).float(), dilation)
    if partner_aoi is not None:
        keep = torch.maximum(keep, dilate((partner_aoi > 0.5).float(), dilation))
    keep = keep[:, None]
    if feather > 0:
        keep = torch.maximum(keep, _box_blur(dilate(keep[:, 0], feather)[:, None], feather))
    return keep.clamp(0, 1)


def partner_roll(n: int, device=None) -> Tensor:
    """The deterministic partner of each image in a batch of n (the next one): B indices."""
    return torch.roll(torch.arange(n, device=device), -1)


def fill_outside(images: Tensor, aoi: Tensor, fill: str, partner: Tensor | None = None,
                 dilation: int = DILATION_PX, feather: int = FEATHER_PX,
                 generator: torch.Generator | None = None) -> Tensor:
    """images B×C×H×W with the content outside each (dilated) AOI replaced by ``fill`` (see the module
    docstring); ``partner`` (B, default :func:`partner_roll`) names the image whose outside ``swap`` uses.
    Images without an AOI are returned unchanged."""
    if fill not in FILLS:
        raise ValueError(f"fill must be one of {FILLS}, got {fill!r}")
    aoi = aoi.to(images.dtype)
    if fill == "swap":
        partner = partner_roll(images.shape[0], images.device) if partner is None else partner
        keep = keep_weight(aoi, aoi[partner], dilation, feather)
        other = images[partner]
    else:
        keep = keep_weight(aoi, None, dilation, feather)
        if fill == "blur":
            r = max(1, round(images.shape[-1] / 16))
            other = _box_blur(_box_blur(images, r), r)
        else:
            other = _noise_like_outside(images, keep, generator)
    out = keep * images + (1 - keep) * other
    has_aoi = (aoi > 0.5).flatten(1).any(dim=1)[:, None, None, None]
    return torch.where(has_aoi, out, images)


def _noise_like_outside(images: Tensor, keep: Tensor, generator: torch.Generator | None) -> Tensor:
    """Gaussian noise with the per-image, per-channel mean and spread of the pixels outside ``keep``."""
    w = 1 - keep
    n = w.sum(dim=(2, 3), keepdim=True).clamp(min=1)
    mean = (images * w).sum(dim=(2, 3), keepdim=True) / n
    std = (((images - mean) * w) ** 2).sum(dim=(2, 3), keepdim=True).div(n).sqrt()
    noise = torch.randn(images.shape, generator=generator, dtype=images.dtype, device=images.device)
    return noise * std + mean


def valid_for(aoi: Tensor, fill: str, partner: Tensor | None = None) -> Tensor:
    """B bool: images the measurement counts (an AOI; for ``swap`` a partner other than itself)."""
    ok = (aoi > 0.5).flatten(1).any(dim=1)
    if fill == "swap":
        partner = partner_roll(aoi.shape[0], aoi.device) if partner is None else partner
        ok = ok & (partner != torch.arange(aoi.shape[0], device=aoi.device))
    return ok


def reliance(prob: Tensor, prob_filled: Tensor, valid: Tensor, threshold: float) -> tuple[Tensor, Tensor]:
    """(mean |ΔP|, share of flipped decisions at ``threshold``) over the ``valid`` images (N each); NaN and NaN
    when no image is valid (no AOI mask: nothing was measured — as the AOI metrics, never a reassuring 0)."""
    if not bool(valid.any()):
        nan = torch.tensor(float("nan"))
        return nan, nan
    n = valid.sum()
    delta = (prob - prob_filled).abs() * valid
    flip = ((prob >= threshold) != (prob_filled >= threshold)) & valid
    return delta.sum() / n, flip.sum() / n


def consistency(logits_a: Tensor, logits_b: Tensor) -> Tensor:
    """Per pair (B): the symmetric KL divergence between the softmax of ``logits_a`` and ``logits_b`` (B×K)."""
    la, lb = F.log_softmax(logits_a.float(), dim=1), F.log_softmax(logits_b.float(), dim=1)
    return 0.5 * ((la.exp() * (la - lb)).sum(dim=1) + (lb.exp() * (lb - la)).sum(dim=1))


def occlusion_map(predict: Callable[[Tensor], Tensor], image: Tensor, aoi: Tensor, partner: Tensor,
                  partner_aoi: Tensor, grid: int = 8) -> Tensor:
    """Where the outside moves the decision: grid×grid signed ΔP(defect) when only that cell's outside
    content is swapped for the partner's (inside the AOIs nothing changes, so those cells are 0).

    ``predict``: images N×C×H×W → P(defect) N; image, partner C×H×W; aoi, partner_aoi H×W.
    """
    c, h, w = image.shape
    keep = keep_weight(aoi[None], partner_aoi[None])[0, 0]
    ys, xs = torch.linspace(0, h, grid + 1).long(), torch.linspace(0, w, grid + 1).long()
    cells = torch.zeros(grid * grid, h, w, dtype=image.dtype, device=image.device)
    for k in range(grid * grid):
        gy, gx = divmod(k, grid)
        cells[k, ys[gy]:ys[gy + 1], xs[gx]:xs[gx + 1]] = 1
    swap = cells * (1 - keep)  # N×H×W: weight of the partner's content
    composites = image[None] * (1 - swap[:, None]) + partner[None] * swap[:, None]
    p = predict(torch.cat([image[None], composites]))
    return (p[1:] - p[0]).reshape(grid, grid)
