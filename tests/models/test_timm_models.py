"""timm backbones (EfficientNet-B0, ResNet-18), offline ImageNet weights, transfer / last_n / full regimes."""

from __future__ import annotations

import os
import socket
import subprocess
import sys

import pytest
import timm
import torch
from hydra.utils import instantiate
from torch import nn

from ceod.core.cam import grad_cam
from ceod.errors import ConfigError
from ceod.core.losses.ceod import CEODLoss
from ceod.models.custom_cnn import CustomCNN
from ceod.models.finetune import apply_finetune, conv_layers, frozen_norms
from ceod.models.timm_backbone import TimmClassifier, find_cam_layer
from ceod.training.pipeline import train
from ceod.training.user_errors import one_line

IMAGENET = ((0.485, 0.456, 0.406), (0.229, 0.224, 0.225))


pytestmark = pytest.mark.usefixtures("torch_one_thread")  # depthwise convs crawl with several threads here


@pytest.fixture
def no_network(monkeypatch):
    def refuse(*args, **kwargs):
        raise AssertionError("network access attempted")

    monkeypatch.setattr(socket.socket, "connect", refuse)
    monkeypatch.setattr(socket, "create_connection", refuse)


@pytest.fixture
def empty_caches(monkeypatch, tmp_path, no_network):
    """Empty Hugging Face and torch-hub caches (returns the torch-hub dir)."""
    import huggingface_hub.constants

    monkeypatch.setattr(huggingface_hub.constants, "HF_HUB_CACHE", str(tmp_path / "hf"))
    old = torch.hub.get_dir()
    torch.hub.set_dir(str(tmp_path / "hub"))
    yield tmp_path / "hub"
    torch.hub.set_dir(old)


def trainable(model: nn.Module) -> set[str]:
    return {n for n, p in model.named_parameters() if p.requires_grad}


def batch(n: int = 4, channels: int = 3, size: int = 64):
    g = torch.Generator().manual_seed(0)
    x = torch.rand(n, channels, size, size, generator=g)
    mask = torch.zeros(n, size, size)
    mask[:, 8:24, 8:24] = 1
    return x, mask, torch.tensor([0, 1] * (n // 2))


# ------------------------------------------------------------------ CAM layer, analytic path
@pytest.mark.parametrize("name, layer, channels", [("efficientnet_b0", "bn2", 1280), ("resnet18", "layer4", 512)])
def test_cam_layer_detected_and_head_is_analytic(name, layer, channels):
    model = TimmClassifier(name, in_chans=3)
    assert model.auto_cam_layer == model.cam_layer == layer
    assert find_cam_layer(model, torch.rand(1, 3, 64, 64)) == f"backbone.{layer}"
    logits, feats = model(torch.rand(2, 3, 64, 64))
    assert logits.shape == (2, 2) and feats.shape == (2, channels, 2, 2)
    assert model.cam_head_weight is model.backbone.get_classifier().weight
    assert model.cam_head_weight.shape == (2, channels)


def test_cam_layer_of_custom_cnn():
    assert find_cam_layer(CustomCNN(in_chans=1), torch.rand(1, 1, 64, 64)) == "features"


def test_analytic_equals_autograd_cam_on_efficientnet():
    model = TimmClassifier("efficientnet_b0", in_chans=3).eval()
    logits, feats = model(torch.rand(2, 3, 64, 64))
    analytic = grad_cam(feats, logits, 1, model.cam_head_weight)
    general = grad_cam(feats, logits, 1, None)
    torch.testing.assert_close(analytic, general, rtol=1e-4, atol=1e-6)


def test_cam_layer_override_uses_autograd_path_and_ceod_trains():
    model = TimmClassifier("efficientnet_b0", in_chans=3, cam_layer="blocks.5")
    assert model.cam_layer == "blocks.5" and model.cam_head_weight is None
    apply_finetune(model, "transfer", verbose=False)  # frozen up to the CAM layer: features still get a graph
    x, mask, y = batch()
    logits, feats = model(x)
    assert feats.shape == (4, 192, 2, 2) and feats.requires_grad
    out = CEODLoss(omega=1.0)(logits, y, mask, features=feats, head_weight=model.cam_head_weight)
    out.total.backward()
    assert torch.isfinite(out.total) and model.backbone.classifier.weight.grad is not None


def test_non_gap_linear_head_is_not_analytic():
    model = TimmClassifier("convnext_atto", in_chans=3)  # head: GAP → LayerNorm → linear
    assert model.cam_layer == "norm_pre" and model.cam_head_weight is None
    assert model.head_modules() == [model.backbone.head]


# ------------------------------------------------------------------ regimes
def test_full_trains_everything():
    model = apply_finetune(TimmClassifier("efficientnet_b0"), "full")
    assert trainable(model) == {n for n, _ in model.named_parameters()}
    assert not frozen_norms(model)


def test_transfer_trains_only_the_head_and_keeps_bn_in_eval():
    model = apply_finetune(TimmClassifier("efficientnet_b0"), "transfer")
    assert trainable(model) == {"backbone.classifier.weight", "backbone.classifier.bias"}
    bns = [m for m in model.modules() if isinstance(m, nn.BatchNorm2d)]
    assert len(bns) == 49 and set(map(id, frozen_norms(model))) == set(map(id, bns))
    model.train()
    model(torch.rand(2, 3, 64, 64))
    assert all(not m.training for m in bns) and model.backbone.classifier.training


def test_last_n_exact_sets():
    eff = apply_finetune(TimmClassifier("efficientnet_b0"), "last_n", n=3)
    assert trainable(eff) == {
        "backbone.blocks.6.0.se.conv_expand.weight", "backbone.blocks.6.0.se.conv_expand.bias",  # SE conv: no norm
        "backbone.blocks.6.0.conv_pwl.weight", "backbone.blocks.6.0.bn3.weight", "backbone.blocks.6.0.bn3.bias",
        "backbone.conv_head.weight", "backbone.bn2.weight", "backbone.bn2.bias",
        "backbone.classifier.weight", "backbone.classifier.bias"}
    res = apply_finetune(TimmClassifier("resnet18"), "last_n", n=3)
    assert trainable(res) == {
        "backbone.layer4.0.downsample.0.weight", "backbone.layer4.0.downsample.1.weight",
        "backbone.layer4.0.downsample.1.bias", "backbone.layer4.1.conv1.weight", "backbone.layer4.1.bn1.weight",
        "backbone.layer4.1.bn1.bias", "backbone.layer4.1.conv2.weight", "backbone.layer4.1.bn2.weight",
        "backbone.layer4.1.bn2.bias", "backbone.fc.weight", "backbone.fc.bias"}
    cnn = apply_finetune(CustomCNN(in_chans=1), "last_n", n=2)
    assert trainable(cnn) == {f"features.{i}.{p}" for i in (21, 22, 24, 25) for p in ("weight", "bias")} | {
        "head.weight", "head.bias"}
    assert len(frozen_norms(cnn)) == 6


def test_last_n_20_counts_the_unfrozen_conv_layers():
    model = apply_finetune(TimmClassifier("efficientnet_b0"), "last_n", n=20)
    convs = [(n, m) for n, m in model.named_modules() if isinstance(m, nn.Conv2d)]
    assert len(convs) == len(conv_layers(model)) == 81
    unfrozen = [n for n, m in convs if m.weight.requires_grad]
    assert unfrozen == [n for n, _ in convs[-20:]]
    bns = [m for m in model.modules() if isinstance(m, nn.BatchNorm2d)]
    trainable_bns = [m for m in bns if m.weight.requires_grad]
    # of the last 20 convs, 8 are squeeze-excitation convs (no norm); the other 12 have one each
    assert len(trainable_bns) == 12 and len(frozen_norms(model)) == len(bns) - 12
    expected = {f"{n}.{p}" for n, m in model.named_modules() for p, _ in m.named_parameters(recurse=False)
                if (isinstance(m, nn.Conv2d) and n in unfrozen) or any(m is b for b in trainable_bns)}
    assert trainable(model) == expected | {"backbone.classifier.weight", "backbone.classifier.bias"}


def test_regimes_are_reversible():
    model = TimmClassifier("resnet18")
    apply_finetune(model, "transfer", verbose=False)
    apply_finetune(model, "full", verbose=False)
    assert trainable(model) == {n for n, _ in model.named_parameters()} and not frozen_norms(model)
    model.train()
    model(torch.rand(2, 3, 64, 64))
    assert all(m.training for m in model.modules())


@pytest.mark.parametrize("make", [lambda: TimmClassifier("efficientnet_b0"), lambda: CustomCNN(in_chans=3)])
def test_training_step_moves_only_unfrozen_parameters(make):
    model = apply_finetune(make(), "last_n", n=4, verbose=False)
    model.train()
    before = {n: p.detach().clone() for n, p in model.named_parameters()}
    stats = {n: b.detach().clone() for n, b in model.named_buffers() if n.endswith("running_mean")}
    opt = torch.optim.Adamax([p for p in model.parameters() if p.requires_grad], lr=1e-2)
    x, mask, y = batch()
    logits, feats = model(x)
    out = CEODLoss(omega=1.0)(logits, y, mask, features=feats, head_weight=model.cam_head_weight)
    opt.zero_grad()
    out.total.backward()
    opt.step()
    for n, p in model.named_parameters():
        assert torch.equal(p, before[n]) != p.requires_grad, n
    train_bn = {f"{n}.running_mean" for n, m in model.named_modules()
                if isinstance(m, nn.BatchNorm2d) and m.weight.requires_grad}
    assert train_bn
    for n, b in model.named_buffers():
        if n in stats:
            assert torch.equal(b, stats[n]) == (n not in train_bn), n


# ------------------------------------------------------------------ weights
@pytest.mark.parametrize("fmt", ["pth", "safetensors"])
def test_weights_round_trip_from_local_file(tmp_path, fmt, no_network):
    source = timm.create_model("efficientnet_b0", pretrained=False, num_classes=1000)  # ImageNet-shaped
    state = source.state_dict()
    path = tmp_path / f"weights.{fmt}"
    if fmt == "pth":
        torch.save(state, path)
    else:
        from safetensors.torch import save_file

        save_file({k: v.contiguous() for k, v in state.items()}, str(path))
    model = TimmClassifier("efficientnet_b0", in_chans=3, pretrained=True, weights=str(path))
    own = model.backbone.state_dict()
    for k, v in state.items():
        if not k.startswith("classifier."):
            torch.testing.assert_close(own[k], v, rtol=0, atol=0, msg=k)
    assert own["classifier.weight"].shape == (2, 1280)
    assert model.pretrained_normalization == IMAGENET
    # greyscale model from the same weights: first conv summed over RGB, normalisation averaged
    grey = TimmClassifier("efficientnet_b0", in_chans=1, weights=str(path))
    torch.testing.assert_close(grey.backbone.conv_stem.weight, state["conv_stem.weight"].sum(1, keepdim=True))
    assert grey.pretrained_normalization == ((sum(IMAGENET[0]) / 3,), (sum(IMAGENET[1]) / 3,))
    # our own model's state dict (prefix "backbone.", 2-class head) loads back exactly, head included
    torch.save(model.state_dict(), tmp_path / "own.pt")
    again = TimmClassifier("efficientnet_b0", in_chans=3, pretrained=True, weights=str(tmp_path / "own.pt"))
    torch.testing.assert_close(again.backbone.classifier.weight, model.backbone.classifier.weight)


def test_weights_from_local_caches(tmp_path, empty_caches):
    model = timm.create_model("resnet18", pretrained=False, num_classes=1000)
    cfg = model.pretrained_cfg
    with pytest.raises(ConfigError, match=r"no local ImageNet weights for resnet18: .*model\.weights="):
        TimmClassifier("resnet18", pretrained=True)
    # torch-hub cache (timm's url download location)
    hub = empty_caches / "checkpoints" / os.path.basename(cfg["url"])
    hub.parent.mkdir(parents=True)
    torch.save(model.state_dict(), hub)
    assert TimmClassifier("resnet18", pretrained=True).weights_source == str(hub)
    hub.unlink()
    # Hugging Face cache layout
    from safetensors.torch import save_file

    repo = tmp_path / "hf" / f"models--{cfg['hf_hub_id'].replace('/', '--')}"
    (repo / "snapshots" / "abc").mkdir(parents=True)
    (repo / "refs").mkdir()
    (repo / "refs" / "main").write_text("abc")
    save_file(model.state_dict(), str(repo / "snapshots" / "abc" / "model.safetensors"))
    loaded = TimmClassifier("resnet18", pretrained=True)
    assert loaded.weights_source.endswith("model.safetensors")
    torch.testing.assert_close(loaded.backbone.conv1.weight, model.conv1.weight)


def test_weights_with_wrong_keys_name_them(tmp_path):
    state = timm.create_model("resnet18", pretrained=False).state_dict()
    del state["layer1.0.conv1.weight"]
    state["extra.weight"] = torch.zeros(3)
    torch.save(state, tmp_path / "bad.pth")
    with pytest.raises(ConfigError) as e:
        TimmClassifier("resnet18", pretrained=True, weights=str(tmp_path / "bad.pth"))
    msg = str(e.value)
    assert "\n" not in msg and "layer1.0.conv1.weight" in msg and "extra.weight" in msg and "resnet18" in msg
    with pytest.raises(ConfigError, match="efficientnet_b0"):  # another architecture's weights
        TimmClassifier("efficientnet_b0", weights=str(tmp_path / "bad.pth"))
    torch.save({"net": nn.Linear(2, 2)}, tmp_path / "pickle.pth")  # not loadable with weights_only
    with pytest.raises(ConfigError, match="weights-only"):
        TimmClassifier("resnet18", weights=str(tmp_path / "pickle.pth"))
    with pytest.raises(ConfigError, match="not found"):
        TimmClassifier("resnet18", weights=str(tmp_path / "nope.safetensors"))


@pytest.fixture(scope="module")
def imagenet_b0(tmp_path_factory):
    """An ImageNet-shaped (1000-class, random) EfficientNet-B0 state dict in a .safetensors file."""
    from safetensors.torch import save_file

    path = tmp_path_factory.mktemp("weights") / "b0.safetensors"
    save_file(timm.create_model("efficientnet_b0", num_classes=1000).state_dict(), str(path))
    return path


def test_local_weights_load_through_timm(imagenet_b0, monkeypatch, no_network):
    """timm's own load_pretrained loads the file (its classifier drop and first-conv adaptation), nothing else."""
    import timm.models._builder as builder

    calls = []
    original = builder.load_pretrained

    def spy(model, pretrained_cfg=None, **kwargs):
        calls.append((sorted(pretrained_cfg["state_dict"])[:1], pretrained_cfg["num_classes"], kwargs["in_chans"]))
        return original(model, pretrained_cfg, **kwargs)

    monkeypatch.setattr(builder, "load_pretrained", spy)
    grey = TimmClassifier("efficientnet_b0", in_chans=1, weights=str(imagenet_b0))
    assert calls == [(["blocks.0.0.bn1.bias"], 1000, 1)]
    assert "state_dict" not in grey.backbone.pretrained_cfg  # no second copy of the weights kept alive
    assert TimmClassifier("efficientnet_b0").weights_source is None and len(calls) == 1  # no weights: no load


@pytest.mark.parametrize("in_chans", [3, 1])
def test_normalisation_buffers_are_timms_pretrained_mean_std(imagenet_b0, in_chans):
    model = TimmClassifier("efficientnet_b0", in_chans=in_chans, weights=str(imagenet_b0)).eval()
    cfg = model.backbone.pretrained_cfg
    mean, std = torch.tensor(cfg["mean"]), torch.tensor(cfg["std"])
    if in_chans == 1:
        mean, std = mean.mean(0, keepdim=True), std.mean(0, keepdim=True)
    torch.testing.assert_close(model.input_mean, mean.view(1, -1, 1, 1))
    torch.testing.assert_close(model.input_std, std.view(1, -1, 1, 1))
    assert {"input_mean", "input_std"} <= set(model.state_dict())  # a checkpoint carries them
    rebuilt = TimmClassifier("efficientnet_b0", in_chans=in_chans)  # as predict/export rebuild it: no weights file
    rebuilt.load_state_dict(model.state_dict())
    torch.testing.assert_close(rebuilt.input_mean, model.input_mean)
    older = {k: v for k, v in model.state_dict().items() if not k.startswith("input_")}  # before they existed
    rebuilt.load_state_dict(older)  # strict, still loads (the normalisation then stays as it was)
    x = torch.rand(2, in_chans, 64, 64)
    with torch.no_grad():
        torch.testing.assert_close(model(x)[0], model.backbone((x - model.input_mean) / model.input_std))
    plain = TimmClassifier("efficientnet_b0", in_chans=in_chans).eval()  # no weights: no normalisation
    assert plain.pretrained_normalization is None
    assert plain.input_mean.eq(0).all() and plain.input_std.eq(1).all()
    with torch.no_grad():
        torch.testing.assert_close(plain(x)[0], plain.backbone(x))


@pytest.mark.parametrize("edit, words", [
    (lambda s: s.pop("layer1.0.conv1.weight"), ["1 missing keys (layer1.0.conv1.weight)"]),
    (lambda s: s.update(extra=torch.zeros(1)), ["1 unexpected keys (extra)"]),
    (lambda s: s.update({"layer1.0.bn1.weight": torch.ones(7)}), ["1 shape mismatches (layer1.0.bn1.weight (7,)≠(64,))"]),
    # a 2-class head is kept (strict load): timm raises instead of logging, still one line naming the key
    (lambda s: s.update({"fc.weight": torch.zeros(2, 512), "fc.bias": torch.zeros(2), "extra": torch.zeros(1)}),
     ["1 unexpected keys (extra)"]),
])
def test_missing_unexpected_or_misshaped_keys_are_one_config_error(tmp_path, edit, words):
    state = timm.create_model("resnet18", pretrained=False).state_dict()
    edit(state)
    torch.save(state, tmp_path / "w.pth")
    with pytest.raises(ConfigError) as e:
        TimmClassifier("resnet18", weights=str(tmp_path / "w.pth"))
    msg = str(e.value)
    assert "\n" not in msg and msg.startswith(f"weights {tmp_path / 'w.pth'} do not match resnet18: "), msg
    assert all(w in msg for w in words), msg


def test_eval_mode_restores_each_modules_own_mode():
    from ceod.models.timm_backbone import eval_mode

    net = nn.Sequential(nn.Conv2d(1, 1, 1), nn.BatchNorm2d(1), nn.Sequential(nn.BatchNorm2d(1)))
    net[1].eval()  # e.g. a norm frozen by apply_finetune
    before = [m.training for m in net.modules()]
    with pytest.raises(RuntimeError), eval_mode(net):
        assert not any(m.training for m in net.modules())
        raise RuntimeError("restored even on error")
    assert [m.training for m in net.modules()] == before == [True, True, False, True, True]


@pytest.mark.slow  # a subprocess or a full run: make test-all / CI
def test_models_do_not_import_lightning():
    code = ("import sys, ceod.models.timm_backbone, ceod.models.finetune, ceod.models.custom_cnn; "
            "print(sorted(m for m in sys.modules if m.split('.')[0] in ('lightning', 'pytorch_lightning', 'hydra')))")
    r = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=120)
    assert r.returncode == 0 and r.stdout.strip() == "[]", r.stdout + r.stderr


# ------------------------------------------------------------------ bad input
@pytest.mark.parametrize("overrides, words", [
    (["model.name=efficientnet_bo"], ["efficientnet_bo", "did you mean efficientnet_b0"]),
    (["model.cam_layer=blocks.9"], ["blocks.9", "blocks holds 0, 1, 2, 3, 4, 5, 6"]),
    (["model.cam_layer=layer9"], ["layer9", "conv_stem", "conv_head"]),
    (["model.name=vit_tiny_patch16_224"], ["no conv feature map"]),
])
def test_bad_model_config_is_one_line(make_cfg, overrides, words):
    cfg = make_cfg("model=efficientnet_b0", *overrides)
    with pytest.raises(Exception) as e:
        instantiate(cfg.model)
    message = one_line(e.value)
    assert message is not None and "\n" not in message and all(w in message for w in words), message


def test_n_larger_than_conv_layers_is_one_line(make_cfg):
    cfg = make_cfg("finetune=last_n")  # the custom CNN has 8 conv layers
    with pytest.raises(Exception) as e:
        instantiate(cfg.finetune)(instantiate(cfg.model))
    assert one_line(e.value) == "finetune.n=20 is larger than the 8 conv layers of CustomCNN"


@pytest.mark.slow  # a subprocess (≈ 8 s of imports); the inner loop keeps one CLI case in test_train
def test_unknown_timm_name_on_the_cli(run_cli):
    r = run_cli("model=timm", "model.name=efficientnet_bo", "hydra.run.dir=out", env={"OMP_NUM_THREADS": "1"},
                timeout=120)
    assert r.returncode == 2, r.stderr[-2000:]
    errors = r.errors
    assert len(errors) == 1 and "efficientnet_bo" in errors[0] and "efficientnet_b0" in errors[0], r.stderr[-2000:]
    assert "Traceback" not in r.stderr


# ------------------------------------------------------------------ configs, end to end
def test_configs_compose(make_cfg):
    cfg = make_cfg("model=efficientnet_b0")
    assert cfg.model.name == "efficientnet_b0" and cfg.model.pretrained is False
    assert cfg.data == make_cfg().data and cfg.model.in_chans == cfg.data.channels == 1  # choosing a model leaves data.*
    assert make_cfg("model=timm", "model.name=resnet18", "data.channels=1").model.in_chans == 1
    assert make_cfg("finetune=last_n").finetune.n == 20 and make_cfg("finetune=transfer").finetune.regime == "transfer"
    exp = make_cfg("+experiment=efficientnet_b0")
    assert exp.model.pretrained is True and exp.finetune.regime == "last_n" and exp.data.mean is None


def test_fast_dev_run_pretrained_efficientnet_b0_experiment(make_cfg, tiny_root, tmp_path, capsys, monkeypatch):
    from safetensors.torch import save_file

    import ceod.data.datamodule

    path = tmp_path / "imagenet.safetensors"
    save_file(timm.create_model("efficientnet_b0", num_classes=1000).state_dict(), str(path))
    seen = []
    setup = ceod.data.datamodule.DefectDataModule.setup

    def spy(self, *args, **kwargs):  # the datamodule as the Trainer sees it
        seen.append((self.channels, self.mean, self.std))
        return setup(self, *args, **kwargs)

    monkeypatch.setattr(ceod.data.datamodule.DefectDataModule, "setup", spy)
    cfg = make_cfg("+experiment=efficientnet_b0", f"model.weights={path}", "data.image_size=64",
                   f"data.root={tiny_root}", "+data.generator={n_good:24,n_defect:20}", "trainer.fast_dev_run=true",
                   "trainer.accelerator=cpu", "data.batch_size=4")
    results = train(cfg)
    assert {"train/loss", "train/od", "test/auroc", "test/aoi_energy"} <= set(results)
    assert all(v == v for k, v in results.items() if k.startswith("train/"))  # no NaN
    assert seen and all(s == (3, None, None) for s in seen)  # greyscale → 3 channels in [0, 1]; the model normalises
    out = capsys.readouterr().out
    assert "[ceod] finetune last_n (n=20)" in out and "pretrained weights from" in out


@pytest.mark.parametrize("loss", ["ceod", "ce"])
def test_fast_dev_run_efficientnet_b0(make_cfg, tiny_root, loss):
    cfg = make_cfg("model=efficientnet_b0", "finetune=last_n", "data.channels=3", "data.mean=null", "data.std=null",
                   "data.image_size=64", f"data.root={tiny_root}", "+data.generator={n_good:24,n_defect:20}", "trainer.fast_dev_run=true",
                   "trainer.accelerator=cpu", "data.batch_size=4", f"loss={loss}")
    results = train(cfg)
    assert {"train/loss", "test/auroc", "test/acc", "test/aoi_energy"} <= set(results)
    assert all(v == v for k, v in results.items() if k.startswith("train/"))


# ------------------------------------------------------------------ the module from config
def test_module_config_records_network_regime_loss_optimizer(make_cfg, imagenet_b0):
    cfg = make_cfg("+experiment=efficientnet_b0", f"model.weights={imagenet_b0}", "finetune=transfer", "optimizer.lr=0.01")
    module = instantiate(cfg.module)
    hp = module.hparams
    assert hp["model"]["_target_"] == "ceod.models.timm_backbone.TimmClassifier"
    assert hp["model"]["name"] == "efficientnet_b0" and hp["model"]["in_chans"] == 3  # resolved, not ${data.channels}
    assert hp["model"]["weights"] == str(imagenet_b0) and hp["finetune"]["regime"] == "transfer"
    assert hp["loss"]["_target_"] == cfg.loss._target_ and hp["optimizer"] == {
        "_target_": "torch.optim.Adamax", "_partial_": True, "lr": 0.01}
    assert trainable(module.model) == {"backbone.classifier.weight", "backbone.classifier.bias"}  # frozen in __init__
    opt = module.configure_optimizers()
    assert isinstance(opt, torch.optim.Adamax) and opt.defaults["lr"] == 0.01
    assert sum(len(g["params"]) for g in opt.param_groups) == 2
    assert module.defect_class == module.loss.defect_class


def test_checkpoint_says_what_it_is_and_rebuilds(make_cfg, tiny_root, tmp_path):
    from ceod.deploy.checkpoint import network_weights
    from ceod.training.module import CEODModule

    cfg = make_cfg(f"data.root={tiny_root}", "+data.generator={n_good:24,n_defect:20}", "data.image_size=64",
                   "data.batch_size=8", "trainer.accelerator=cpu", "trainer.max_epochs=1", "logger=none",
                   "trainer.limit_train_batches=1", "trainer.limit_val_batches=1", "test=false", "loss=ce")
    train(cfg)
    ckpt = tmp_path / "run" / "checkpoints" / "last.ckpt"
    hp = torch.load(ckpt, map_location="cpu", weights_only=False)["hyper_parameters"]
    assert hp["model"] == {"_target_": "ceod.models.custom_cnn.CustomCNN", "in_chans": 1, "num_classes": 2,
                           "channels": [16, 16, 32, 32, 64, 64, 128, 128]}
    assert hp["loss"]["omega"] == 0.0 and hp["optimizer"]["_target_"] == "torch.optim.Adamax"
    assert hp["finetune"]["regime"] == "full"
    module = CEODModule.load_from_checkpoint(ckpt, map_location="cpu").eval()  # nothing but the checkpoint
    assert isinstance(module.model, CustomCNN) and module.loss.omega == 0.0
    x = torch.rand(2, 1, 64, 64)
    state = torch.load(ckpt, map_location="cpu", weights_only=False)["state_dict"]
    again = CustomCNN(in_chans=1).eval()
    again.load_state_dict(network_weights(state))
    with torch.no_grad():
        torch.testing.assert_close(module(x), again(x)[0])


def test_pretrained_model_with_normalised_data_is_one_line(make_cfg, imagenet_b0):
    cfg = make_cfg("model=efficientnet_b0", f"model.weights={imagenet_b0}")  # synthetic data: mean [0.45]
    with pytest.raises(ConfigError) as e:
        train(cfg)
    assert one_line(e.value) == ("model efficientnet_b0 normalises its input with its pretrained mean/std: "
                                 "set data.mean=null data.std=null (pixels in [0, 1])")


def test_bad_argument_of_a_part_names_its_target(make_cfg):
    cfg = make_cfg("+model.depth=3")
    with pytest.raises(Exception) as e:
        instantiate(cfg.module)
    message = one_line(e.value)
    assert message is not None and "\n" not in message, message
    assert message.startswith("bad arguments for ceod.models.custom_cnn.CustomCNN (model): TypeError: ") and "depth" in message


def test_custom_cnn_earlier_cam_block_gives_a_finer_map_and_the_autograd_path():
    from ceod.errors import ConfigError

    x = torch.rand(2, 1, 64, 64)
    last, early = CustomCNN(in_chans=1), CustomCNN(in_chans=1, cam_block=6)
    early.load_state_dict(last.state_dict())
    (l1, f1), (l2, f2) = last(x), early(x)
    torch.testing.assert_close(l1, l2)  # same network, only the CAM layer differs
    assert f1.shape[-1] == 8 and f2.shape[-2:] == (16, 16) and early.cam_head_weight is None
    assert grad_cam(f2, l2, 1, None).shape == (2, 16, 16)
    with pytest.raises(ConfigError, match="model.cam_block"):
        CustomCNN(in_chans=1, cam_block=9)
