"""CEOD math: hand-made overlaps, gradcheck, never-NaN edge cases, filter and threshold options."""

from __future__ import annotations

import math

import pytest
import torch

from ceod.errors import ConfigError
from ceod.core.losses.ceod import CEODLoss, ceod_loss, filter_mask, hottest_pixels, overlap_coefficient, overlap_distance

EPS = 1e-7


def box(h, w, y0, y1, x0, x1, dtype=torch.float64):
    m = torch.zeros(1, h, w, dtype=dtype)
    m[:, y0:y1, x0:x1] = 1
    return m


def test_overlap_inside_is_one_and_od_is_minus_log_one_minus_eps():
    a_gt = box(10, 10, 2, 8, 2, 8)
    a_d = box(10, 10, 3, 5, 3, 5) * 0.7
    ov, valid = overlap_coefficient(a_d, a_gt)
    assert valid.item() and ov.item() == pytest.approx(1.0)
    assert overlap_distance(ov, "log", EPS).item() == pytest.approx(-math.log(1 - EPS), rel=1e-6)
    assert overlap_distance(ov, "linear").item() == pytest.approx(0.0)


def test_disjoint_gives_minus_log_eps():
    ov, _ = overlap_coefficient(box(10, 10, 0, 3, 0, 3), box(10, 10, 6, 9, 6, 9))
    assert ov.item() == 0.0
    assert overlap_distance(ov, "log", EPS).item() == pytest.approx(-math.log(EPS))
    assert overlap_distance(ov, "linear").item() == 1.0


def test_partial_overlap_hand_computed_and_min_picks_the_smaller_area():
    # A_d: 4×4 square of ones (area 16); A_gt: 2×8 strip (area 16) crossing it in 2×4 = 8 pixels.
    a_d = box(12, 12, 0, 4, 0, 4)
    a_gt = box(12, 12, 2, 4, 0, 8)
    ov, _ = overlap_coefficient(a_d, a_gt)
    assert ov.item() == pytest.approx(8 / 16)
    # A larger AOI (6×8 = 48) still sharing 2×4 pixels with A_d; A_d is the smaller area (16): 8/16.
    big = box(12, 12, 2, 8, 0, 8)
    assert overlap_coefficient(a_d, big)[0].item() == pytest.approx(8 / 16)
    # Swap roles: a small AOI (2×2 = 4, all inside A_d) → the AOI is the smaller area: 4/4.
    small = box(12, 12, 1, 3, 1, 3)
    assert overlap_coefficient(a_d, small)[0].item() == pytest.approx(1.0)
    # Weighted values: heat 0.5 on the 8 shared pixels, 1 on the other 8: Σ a·g = 4, Σ a = 12 → 4/12.
    heat = a_d.clone()
    heat[:, 2:4, 0:4] = 0.5
    assert overlap_coefficient(heat, a_gt)[0].item() == pytest.approx(4 / 12)
    od = overlap_distance(torch.tensor([4 / 12], dtype=torch.float64), "log", EPS)
    assert od.item() == pytest.approx(-math.log(4 / 12))


def test_filter_mask_values():
    m = box(7, 7, 2, 5, 2, 5)[0][None]
    lit = filter_mask(m, 3, 0.5, "none")[0]
    assert lit[3, 3].item() == pytest.approx(4.5)  # interior: 9 × 0.5
    assert lit[1, 1].item() == pytest.approx(0.5)  # diagonal neighbour outside: one pixel of the AOI
    assert lit[0, 0].item() == 0.0  # two pixels away: untouched
    assert filter_mask(m, 3, 0.5, "clip")[0].max().item() == pytest.approx(1.0)
    s = filter_mask(m, 3, 0.5, "sum")[0]
    assert s[3, 3].item() == pytest.approx(1.0) and s[1, 1].item() == pytest.approx(1 / 9)


def test_hottest_pixels_keep_values_above_tau():
    heat = torch.tensor([[[0.0, 1.0], [2.0, 4.0]]])
    hard = hottest_pixels(heat, tau=0.5)
    assert torch.equal(hard, torch.tensor([[[0.0, 0.0], [0.5, 1.0]]]))  # values, not a 0/1 mask
    assert torch.equal(hottest_pixels(heat, tau=0.0), heat / 4)
    soft = hottest_pixels(heat, tau=0.5, mode="soft", temperature=0.05)
    assert soft[0, 1, 1] > 0.99 and soft[0, 0, 1] < 0.01


def _batch(dtype, b=4, h=16, w=16):
    g = torch.Generator().manual_seed(1)
    logits = torch.randn(b, 2, dtype=dtype, generator=g, requires_grad=True)
    heat = torch.rand(b, h, w, dtype=dtype, generator=g).requires_grad_()
    mask = torch.zeros(b, h, w, dtype=dtype)
    mask[:, 4:12, 6:10] = 1
    return logits, heat, mask


@pytest.mark.parametrize("variant", ["log", "linear"])
@pytest.mark.parametrize("threshold", ["hard", "soft"])
def test_gradcheck_wrt_heat(variant, threshold):
    logits, heat, mask = _batch(torch.float64)
    target = torch.tensor([1, 1, 0, 1])

    def f(lg, ht):
        return ceod_loss(lg, target, ht, mask, omega=0.7, variant=variant, threshold=threshold, tau=0.3).total

    assert torch.autograd.gradcheck(f, (logits, heat), eps=1e-6, atol=1e-5)


def test_gradcheck_wrt_activations_through_grad_cam():
    from ceod.core.cam import grad_cam

    g = torch.Generator().manual_seed(2)
    feats = torch.rand(2, 3, 4, 4, dtype=torch.float64, generator=g).requires_grad_()
    w1 = torch.randn(5, 3, dtype=torch.float64, generator=g)
    w2 = torch.randn(2, 5, dtype=torch.float64, generator=g)
    mask = torch.zeros(2, 8, 8, dtype=torch.float64)
    mask[:, 2:6, 3:7] = 1
    target = torch.tensor([1, 1])

    def f(a):  # a non-linear head (GAP → linear → tanh → linear): the autograd Grad-CAM path
        logits = torch.tanh(a.mean((2, 3)) @ w1.T) @ w2.T
        heat = grad_cam(a, logits, 1, create_graph=True, size=(8, 8))
        return ceod_loss(logits, target, heat, mask, omega=1.0, tau=0.0, filter_normalize="sum").total

    assert torch.autograd.gradcheck(f, (feats,), eps=1e-6, atol=1e-5)


@pytest.mark.parametrize("dtype", [torch.float32, torch.float64])
@pytest.mark.parametrize("case", ["empty_aoi", "zero_heat", "no_defect", "batch_of_one", "all_zero_everything"])
def test_never_nan(dtype, case):
    logits, heat, mask = _batch(dtype)
    target = torch.tensor([1, 0, 1, 1])
    if case == "empty_aoi":
        mask = torch.zeros_like(mask)
    elif case == "zero_heat":
        heat = torch.zeros_like(heat).requires_grad_()
    elif case == "no_defect":
        target = torch.zeros(4, dtype=torch.long)
    elif case == "batch_of_one":
        logits = logits[:1].detach().requires_grad_()
        heat, mask, target = heat[:1].detach().requires_grad_(), mask[:1], target[:1]
    elif case == "all_zero_everything":
        heat, mask = torch.zeros_like(heat).requires_grad_(), torch.zeros_like(mask)
    for variant in ("log", "linear"):
        for threshold in ("hard", "soft"):
            out = ceod_loss(logits, target, heat, mask, omega=1.0, variant=variant, threshold=threshold)
            gl, gh = torch.autograd.grad(out.total, (logits, heat))
            assert torch.isfinite(out.total) and torch.isfinite(out.penalty)
            assert torch.isfinite(gl).all() and torch.isfinite(gh).all()
    if case in ("empty_aoi", "zero_heat", "no_defect", "all_zero_everything"):
        assert out.penalty.item() == 0.0 and not out.contributes.any()


def test_y_weighting_only_defective_images_contribute():
    logits, heat, mask = _batch(torch.float64)
    target = torch.tensor([1, 0, 0, 1])
    out = ceod_loss(logits, target, heat, mask, omega=1.0)
    assert out.contributes.tolist() == [True, False, False, True]
    everyone = ceod_loss(logits, target, heat, mask, omega=1.0, y_weighting=False)
    assert everyone.contributes.all()
    per_image = overlap_distance(out.overlap, "log", EPS)
    assert out.total.item() == pytest.approx(out.ce.item() + (per_image[0] + per_image[3]).item() / 4)


def test_omega_zero_is_plain_cross_entropy():
    logits, heat, mask = _batch(torch.float64)
    target = torch.tensor([1, 0, 1, 1])
    out = ceod_loss(logits, target, heat, mask, omega=0.0)
    ce = torch.nn.functional.cross_entropy(logits, target)
    assert out.total.item() == pytest.approx(ce.item()) and out.penalty.item() > 0


@pytest.mark.parametrize("bad", [dict(variant="square"), dict(threshold="x"), dict(filter_normalize="max"),
                                 dict(omega=-1), dict(eps=0), dict(tau=1.5)])
def test_bad_options_are_config_errors(bad):
    with pytest.raises(ConfigError, match="loss\\."):
        CEODLoss(**bad)


@pytest.mark.parametrize("bad", [dict(temperature=0), dict(kernel_size=4), dict(kernel_value=0), dict(defect_class=2)])
def test_more_bad_options_are_config_errors(bad):
    with pytest.raises(ConfigError, match="loss\\."):
        CEODLoss(**bad)


@pytest.mark.parametrize("dtype", [torch.float32, torch.float64])
def test_a_vanishing_heat_peak_is_zero_heat_not_nan(dtype):
    logits, heat, mask = _batch(dtype)
    scale = 1e-39 if dtype == torch.float32 else 1e-310  # subnormal peaks: 1/peak overflows
    tiny = (heat.detach() * scale).requires_grad_()
    out = ceod_loss(logits, torch.tensor([1, 1, 1, 1]), tiny, mask, omega=1.0, threshold="soft")
    g = torch.autograd.grad(out.total, tiny)[0]
    assert torch.isfinite(out.total) and torch.isfinite(g).all()


def test_od_active_counts_unsaturated_overlaps():
    a_gt = box(10, 10, 2, 8, 2, 8)
    inside = box(10, 10, 3, 5, 3, 5)  # overlap 1 → clipped: no gradient
    half = box(10, 10, 0, 4, 2, 8)  # partly inside
    heat = torch.cat([inside, half])
    out = ceod_loss(torch.zeros(2, 2, dtype=torch.float64), torch.tensor([1, 1]), heat, torch.cat([a_gt, a_gt]),
                    omega=1.0, tau=0.0, filter_normalize="clip")
    assert out.active.item() == pytest.approx(0.5)


def test_loss_is_fp32_under_autocast():
    logits, heat, mask = _batch(torch.float32)
    with torch.autocast("cpu", dtype=torch.bfloat16):
        out = ceod_loss(logits.bfloat16(), torch.tensor([1, 0, 1, 1]), heat.bfloat16(), mask, omega=1.0)
    assert out.total.dtype == torch.float32 and torch.isfinite(out.total)


def test_unknown_or_mistyped_option_names_its_key():
    with pytest.raises(ConfigError, match="loss\\.omgea"):
        CEODLoss(omgea=0.1)
    with pytest.raises(ConfigError, match="loss\\.omega"):
        CEODLoss(omega="abc")
    with pytest.raises(ConfigError, match="loss\\.heat_sign"):
        CEODLoss(heat_sign="square")
    with pytest.raises(ConfigError, match="loss\\.resolution"):
        CEODLoss(resolution="half")


def test_omega_warmup_ramps_linearly():
    from ceod.core.losses.ceod import CEODOptions

    o = CEODOptions(omega=2.0, omega_warmup_steps=4)
    assert [o.omega_at(s) for s in (0, 1, 3, 10)] == [0.5, 1.0, 2.0, 2.0]
    assert o.omega_at(None) == 2.0 and CEODOptions(omega=2.0).omega_at(0) == 2.0
    logits, heat, mask = _batch(torch.float64)
    target = torch.tensor([1, 0, 1, 1])
    early = ceod_loss(logits, target, heat, mask, o, step=0)
    late = ceod_loss(logits, target, heat, mask, o, step=100)
    assert (early.total - early.ce).item() == pytest.approx((late.total - late.ce).item() / 4)


def test_abs_heat_sees_evidence_against_the_class():
    from ceod.core.cam import grad_cam

    feats = torch.zeros(1, 2, 4, 4, dtype=torch.float64)
    feats[0, 0, 0, 0] = 1.0  # channel 0 fires outside, with a negative weight: invisible to ReLU
    feats[0, 1, 3, 3] = 1.0
    w = torch.tensor([[0.0, 0.0], [-2.0, 1.0]], dtype=torch.float64)
    relu = grad_cam(feats, head_weight=w)
    signed = grad_cam(feats, head_weight=w, sign="abs")
    assert relu[0, 0, 0] == 0 and signed[0, 0, 0] == pytest.approx(2 / 16)
    assert torch.equal(relu[0, 3, 3], signed[0, 3, 3])


def test_overlap_at_cam_resolution_uses_the_area_downsampled_mask():
    from ceod.core.losses.base import area_downsample

    g = torch.Generator().manual_seed(3)
    feats = torch.rand(2, 3, 4, 4, dtype=torch.float64, generator=g)
    w = torch.randn(2, 3, dtype=torch.float64, generator=g)
    logits = feats.mean((2, 3)) @ w.T
    mask = torch.zeros(2, 16, 16, dtype=torch.float64)
    mask[:, 2:10, 4:12] = 1
    target = torch.tensor([1, 1])
    out = CEODLoss(omega=1.0, tau=0.0, filter_normalize="sum", resolution="cam")(
        logits, target, mask, features=feats, head_weight=w)
    small = area_downsample(mask, (4, 4))
    assert small[0, 0, 1].item() == pytest.approx(0.5 * 1.0) and small[0, 0, 0].item() == 0
    from ceod.core.cam import grad_cam
    ref = ceod_loss(logits, target, grad_cam(feats, head_weight=w), small, omega=1.0, tau=0.0, filter_normalize="sum")
    assert out.total.item() == pytest.approx(ref.total.item())


def test_outside_variant_is_the_mean_heat_outside_and_not_met_by_inflating_the_inside():
    heat = torch.zeros(1, 4, 4, dtype=torch.float64)
    heat[0, 0, 0] = 2.0  # outside
    mask = torch.zeros(1, 4, 4, dtype=torch.float64)
    mask[0, :, 2:] = 1
    kw = dict(omega=1.0, variant="outside", kernel_size=1, kernel_value=1.0)
    out = ceod_loss(torch.zeros(1, 2, dtype=torch.float64), torch.tensor([1]), heat, mask, **kw)
    assert out.penalty.item() == pytest.approx(2 / 16)
    inflated = heat.clone()
    inflated[0, :, 2:] = 100.0  # a huge constant inside leaves the outside evidence as it is
    again = ceod_loss(torch.zeros(1, 2, dtype=torch.float64), torch.tensor([1]), inflated, mask, **kw)
    assert again.penalty.item() == pytest.approx(2 / 16)
    log = ceod_loss(torch.zeros(1, 2, dtype=torch.float64), torch.tensor([1]), inflated, mask, omega=1.0, tau=0.0,
                    kernel_size=1, kernel_value=1.0)
    assert log.penalty.item() < 0.01  # the peak-normalised overlap is fooled by it
