"""The LightningModule's evaluation hygiene, with a real Trainer on in-memory batches: the val-chosen
threshold travels in the checkpoint and is used at test, BN statistics are recomputed before validation,
and train/od is averaged over contributing images only."""

from __future__ import annotations

import functools

import lightning as L
import pytest
import torch
from torch.utils.data import DataLoader, Dataset

from ceod.core.batchnorm import recompute_batchnorm_stats
from ceod.core.losses.ceod import CEODLoss
from ceod.models.custom_cnn import CustomCNN
from ceod.training.module import CEODModule


class Blobs(Dataset):
    """Defective images carry a bright square inside the AOI (left half); 16 px, 1 channel."""

    def __init__(self, n: int, seed: int, defect_share: float = 0.5) -> None:
        g = torch.Generator().manual_seed(seed)
        self.x = torch.randn(n, 1, 16, 16, generator=g) * 0.3
        self.y = (torch.rand(n, generator=g) < defect_share).long()
        self.x[self.y == 1, :, 4:8, 2:6] += 2.0
        self.m = torch.zeros(n, 16, 16)
        self.m[:, :, :8] = 1

    def __len__(self) -> int:
        return len(self.y)

    def __getitem__(self, i: int) -> dict:
        return {"image": self.x[i], "mask": self.m[i], "label": self.y[i]}


def _module(**kw) -> CEODModule:
    torch.manual_seed(0)
    net = CustomCNN(in_chans=1, channels=(4, 4, 8, 8))
    return CEODModule(net, CEODLoss(omega=0.1, tau=0.0, filter_normalize="sum"),
                      functools.partial(torch.optim.Adamax, lr=0.01), **kw)


def _trainer(tmp_path, **kw) -> L.Trainer:
    kw = {"max_epochs": 2, **kw}
    return L.Trainer(default_root_dir=tmp_path, accelerator="cpu", logger=False, enable_progress_bar=False,
                     enable_model_summary=False, inference_mode=False, num_sanity_val_steps=0, **kw)


def test_val_threshold_is_saved_and_used_at_test(tmp_path):
    module = _module()
    train, val = DataLoader(Blobs(64, 0), batch_size=16, shuffle=True), DataLoader(Blobs(48, 1), batch_size=16)
    trainer = _trainer(tmp_path)
    trainer.fit(module, train, val)
    chosen = trainer.callback_metrics["val/threshold"].item()
    assert chosen == pytest.approx(module.threshold) and 0.0 < chosen < 1.0
    ckpt = trainer.checkpoint_callback.best_model_path
    assert torch.load(ckpt, weights_only=True)["ceod_threshold"] == pytest.approx(chosen)
    fresh = _module()
    assert fresh.threshold == 0.5
    res = _trainer(tmp_path).test(fresh, DataLoader(Blobs(48, 2), batch_size=16), ckpt_path=ckpt, verbose=False)[0]
    assert res["test/threshold"] == pytest.approx(chosen)
    assert {"test/acc", "test/acc@0.5", "test/f1", "test/f1@0.5", "test/auroc", "test/aoi_energy"} <= set(res)


def test_bn_statistics_are_recomputed_before_validation(tmp_path):
    module = _module()
    train = DataLoader(Blobs(64, 0), batch_size=16)  # no shuffle: the same batches can be replayed below
    _trainer(tmp_path, max_epochs=1).fit(module, train, DataLoader(Blobs(16, 1), batch_size=16))
    after_fit = [b.running_mean.clone() for b in module.model.modules() if isinstance(b, torch.nn.BatchNorm2d)]
    recompute_batchnorm_stats(module.model, (b["image"] for b in train))
    again = [b.running_mean for b in module.model.modules() if isinstance(b, torch.nn.BatchNorm2d)]
    assert all(torch.allclose(a, b, atol=1e-5) for a, b in zip(after_fit, again))

    off = _module(bn_recalibration=False)
    _trainer(tmp_path / "off", max_epochs=1).fit(off, train, DataLoader(Blobs(16, 1), batch_size=16))
    stale = [b.running_mean for b in off.model.modules() if isinstance(b, torch.nn.BatchNorm2d)]
    assert not all(torch.allclose(a, b, atol=1e-3) for a, b in zip(after_fit, stale))


def test_train_od_is_averaged_over_contributing_images_only(tmp_path):
    """Batches of one image, half of them defective: od_active is the share among defective images (1.0 when
    every defective image's OD is live), not diluted by the good ones (0.5)."""
    module = _module()
    data = Blobs(16, 3)
    trainer = _trainer(tmp_path, max_epochs=1, limit_val_batches=0)
    trainer.fit(module, DataLoader(data, batch_size=1))
    assert 0 < int(data.y.sum()) < 16
    assert trainer.callback_metrics["train/od_active"].item() == pytest.approx(1.0)


def _net(cam_block=None):
    torch.manual_seed(0)
    return CustomCNN(in_chans=1, channels=(4, 4, 8, 8), cam_block=cam_block)


@pytest.mark.parametrize("cam_block, resolution", [(None, "image"), (2, "image"), (None, "cam")])
def test_eval_aoi_metrics_are_the_old_heat_path_bitwise(tmp_path, cam_block, resolution):
    """val/aoi_energy and val/pointing_game equal the pre-HeatSpec computation — the module's own Grad-CAM at the
    image size (grad_cam called by hand) — on the closed-form and the autograd path, whatever the loss's resolution."""
    from ceod.core.cam import grad_cam
    from ceod.core.metrics import AOIEnergy, PointingGame

    loss = CEODLoss(omega=0.1, tau=0.0, cam_score="margin", heat_sign="abs", resolution=resolution)
    module = CEODModule(_net(cam_block), loss, functools.partial(torch.optim.Adamax, lr=0.01), reliance=())
    loader = DataLoader(Blobs(24, 5), batch_size=8)
    res = _trainer(tmp_path).validate(module, loader, verbose=False)[0]
    net, energy, pointing = module.model.eval(), AOIEnergy(), PointingGame()
    hw = net.cam_head_weight
    assert (hw is None) == (cam_block is not None)
    for b in loader:
        with torch.set_grad_enabled(hw is None):
            logits, feats = net(b["image"])
            heat = grad_cam(feats, logits, 1, hw, create_graph=False, size=(16, 16), score="margin", sign="abs").detach()
        energy.update(heat, b["mask"], b["label"])
        pointing.update(heat, b["mask"], b["label"])
    assert res["val/aoi_energy"] == energy.compute().item() and res["val/pointing_game"] == pointing.compute().item()
    assert "val/od" in res


@pytest.mark.parametrize("kind, name, in_eval", [("ceod", "od", True), ("rrr", "outside_grad", False),
                                                 ("energy", "outside_heat", True), ("bg_random", None, False)])
def test_each_loss_logs_its_penalty_under_its_own_name(tmp_path, kind, name, in_eval):
    """CEOD keeps train/od, val/od; RRR's input-gradient penalty is train/outside_grad (not measured in eval),
    energy's share of heat outside the AOI train/outside_heat; bg_random has no mask term to log."""
    from ceod.core.losses.baselines import BackgroundRandomizationLoss, EnergyLoss, RRRLoss

    loss = {"ceod": lambda: CEODLoss(omega=0.1, tau=0.0), "rrr": lambda: RRRLoss(omega=1.0),
            "energy": lambda: EnergyLoss(omega=1.0), "bg_random": BackgroundRandomizationLoss}[kind]()
    module = CEODModule(_net(), loss, functools.partial(torch.optim.Adamax, lr=0.01), reliance=())
    trainer = _trainer(tmp_path, max_epochs=1)
    trainer.fit(module, DataLoader(Blobs(16, 3), batch_size=8), DataLoader(Blobs(16, 4), batch_size=8))
    logged = set(trainer.callback_metrics)
    penalties = {k for k in logged if k.split("/")[1] in ("od", "od_active", "outside_grad", "outside_grad_active",
                                                          "outside_heat", "outside_heat_active")}
    want = set() if name is None else {f"train/{name}", f"train/{name}_active"} | ({f"val/{name}"} if in_eval else set())
    assert penalties == want
