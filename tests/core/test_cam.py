"""Grad-CAM: equal to the independent `grad-cam` package, analytic == autograd path, OD reaches the backbone."""

from __future__ import annotations

import numpy as np
import pytest
import torch
from torch import nn

from ceod.core.cam import grad_cam, upsample
from ceod.core.losses.ceod import CEODLoss
from ceod.models.custom_cnn import CustomCNN

pytorch_grad_cam = pytest.importorskip("pytorch_grad_cam")
from pytorch_grad_cam import GradCAM  # noqa: E402
from pytorch_grad_cam.utils.model_targets import ClassifierOutputTarget  # noqa: E402


class LogitsOnly(nn.Module):
    def __init__(self, model):
        super().__init__()
        self.model = model

    def forward(self, x):
        return self.model(x)[0]


class MLPHead(nn.Module):
    """A model whose head is not GAP → linear: only the autograd path applies."""

    def __init__(self):
        super().__init__()
        self.features = nn.Sequential(nn.Conv2d(1, 8, 3, padding=1), nn.ReLU(), nn.MaxPool2d(2),
                                      nn.Conv2d(8, 12, 3, padding=1), nn.ReLU())
        self.head = nn.Sequential(nn.Flatten(), nn.Linear(12 * 8 * 8, 16), nn.Tanh(), nn.Linear(16, 2))

    def forward(self, x):
        f = self.features(x)
        return self.head(f), f


def _trained_like(model):
    # perturb BN statistics so eval-mode BN is not the identity
    for m in model.modules():
        if isinstance(m, nn.BatchNorm2d):
            m.running_mean.uniform_(-0.2, 0.2)
            m.running_var.uniform_(0.5, 1.5)
            m.weight.data.uniform_(0.5, 1.5)
            m.bias.data.uniform_(-0.3, 0.3)
    return model.eval()


@pytest.mark.parametrize("name", ["custom_cnn", "mlp_head"])
def test_cam_matches_the_grad_cam_package(name):
    torch.manual_seed(0)
    model = _trained_like(CustomCNN(in_chans=1)) if name == "custom_cnn" else MLPHead().eval()
    x = torch.rand(3, 1, 64, 64) if name == "custom_cnn" else torch.rand(3, 1, 16, 16)
    layer = model.features[-1]
    x = x.requires_grad_(False)
    # the package's Grad-CAM (hooks + backward), at image size, min-max scaled
    cam_pkg = GradCAM(model=LogitsOnly(model), target_layers=[layer])
    targets = [ClassifierOutputTarget(1)] * x.shape[0]
    theirs_img = cam_pkg(input_tensor=x, targets=targets)
    acts = cam_pkg.activations_and_grads.activations[0].cpu().numpy()
    grads = cam_pkg.activations_and_grads.gradients[0].cpu().numpy()
    theirs_feat = np.maximum(cam_pkg.get_cam_image(x, layer, targets, acts, grads, False), 0)
    cam_pkg.activations_and_grads.release()
    # ours, general autograd path
    with torch.enable_grad():
        logits, feats = model(x)
        ours = grad_cam(feats, logits, 1, create_graph=False).detach()
    assert ours.shape == theirs_feat.shape
    assert np.abs(ours.numpy() - theirs_feat).max() <= 1e-4 * max(1.0, float(np.abs(theirs_feat).max()))
    up = upsample(ours, tuple(x.shape[-2:])).numpy()
    for a, b in zip(up, theirs_img):
        if b.max() > 0:
            assert np.corrcoef(a.ravel(), b.ravel())[0, 1] >= 0.999


def test_analytic_path_equals_autograd_path():
    torch.manual_seed(1)
    model = _trained_like(CustomCNN(in_chans=3))
    model.train()  # also in train mode (batch statistics)
    x = torch.rand(4, 3, 64, 64)
    logits, feats = model(x)
    general = grad_cam(feats, logits, 1, create_graph=True)
    analytic = grad_cam(feats, None, 1, head_weight=model.cam_head_weight)
    assert torch.allclose(general, analytic, atol=1e-6, rtol=1e-5)
    per_sample = torch.tensor([0, 1, 1, 0])
    assert torch.allclose(grad_cam(feats, logits, per_sample), grad_cam(feats, None, per_sample, model.cam_head_weight),
                          atol=1e-6, rtol=1e-5)
    for score in ("logit", "margin"):
        assert torch.allclose(grad_cam(feats, logits, 1, score=score),
                              grad_cam(feats, None, 1, model.cam_head_weight, score=score), atol=1e-6, rtol=1e-5)
    # margin = CAM of (logit_1 - logit_0): equals the logit CAM of a head with weight W1 - W0, before the ReLU
    w = model.cam_head_weight
    diff_head = torch.stack([w[0] - w[1], w[1] - w[0]])
    assert torch.allclose(grad_cam(feats, None, 1, w, score="margin"), grad_cam(feats, None, 1, diff_head), atol=1e-6)
    # the analytic path is differentiable too, w.r.t. features and head
    g = torch.autograd.grad(analytic.sum(), [feats, model.head.weight])
    assert all(t.abs().sum() > 0 for t in g)


def _od_gradient(model, head_weight):
    x = torch.rand(6, 1, 16, 16)
    mask = torch.zeros(6, 16, 16)
    mask[:, :, 5:10] = 1
    y = torch.tensor([1, 1, 1, 0, 1, 0])
    logits, feats = model(x)
    out = CEODLoss(omega=1.0, tau=0.0, filter_normalize="sum")(logits, y, mask, features=feats, head_weight=head_weight)
    assert out.contributes.sum() >= 2 and 0 < out.penalty < 5  # the OD term is active for this draw
    ce = torch.nn.functional.cross_entropy(logits, y)
    params = [p for p in model.features.parameters()]
    g_total = torch.autograd.grad(out.total, params, retain_graph=True)
    g_ce = torch.autograd.grad(ce, params)
    return [(a - b) for a, b in zip(g_total, g_ce)]


def test_od_gradient_reaches_the_backbone():
    for make, analytic in ((CustomCNN, True), (MLPHead, False)):
        torch.manual_seed(2)
        model = make()
        weight = model.cam_head_weight if analytic else None
        diff = _od_gradient(model, weight)
        first_conv = diff[0]
        assert first_conv.abs().sum() > 0, type(model).__name__  # OD's own gradient reaches the first conv
        assert all(torch.isfinite(d).all() for d in diff)


def test_no_graph_when_omega_is_zero():
    model = CustomCNN()
    x = torch.rand(2, 1, 32, 32)
    logits, feats = model(x)
    out = CEODLoss(omega=0.0)(logits, torch.tensor([1, 0]), torch.ones(2, 32, 32), features=feats,
                              head_weight=model.cam_head_weight)
    ce = torch.nn.functional.cross_entropy(logits, torch.tensor([1, 0]))
    assert torch.equal(out.total, ce)


def test_youden_threshold_hand_computed():
    from ceod.core.metrics import youden_threshold

    prob = torch.tensor([0.1, 0.3, 0.35, 0.8, 0.9])
    target = torch.tensor([0, 0, 1, 1, 1])
    t = youden_threshold(prob, target)
    assert 0.3 < t < 0.35  # every defect above, every good below: J = 1
    assert ((prob > t).long() == target).all() and ((prob >= t).long() == target).all()
    assert youden_threshold(prob, torch.ones(5, dtype=torch.long)) == 0.5
