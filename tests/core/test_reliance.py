"""Outside reliance by intervention (ceod.core.reliance), counterfactual training, and its metric in val/test."""

from __future__ import annotations

import pytest
import torch
from torch import nn

from ceod.errors import ConfigError
from ceod.core.losses.ceod import CEODLoss
from ceod.core.metrics import AOIEnergy
from ceod.core.reliance import (consistency, dilate, fill_outside, keep_weight, occlusion_map, partner_roll, reliance,
                           valid_for)


def _batch(n=4, size=32):
    g = torch.Generator().manual_seed(0)
    x = torch.rand(n, 1, size, size, generator=g)
    aoi = torch.zeros(n, size, size)
    for i in range(n):  # a box per image, at different places
        aoi[i, 8 + i:16 + i, 10:18] = 1
    return x, aoi


def test_swap_keeps_the_inside_and_takes_the_partners_outside():
    x, aoi = _batch()
    out = fill_outside(x, aoi, "swap", dilation=1, feather=1)
    partner = partner_roll(4)
    for i in range(4):
        own = dilate(aoi[i:i + 1], 1)[0] > 0
        assert torch.equal(out[i, 0][own], x[i, 0][own])  # inside (dilated) AOI: the image itself
        far = dilate(torch.maximum(aoi[i:i + 1], aoi[partner[i]:partner[i] + 1]), 4)[0] == 0
        assert torch.allclose(out[i, 0][far], x[partner[i], 0][far])  # far outside both AOIs: the partner's
        where_partner_aoi = (aoi[partner[i]] > 0) & ~own
        assert torch.allclose(out[i, 0][where_partner_aoi], x[i, 0][where_partner_aoi])  # never a second product


def test_fills_keep_images_without_aoi_and_blur_noise_keep_inside():
    x, aoi = _batch()
    aoi[2] = 0
    for fill in ("swap", "blur", "noise"):
        out = fill_outside(x, aoi, fill)
        assert torch.equal(out[2], x[2])  # no AOI: unchanged
        inside = aoi[0] > 0
        assert torch.equal(out[0, 0][inside], x[0, 0][inside])
        assert not torch.allclose(out[0], x[0])
    assert valid_for(aoi, "swap").tolist() == [True, True, False, True]
    assert valid_for(aoi[:1], "swap").tolist() == [False]  # a batch of one has no partner
    with pytest.raises(ValueError, match="fill must be one of"):
        fill_outside(x, aoi, "paint")


def test_keep_weight_feathers_the_seam_between_0_and_1():
    _, aoi = _batch(1)
    w = keep_weight(aoi, None, dilation=0, feather=2)[0, 0]
    assert w.min() == 0 and w.max() == 1 and ((w > 0) & (w < 1)).any()
    assert torch.all(w[aoi[0] > 0] == 1)


def test_reliance_by_hand():
    prob = torch.tensor([0.9, 0.2, 0.6, 0.4])
    filled = torch.tensor([0.1, 0.3, 0.6, 0.9])
    valid = torch.tensor([True, True, False, True])
    delta, flip = reliance(prob, filled, valid, threshold=0.5)
    assert delta.item() == pytest.approx((0.8 + 0.1 + 0.5) / 3)
    assert flip.item() == pytest.approx(2 / 3)
    none = reliance(prob, filled, torch.zeros(4, dtype=torch.bool), 0.5)
    assert all(torch.isnan(v) for v in none)  # no AOI: not measured, never a reassuring 0


def test_consistency_is_the_symmetric_kl_and_has_gradients():
    a, b = torch.randn(5, 2, dtype=torch.float64), torch.randn(5, 2, dtype=torch.float64)
    p, q = a.softmax(1), b.softmax(1)
    want = 0.5 * ((p * (p / q).log()).sum(1) + (q * (q / p).log()).sum(1))
    assert torch.allclose(consistency(a, b).double(), want, atol=1e-6)
    assert torch.allclose(consistency(a, a), torch.zeros(5, dtype=torch.float32), atol=1e-7)
    a32 = a.float().requires_grad_(True)
    consistency(a32, b.float()).sum().backward()
    assert a32.grad.abs().sum() > 0


class _ReadsTheCorner(nn.Module):
    """A network whose decision reads only the top-left corner (the decoy) but whose CAM layer is a fixed bump
    at the image centre scaled by that reading: Grad-CAM inside the AOI, decision outside it — the pitfall of a
    cell whose receptive field spans the whole image."""

    def __init__(self, size=32):
        super().__init__()
        yy, xx = torch.meshgrid(torch.arange(size), torch.arange(size), indexing="ij")
        self.register_buffer("bump", torch.exp(-((yy - 15.5) ** 2 + (xx - 15.5) ** 2) / 8.0))
        self.head = nn.Linear(1, 2)
        with torch.no_grad():
            self.head.weight.copy_(torch.tensor([[-400.0], [400.0]]))
            self.head.bias.zero_()

    def forward(self, x):
        corner = x[:, 0, :4, :4].mean(dim=(1, 2)) - 0.5  # B
        feats = (corner[:, None, None, None] + 1.0) * self.bump  # B×1×H×W, positive
        logits = self.head(feats.mean(dim=(2, 3)) - self.bump.mean())
        return logits, feats

    @property
    def cam_head_weight(self):
        return self.head.weight


def test_reliance_is_high_where_aoi_energy_is_high_for_a_model_reading_a_decoy():
    torch.manual_seed(0)
    n, size = 16, 32
    x = torch.full((n, 1, size, size), 0.5) + 0.02 * torch.randn(n, 1, size, size)
    x[: n // 2, :, :4, :4] = 1.0  # decoy bright on half the images, dark on the rest
    x[n // 2:, :, :4, :4] = 0.0
    x = x[torch.randperm(n)]
    aoi = torch.zeros(n, size, size)
    aoi[:, 10:22, 10:22] = 1
    model = _ReadsTheCorner(size)
    loss = CEODLoss(omega=1.0, tau=0.0, cam_score="margin")
    logits, feats = model(x)
    heat = loss.heat_spec.heat(feats, logits, model.cam_head_weight, (size, size))
    energy = AOIEnergy().score(heat, aoi)
    assert energy.mean() > 0.8  # the heat map says "inside"
    prob = logits.softmax(1)[:, 1]
    swapped = model(fill_outside(x, aoi, "swap"))[0].softmax(1)[:, 1]
    delta, flip = reliance(prob, swapped, valid_for(aoi, "swap"), 0.5)
    assert delta > 0.3 and flip > 0.3  # the decision says "outside"
    occ = occlusion_map(lambda b: model(b)[0].softmax(1)[:, 1], x[0], aoi[0], x[1], aoi[1], grid=8)
    assert occ.shape == (8, 8) and occ[1:, 1:].abs().max() < 1e-6  # only the corner cell moves P
    assert occ[0, 0].abs() == occ.abs().max()


def test_counterfactual_batches_and_the_consistency_term():
    x, aoi = _batch()
    y = torch.tensor([0, 1, 0, 1])
    off = CEODLoss(omega=0.0)
    assert off.counterfactuals(x, aoi, y)[3] == 0
    swap = CEODLoss(omega=0.0, outside_swap="swap")
    xs, ms, ys, pairs = swap.counterfactuals(x, aoi, y)
    assert xs.shape == x.shape and pairs == 0 and torch.equal(ys, y)
    tight = CEODLoss(omega=0.0, outside_swap="swap", swap_dilation=0, swap_feather=0)
    torch.manual_seed(1)
    xt = tight.counterfactuals(x, aoi, y)[0]
    ring = (dilate(aoi, 1) > 0) & (aoi == 0)  # the 1 px ring the default keeps and the tight one swaps
    assert torch.equal(xt[:, 0][aoi > 0], x[:, 0][aoi > 0]) and not torch.equal(xt[:, 0][ring], x[:, 0][ring])
    kl = CEODLoss(omega=0.0, outside_swap="swap", consistency=2.0)
    xs, ms, ys, pairs = kl.counterfactuals(x, aoi, y)
    assert xs.shape[0] == 8 and pairs == 4 and torch.equal(ys, torch.cat([y, y])) and torch.equal(xs[:4], x)
    with torch.no_grad():  # evaluation: never
        assert kl.counterfactuals(x, aoi, y)[3] == 0
    logits = torch.randn(8, 2, requires_grad=True)
    out = kl(logits, ys, ms, heat=torch.rand(8, 32, 32), pairs=pairs)
    plain = kl(logits, ys, ms, heat=torch.rand(8, 32, 32))
    assert out.consistency is not None and plain.consistency is None
    assert out.total.item() == pytest.approx(plain.total.item() + 2.0 * out.consistency.item(), rel=1e-5)


@pytest.mark.parametrize("key, value, culprit", [("outside_swap", "paint", "loss.outside_swap"),
                                                 ("swap_p", 1.5, "loss.swap_p"), ("consistency", -1.0, "loss.consistency"),
                                                 ("swap_dilation", -1, "loss.swap_dilation"),
                                                 ("swap_feather", 1.5, "loss.swap_feather")])
def test_bad_swap_options_are_one_line(key, value, culprit):
    with pytest.raises(ConfigError, match=culprit):
        CEODLoss(**{key: value})


def test_training_logs_reliance_and_consistency(make_cfg, tiny_root):
    from ceod.training.pipeline import train

    cfg = make_cfg(f"data.root={tiny_root}", "+data.generator={n_good:24,n_defect:20}", "data.image_size=64",
                   "data.batch_size=8", "trainer.max_epochs=1", "trainer.accelerator=cpu", "loss=ce",
                   "loss.outside_swap=swap", "loss.consistency=1.0", "logger=none", "callbacks.figures=null",
                   "trainer.enable_progress_bar=false")
    res = train(cfg)
    for key in ("val/outside_reliance", "val/outside_flip", "val/outside_reliance_blur", "test/outside_reliance",
                "test/outside_flip_blur"):
        assert 0.0 <= res[key] <= 1.0, key
    assert res["val/auroc_minus_reliance"] == pytest.approx(res["val/auroc"] - res["val/outside_reliance"], abs=1e-6)
    assert res["train/consistency"] >= 0


def test_bad_reliance_fill_is_one_line(make_cfg):
    from ceod.training.pipeline import train
    from ceod.training.user_errors import one_line

    with pytest.raises(Exception) as e:
        train(make_cfg("module.reliance=[paint]", "trainer.fast_dev_run=true"))
    assert one_line(e.value).startswith("module.reliance: unknown fill 'paint'")


@pytest.mark.parametrize("kind", ["rrr", "energy", "bg_random"])
def test_baselines_take_counterfactual_images_too(kind):
    from ceod.core.losses.baselines import BackgroundRandomizationLoss, EnergyLoss, RRRLoss
    from ceod.models.custom_cnn import CustomCNN

    cls = {"rrr": RRRLoss, "energy": EnergyLoss, "bg_random": BackgroundRandomizationLoss}[kind]
    loss = cls(outside_swap="swap", consistency=0.5)
    x, aoi = _batch()
    y = torch.tensor([0, 1, 0, 1])
    xs, ms, ys, pairs = loss.counterfactuals(x, aoi, y)
    xs = loss.prepare_inputs(xs, ms, ys)
    net = CustomCNN(in_chans=1)
    logits, feats = net(xs)
    out = loss(logits, ys, ms, features=feats, head_weight=net.cam_head_weight, images=xs, pairs=pairs)
    out.total.backward()
    assert pairs == 4 and out.consistency is not None and torch.isfinite(out.total)
    assert all(p.grad is not None and torch.isfinite(p.grad).all() for p in net.parameters() if p.requires_grad)


def test_counterfactual_training_without_masks_is_one_line(make_cfg, tiny_root):
    from ceod.training.pipeline import train
    from ceod.training.user_errors import one_line

    cfg = make_cfg("data=folder", f"data.root={tiny_root}", "data.mask_dir=null", "data.manifest=null",
                   "data.image_size=32", "trainer.fast_dev_run=true", "trainer.accelerator=cpu", "loss=ceod_swap")
    with pytest.raises(Exception) as e:
        train(cfg)
    assert one_line(e.value).startswith("loss.outside_swap=swap replaces what lies outside")


def test_readme_loss_snippet_runs():
    """The README's pure-torch loss lines (the recommended counterfactual CEOD), run as written, train a step."""
    from pathlib import Path

    from ceod.models.custom_cnn import CustomCNN

    readme = (Path(__file__).resolve().parents[2] / "README.md").read_text()
    snippet = "from ceod.core.losses.ceod import CEODLoss" + readme.split("```python\nfrom ceod.core.losses.ceod import CEODLoss", 1)[1].split("```", 1)[0]
    x, aoi = _batch(4, 64)
    scope = {"model": CustomCNN(in_chans=1), "images": x, "aoi_masks": aoi, "labels": torch.tensor([0, 1, 0, 1])}
    exec(snippet, scope)  # noqa: S102  (our own documentation)
    assert torch.isfinite(scope["out"].total) and scope["loss_fn"].opts.outside_swap == "swap"
    assert any(p.grad is not None for p in scope["model"].parameters())


def test_swap_partners_are_drawn_among_annotated_images_only():
    """With partial annotation a partner without an AOI could paste a second product outside the image's AOI:
    partners come from the annotated images; a fully annotated batch keeps a permutation."""
    from ceod.core.losses.base import annotated_partners

    torch.manual_seed(0)
    mask = torch.zeros(16, 8, 8)
    mask[[2, 5, 11], 2:5, 2:5] = 1
    for _ in range(20):
        assert set(annotated_partners(mask).tolist()) <= {2, 5, 11}
    full = annotated_partners(torch.ones(16, 8, 8))
    assert sorted(full.tolist()) == list(range(16))
