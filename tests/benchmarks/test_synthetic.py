"""The synthetic benchmark generator: determinism, label ⇔ geometry, decoy protocol, CLI."""

from __future__ import annotations

import csv
import hashlib
import json
import math
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from ceod.benchmarks.synthetic import config_for, generate
from ceod.errors import DataError

SMALL = dict(n_good=20, n_defect=20, size=64)


def _digest(root: Path) -> dict[str, str]:
    return {str(p.relative_to(root)): hashlib.sha256(p.read_bytes()).hexdigest()
            for p in sorted(root.rglob("*")) if p.is_file()}


def _rows(root: Path) -> list[dict]:
    with open(root / "manifest.csv") as f:
        return list(csv.DictReader(f))


def _geometry(root: Path) -> list[dict]:
    return [json.loads(line) for line in (root / "geometry.jsonl").read_text().splitlines()]


def _footprint(mark: dict, size: int) -> np.ndarray:
    """Independent rasteriser of a recorded mark (pixel centres strictly inside the shape)."""
    y, x = np.mgrid[0:size, 0:size] + 0.5
    if mark["type"] == "blob":
        a = math.radians(mark["angle_deg"])
        dx, dy = x - mark["cx"], y - mark["cy"]
        u, v = dx * math.cos(a) + dy * math.sin(a), -dx * math.sin(a) + dy * math.cos(a)
        return (u / mark["rx"]) ** 2 + (v / mark["ry"]) ** 2 < 1
    if mark["type"] == "scratch":
        ax, ay, bx, by = mark["x0"], mark["y0"], mark["x1"], mark["y1"]
        t = np.clip(((x - ax) * (bx - ax) + (y - ay) * (by - ay)) / ((bx - ax) ** 2 + (by - ay) ** 2), 0, 1)
        return np.hypot(x - ax - t * (bx - ax), y - ay - t * (by - ay)) < mark["half_width"]
    if mark["type"] == "patch":
        a = math.radians(mark["angle_deg"])
        dx, dy = x - mark["cx"], y - mark["cy"]
        u, v = dx * math.cos(a) + dy * math.sin(a), -dx * math.sin(a) + dy * math.cos(a)
        return (np.abs(u) < mark["length"] / 2) & (np.abs(v) < mark["breadth"] / 2)
    raise AssertionError(mark["type"])


def test_deterministic_for_a_seed(tmp_path):
    a = generate(tmp_path / "a", config_for("synthetic_zipper", seed=3, **SMALL))
    b = generate(tmp_path / "b", config_for("synthetic_zipper", seed=3, **SMALL))
    c = generate(tmp_path / "c", config_for("synthetic_zipper", seed=4, **SMALL))
    assert _digest(a) == _digest(b)
    assert _digest(a) != _digest(c)


@pytest.mark.parametrize("variant", ["synthetic_zipper", "synthetic_zipper_decoy"])
def test_label_iff_a_mark_overlaps_the_aoi(tmp_path, variant):
    root = generate(tmp_path / "d", config_for(variant, n_good=40, n_defect=40, size=96))
    n_fabric_marks_on_good = 0
    for g in _geometry(root):
        aoi = np.array(Image.open(root / g["image"].replace("images/", "masks/", 1))) > 127
        assert aoi.any() and not aoi.all()
        hits = [bool((_footprint(m, 96) & aoi).any()) for m in g["marks"]]
        assert g["label"] == int(any(hits)), g
        if g["label"] == 0:
            n_fabric_marks_on_good += bool(g["marks"])
        if g["decoy"] is not None:  # the decoy is never on the AOI
            y, x = np.mgrid[0:96, 0:96] + 0.5
            assert not (aoi & (np.hypot(x - g["decoy"]["cx"], y - g["decoy"]["cy"]) < g["decoy"]["r"] + 2)).any()
    assert n_fabric_marks_on_good >= 20  # most good images carry fabric marks: "a mark" does not mean defect


def test_layout_split_and_images(tmp_path):
    root = generate(tmp_path / "d", config_for("synthetic_zipper", **SMALL))
    rows = _rows(root)
    assert len(rows) == 40
    counts = {(r["split"], r["label"]) for r in rows}
    assert {("train", "0"), ("train", "1"), ("val", "0"), ("val", "1"), ("test", "0"), ("test", "1")} <= counts
    assert sum(r["split"] == "train" for r in rows) == 28
    for r in rows[:5]:
        im, m = Image.open(root / r["image"]), Image.open(root / r["mask"])
        assert im.mode == "L" and im.size == (64, 64) and m.size == (64, 64)
        assert set(np.unique(np.array(m))) <= {0, 255}
        assert r["image"].split("/")[1] == ("defect" if r["label"] == "1" else "good")


def test_decoy_is_a_train_only_shortcut(tmp_path):
    root = generate(tmp_path / "d", config_for("synthetic_zipper_decoy", n_good=60, n_defect=60, size=64))
    geo = _geometry(root)
    for g in geo:
        if g["split"] in ("train", "val"):
            assert (g["decoy"] is not None) == (g["label"] == 1)
    test = [g for g in geo if g["split"] == "test"]
    with_decoy = {(g["label"], g["decoy"] is not None) for g in test}
    assert (0, True) in with_decoy or (1, False) in with_decoy  # broken in test


def test_generate_refuses_a_non_empty_folder(tmp_path):
    (tmp_path / "d").mkdir()
    (tmp_path / "d" / "keep.txt").write_text("x")
    with pytest.raises(DataError, match="not empty"):
        generate(tmp_path / "d", config_for("synthetic_zipper", **SMALL))
    assert sorted(p.name for p in tmp_path.iterdir()) == ["d"]  # no temp folder left behind


@pytest.mark.slow  # a subprocess or a full run: make test-all / CI
def test_cli(tmp_path):
    out = tmp_path / "cli"
    r = subprocess.run([sys.executable, "-m", "ceod.cli.synthetic", "--out", str(out), "--seed", "5",
                        "--n-good", "6", "--n-defect", "5", "--size", "48"], capture_output=True, text=True)
    assert r.returncode == 0, r.stderr
    assert len(_rows(out)) == 11 and (out / "meta.json").is_file()
    again = subprocess.run([sys.executable, "-m", "ceod.cli.synthetic", "--out", str(out)],
                           capture_output=True, text=True)
    assert again.returncode == 2 and again.stderr.strip().count("\n") == 0 and str(out) in again.stderr
