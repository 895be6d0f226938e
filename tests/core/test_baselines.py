"""Baselines behind the CEOD contract: hand-computed values, gradcheck, second order, bad options."""

from __future__ import annotations

import pytest
import torch
import torch.nn.functional as F

from ceod.core.losses.baselines import BackgroundRandomizationLoss, EnergyLoss, RRRLoss, input_gradient_penalty, randomize_background
from ceod.errors import ConfigError


def _linear_model(w: torch.Tensor):
    """logits = [0, Σ w·x] (B×2) for images B×1×H×W: ∂ log p / ∂x is known in closed form."""
    def f(x):
        s = (x[:, 0] * w).sum(dim=(1, 2))
        return torch.stack([torch.zeros_like(s), s], dim=1)
    return f


def test_input_gradient_penalty_hand_computed():
    # Σ_k log p_k for logits [0, s]: d/ds = (1 − p1) − p1 = 1 − 2·p1, and ds/dx = w
    w = torch.zeros(4, 4, dtype=torch.float64)
    w[0, 0], w[3, 3] = 2.0, -1.0  # (0,0) outside the AOI, (3,3) inside
    x = torch.rand(2, 1, 4, 4, dtype=torch.float64).requires_grad_()
    mask = torch.zeros(2, 4, 4, dtype=torch.float64)
    mask[:, 2:, 2:] = 1
    logits = _linear_model(w)(x)
    p1 = logits.softmax(1)[:, 1].detach()
    expected = ((1 - 2 * p1) * 2.0) ** 2  # only the outside weight counts
    assert torch.allclose(input_gradient_penalty(logits, x, mask), expected, rtol=1e-9)


def test_rrr_total_and_gradcheck():
    g = torch.Generator().manual_seed(0)
    w = torch.randn(4, 4, dtype=torch.float64, generator=g)
    mask = torch.zeros(3, 4, 4, dtype=torch.float64)
    mask[:, 1:3, 1:3] = 1
    target = torch.tensor([1, 0, 1])
    loss = RRRLoss(omega=3.0)
    x = torch.rand(3, 1, 4, 4, dtype=torch.float64, generator=g)
    xi = loss.prepare_inputs(x, mask, target)
    logits = _linear_model(w)(xi)
    out = loss(logits, target, mask, heat=torch.rand(3, 4, 4, dtype=torch.float64), images=xi)
    pen = input_gradient_penalty(logits, xi, mask)
    assert out.total.item() == pytest.approx((F.cross_entropy(logits, target) + 3.0 * pen.mean()).item(), rel=1e-5)

    def f(weights):  # second order: the penalty's gradient reaches the weights
        xi = x.clone().requires_grad_()
        lg = _linear_model(weights)(xi)
        return loss(lg, target, mask, heat=torch.rand(3, 4, 4, dtype=torch.float64), images=xi).total.double()

    w.requires_grad_()
    assert torch.autograd.gradcheck(f, (w,), eps=1e-6, atol=1e-4)


def test_rrr_without_input_gradient_is_a_config_error():
    x = torch.rand(2, 1, 4, 4)
    logits = torch.zeros(2, 2, requires_grad=True)
    with pytest.raises(ConfigError, match="rrr"):
        input_gradient_penalty(logits, x, torch.ones(2, 4, 4))


def test_energy_hand_computed_and_gradcheck():
    heat = torch.zeros(2, 4, 4, dtype=torch.float64)
    heat[0, 0, 0], heat[0, 3, 3] = 1.0, 3.0  # 3/4 of the heat inside
    heat[1, 0, 0] = 1.0  # good image: does not contribute
    mask = torch.zeros(2, 4, 4, dtype=torch.float64)
    mask[:, 2:, 2:] = 1
    logits = torch.zeros(2, 2, dtype=torch.float64)
    target = torch.tensor([1, 0])
    out = EnergyLoss(omega=2.0)(logits, target, mask, heat=heat)
    assert out.penalty.item() == pytest.approx(0.25)
    assert out.total.item() == pytest.approx(F.cross_entropy(logits, target).item() + 2.0 * 0.25 / 2)
    h = (torch.rand(2, 4, 4, dtype=torch.float64) + 0.1).requires_grad_()
    assert torch.autograd.gradcheck(lambda t: EnergyLoss(omega=1.0)(logits, torch.tensor([1, 1]), mask, heat=t).total,
                                    (h,), eps=1e-6, atol=1e-5)


def test_background_randomisation_keeps_the_aoi_and_replaces_the_rest():
    x = torch.full((2, 1, 8, 8), 0.5)
    x[0, 0, 0, 0] = 1.0  # a decoy outside the AOI
    mask = torch.zeros(2, 8, 8)
    mask[0, 2:6, 2:6] = 1  # image 1 has no AOI: kept as is
    out = randomize_background(x, mask, generator=torch.Generator().manual_seed(0))
    assert torch.equal(out[0, 0, 2:6, 2:6], x[0, 0, 2:6, 2:6])
    assert not torch.equal(out[0, 0, 0], x[0, 0, 0])
    assert torch.equal(out[1], x[1])
    assert torch.equal(BackgroundRandomizationLoss().prepare_inputs(x, torch.ones(2, 8, 8), torch.tensor([0, 1])), x)


@pytest.mark.parametrize("cls,bad", [(RRRLoss, dict(tau=0.3)), (EnergyLoss, dict(filter_normalize="sum")),
                                     (BackgroundRandomizationLoss, dict(omega=1.0)), (RRRLoss, dict(omega="x"))])
def test_options_a_baseline_does_not_take_are_config_errors(cls, bad):
    with pytest.raises(ConfigError, match=f"loss\\.{next(iter(bad))}"):
        cls(**bad)


def test_images_without_a_mask_add_no_mask_term_in_any_loss():
    """A partially annotated batch: image 1 has an all-zero mask (not annotated). RRR, energy and CEOD add
    nothing for it (before the fix RRR penalised its whole input gradient as "outside"), and their mask term is
    averaged over the 2 annotated images, not all 3 (it keeps its full-annotation weight); bg_random keeps it."""
    from ceod.core.losses.ceod import CEODLoss

    g = torch.Generator().manual_seed(1)
    w = torch.randn(4, 4, dtype=torch.float64, generator=g)
    x = torch.rand(3, 1, 4, 4, dtype=torch.float64, generator=g)
    mask = torch.zeros(3, 4, 4, dtype=torch.float64)
    mask[[0, 2], 1:3, 1:3] = 1
    target = torch.tensor([1, 1, 0])
    rrr = RRRLoss(omega=2.0)
    xi = rrr.prepare_inputs(x, mask, target)
    logits = _linear_model(w)(xi)
    out = rrr(logits, target, mask, heat=torch.rand(3, 4, 4, dtype=torch.float64), images=xi)
    pen = input_gradient_penalty(logits, xi, mask)
    assert pen[1] > 0 and out.contributes.tolist() == [True, False, True]
    expected = F.cross_entropy(logits, target) + 2.0 * (pen[0] + pen[2]) / 2
    assert out.total.item() == pytest.approx(expected.item(), rel=1e-9)
    heat = torch.rand(3, 4, 4, dtype=torch.float64, generator=g)
    for loss in (EnergyLoss(), CEODLoss()):
        assert not loss(logits.detach(), target, mask, heat=heat).contributes[1]
    # CEOD by hand: image 0 is the one defective annotated image; its OD is divided by N_a = 2, not N = 3
    out = CEODLoss(omega=3.0)(logits.detach(), target, mask, heat=heat)
    assert out.contributes.tolist() == [True, False, False] and out.penalty > 0
    ce = F.cross_entropy(logits.detach(), target)
    assert out.total.item() == pytest.approx(ce.item() + 3.0 * out.penalty.item() / 2, rel=1e-9)
    assert torch.equal(BackgroundRandomizationLoss().prepare_inputs(x, mask, target)[1], x[1])
