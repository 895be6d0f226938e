"""MVTec AD zipper DataModule on a generated tree with MVTec's exact folder names (no download)."""

from __future__ import annotations

import csv
import os
import shutil
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image

from ceod.data.folder import FolderDataModule
from ceod.data.mvtec import MVTecZipperDataModule, estimate_zipper_band, main
from ceod.errors import DataError

SIZE = 64
# (MVTec folder, count, where its defects lie): "band" on the zipper, "fabric" off it
LAYOUT = [("train/good", 10, None), ("test/good", 4, None), ("test/broken_teeth", 4, "band"),
          ("test/combined", 4, "mixed"), ("test/fabric_border", 3, "fabric"), ("test/fabric_interior", 3, "fabric"),
          ("test/rough", 3, "band"), ("test/split_teeth", 3, "band"), ("test/squeezed_teeth", 3, "band")]
ON_ZIPPER = {"broken_teeth": 4, "combined": 2, "rough": 3, "split_teeth": 3, "squeezed_teeth": 3}  # 15


def _disc(cx: float, cy: float, r: float) -> np.ndarray:
    yy, xx = np.mgrid[0:SIZE, 0:SIZE]
    return (xx - cx) ** 2 + (yy - cy) ** 2 <= r * r


def band_of(i: int) -> tuple[int, int]:
    x0 = 18 + (i * 7) % 12
    return x0, x0 + 16


def build_mvtec(root: Path) -> Path:
    """root/zipper/{train,test,ground_truth}/… and root/aoi/{train,test}/… (true zipper bands)."""
    rng = np.random.default_rng(0)
    n = 0
    for folder, count, where in LAYOUT:
        kind = folder.split("/")[1]
        for i in range(count):
            x0, x1 = band_of(n)
            n += 1
            yy, xx = np.mgrid[0:SIZE, 0:SIZE]
            img = 0.30 + 0.03 * np.sin(xx * 1.3) * np.sin(yy * 1.1) + rng.normal(0, 0.015, (SIZE, SIZE))
            teeth = np.where((yy // 3) % 2 == 0, 0.78, 0.45)
            img[:, x0:x1] = teeth[:, x0:x1]
            defect = np.zeros((SIZE, SIZE), bool)
            if where == "band" or (where == "mixed" and i < 2):
                defect |= _disc((x0 + x1) / 2, 12 + 10 * i, 4)
            if where == "fabric" or (where == "mixed" and i >= 2):
                defect |= _disc(6 if i % 2 else SIZE - 7, 20 + 8 * i, 3.5)
            img[defect] = 0.08
            out = root / "zipper" / folder / f"{i:03d}.png"
            out.parent.mkdir(parents=True, exist_ok=True)
            Image.fromarray((np.clip(img, 0, 1) * 255).astype(np.uint8)).save(out)
            aoi = np.zeros((SIZE, SIZE), np.uint8)
            aoi[:, x0:x1] = 255
            (root / "aoi" / folder).mkdir(parents=True, exist_ok=True)
            Image.fromarray(aoi).save(root / "aoi" / folder / f"{i:03d}.png")
            if kind != "good":
                gt = root / "zipper" / "ground_truth" / kind / f"{i:03d}_mask.png"
                gt.parent.mkdir(parents=True, exist_ok=True)
                Image.fromarray(defect.astype(np.uint8) * 255).save(gt)
    return root


@pytest.fixture(scope="module")
def mvtec(tmp_path_factory) -> Path:
    return build_mvtec(tmp_path_factory.mktemp("mvtec"))


def _manifest(path: Path) -> dict[str, dict]:
    with open(path) as f:
        return {r["image"]: r for r in csv.DictReader(f)}


def test_geometry_relabel_with_aoi_dir_pools_and_resplits(mvtec, tmp_path):
    dm = MVTecZipperDataModule(str(mvtec), aoi_dir=str(mvtec / "aoi"), image_size=32, augment=False,
                               manifest_out=str(tmp_path))
    dm.setup()
    rows = _manifest(tmp_path / "data_manifest.csv")
    assert len(rows) == 37 and dm.rule == "geometry"
    for name, r in rows.items():
        kind, i = r["type"], int(Path(name).stem)
        expected = int(kind in ON_ZIPPER and (kind != "combined" or i < 2))
        assert int(r["label"]) == expected, (name, r)
        assert r["mvtec_label"] == str(int(kind != "good")) and r["rule"] == ("good" if kind == "good" else "geometry")
        assert r["relabelled"] == str(int(expected != int(r["mvtec_label"])))
        assert (mvtec / r["mask"]).is_relative_to(mvtec / "aoi") and r["aoi_source"] == "aoi_dir"
    assert sum(int(r["label"]) for r in rows.values()) == 15
    # combined images with defects on the fabric only are relabelled good
    assert {n for n, r in rows.items() if r["type"] == "combined" and r["relabelled"] == "1"} == {
        "zipper/test/combined/002.png", "zipper/test/combined/003.png"}
    # pooled and re-split 70/20/10 per final label (train holds defects now)
    counts = {(s, lab): sum(r["split"] == s and int(r["label"]) == lab for r in rows.values())
              for s in ("train", "val", "test") for lab in (0, 1)}
    assert counts == {("train", 0): 15, ("val", 0): 5, ("test", 0): 2, ("train", 1): 10, ("val", 1): 3, ("test", 1): 2}
    batch = next(iter(dm.train_dataloader()))
    assert batch["image"].shape[1:] == (1, 32, 32) and batch["mask"].shape[1:] == (32, 32)
    # seeded: same seed same split, other seed another
    again = MVTecZipperDataModule(str(mvtec / "zipper"), aoi_dir=str(mvtec / "aoi"), image_size=32, augment=False)
    again.setup()
    assert again.samples == dm.samples
    other = MVTecZipperDataModule(str(mvtec), aoi_dir=str(mvtec / "aoi"), image_size=32, seed=5)
    assert other.discover() != [s for v in dm.samples.values() for s in v]


def test_estimated_aoi_type_rule_preview_and_geometry_on_estimates(mvtec, tmp_path):
    dm = MVTecZipperDataModule(str(mvtec), image_size=32, channels=3, manifest_out=str(tmp_path / "a"))
    dm.setup()
    assert dm.rule == "type" and (tmp_path / "a" / "aoi_preview.png").is_file()
    rows = _manifest(tmp_path / "a" / "data_manifest.csv")
    assert {r["aoi_source"] for r in rows.values()} == {"estimated"}
    assert sum(int(r["label"]) for r in rows.values()) == 17  # the type map: combined → defective
    assert {r["type"] for r in rows.values() if r["relabelled"] == "1"} == {"fabric_border", "fabric_interior"}
    ious = []
    for name, r in rows.items():
        est = np.asarray(Image.open(mvtec / r["mask"])) > 0
        truth = np.asarray(Image.open(mvtec / "aoi" / Path(name).relative_to("zipper"))) > 0
        ious.append((est & truth).sum() / (est | truth).sum())
    assert min(ious) > 0.75 and np.mean(ious) > 0.9, ious
    assert dm.datasets["train"][0]["image"].shape == (3, 32, 32)  # greyscale repeated to 3 channels
    geo = MVTecZipperDataModule(str(mvtec), relabel="geometry", image_size=32, manifest_out=str(tmp_path / "b"))
    geo.setup()
    rows = _manifest(tmp_path / "b" / "data_manifest.csv")
    assert sum(int(r["label"]) for r in rows.values()) == 15


def test_estimate_zipper_band_bright_and_dark():
    rng = np.random.default_rng(1)
    img = 0.4 + rng.normal(0, 0.02, (80, 200))
    img[:, 90:130] = np.where((np.arange(80) // 4 % 2)[:, None] == 0, 0.9, 0.6)
    x0, x1 = estimate_zipper_band(img)
    assert abs(x0 - 90) <= 2 and abs(x1 - 130) <= 2
    assert estimate_zipper_band(img, margin=0.05)[0] == max(0, x0 - 10)
    dark = 0.6 + rng.normal(0, 0.02, (80, 200))
    dark[:, 30:60] = 0.15  # a flat dark band: found by its column mean
    x0, x1 = estimate_zipper_band(dark)
    assert abs(x0 - 30) <= 2 and abs(x1 - 60) <= 2


def test_bad_mvtec_input_is_one_error(mvtec, tmp_path):
    with pytest.raises(DataError, match=r"MVTec AD zipper not found under .*nowhere.*set data.root="):
        MVTecZipperDataModule(str(tmp_path / "nowhere")).setup()
    with pytest.raises(DataError, match="require_aoi=true but no data.aoi_dir"):
        MVTecZipperDataModule(str(mvtec), require_aoi=True).setup()
    root = tmp_path / "copy"
    shutil.copytree(mvtec, root)
    (root / "aoi" / "test" / "rough" / "001.png").unlink()
    with pytest.raises(DataError, match=r"AOI mask missing for 1 image.*test/rough/001.png"):
        MVTecZipperDataModule(str(root), aoi_dir=str(root / "aoi")).setup()
    (root / "zipper" / "ground_truth" / "rough" / "001_mask.png").unlink()
    with pytest.raises(DataError, match=r"ground-truth mask missing for .*rough/001.png.*relabel=type"):
        MVTecZipperDataModule(str(root), relabel="geometry").setup()
    (root / "zipper" / "test" / "glue").mkdir()
    with pytest.raises(DataError, match=r"unknown defect type folder.*\['glue'\].*type_labels"):
        MVTecZipperDataModule(str(root)).setup()


def test_offline_augmented_set_is_deterministic_and_reads_as_folder(mvtec, tmp_path):
    args = ["--root", str(mvtec), "--aoi-dir", str(mvtec / "aoi"), "--n", "45", "--image-size", "32"]
    assert main([*args, "--out", str(tmp_path / "a")]) == 0
    assert main([*args, "--out", str(tmp_path / "b")]) == 0
    files = sorted(p.relative_to(tmp_path / "a") for p in (tmp_path / "a").rglob("*.png"))
    assert len([f for f in files if f.parts[0] == "images"]) == 45
    for f in files:
        assert (tmp_path / "a" / f).read_bytes() == (tmp_path / "b" / f).read_bytes(), f
    with open(tmp_path / "a" / "manifest.csv") as f:
        rows = list(csv.DictReader(f))
    assert len(rows) == 45 and sum(int(r["augmented"]) for r in rows) == 45 - 37
    source_split = {r["image"]: r["split"] for r in _manifest(tmp_path / "a" / "source_manifest.csv").values()}
    assert all(r["split"] == source_split[r["source"]] for r in rows)  # copies never cross splits
    dm = FolderDataModule(str(tmp_path / "a"), image_size=32)
    dm.setup()
    mask = dm.datasets["train"][0]["mask"]
    assert set(mask.unique().tolist()) <= {0.0, 1.0} and sum(len(v) for v in dm.samples.values()) == 45
    assert main([*args, "--out", str(tmp_path / "a")]) == 2  # not empty: refused


@pytest.mark.parametrize("loss", ["ce", "ceod"])
def test_mvtec_fast_dev_run(make_cfg, mvtec, tmp_path, loss):
    from ceod.train import train

    cfg = make_cfg("+experiment=mvtec_zipper", f"data.root={mvtec}", f"data.aoi_dir={mvtec / 'aoi'}", f"loss={loss}",
                   "data.image_size=32", "data.batch_size=4", "data.num_workers=0", "trainer.fast_dev_run=true",
                   "trainer.accelerator=cpu")
    assert cfg.task_name == "mvtec_zipper" and cfg.loss.omega == (0.0 if loss == "ce" else 0.001)
    results = train(cfg)
    assert {"train/loss", "test/auroc", "test/aoi_energy"} <= set(results)
    assert all(v == v for v in results.values())
    assert len(_manifest(tmp_path / "run" / "data_manifest.csv")) == 37


def test_missing_mvtec_is_one_line(tmp_path):
    env = {**os.environ, "CEOD_DATA_DIR": str(tmp_path / "data")}
    env.pop("HYDRA_FULL_ERROR", None)
    r = subprocess.run([sys.executable, "-m", "ceod.train", "+experiment=mvtec_zipper", "hydra.run.dir=out"],
                       cwd=tmp_path, env=env, capture_output=True, text=True, timeout=120)
    errors = [ln for ln in r.stderr.splitlines() if ln.startswith("error:")]
    assert r.returncode == 2 and "Traceback" not in r.stderr, r.stderr[-2000:]
    assert len(errors) == 1 and "mvtec_anomaly_detection" in errors[0] and "set data.root=" in errors[0]


def test_channels_and_size_are_configurable(mvtec):
    dm = MVTecZipperDataModule(str(mvtec), aoi_dir=str(mvtec / "aoi"), image_size=[24, 40], augment=True)
    dm.setup()
    item = dm.datasets["train"][0]
    assert item["image"].shape == (1, 24, 40) and item["mask"].shape == (24, 40)
    assert torch.is_floating_point(item["image"])
