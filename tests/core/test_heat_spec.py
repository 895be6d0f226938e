"""HeatSpec, the one defect-class heat map: bitwise the pre-HeatSpec computation (grad_cam called by hand, as the
loss, predict and export did), in and out of the graph, validated, recorded; the loss returns it."""

from __future__ import annotations

import dataclasses

import pytest
import torch
from torch import nn

from ceod.core.cam import CAM_SCORES, HEAT_SIGNS, HeatSpec, grad_cam
from ceod.core.losses.baselines import BackgroundRandomizationLoss, EnergyLoss, RRRLoss
from ceod.core.losses.ceod import CEODLoss
from ceod.deploy.export import Deployable
from ceod.deploy.predict import score_images
from ceod.models import cam_head_weight
from ceod.models.custom_cnn import CustomCNN

SPECS = [HeatSpec(c, s, g) for c in (0, 1) for s in CAM_SCORES for g in HEAT_SIGNS]


class MLPHead(nn.Module):
    """Not GAP → linear (no cam_head_weight): only the autograd path applies."""

    def __init__(self):
        super().__init__()
        self.features = nn.Sequential(nn.Conv2d(1, 6, 3, padding=1), nn.ReLU(), nn.MaxPool2d(2))
        self.head = nn.Sequential(nn.Flatten(), nn.Linear(6 * 8 * 8, 2))

    def forward(self, x):
        f = self.features(x)
        return self.head(f), f


def _models():
    torch.manual_seed(0)
    return {"analytic": CustomCNN(in_chans=1, channels=(4, 4, 8, 8)).eval(),
            "autograd": CustomCNN(in_chans=1, channels=(4, 4, 8, 8), cam_block=2).eval(), "mlp": MLPHead().eval()}


@pytest.mark.parametrize("path", ["analytic", "autograd", "mlp"])
@pytest.mark.parametrize("size", [None, (16, 16)])
def test_heat_is_grad_cam_called_by_hand_bitwise(path, size):
    model, x = _models()[path], torch.rand(3, 1, 16, 16)
    hw = cam_head_weight(model)
    assert (hw is None) == (path != "analytic")
    for spec in SPECS:
        with torch.set_grad_enabled(hw is None):  # the old AttributionLoss.heat / score_images body
            logits, feats = model(x)
            old = grad_cam(feats, logits, spec.defect_class, hw, create_graph=False, size=size, score=spec.score,
                           sign=spec.sign).detach()
        with torch.set_grad_enabled(hw is None):
            logits, feats = model(x)
            new = spec.heat(feats, logits, hw, size)
        assert torch.equal(new, old) and not new.requires_grad, spec
        assert new.shape == (3, *(size or feats.shape[-2:]))


def test_predict_and_export_heat_are_the_old_computation_bitwise():
    model, x = _models()["analytic"], torch.rand(3, 1, 16, 16)
    for spec in SPECS:
        prob, heat = score_images(model, x, spec)
        with torch.no_grad():  # the old score_images / Deployable.forward: grad_cam threaded by hand
            logits, feats = model(x)
            old = grad_cam(feats, None, spec.defect_class, model.cam_head_weight, create_graph=False, size=(16, 16),
                           score=spec.score, sign=spec.sign)
        assert torch.equal(heat, old.float()) and torch.equal(prob, logits.softmax(1)[:, spec.defect_class])
        deploy = Deployable(model, {"channels": 1, "mean": None, "std": None}, spec, heatmap=True)
        with torch.no_grad():
            p2, h2 = deploy(x)
        assert torch.equal(h2, old) and torch.equal(p2, prob)
    assert score_images(model, x, SPECS[0], heat=False)[1] is None


def test_differentiable_heat_is_second_order_and_detached_otherwise():
    model, x = _models()["autograd"], torch.rand(2, 1, 16, 16)
    spec = HeatSpec(1, "margin", "abs")
    logits, feats = model(x)
    assert not spec.heat(feats, logits, None, (16, 16)).requires_grad
    heat = spec.heat(feats, logits, None, (16, 16), differentiable=True)
    assert heat.requires_grad
    heat.sum().backward()  # second order through autograd.grad(create_graph=True): reaches the head
    assert model.head.weight.grad is not None and model.head.weight.grad.abs().sum() > 0


def test_spec_is_validated_frozen_and_recorded():
    for bad in ({"score": "prob"}, {"sign": "square"}, {"defect_class": -1}, {"defect_class": True}):
        with pytest.raises(ValueError):
            HeatSpec(**bad)
    spec = HeatSpec(0, "margin", "abs")
    with pytest.raises(dataclasses.FrozenInstanceError):
        spec.score = "logit"  # type: ignore[misc]
    assert spec.record() == {"defect_class": 0, "cam_score": "margin", "heat_sign": "abs"}
    assert HeatSpec.from_record({**spec.record(), "model": {}}) == spec
    assert HeatSpec.from_record({"cam_score": "margin"}) == HeatSpec(1, "margin", "relu")  # hand-written records


def test_every_loss_builds_its_spec_from_its_options_and_returns_the_heat():
    opts = dict(defect_class=0, cam_score="margin", heat_sign="abs")
    for loss in (CEODLoss(**opts), RRRLoss(**opts), EnergyLoss(**opts), BackgroundRandomizationLoss(**opts)):
        assert loss.heat_spec == HeatSpec(0, "margin", "abs")
    model, x = _models()["analytic"], torch.rand(4, 1, 16, 16)
    y, mask = torch.tensor([0, 1, 0, 1]), torch.zeros(4, 16, 16)
    mask[:, 4:12, 4:12] = 1
    for resolution, size in (("image", (16, 16)), ("cam", None)):
        loss = CEODLoss(omega=1.0, resolution=resolution, cam_score="margin")
        logits, feats = model(x)
        out = loss(logits, y, mask, features=feats, head_weight=model.cam_head_weight)
        assert out.heat.requires_grad  # training mode, ω > 0: in the graph
        assert torch.equal(out.heat.detach(), loss.heat_spec.heat(feats, logits, model.cam_head_weight, size))
        loss.eval()  # as the LightningModule's validation: the same heat, detached, no graph
        again = loss(logits, y, mask, features=feats, head_weight=model.cam_head_weight)
        assert not again.heat.requires_grad and torch.equal(again.heat, out.heat.detach())
        assert torch.equal(again.penalty, out.penalty.detach())


def test_each_loss_names_its_penalty_and_none_where_it_measures_none():
    assert (CEODLoss.penalty_name, RRRLoss.penalty_name, EnergyLoss.penalty_name) == ("od", "outside_grad",
                                                                                    "outside_heat")
    assert BackgroundRandomizationLoss.penalty_name is None
    logits, y, mask = torch.randn(2, 2), torch.tensor([1, 1]), torch.ones(2, 4, 4)
    heat = torch.rand(2, 4, 4)
    assert BackgroundRandomizationLoss()(logits, y, mask, heat=heat).penalty is None
    assert RRRLoss()(logits, y, mask, heat=heat).penalty is None  # no input gradient (evaluation)
    out = EnergyLoss(omega=1.0)(logits, y, mask, heat=heat)
    assert out.penalty is not None and float(out.penalty) == pytest.approx(0.0)  # all the heat is inside
