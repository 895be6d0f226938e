"""The decoy-digits benchmark: real scans, AOI = digit box, a decoy that encodes the label only in train/val."""

from __future__ import annotations

import csv
import json
from collections import Counter

import numpy as np
import pytest
from PIL import Image

from ceod.benchmarks.digits import config_for, generate
from ceod.errors import CeodError


@pytest.fixture(scope="module")
def digits_root(tmp_path_factory):
    return generate(tmp_path_factory.mktemp("digits") / "dd", config_for("decoy_digits"))


def _records(root):
    return [json.loads(line) for line in (root / "geometry.jsonl").read_text().splitlines()]


def test_labels_splits_and_test_size(digits_root):
    rows = list(csv.DictReader(open(digits_root / "manifest.csv")))
    recs = _records(digits_root)
    assert all((r["digit"] in (3, 5, 8)) == (r["label"] == 1) for r in recs)
    counts = Counter(r["split"] for r in rows)
    assert counts["test"] >= 400 and counts["train"] >= 400
    assert {(r["split"], r["label"]) for r in rows} == {(s, l) for s in ("train", "val", "test") for l in ("0", "1")}


def test_aoi_is_the_digit_box_and_the_decoy_lies_outside(digits_root):
    for rec in _records(digits_root)[:50]:
        mask = np.asarray(Image.open(digits_root / rec["image"].replace("images/", "masks/"))) > 127
        x, y, w, h = rec["box"]
        assert mask.sum() == w * h and mask[y:y + h, x:x + w].all()
        d = rec["decoy"]
        assert not mask[d["y"]:d["y"] + d["size"], d["x"]:d["x"] + d["size"]].any()


def test_decoy_encodes_the_label_in_train_val_only(digits_root):
    recs = _records(digits_root)
    for split in ("train", "val"):
        assert all(r["decoy"]["bright"] == (r["label"] == 1) for r in recs if r["split"] == split)
    test = [r for r in recs if r["split"] == "test"]
    agree = np.mean([r["decoy"]["bright"] == (r["label"] == 1) for r in test])
    assert 0.4 < agree < 0.6  # random at test: the shortcut is worth nothing there


def test_control_decoy_is_independent_of_the_label(tmp_path):
    from ceod.benchmarks.digits import DigitsConfig, make_sample
    cfg = config_for("decoy_digits_control")
    scan = np.zeros((8, 8))
    bright = [make_sample(cfg, scan, i, 1, "train")[2]["decoy"]["bright"] for i in range(200)]
    assert 0.35 < np.mean(bright) < 0.65
    assert isinstance(cfg, DigitsConfig)


def test_same_config_same_bytes_and_bad_options(tmp_path, digits_root):
    again = generate(tmp_path / "again", config_for("decoy_digits"))
    first = _records(digits_root)[0]["image"]
    assert (again / first).read_bytes() == (digits_root / first).read_bytes()
    with pytest.raises(CeodError, match="disjoint"):
        config_for("decoy_digits", good_digits=[3])
    with pytest.raises(CeodError, match="unknown digits generator option"):
        config_for("decoy_digits", colour=1)
    with pytest.raises(CeodError, match="unknown digits variant"):
        config_for("decoy_mnist")
