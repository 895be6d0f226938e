"""AOI metrics on hand-made heat maps, the inference-mode guard, and the fp16 Grad-CAM scaling."""

from __future__ import annotations

import pytest
import torch

from ceod.core.cam import FP16_CAM_SCALE, grad_cam_weights
from ceod.errors import ConfigError
from ceod.core.metrics import AOIEnergy, PointingGame


def _case():
    heat = torch.zeros(3, 4, 4)
    heat[0, 0, 0], heat[0, 3, 3] = 1.0, 3.0  # 3/4 inside, argmax inside
    heat[1, 0, 0], heat[1, 3, 3] = 2.0, 1.0  # 1/3 inside, argmax outside
    heat[2, 3, 3] = 5.0  # a good image: not counted
    mask = torch.zeros(3, 4, 4)
    mask[:, 2:, 2:] = 1
    return heat, mask, torch.tensor([1, 1, 0])


def test_aoi_energy_and_pointing_game_hand_computed():
    heat, mask, target = _case()
    energy, pointing = AOIEnergy(), PointingGame()
    energy.update(heat, mask, target)
    pointing.update(heat, mask, target)
    assert energy.compute().item() == pytest.approx((3 / 4 + 1 / 3) / 2)
    assert pointing.compute().item() == pytest.approx(0.5)


def test_zero_heat_is_a_miss_and_no_aoi_is_nan():
    heat, mask, target = _case()
    energy = AOIEnergy()
    energy.update(torch.zeros_like(heat), mask, target)
    assert energy.compute().item() == 0.0
    empty = PointingGame()
    empty.update(heat, torch.zeros_like(mask), target)
    assert torch.isnan(empty.compute())


def test_eval_under_inference_mode_is_a_config_error_for_the_autograd_cam():
    import functools

    from ceod.core.losses.ceod import CEODLoss
    from ceod.training.module import CEODModule

    class NoHead(torch.nn.Module):  # no cam_head_weight: the autograd Grad-CAM path
        def __init__(self):
            super().__init__()
            self.conv = torch.nn.Conv2d(1, 2, 3, padding=1)

        def forward(self, x):
            f = self.conv(x)
            return torch.tanh(f.mean((2, 3))), f

    module = CEODModule(NoHead(), CEODLoss(), functools.partial(torch.optim.SGD, lr=0.1))
    batch = {"image": torch.rand(2, 1, 8, 8), "mask": torch.ones(2, 8, 8), "label": torch.tensor([0, 1])}
    with torch.inference_mode(), pytest.raises(ConfigError, match="inference_mode=false"):
        module._eval_step("val", batch)


def test_fp16_features_are_scaled_before_autograd_and_unscaled_after():
    """Tiny fp16 gradients flush to zero unscaled; the scaled Grad-CAM keeps them and returns fp32."""
    torch.manual_seed(0)
    w = torch.full((2, 3), 2e-7)  # ∂score/∂A = 2e-7/16 per cell: below half of fp16's smallest subnormal
    feats16 = torch.rand(2, 3, 4, 4).half().requires_grad_()
    logits = feats16.float().mean((2, 3)) @ w.T
    (plain,) = torch.autograd.grad(logits[:, 1].sum(), feats16, retain_graph=True)
    assert plain.dtype == torch.float16 and not plain.any()  # what an unscaled fp16 Grad-CAM would see
    alpha = grad_cam_weights(logits, feats16, 1, create_graph=False)
    assert FP16_CAM_SCALE > 1 and alpha.dtype == torch.float32
    assert torch.allclose(alpha, w[1].expand(2, 3) / 16, rtol=1e-2)


def test_aoi_metrics_score_annotated_images_only():
    """An image without a mask (all-zero: not annotated) leaves both AOI metrics as they are."""
    heat, mask, target = _case()
    extra_heat = torch.zeros(1, 4, 4)
    extra_heat[0, 0, 0] = 9.0  # all its heat "outside": it would pull both metrics down if it counted
    both = [m() for m in (AOIEnergy, PointingGame)]
    alone = [m() for m in (AOIEnergy, PointingGame)]
    for metric in both:
        metric.update(torch.cat([heat, extra_heat]), torch.cat([mask, torch.zeros(1, 4, 4)]), torch.tensor([1, 1, 0, 1]))
    for metric in alone:
        metric.update(heat, mask, target)
    assert [m.compute().item() for m in both] == [m.compute().item() for m in alone]
