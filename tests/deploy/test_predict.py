"""ceod.deploy.predict on a real tiny run: scores equal the test step's, thresholds, heat maps, bad inputs."""

from __future__ import annotations

import csv
import os
import shutil
import subprocess
import sys
from pathlib import Path

import pytest
import torch
from PIL import Image
from sklearn.metrics import roc_auc_score

from ceod.cli.predict import main
from ceod.deploy.predict import predict

REPO = Path(__file__).resolve().parents[2]


def _rows(path: Path) -> list[dict]:
    with open(path, newline="") as f:
        return list(csv.DictReader(f))


def _best(run: Path) -> Path:
    return next((run / "checkpoints").glob("epoch*.ckpt"))


def _errors(capsys) -> list[str]:
    return [ln for ln in capsys.readouterr().err.splitlines() if ln.startswith("error:")]


@pytest.fixture
def test_folder(trained_run, tmp_path) -> tuple[Path, dict[str, int]]:
    """The run's test images copied into one folder (no masks, no labels) → (folder, {copied path: label})."""
    run, _ = trained_run
    labels = {}
    for row in _rows(run / "figures" / "test_scores.csv"):
        src = Path(row["path"])
        dst = tmp_path / "in" / f"{src.parent.name}_{src.name}"
        dst.parent.mkdir(exist_ok=True)
        shutil.copy(src, dst)
        labels[str(dst)] = int(row["label"])
    return tmp_path / "in", labels


def test_predict_scores_equal_the_test_step(trained_run, test_folder, tmp_path):
    run, results = trained_run
    folder, labels = test_folder
    r = predict(str(_best(run)), str(folder), str(tmp_path / "out"), progress=False)
    rows = _rows(r["csv"])
    assert r["n"] == len(rows) == len(labels) and r["skipped"] == 0
    scores = {row["path"]: float(row["defect_score"]) for row in rows}
    auroc = roc_auc_score([labels[p] for p in scores], list(scores.values()))
    assert auroc == pytest.approx(results["test/auroc"], abs=1e-6)
    # per image, against the test loop's own scores (its images are cached in float16: 1e-3)
    tested = {f"{Path(x['path']).parent.name}_{Path(x['path']).name}": float(x["defect_score"])
              for x in _rows(run / "figures" / "test_scores.csv")}
    for path, score in scores.items():
        assert score == pytest.approx(tested[Path(path).name], abs=1e-3)
    assert {(row["predicted_label"] == "1") == (float(row["defect_score"]) >= r["threshold"]) for row in rows} == {True}
    heat = sorted((tmp_path / "out" / "heatmaps").glob("*.png"))
    assert [p.stem for p in heat] == sorted(Path(p).stem for p in labels)
    with Image.open(heat[0]) as im:
        assert im.size == (48, 48) and im.mode == "RGB"


def test_threshold_from_checkpoint_and_override(trained_run, test_folder, tmp_path):
    run, _ = trained_run
    folder, _ = test_folder
    ckpt = torch.load(_best(run), map_location="cpu", weights_only=True)
    ckpt["ceod_threshold"] = 1.0  # nothing reaches it: all good
    torch.save(ckpt, tmp_path / "t.ckpt")
    r = predict(str(tmp_path / "t.ckpt"), str(folder), str(tmp_path / "a"), heatmaps=False, progress=False)
    assert r["threshold"] == 1.0 and {row["predicted_class"] for row in _rows(r["csv"])} == {"good"}
    assert not (tmp_path / "a" / "heatmaps").exists()
    r = predict(str(tmp_path / "t.ckpt"), str(folder), str(tmp_path / "b"), threshold=0.0, heatmaps=False,
                progress=False)
    assert {row["predicted_class"] for row in _rows(r["csv"])} == {"defect"}


def test_glob_input_and_unreadable_images_skipped_and_listed(trained_run, test_folder, tmp_path, capsys):
    run, _ = trained_run
    folder, labels = test_folder
    (folder / "zz_broken.png").write_bytes(b"\x89PNG not really")
    main([f"ckpt={_best(run)}", f"input={folder}/*.png", f"out={tmp_path / 'out'}", "heatmaps=false"])
    assert len(_rows(tmp_path / "out" / "predictions.csv")) == len(labels)
    skipped = _rows(tmp_path / "out" / "skipped.csv")
    assert [Path(s["path"]).name for s in skipped] == ["zz_broken.png"] and "zz_broken.png" in skipped[0]["reason"]
    assert "skipped 1 unreadable image(s)" in capsys.readouterr().err


@pytest.mark.parametrize("case", ["text_ckpt", "plain_torch_ckpt", "missing_ckpt", "empty_input", "no_input",
                                  "all_unreadable", "out_is_a_file", "bad_threshold", "unknown_key", "missing_key",
                                  "negative_workers"])
def test_bad_input_is_one_line_and_writes_nothing(trained_run, test_folder, tmp_path, capsys, case):
    run, _ = trained_run
    folder, _ = test_folder
    ckpt, inp, out, extra = str(_best(run)), str(folder), tmp_path / "out", []
    if case == "text_ckpt":
        ckpt = str(run / "config.yaml")
    elif case == "plain_torch_ckpt":
        torch.save({"state_dict": {}}, tmp_path / "plain.ckpt")
        ckpt = str(tmp_path / "plain.ckpt")
    elif case == "missing_ckpt":
        ckpt = str(tmp_path / "nope.ckpt")
    elif case == "empty_input":
        (tmp_path / "empty").mkdir()
        inp = str(tmp_path / "empty")
    elif case == "no_input":
        inp = str(tmp_path / "nowhere")
    elif case == "all_unreadable":
        (tmp_path / "bad").mkdir()
        (tmp_path / "bad" / "a.png").write_text("not an image")
        inp = str(tmp_path / "bad")
    elif case == "out_is_a_file":
        (tmp_path / "file").write_text("x")
        out = tmp_path / "file" / "out"
    elif case == "bad_threshold":
        extra = ["threshold=1.5"]
    elif case == "unknown_key":
        extra = ["thresold=0.5"]
    elif case == "negative_workers":
        extra = ["num_workers=-1"]
    args = [f"ckpt={ckpt}", f"input={inp}", f"out={out}", *extra]
    if case == "missing_key":
        args = args[:2]
    with pytest.raises(SystemExit) as exit_info:
        main(args)
    assert exit_info.value.code == 2
    errors = _errors(capsys)
    assert len(errors) == 1, errors
    culprit = {"text_ckpt": "not a ceod checkpoint", "plain_torch_ckpt": "not a ceod checkpoint",
               "missing_ckpt": "nope.ckpt", "empty_input": "no images", "no_input": "nowhere",
               "all_unreadable": "a.png", "out_is_a_file": "not writable", "bad_threshold": "threshold",
               "unknown_key": "thresold", "missing_key": "out=", "negative_workers": "num_workers"}[case]
    assert culprit in errors[0]
    assert not out.exists()  # nothing half-written


@pytest.mark.slow
def test_cli_subprocess(trained_run, test_folder, tmp_path):
    run, _ = trained_run
    folder, labels = test_folder
    env = {**os.environ, "PYTHONWARNINGS": "ignore"}
    r = subprocess.run([sys.executable, "-m", "ceod.predict", f"ckpt={_best(run)}", f"input={folder}",
                        f"out={tmp_path / 'out'}", "batch_size=3"], cwd=REPO, env=env, capture_output=True,
                       text=True, timeout=120)
    assert r.returncode == 0, r.stderr[-2000:]
    assert len(_rows(tmp_path / "out" / "predictions.csv")) == len(labels)
    r = subprocess.run([sys.executable, "-m", "ceod.predict", f"ckpt={run / 'config.yaml'}", f"input={folder}",
                        f"out={tmp_path / 'out2'}"], cwd=REPO, env=env, capture_output=True, text=True, timeout=120)
    assert r.returncode == 2 and "Traceback" not in r.stderr
    assert [ln for ln in r.stderr.splitlines() if ln.startswith("error:")] == [
        f"error: not a ceod checkpoint: {run / 'config.yaml'} (not a PyTorch checkpoint file)"]


def test_for_inference_folds_batch_norm_and_keeps_outputs_and_cam_layer():
    """BN folding + channels-last change nothing a user sees: logits, features of a chosen CAM block
    and Grad-CAM heat (autograd path) agree with the network as trained; 8 pairs folded."""
    from ceod.core.cam import grad_cam
    from ceod.models.custom_cnn import CustomCNN
    from ceod.deploy.network import as_input, fold_batchnorm, for_inference

    torch.manual_seed(0)
    net = CustomCNN(in_chans=1, cam_block=6).eval()
    for m in net.modules():
        if isinstance(m, torch.nn.BatchNorm2d):  # statistics far from the identity, as after training
            m.running_mean.normal_(0, 2)
            m.running_var.uniform_(0.2, 4)
            m.weight.data.uniform_(0.5, 2)
            m.bias.data.normal_()
    fast = for_inference(net)
    assert sum(isinstance(m, torch.nn.BatchNorm2d) for m in fast.modules()) == 0
    assert sum(isinstance(m, torch.nn.BatchNorm2d) for m in net.modules()) == 8  # the original is untouched
    x = torch.rand(4, 1, 64, 64)
    (a_logits, a_feats), (b_logits, b_feats) = net(x), fast(as_input(x))
    assert b_feats.shape == a_feats.shape == (4, 64, 16, 16)
    torch.testing.assert_close(b_logits, a_logits, rtol=1e-4, atol=1e-4)
    torch.testing.assert_close(b_feats, a_feats, rtol=1e-4, atol=1e-4)
    heat = [grad_cam(f, lg, 1, None, create_graph=False) for lg, f in (net(x), fast(as_input(x)))]
    torch.testing.assert_close(heat[1], heat[0], rtol=1e-3, atol=1e-4)
    with pytest.raises(ValueError, match="eval mode"):
        fold_batchnorm(CustomCNN(in_chans=1).train())


def test_class_names_are_spelled_once():
    """"good"/"defect" come from ceod.data.samples.CLASS_NAMES: folders, manifests, predict's CSV, figures, tables."""
    import re

    from ceod.data import layout, samples, sources
    from ceod.deploy import figures, predict as predict_module

    assert samples.CLASS_NAMES == ("good", "defect")
    assert layout.CLASS_DIRS == {0: "good", 1: "defect"} and sources.DEFAULT_CLASS_DIRS == {"good": 0, "defect": 1}
    assert figures.CLASS_NAMES is samples.CLASS_NAMES is predict_module.CLASS_NAMES
    pair = re.compile(r"""["']good["'][^\n]*["']defect["']""")
    spelled = [str(p.relative_to(REPO)) for p in (REPO / "ceod").rglob("*.py")
               if p.name != "samples.py" and pair.search(p.read_text())]
    assert spelled == []
