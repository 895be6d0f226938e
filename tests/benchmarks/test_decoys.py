"""The decoy zoo (ceod.benchmarks.decoys) on both generated benchmarks: outside the AOI, label-coded in train/val only."""

from __future__ import annotations

import hashlib
import json

import numpy as np
import pytest

from ceod.benchmarks import decoys, digits, synthetic
from ceod.errors import CeodError


@pytest.mark.parametrize("kind", decoys.KINDS)
def test_each_kind_draws_only_outside_the_aoi_and_both_codes_differ(kind):
    aoi = np.zeros((64, 64), dtype=bool)
    aoi[20:44, 22:46] = True
    drawn = {}
    for code in (1, -1):
        img = np.full((64, 64), 0.5)
        geom = decoys.draw(img, aoi, kind, code, np.random.default_rng(3), 1.0, 0.3)
        assert geom["kind"] == kind and geom["code"] == code
        changed = np.abs(img - 0.5) > 1e-12
        assert changed.any() and not changed[aoi].any()  # something drawn, nothing inside the AOI
        drawn[code] = img
    assert not np.allclose(drawn[1], drawn[-1])  # the two codes look different
    if kind == "stripes":  # same mean grey: texture is the only cue
        assert abs(drawn[1].mean() - drawn[-1].mean()) < 1e-9


def test_decoy_code_is_label_coded_in_train_and_random_in_test():
    rng = np.random.default_rng(0)
    train = [decoys.decoy_code(rng, label, "train", 1.0) for label in (0, 1) * 200]
    assert train == [-1, 1] * 200
    test = np.array([decoys.decoy_code(rng, label, "test", 1.0) for label in (0, 1) * 500])
    labels = np.array((0, 1) * 500)
    assert 0.4 < (test == 1).mean() < 0.6 and abs(np.corrcoef(test, labels)[0, 1]) < 0.1
    control = np.array([decoys.decoy_code(rng, label, "train", 0.5) for label in (0, 1) * 500])
    assert abs(np.corrcoef(control, labels)[0, 1]) < 0.1
    with pytest.raises(ValueError, match="unknown decoy kind"):
        decoys.draw(np.zeros((8, 8)), np.zeros((8, 8), bool), "glitter", 1, rng, 1.0, 0.3)


@pytest.mark.parametrize("kind", ["ring", "beside", "shade"])
def test_zoo_variants_generate_with_their_controls(tmp_path, kind):
    for variant, p in ((f"decoy_digits_{kind}", 1.0), (f"decoy_digits_{kind}_control", 0.5)):
        cfg = digits.config_for(variant)
        assert cfg.decoy_kind == kind and cfg.decoy_p == p
    root = digits.generate(tmp_path / "d", digits.config_for(f"decoy_digits_{kind}"))
    rows = [json.loads(line) for line in (root / "geometry.jsonl").read_text().splitlines()]
    train = [r for r in rows if r["split"] == "train"]
    assert all(r["decoy"]["kind"] == kind and r["decoy"]["code"] == (1 if r["label"] else -1) for r in train)
    test = [r["decoy"]["code"] for r in rows if r["split"] == "test"]
    assert len(test) >= 400 and 0.4 < np.mean(np.array(test) == 1) < 0.6
    zcfg = synthetic.config_for(f"synthetic_zipper_decoy_{kind}", n_good=12, n_defect=12, size=64)
    img, aoi, geom = synthetic.make_sample(zcfg, 0, 1, "train")
    assert geom["decoy"]["kind"] == kind and geom["decoy"]["code"] == 1 and img.shape == aoi.shape == (64, 64)


def test_shipped_decoys_unchanged_and_bad_kind_is_an_error():
    assert digits.config_for("decoy_digits").decoy_kind == "square"
    assert synthetic.config_for("synthetic_zipper_decoy").decoy_kind == "fixture"
    # the shipped benchmarks keep their bytes: samples drawn now hash as they did before the zoo (at dd349a9)
    h = hashlib.sha1()
    for i, label, split in ((5, 1, "train"), (6, 0, "train"), (7, 1, "test")):
        img, aoi, _ = synthetic.make_sample(synthetic.config_for("synthetic_zipper_decoy", size=64), i, label, split)
        h.update(img.tobytes()), h.update(aoi.tobytes())
    scans, _ = digits._load_scans()
    for i, label, split in ((5, 1, "train"), (6, 0, "val"), (7, 1, "test")):
        img, aoi, _ = digits.make_sample(digits.config_for("decoy_digits"), scans[i], i, label, split)
        h.update(img.tobytes()), h.update(aoi.tobytes())
    assert h.hexdigest() == "73539a603286d5f183263b6a13a40285e380fd81"
    with pytest.raises(CeodError, match="decoy_kind"):
        digits.config_for("decoy_digits", decoy_kind="glitter")
    with pytest.raises(CeodError, match="decoy_kind"):
        synthetic.config_for("synthetic_zipper_decoy", decoy_kind="glitter")


def test_a_cache_written_before_the_zoo_stays_valid(tmp_path):
    """A generated dataset whose meta.json predates decoy_kind was made with its default: no regeneration error."""
    from ceod.benchmarks.registry import GeneratedSource
    from ceod.data.sources import Context

    root = tmp_path / "old"
    cfg = synthetic.config_for("synthetic_zipper", n_good=6, n_defect=6, size=32)
    synthetic.generate(root, cfg)
    meta = json.loads((root / "meta.json").read_text())
    del meta["config"]["decoy_kind"]  # as written before the zoo
    (root / "meta.json").write_text(json.dumps(meta))
    src = GeneratedSource(root, variant="synthetic_zipper", generator={"n_good": 6, "n_defect": 6})
    src.prepare(Context((32, 32), 0.5, False, None))  # no error
    meta["config"]["contrast"] = 0.5  # a real difference is still caught
    (root / "meta.json").write_text(json.dumps(meta))
    with pytest.raises(CeodError, match="other parameters"):
        src.prepare(Context((32, 32), 0.5, False, None))
