"""Fewer and rougher AOI masks: mask_fraction, missing_masks, mask_noise — seeded, tested on hand-made masks,
through the DataModule (cache and no cache), the written manifest, one-line errors and one training run."""

from __future__ import annotations

import csv
import shutil

import numpy as np
import pytest
import torch

from ceod.data.datamodule import DefectDataModule
from ceod.data.masks import MaskNoise, boxes, dilate, drop_half, erode, keep_fraction, parse_noise, shift
from ceod.errors import ConfigError, DataError


def _square(size: int = 16, y0: int = 4, x0: int = 4, side: int = 5) -> np.ndarray:
    m = np.zeros((size, size), bool)
    m[y0:y0 + side, x0:x0 + side] = True
    return m


# ----------------------------------------------------------------------------- which masks are kept
def test_keep_fraction_is_stratified_seeded_and_nested():
    labels = [0] * 30 + [1] * 20
    has = [True] * 50
    has[0] = False  # an image without a mask is never "kept"
    keep = keep_fraction(labels, has, 0.25, seed=3)
    assert sum(k for k, lab in zip(keep, labels) if lab == 0) == round(0.25 * 29)
    assert sum(k for k, lab in zip(keep, labels) if lab == 1) == 5 and not keep[0]
    assert keep == keep_fraction(labels, has, 0.25, seed=3) and keep != keep_fraction(labels, has, 0.25, seed=4)
    more = keep_fraction(labels, has, 0.5, seed=3)
    assert all(m for k, m in zip(keep, more) if k)  # nested: a larger budget adds masks, keeps the others
    assert keep_fraction(labels, has, 1.0, 0) == has and not any(keep_fraction(labels, has, 0.0, 0))


# ----------------------------------------------------------------------------- the perturbations
def test_box_fills_each_component_to_its_bounding_box():
    m = np.zeros((12, 12), bool)
    m[1:5, 1] = m[4, 1:4] = True  # an L: box 4×3
    m[8, 8] = m[9, 9] = True  # diagonal neighbours: one 8-connected component, box 2×2
    out = boxes(m)
    assert out[1:5, 1:4].all() and out[8:10, 8:10].all() and out.sum() == 12 + 4


def test_dilate_and_erode_by_k_pixels():
    dot = np.zeros((9, 9), bool)
    dot[4, 4] = True
    assert dilate(dot, 1).sum() == 5 and dilate(dot, 2).sum() == 13  # Euclidean discs of radius 1 and 2
    assert erode(_square(side=5), 1).sum() == 9 and not erode(_square(side=5), 3).any()
    band = np.zeros((10, 10), bool)
    band[:, 3:7] = True  # a full-height band: the image border is not "outside"
    assert np.array_equal(erode(band, 1)[:, 4:6], np.ones((10, 2), bool)) and erode(band, 1).sum() == 20
    assert not dilate(np.zeros((5, 5), bool), 2).any() and erode(np.ones((5, 5), bool), 2).all()


def test_shift_and_drop_half():
    m = _square()
    assert np.array_equal(shift(m, 2, -3), _square(y0=6, x0=1)) and not shift(m, 20, 0).any()
    top = drop_half(m, 0)  # rows 4..8: the box centre is row 6 (rounded up); rows above it go
    assert not top[:6].any() and top[6:9, 4:9].all() and top.sum() == 15
    assert drop_half(m, 3).sum() == 10 and not drop_half(m, 3)[:, 6:].any()  # columns 4, 5 stay


def test_mask_noise_is_seeded_deterministic_and_exact_in_count():
    masks = [torch.from_numpy(_square(20, 6, 6, 6)).float() for _ in range(40)]
    a, b = MaskNoise("shift:3", 40, seed=1), MaskNoise("shift:3", 40, seed=1)
    moved = [a(i, m) for i, m in enumerate(masks)]
    assert all(torch.equal(x, b(i, m)) for i, (x, m) in enumerate(zip(moved, masks)))
    assert not all(torch.equal(x, MaskNoise("shift:3", 40, seed=2)(i, m)) for i, (x, m) in enumerate(zip(moved, masks)))
    for x in moved:  # every mask moved by ~3 px, shape kept
        ys, xs = np.nonzero(x.numpy())
        assert x.sum() == 36 and x.dtype == torch.float32
        assert 3 - 0.71 <= np.hypot(ys.min() - 6, xs.min() - 6) <= 3 + 0.71  # K, each axis rounded
    assert len({(int(x.nonzero()[0, 0]), int(x.nonzero()[0, 1])) for x in moved}) > 4  # directions differ
    drop = MaskNoise("drop:0.25", 40, seed=0)
    changed = [not torch.equal(drop(i, m), m) for i, m in enumerate(masks)]
    assert sum(changed) == 10  # exactly round(0.25·40)
    chain = MaskNoise("box+dilate:1", 40)
    assert torch.equal(chain(0, masks[0]), torch.from_numpy(dilate(boxes(_square(20, 6, 6, 6)), 1)).float())


@pytest.mark.parametrize("spec", ["blur:2", "dilate", "dilate:0", "erode:1.5", "drop:0", "drop:2", "box:3",
                                  "box+", "shift:x"])
def test_bad_mask_noise_is_one_config_error_naming_the_key(spec):
    with pytest.raises(ConfigError, match=r"data\.mask_noise=.*choose from box, dilate:K"):
        parse_noise(spec)


# ----------------------------------------------------------------------------- through the DataModule
def _train_masks(dm) -> list[torch.Tensor]:
    ds = dm.datasets["train"]
    return [ds.raw(i)[1] for i in range(len(ds))]


def test_mask_fraction_keeps_a_stratified_share_of_training_masks_only(tiny_root, tmp_path, capsys):
    dm = DefectDataModule(str(tiny_root), image_size=32, mask_fraction=0.25, mask_seed=5, manifest_out=str(tmp_path))
    dm.setup()
    full = DefectDataModule(str(tiny_root), image_size=32)
    full.setup()
    train = dm.samples["train"]
    for label in (0, 1):
        n = sum(s.label == label for s in train)
        assert sum(s.mask is not None for s in train if s.label == label) == round(0.25 * n)
    for split in ("val", "test"):  # the metrics' masks stay
        assert dm.samples[split] == full.samples[split]
    masks, full_masks = _train_masks(dm), _train_masks(full)
    for s, m, f in zip(train, masks, full_masks):
        assert torch.equal(m, f) if s.mask is not None else not m.any()
    item = dm.datasets["train"][0]
    assert item["annotated"].dtype == torch.bool and bool(item["annotated"]) == (train[0].mask is not None)
    batch = next(iter(dm.train_dataloader()))
    assert batch["annotated"].shape == batch["label"].shape
    assert not batch["mask"][~batch["annotated"]].any()
    with open(tmp_path / "data_manifest.csv") as f:
        rows = list(csv.DictReader(f))
    assert sum(bool(r["mask"]) for r in rows if r["split"] == "train") == sum(s.mask is not None for s in train)
    assert all(r["mask"] for r in rows if r["split"] != "train") and "mask_noise" not in rows[0]
    n_kept = sum(s.mask is not None for s in train)
    assert f"train {len(train)} ({sum(s.label for s in train)} defective, {n_kept} with AOI mask)" in capsys.readouterr().out


@pytest.mark.parametrize("spec", ["box", "erode:2", "shift:3", "drop:0.5+dilate:1"])
def test_mask_noise_is_the_same_with_and_without_the_cache_and_train_only(tiny_root, spec):
    kw = dict(image_size=32, mask_noise=spec, mask_seed=2, mask_fraction=0.5)
    cached = DefectDataModule(str(tiny_root), **kw)
    cached.setup()
    on_access = DefectDataModule(str(tiny_root), check="header", cache=False, **kw)
    on_access.setup()
    clean = DefectDataModule(str(tiny_root), image_size=32, mask_fraction=0.5, mask_seed=2)
    clean.setup()
    a, b, c = _train_masks(cached), _train_masks(on_access), _train_masks(clean)
    assert all(torch.equal(x, y) for x, y in zip(a, b))
    assert sum(not torch.equal(x, z) for x, z in zip(a, c)) > 0
    assert all(not x.any() for x, s in zip(a, cached.samples["train"]) if s.mask is None)
    val = cached.datasets["val"]
    assert all(torch.equal(val.raw(i)[1], clean.datasets["val"].raw(i)[1]) for i in range(len(val)))


def test_options_off_change_nothing(tiny_root, tmp_path):
    """mask_fraction=1, mask_noise none, missing_masks=error: the same samples, masks and manifest bytes."""
    plain = DefectDataModule(str(tiny_root), image_size=32, manifest_out=str(tmp_path / "a"))
    plain.setup()
    off = DefectDataModule(str(tiny_root), image_size=32, mask_fraction=1.0, mask_noise="none", missing_masks="error",
                           mask_seed=7, manifest_out=str(tmp_path / "b"))
    off.setup()
    assert off.samples == plain.samples and off.mask_noise is None
    assert all(torch.equal(x, y) for x, y in zip(_train_masks(off), _train_masks(plain)))
    assert (tmp_path / "a" / "data_manifest.csv").read_bytes() == (tmp_path / "b" / "data_manifest.csv").read_bytes()


def _copy_without_masks(tiny_root, tmp_path, k: int = 4):
    """tiny_root copied without its manifest (scanned) and without the masks of k defective images."""
    root = tmp_path / "partial"
    shutil.copytree(tiny_root, root)
    (root / "manifest.csv").unlink()
    gone = sorted((root / "masks" / "defect").iterdir())[:k]
    for p in gone:
        p.unlink()
    return root, gone


def test_missing_mask_files_error_by_default_or_train_with_ce(tiny_root, tmp_path):
    root, gone = _copy_without_masks(tiny_root, tmp_path)
    with pytest.raises(DataError, match=rf"AOI mask missing for 4 image\(s\).*{gone[0].stem}.*data\.missing_masks=ce"):
        DefectDataModule(str(root), image_size=32).setup()
    dm = DefectDataModule(str(root), image_size=32, missing_masks="ce")
    dm.setup()
    lacking = {s.image.stem for v in dm.samples.values() for s in v if s.mask is None}
    assert lacking == {p.stem for p in gone} and dm.report["mask_missing"] == 4
    for split, ds in dm.datasets.items():
        for i, s in enumerate(dm.samples[split]):
            item = ds[i]
            assert bool(item["annotated"]) == (s.mask is not None) and (s.mask is not None or not item["mask"].any())
    with pytest.raises(ConfigError, match=r"data\.missing_masks must be one of \['error', 'ce'\]"):
        DefectDataModule(str(root), missing_masks="maybe")


def test_manifest_with_empty_mask_cells(tiny_root, tmp_path):
    root = tmp_path / "m"
    shutil.copytree(tiny_root, root)
    with open(root / "manifest.csv") as f:
        rows = list(csv.DictReader(f))
    first_defect = next(r for r in rows if r["label"] == "1")
    first_defect["mask"] = ""
    with open(root / "manifest.csv", "w", newline="") as f:
        w = csv.DictWriter(f, fieldnames=list(rows[0]))
        w.writeheader()
        w.writerows(rows)
    with pytest.raises(DataError, match=r"1 image\(s\) have no AOI mask \(an empty mask cell\).*data\.missing_masks=ce"):
        DefectDataModule(str(root), image_size=32).setup()
    dm = DefectDataModule(str(root), image_size=32, missing_masks="ce")
    dm.setup()
    assert sum(s.mask is None for v in dm.samples.values() for s in v) == 1


def test_bad_fractions_and_fractions_that_leave_the_od_nothing(tiny_root, tmp_path):
    for bad in (-0.1, 1.5, "half"):
        with pytest.raises(ConfigError, match=r"data\.mask_fraction=.*\[0, 1\]"):
            DefectDataModule(str(tiny_root), mask_fraction=bad)
    with pytest.raises(DataError, match=r"data\.mask_fraction=0\.01 leaves no defective training image .*would never act"):
        DefectDataModule(str(tiny_root), image_size=32, mask_fraction=0.01).setup()
    root, _ = _copy_without_masks(tiny_root, tmp_path, k=20)  # every defective image without a mask
    with pytest.raises(DataError, match=r"data\.missing_masks=ce leaves no defective training image"):
        DefectDataModule(str(root), image_size=32, missing_masks="ce").setup()


def test_schema_rejects_bad_values_before_any_data_is_read(make_cfg):
    from ceod.training.schema import validate

    for override, match in (("data.mask_fraction=2", r"data\.mask_fraction=2: must lie in \[0, 1\]"),
                            ("data.mask_noise=blur:2", r"data\.mask_noise='blur:2': unknown perturbation 'blur'"),
                            ("data.missing_masks=maybe", r"data\.missing_masks='maybe': must be error or ce"),
                            ("data.mask_fraction=abc", r"data\.mask_fraction='abc': must be a number")):
        with pytest.raises(ConfigError, match=match):
            validate(make_cfg("+experiment=decoy_digits", override))
    validate(make_cfg("+experiment=decoy_digits", "data.mask_fraction=0.1", "data.mask_noise=box+shift:2"))


@pytest.mark.slow  # a subprocess or a full run: make test-all / CI
def test_cli_prints_one_error_line(run_cli):
    r = run_cli("data.mask_noise=blur:2", "trainer.max_epochs=1")
    assert r.returncode == 2 and len(r.errors) == 1 and "data.mask_noise='blur:2'" in r.errors[0]


@pytest.mark.parametrize("loss", ["ceod", "rrr"])
def test_partially_annotated_rough_masks_train_end_to_end(make_cfg, tmp_path, tiny_root, loss):
    from ceod.training.pipeline import train

    root, gone = _copy_without_masks(tiny_root, tmp_path, k=3)
    cfg = make_cfg("data=folder", f"data.root={root}", f"loss={loss}", "data.missing_masks=ce", "data.mask_fraction=0.5",
                   "data.mask_noise=box+dilate:1", "data.image_size=32", "data.batch_size=8", "data.num_workers=0",
                   "trainer.fast_dev_run=true", "trainer.accelerator=cpu")
    results = train(cfg)
    assert np.isfinite(results["train/loss"]) and "test/aoi_energy" in results
    with open(tmp_path / "run" / "data_manifest.csv") as f:
        rows = list(csv.DictReader(f))
    assert {r["mask_noise"] for r in rows if r["split"] == "train" and r["mask"]} == {"box+dilate:1"}
    assert all(not r["mask_noise"] for r in rows if r["split"] != "train" or not r["mask"])


def test_noise_that_empties_masks_is_reported(tiny_root, capsys):
    dm = DefectDataModule(str(tiny_root), image_size=32, mask_noise="erode:40")
    dm.setup()
    n = len(dm.samples["train"])
    assert all(not m.any() for m in _train_masks(dm))
    assert f"data.mask_noise=erode:40 left {n} training mask(s) empty" in capsys.readouterr().out
