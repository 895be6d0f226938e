"""The folder+mask DataModule: shapes, dtypes, splits, and one-line errors on bad trees."""

from __future__ import annotations

import shutil

import pytest
import torch
from PIL import Image

from ceod.data.folder import FolderDataModule
from ceod.data.samples import Sample, stratified_split
from ceod.data.synthetic_datamodule import SyntheticZipperDataModule
from ceod.errors import DataError


def test_batches_shapes_and_dtypes(tiny_root):
    dm = FolderDataModule(str(tiny_root), image_size=48, channels=1, batch_size=8)
    dm.setup("fit")
    batch = next(iter(dm.train_dataloader()))
    assert batch["image"].shape == (8, 1, 48, 48) and batch["image"].dtype == torch.float32
    assert batch["mask"].shape == (8, 48, 48) and set(batch["mask"].unique().tolist()) <= {0.0, 1.0}
    assert batch["label"].dtype == torch.long and set(batch["label"].tolist()) <= {0, 1}
    assert 0.0 <= batch["image"].min() and batch["image"].max() <= 1.0
    sizes = {k: len(v) for k, v in dm.datasets.items()}
    assert sizes == {"train": 31, "val": 9, "test": 4}  # the generator's 70/20/10 per class
    dm3 = FolderDataModule(str(tiny_root), image_size=64, channels=3, mean=(0.5, 0.5, 0.5), std=(0.2, 0.2, 0.2))
    dm3.setup("fit")
    item = dm3.datasets["val"][0]
    assert item["image"].shape == (3, 64, 64) and torch.equal(item["image"][0], item["image"][2])


def test_scan_without_manifest_is_stratified_and_seeded(tiny_root, tmp_path):
    root = tmp_path / "copy"
    shutil.copytree(tiny_root, root)
    (root / "manifest.csv").unlink()
    a = FolderDataModule(str(root), seed=1).discover()
    b = FolderDataModule(str(root), seed=1).discover()
    c = FolderDataModule(str(root), seed=2).discover()
    assert a == b and a != c
    for label, n in ((0, 24), (1, 20)):
        splits = [s.split for s in a if s.label == label]
        assert len(splits) == n and splits.count("train") == round(0.7 * n)


def test_stratified_split_keeps_class_ratio():
    samples = [Sample(image=f"{i}.png", mask=None, label=int(i < 30)) for i in range(100)]
    out = stratified_split(samples, (0.7, 0.2, 0.1), seed=0)
    for split, n in (("train", 70), ("val", 20), ("test", 10)):
        part = [s for s in out if s.split == split]
        assert len(part) == n and sum(s.label for s in part) == round(n * 0.3)


def test_missing_root(tmp_path):
    with pytest.raises(DataError, match="data root not found: .*nowhere"):
        FolderDataModule(str(tmp_path / "nowhere")).setup()


def test_empty_image_folder(tmp_path):
    (tmp_path / "images" / "good").mkdir(parents=True)
    with pytest.raises(DataError, match="no images found under .*images"):
        FolderDataModule(str(tmp_path), manifest=None).setup()


def test_missing_mask_and_unknown_label_folder(tiny_root, tmp_path):
    root = tmp_path / "copy"
    shutil.copytree(tiny_root, root)
    (root / "manifest.csv").unlink()
    victim = sorted((root / "masks" / "defect").iterdir())[0]
    victim.unlink()
    with pytest.raises(DataError, match=f"mask.*missing.*{victim.name}"):
        FolderDataModule(str(root)).setup()
    (root / "images" / "scratched").mkdir()
    with pytest.raises(DataError, match="unknown label folder.*scratched"):
        FolderDataModule(str(root)).setup()


def test_corrupt_image_is_named(tiny_root, tmp_path):
    root = tmp_path / "copy"
    shutil.copytree(tiny_root, root)
    bad = sorted((root / "images" / "good").iterdir())[0]
    bad.write_bytes(b"not a png")
    dm = FolderDataModule(str(root))
    dm.setup()
    idx = next(i for s in dm.samples.values() for i, x in enumerate(s) if x.image == bad)
    split = next(k for k, s in dm.samples.items() if any(x.image == bad for x in s))
    with pytest.raises(DataError, match=bad.name):
        dm.datasets[split][idx]


def test_synthetic_datamodule_generates_once_and_refuses_other_parameters(tmp_path):
    root = tmp_path / "syn"
    dm = SyntheticZipperDataModule(str(root), generator={"n_good": 10, "n_defect": 10}, image_size=48)
    dm.prepare_data()
    stamp = (root / "meta.json").stat().st_mtime_ns
    dm.prepare_data()  # cached: not regenerated
    assert (root / "meta.json").stat().st_mtime_ns == stamp
    other = SyntheticZipperDataModule(str(root), generator={"n_good": 12, "n_defect": 10}, image_size=48)
    with pytest.raises(DataError, match="other parameters"):
        other.prepare_data()
    assert Image.open(next((root / "images" / "good").iterdir())).size == (48, 48)
