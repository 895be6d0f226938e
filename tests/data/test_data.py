"""The folder+mask DataModule: shapes, dtypes, splits, formats, augmentation, and one-line errors on bad trees."""

from __future__ import annotations

import csv
import shutil

import numpy as np
import pytest
import torch
from PIL import Image

from ceod.data.datamodule import DefectDataModule
from ceod.benchmarks.registry import GeneratedSource
from ceod.data.datamodule import DefectDataModule as FolderDataModule
from ceod.data.samples import Sample, load_image, load_mask, stratified_split
from ceod.errors import ConfigError, DataError


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
    a = FolderDataModule(str(root), seed=1).discover().samples
    b = FolderDataModule(str(root), seed=1).discover().samples
    c = FolderDataModule(str(root), seed=2).discover().samples
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


def test_corrupt_image_is_named_at_setup_or_skipped(tiny_root, tmp_path):
    root = tmp_path / "copy"
    shutil.copytree(tiny_root, root)
    bad = sorted((root / "images" / "good").iterdir())[0]
    bad.write_bytes(b"not a png")
    truncated = sorted((root / "images" / "defect").iterdir())[0]
    truncated.write_bytes(truncated.read_bytes()[:60])
    dm = FolderDataModule(str(root))
    with pytest.raises(DataError, match=rf"cannot read image .*({bad.name}|{truncated.name}).*2 unreadable.*skip_corrupt"):
        dm.setup()
    assert dm.datasets == {} and dm.samples == {}  # nothing half-loaded
    dm = FolderDataModule(str(root), skip_corrupt=True)
    dm.setup()
    assert dm.report["corrupt_skipped"] == 2
    kept = {s.image for part in dm.samples.values() for s in part}
    assert len(kept) == 42 and bad not in kept and truncated not in kept


def test_synthetic_datamodule_generates_once_and_refuses_other_parameters(tmp_path):
    root = tmp_path / "syn"
    dm = DefectDataModule(str(root), GeneratedSource, generator={"n_good": 10, "n_defect": 10}, image_size=48)
    dm.prepare_data()
    stamp = (root / "meta.json").stat().st_mtime_ns
    dm.prepare_data()  # cached: not regenerated
    assert (root / "meta.json").stat().st_mtime_ns == stamp
    other = DefectDataModule(str(root), GeneratedSource, generator={"n_good": 12, "n_defect": 10}, image_size=48)
    with pytest.raises(DataError, match="other parameters"):
        other.prepare_data()
    assert Image.open(next((root / "images" / "good").iterdir())).size == (48, 48)


# ----------------------------------------------------------------------------- generic folder+mask trees
def _band(size: int, i: int) -> np.ndarray:
    aoi = np.zeros((size, size), bool)
    x0 = 8 + (i * 5) % (size - 24)
    aoi[:, x0:x0 + 10] = True
    return aoi


def _write(path, arr: np.ndarray) -> None:
    """8-bit arrays → L/RGB files, uint16 → 16-bit (I;16) files."""
    path.parent.mkdir(parents=True, exist_ok=True)
    Image.fromarray(arr).save(path)


def make_tree(root, n_good=10, n_defect=10, size=32, classes=("good", "defect"), suffix=".png", mask_suffix=".png"):
    """ROOT/images/<class>/NN<suffix> (bright AOI band) + ROOT/masks/<class>/NN<mask_suffix> (0/255)."""
    rng = np.random.default_rng(0)
    for label, (cls, n) in enumerate(zip(classes, (n_good, n_defect))):
        for i in range(n):
            aoi = _band(size, i + 100 * label)
            img = (60 + 120 * aoi + rng.integers(0, 20, aoi.shape)).astype(np.uint8)
            _write(root / "images" / cls / f"{i:02d}{suffix}", img)
            _write(root / "masks" / cls / f"{i:02d}{mask_suffix}", aoi.astype(np.uint8) * 255)
    return root


def test_all_formats_bit_depths_and_channels(tmp_path):
    """PNG, JPEG, BMP, TIFF; 8- and 16-bit; greyscale and RGB: all load to [0, 1] at the right scale."""
    grey8 = np.full((20, 24), 128, np.uint8)
    grey16 = np.full((20, 24), 32768, np.uint16)
    rgb8 = np.stack([grey8] * 3, -1)
    cases = [("a.png", grey8), ("b.png", grey16), ("c.jpg", grey8), ("d.jpeg", rgb8), ("e.bmp", rgb8),
             ("f.tif", grey16), ("g.tiff", rgb8), ("h.bmp", grey8)]
    for name, arr in cases:
        _write(tmp_path / name, arr)
        assert (Image.open(tmp_path / name).mode == "I;16") == (arr.dtype == np.uint16)
        for channels in (1, 3):
            t = load_image(tmp_path / name, channels)
            assert t.shape == (channels, 20, 24) and t.dtype == torch.float32, name
            assert abs(t.mean().item() - 0.5) < 0.01, (name, t.mean())
    # a tree mixing the formats trains as one dataset (masks may have another suffix)
    root = tmp_path / "mixed"
    make_tree(root, 6, 6, suffix=".png")
    for i, (p, suffix) in enumerate(zip(sorted((root / "images" / "good").iterdir()), [".jpg", ".bmp", ".tif"])):
        arr = np.asarray(Image.open(p))
        p.unlink()
        img = (arr.astype(np.uint16) * 257) if suffix == ".tif" else np.stack([arr] * 3, -1)
        _write(p.with_suffix(suffix), img)
    m = root / "masks" / "defect" / "00.png"
    Image.open(m).save(m.with_suffix(".bmp"))
    m.unlink()
    dm = FolderDataModule(str(root), image_size=16, channels=3, split=(0.5, 0.25, 0.25), batch_size=4)
    dm.setup()
    batch = next(iter(dm.train_dataloader()))
    assert batch["image"].shape == (4, 3, 16, 16) and 0 <= batch["image"].min() and batch["image"].max() <= 1
    assert {s.image.suffix for v in dm.samples.values() for s in v} == {".png", ".jpg", ".bmp", ".tif"}


def test_class_dirs_configurable_and_no_masks(tmp_path):
    root = make_tree(tmp_path / "r", 6, 6, classes=("ok", "nok"))
    with pytest.raises(DataError, match=r"unknown label folder.*\['nok', 'ok'\]"):
        FolderDataModule(str(root)).setup()
    dm = FolderDataModule(str(root), class_dirs={"ok": 0, "nok": 1}, split=(0.5, 0.25, 0.25))
    dm.setup()
    assert sum(len(v) for v in dm.samples.values()) == 12
    dm = FolderDataModule(str(root), class_dirs={"ok": 0, "nok": 1}, mask_dir=None, split=(0.5, 0.25, 0.25))
    dm.setup()
    assert dm.datasets["train"][0]["mask"].sum() == 0  # no AOI masks: zeros (CE only)
    with pytest.raises(ConfigError, match="class_dirs"):
        FolderDataModule(str(root), class_dirs={"ok": 0, "nok": 0})


def test_manifest_with_explicit_splits_and_label_names(tmp_path):
    root = make_tree(tmp_path / "r", 6, 6)
    rows = [{"image": f"images/{c}/{i:02d}.png", "mask": f"masks/{c}/{i:02d}.png", "label": c,
             "split": ("train", "train", "train", "val", "test", "test")[i]} for c in ("good", "defect") for i in range(6)]
    with open(root / "manifest.csv", "w", newline="") as f:
        w = csv.DictWriter(f, fieldnames=["image", "mask", "label", "split"])
        w.writeheader()
        w.writerows(rows)
    dm = FolderDataModule(str(root), manifest_out=str(tmp_path / "run"))
    dm.setup()
    assert {k: len(v) for k, v in dm.samples.items()} == {"train": 6, "val": 2, "test": 4}
    assert {s.image for s in dm.samples["val"]} == {root / "images" / c / "03.png" for c in ("good", "defect")}
    # the written manifest reproduces the split when fed back
    again = FolderDataModule(str(root), manifest=str(tmp_path / "run" / "data_manifest.csv"))
    again.setup()
    assert again.samples == dm.samples
    rows[0]["split"] = ""
    with open(root / "manifest.csv", "w", newline="") as f:
        w = csv.DictWriter(f, fieldnames=["image", "mask", "label", "split"])
        w.writeheader()
        w.writerows(rows)
    with pytest.raises(DataError, match="split for some rows only"):
        FolderDataModule(str(root)).setup()


def test_industrial_protocol_train_val_from_root_and_separate_test_root(tmp_path):
    root = make_tree(tmp_path / "train_root", 10, 10)
    test_root = make_tree(tmp_path / "test_root", 3, 4)
    dm = FolderDataModule(str(root), test_root=str(test_root), seed=3)
    dm.setup()
    assert {k: len(v) for k, v in dm.samples.items()} == {"train": 16, "val": 4, "test": 7}  # 80/20 per class
    assert all(str(s.image).startswith(str(test_root)) for s in dm.samples["test"])
    assert sum(s.label for s in dm.samples["val"]) == 2
    with pytest.raises(ConfigError, match=r"data.split must be \[train, val\]"):
        FolderDataModule(str(root), test_root=str(test_root), split=(0.7, 0.2, 0.1))
    with pytest.raises(DataError, match="test root not found"):
        FolderDataModule(str(root), test_root=str(tmp_path / "nope")).setup()


def test_mask_size_mismatch_error_or_resize(tmp_path):
    root = make_tree(tmp_path / "r", 6, 6)
    m = root / "masks" / "good" / "02.png"
    Image.open(m).resize((16, 16), Image.NEAREST).save(m)
    with pytest.raises(DataError, match=r"AOI mask 16×16 ≠ image 32×32 for .*02.png.*mask_size_mismatch=resize"):
        FolderDataModule(str(root), split=(0.5, 0.25, 0.25)).setup()
    dm = FolderDataModule(str(root), split=(0.5, 0.25, 0.25), mask_size_mismatch="resize", image_size=32, augment=False)
    dm.setup()
    assert dm.report["mask_resized"] == 1
    i, split = next((i, k) for k, v in dm.samples.items() for i, s in enumerate(v) if s.mask == m)
    mask = dm.datasets[split][i]["mask"]
    assert mask.shape == (32, 32) and torch.equal(mask, torch.from_numpy(np.repeat(np.repeat(
        np.asarray(Image.open(m)) > 127, 2, 0), 2, 1)).float())


def test_nonbinary_masks_threshold_policy_or_error(tmp_path):
    root = make_tree(tmp_path / "r", 6, 6)
    soft = root / "masks" / "defect" / "01.png"
    ramp = np.tile(np.linspace(0, 255, 32).astype(np.uint8), (32, 1))  # 0..255 ramp: non-binary
    _write(soft, ramp)
    zero_one = root / "masks" / "defect" / "02.png"
    _write(zero_one, _band(32, 102).astype(np.uint8))  # {0, 1}: binary, not thresholded away
    with pytest.raises(DataError, match=r"AOI mask .*01.png is not binary \(1 such"):
        FolderDataModule(str(root), split=(0.5, 0.25, 0.25), nonbinary_masks="error").setup()
    dm = FolderDataModule(str(root), split=(0.5, 0.25, 0.25), mask_threshold=0.5)
    dm.setup()
    assert dm.report["mask_thresholded"] == 1
    m = load_mask(soft, 0.5)
    assert torch.equal(m, torch.from_numpy(ramp >= 127.5).float())
    assert torch.equal(load_mask(zero_one), torch.from_numpy(_band(32, 102)).float())


def test_empty_split_and_class_absent_from_split(tmp_path):
    root = make_tree(tmp_path / "r", 6, 6)
    with pytest.raises(DataError, match="split 'test' is empty"):
        FolderDataModule(str(root), split=(0.8, 0.2, 0.0)).setup()
    rows = [{"image": f"images/{c}/{i:02d}.png", "mask": f"masks/{c}/{i:02d}.png", "label": int(c == "defect"),
             "split": ("train", "train", "train", "val", "val", "test")[i] if c == "good" else
             ("train", "train", "train", "val", "val", "val")[i]} for c in ("good", "defect") for i in range(6)]
    with open(root / "manifest.csv", "w", newline="") as f:
        w = csv.DictWriter(f, fieldnames=["image", "mask", "label", "split"])
        w.writeheader()
        w.writerows(rows)
    with pytest.raises(DataError, match=r"class 'defect' \(label 1\) is absent from split 'test'"):
        FolderDataModule(str(root)).setup()


def test_duplicate_names(tmp_path):
    root = make_tree(tmp_path / "r", 6, 6)
    shutil.copy(root / "images" / "good" / "03.png", root / "images" / "good" / "03.bmp")
    with pytest.raises(DataError, match=r"duplicate name: .*03\.(png|bmp) and .*03\.(png|bmp) share"):
        FolderDataModule(str(root), split=(0.5, 0.25, 0.25)).setup()
    (root / "images" / "good" / "03.bmp").unlink()
    with open(root / "manifest.csv", "w") as f:
        f.write("image,mask,label\n")
        for c in ("good", "defect"):
            for i in range(6):
                f.write(f"images/{c}/{i:02d}.png,masks/{c}/{i:02d}.png,{int(c == 'defect')}\n")
        f.write("images/good/04.png,masks/good/04.png,1\n")
    with pytest.raises(DataError, match="duplicate image .*04.png: listed twice"):
        FolderDataModule(str(root)).setup()


def test_augmentation_moves_the_mask_with_the_image_train_only(tmp_path):
    root = make_tree(tmp_path / "r", 6, 6)
    dm = FolderDataModule(str(root), split=(0.5, 0.25, 0.25), image_size=32, augment=True, aug_scale=(0.5, 1.0),
                          aug_ratio=(0.5, 2.0), aug_hflip=0.5, aug_vflip=0.5, aug_degrees=20)
    dm.setup()
    torch.manual_seed(1)
    changed, agree = 0, []
    for _ in range(4):
        for i in range(len(dm.datasets["train"])):
            item = dm.datasets["train"][i]
            raw_img, raw_mask = dm.datasets["train"].raw(i)
            changed += not torch.equal(item["mask"], raw_mask)
            assert set(item["mask"].unique().tolist()) <= {0.0, 1.0}
            bright = item["image"][0] > 0.45  # the image's bright band is the AOI
            inner = (item["image"][0] > 0.6) | (item["image"][0] < 0.35)  # away from blurred edges
            agree.append((bright == item["mask"].bool())[inner].float().mean().item())
    assert changed > 10 and min(agree) > 0.9 and np.mean(agree) > 0.97  # a misplaced mask gives ~0.6
    val = dm.datasets["val"]
    assert all(torch.equal(val[i]["mask"], val.raw(i)[1]) for i in range(len(val)))  # val: resize only
    with pytest.raises(ConfigError, match="aug_scale"):
        FolderDataModule(str(root), augment=True, aug_scale=(0.0, 1.0))


def test_batch_augment_on_device_moves_the_mask_and_runs_in_training_only(tmp_path):
    from types import SimpleNamespace

    from ceod.data.transforms import batch_augment

    root = make_tree(tmp_path / "r", 8, 8)
    dm = FolderDataModule(str(root), split=(0.5, 0.25, 0.25), image_size=32, augment=True, augment_on="device",
                          aug_scale=(0.5, 1.0), aug_ratio=(0.5, 2.0), aug_vflip=0.5, aug_degrees=20, batch_size=8)
    dm.setup()
    batch = next(iter(dm.train_dataloader()))
    ds = dm.datasets["train"]
    assert all(torch.equal(batch["mask"][k], ds.raw(int(i))[1]) for k, i in enumerate(batch["index"]))  # unaugmented
    dm.trainer = SimpleNamespace(training=False)
    assert dm.on_after_batch_transfer(batch, 0) is batch
    dm.trainer = SimpleNamespace(training=True)
    torch.manual_seed(0)
    out = dm.on_after_batch_transfer(batch, 0)
    assert out["image"].shape == batch["image"].shape and not torch.equal(out["mask"], batch["mask"])
    assert set(out["mask"].unique().tolist()) <= {0.0, 1.0}
    img = out["image"][:, 0]
    inner = (img > 0.6) | (img < 0.35)
    assert ((img > 0.45) == out["mask"].bool())[inner].float().mean() > 0.97
    # exact geometry: a certain flip with no crop and no rotation is a pixel-exact flip
    x, m = batch["image"], batch["mask"]
    fx, fm = batch_augment(x, m, scale=(1, 1), ratio=(1, 1), hflip=1.0, vflip=0.0, degrees=0)
    assert torch.allclose(fx, x.flip(-1), atol=1e-5) and torch.equal(fm, m.flip(-1))


def test_header_check_without_cache_reads_on_access(tmp_path):
    root = make_tree(tmp_path / "r", 6, 6)
    dm = FolderDataModule(str(root), split=(0.5, 0.25, 0.25), check="header", cache=False, image_size=24)
    dm.setup()
    assert dm.datasets["train"].cache is None and dm.datasets["train"][0]["image"].shape == (1, 24, 24)


@pytest.mark.parametrize("loss", ["ce", "ceod"])
def test_folder_fast_dev_run(make_cfg, tmp_path, tiny_root, loss):
    """data=folder trains end to end: the generator's manifest tree (CE), class folders + test_root (CEOD)."""
    from ceod.training.pipeline import train

    if loss == "ce":
        data = [f"data.root={tiny_root}"]
    else:
        data = [f"data.root={make_tree(tmp_path / 'tr', 12, 12)}", f"data.test_root={make_tree(tmp_path / 'te', 3, 3)}",
                "data.augment_on=device"]
    cfg = make_cfg("data=folder", *data, f"loss={loss}", "data.image_size=32", "data.batch_size=8",
                   "data.num_workers=0", "trainer.fast_dev_run=true", "trainer.accelerator=cpu")
    results = train(cfg)
    assert {"train/loss", "test/auroc", "test/aoi_energy"} <= set(results)
    with open(tmp_path / "run" / "data_manifest.csv") as f:
        assert {r["split"] for r in csv.DictReader(f)} == {"train", "val", "test"}


def test_one_aoi_mask_for_every_image(tiny_root, tmp_path):
    aoi = np.zeros((64, 64), np.uint8)
    aoi[:, 20:44] = 255
    Image.fromarray(aoi).save(tmp_path / "fixture.png")
    dm = FolderDataModule(str(tiny_root), aoi_mask=str(tmp_path / "fixture.png"), image_size=32, augment=False,
                          manifest_out=str(tmp_path / "run"))
    dm.setup()
    masks = {s.mask for v in dm.samples.values() for s in v}
    assert masks == {tmp_path / "fixture.png"}  # shared on purpose: no duplicate-mask error
    assert torch.equal(dm.datasets["train"][0]["mask"], dm.datasets["test"][0]["mask"])
    assert dm.datasets["train"][0]["mask"][:, 10:22].all() and not dm.datasets["train"][0]["mask"][:, :9].any()
    with pytest.raises(DataError, match=r"AOI mask not found: .*nowhere.png \(data.aoi_mask\)"):
        FolderDataModule(str(tiny_root), aoi_mask=str(tmp_path / "nowhere.png")).setup()


def test_written_data_is_group_readable_and_stale_temporaries_are_removed(tiny_root, tmp_path):
    import os
    import socket
    import subprocess

    from ceod.data.layout import atomic_directory, remove_stale_temporaries

    old = os.umask(0o022)
    try:
        dead = subprocess.Popen(["true"])  # a pid that has exited
        dead.wait()

        stale = tmp_path / f".data.tmp-{socket.gethostname()}-{dead.pid}-abcd1234"
        live = tmp_path / f".data.tmp-{socket.gethostname()}-{os.getpid()}-efgh5678"
        stale.mkdir()
        live.mkdir()
        with atomic_directory(tmp_path / "data") as tmp:
            (tmp / "manifest.csv").write_text("image,mask,label\n")
        assert not stale.exists() and live.exists()  # a running writer's folder is left alone
        assert (tmp_path / "data").stat().st_mode & 0o777 == 0o755
        assert (tmp_path / "data" / "manifest.csv").stat().st_mode & 0o777 == 0o644
        assert remove_stale_temporaries(tmp_path / "data") == []
        dm = FolderDataModule(str(tiny_root), image_size=32, manifest_out=str(tmp_path / "run"))
        dm.setup()
        assert (tmp_path / "run" / "data_manifest.csv").stat().st_mode & 0o777 == 0o644
    finally:
        os.umask(old)
