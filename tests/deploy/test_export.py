"""ceod.deploy.export: ONNX (run by onnxruntime) and TorchScript equal PyTorch within 1e-4, end to end from image
files; bad inputs are one line and leave no file."""

from __future__ import annotations

import csv
import warnings
from pathlib import Path

import numpy as np
import onnxruntime as ort
import pytest
import torch

from ceod.data.samples import load_image, resize_image
from ceod.cli.export import main
from ceod.deploy.export import deployable, export
from ceod.deploy.predict import predict


def _best(run: Path) -> Path:
    return next((run / "checkpoints").glob("epoch*.ckpt"))


def _test_images(run: Path, n: int = 5) -> list[Path]:
    with open(run / "figures" / "test_scores.csv", newline="") as f:
        return [Path(r["path"]) for r in csv.DictReader(f)][:n]


def _raw_batch(paths: list[Path], size: int = 48) -> torch.Tensor:
    """B×1×H×W in [0, 1]: the deployable's input (resize/channels as in training, no normalisation)."""
    return torch.stack([resize_image(load_image(p, 1), (size, size)) for p in paths])


@pytest.mark.parametrize("fmt", ["onnx", "torchscript"])
def test_export_equals_pytorch_and_predict(trained_run, tmp_path, fmt):
    run, _ = trained_run
    out = tmp_path / f"model.{'onnx' if fmt == 'onnx' else 'pt'}"
    r = export(str(_best(run)), fmt, str(out), heatmap=True)
    assert out.is_file() and r["max_abs_diff"] <= 1e-4
    paths = _test_images(run)
    x = _raw_batch(paths)
    if fmt == "onnx":
        prob, heat = (torch.from_numpy(o) for o in
                      ort.InferenceSession(str(out), providers=["CPUExecutionProvider"]).run(None, {"image": x.numpy()}))
    else:
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")
            prob, heat = torch.jit.load(str(out))(x)
    model, _ = deployable(_best(run), heatmap=True)
    with torch.no_grad():
        ref_prob, ref_heat = model(x)
    assert prob.shape == (len(paths),) and heat.shape == (len(paths), 48, 48)
    assert torch.allclose(prob, ref_prob, atol=1e-4) and torch.allclose(heat, ref_heat, atol=1e-4)
    # and the same probability as `ceod.deploy.predict` gives for the same files
    pred = predict(str(_best(run)), str(paths[0].parent), str(tmp_path / "pred"), heatmaps=False, progress=False)
    with open(pred["csv"], newline="") as f:
        scores = {Path(row["path"]).name: float(row["defect_score"]) for row in csv.DictReader(f)}
    assert np.allclose([scores[p.name] for p in paths if p.parent == paths[0].parent],
                       [float(v) for p, v in zip(paths, prob) if p.parent == paths[0].parent], atol=1e-4)


def test_probability_only_export_has_one_output(trained_run, tmp_path):
    run, _ = trained_run
    export(str(_best(run)), "onnx", str(tmp_path / "p.onnx"), heatmap=False)
    session = ort.InferenceSession(str(tmp_path / "p.onnx"), providers=["CPUExecutionProvider"])
    assert [o.name for o in session.get_outputs()] == ["defect_probability"]
    assert [i.name for i in session.get_inputs()] == ["image"]
    out = session.run(None, {"image": np.random.rand(7, 1, 48, 48).astype(np.float32)})  # dynamic batch
    assert out[0].shape == (7,) and ((out[0] >= 0) & (out[0] <= 1)).all()


@pytest.mark.parametrize("case, culprit", [
    ("bad_format", "format must be one of"),
    ("not_ckpt", "not a ceod checkpoint"),
    ("out_is_dir", "out must be a file path"),
    ("out_under_file", "not writable"),
])
def test_bad_input_is_one_line_and_writes_nothing(trained_run, tmp_path, capsys, case, culprit):
    run, _ = trained_run
    ckpt, fmt, out = str(_best(run)), "onnx", tmp_path / "m.onnx"
    if case == "bad_format":
        fmt = "tflite"
    elif case == "not_ckpt":
        ckpt = str(run / "config.yaml")
    elif case == "out_is_dir":
        out = tmp_path
    elif case == "out_under_file":
        (tmp_path / "f").write_text("x")
        out = tmp_path / "f" / "m.onnx"
    before = sorted(tmp_path.rglob("*"))
    with pytest.raises(SystemExit) as e:
        main([f"ckpt={ckpt}", f"format={fmt}", f"out={out}"])
    assert e.value.code == 2
    errors = [ln for ln in capsys.readouterr().err.splitlines() if ln.startswith("error:")]
    assert len(errors) == 1 and culprit in errors[0], errors
    assert sorted(tmp_path.rglob("*")) == before
