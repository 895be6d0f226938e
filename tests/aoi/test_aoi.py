"""``python -m ceod.aoi fit``: AOI masks for every image from 8 drawn ones, on synthetic data whose AOI is known.

The full-size measurement (128 px synthetic and 256 px MVTec-like photos, 8 masks, both models, timings)
is ``experiments/bench_aoi_fit.py``.
"""

from __future__ import annotations

import json
import shutil
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from ceod.cli.aoi import main
from ceod.data.datamodule import DefectDataModule as FolderDataModule


def _ious(root: Path, drawn: Path, out: Path) -> list[float]:
    ious = []
    for m in sorted((root / "masks").rglob("*.png")):
        rel = m.relative_to(root / "masks")
        if not (drawn / rel).exists():
            a, b = np.asarray(Image.open(m)) > 0, np.asarray(Image.open(out / rel)) > 0
            ious.append((a & b).sum() / (a | b).sum())
    return ious


def test_forest_from_8_masks_writes_every_mask(drawn, tmp_path, capsys):
    root, masks = drawn
    out = tmp_path / "out"
    assert main(["fit", "--images", str(root / "images"), "--masks", str(masks), "--out", str(out),
                 "--model", "forest"]) == 0
    line = capsys.readouterr().out
    held = float(line.split("held-out IoU ")[1].split()[0])
    ious = _ious(root, masks, out)
    assert len(ious) == 20 and np.mean(ious) >= 0.85 and held >= 0.8, (held, ious)
    report = json.loads((out / "aoi_fit.json").read_text())
    assert report["drawn"] == 8 and len(report["held_out"]) == 2 and report["model"] == "forest"
    for m in masks.rglob("*.png"):  # drawn masks are copied as drawn
        assert (np.asarray(Image.open(m)) > 0).tolist() == (np.asarray(Image.open(out / m.relative_to(masks))) > 0).tolist()
    dm = FolderDataModule(str(root), mask_dir=str(out), manifest=None, image_size=32, augment=False)
    dm.setup()  # the output serves as data.mask_dir
    assert all(s.mask.is_relative_to(out) for v in dm.samples.values() for s in v)


@pytest.mark.slow
def test_default_net_reaches_09_from_8_masks(drawn, tmp_path, capsys):
    """The default model (the segmentation net, default steps and size) from 6 masks: held-out IoU ≥ 0.9."""
    root, masks = drawn
    out = tmp_path / "net"
    assert main(["fit", "--images", str(root / "images"), "--masks", str(masks), "--out", str(out)]) == 0
    held = float(capsys.readouterr().out.split("held-out IoU ")[1].split()[0])
    ious = _ious(root, masks, out)
    assert held >= 0.9 and np.mean(ious) >= 0.9, (held, ious)
    report = json.loads((out / "aoi_fit.json").read_text())
    assert report["model"] == "net" and report["steps"] == 1000 and len(report["held_out"]) == 2


def test_net_model_runs_and_records_itself(drawn, tmp_path):
    root, masks = drawn
    out = tmp_path / "net"
    args = ["fit", "--images", str(root / "images"), "--masks", str(masks), "--out", str(out),
            "--steps", "3", "--size", "48", "--holdout", "1"]
    assert main(args) == 0
    report = json.loads((out / "aoi_fit.json").read_text())
    assert report["model"] == "net" and report["size"] == 48 and report["steps"] == 3
    assert len(list(out.rglob("*.png"))) == 28


def test_fit_errors_are_one_line(drawn, tmp_path, capsys):
    root, masks = drawn
    (tmp_path / "other" / "good").mkdir(parents=True)
    shutil.copy(next(masks.rglob("*.png")), tmp_path / "other" / "good" / "elsewhere.png")
    base = ["fit", "--images", str(root / "images"), "--out", str(tmp_path / "o")]
    cases = [([*base, "--masks", str(tmp_path / "none")], "mask folder not found"),
             ([*base, "--masks", str(tmp_path / "other")], "0 of the masks"),
             ([*base, "--masks", str(masks), "--holdout", "8"], "--holdout 8 leaves no drawn mask"),
             ([*base, "--masks", str(masks), "--model", "unet"], "--model must be one of"),
             ([*base, "--masks", str(masks), "--encoder", "resnet"], "--encoder must be one of")]
    (tmp_path / "o").mkdir()
    (tmp_path / "o" / "x").write_text("")
    cases.append(([*base, "--masks", str(masks)], "exists and is not empty"))
    for args, expected in cases[:-1]:
        shutil.rmtree(tmp_path / "o", ignore_errors=True)
        assert main(args) == 2
        err = capsys.readouterr().err.strip().splitlines()
        assert len(err) == 1 and err[0].startswith("error:") and expected in err[0], (args, err)
    (tmp_path / "o").mkdir()
    (tmp_path / "o" / "x").write_text("")
    assert main(cases[-1][0]) == 2 and cases[-1][1] in capsys.readouterr().err
