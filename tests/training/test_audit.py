"""python -m ceod.audit on a real tiny run: the test step's reliance reproduced, the files, one-line errors."""

from __future__ import annotations

import csv
import json
import shutil
from pathlib import Path

import pytest

from ceod.cli.audit import main
from ceod.training.audit import audit


def _best(run: Path) -> Path:
    return next((run / "checkpoints").glob("epoch*.ckpt"))


def _root(run: Path) -> Path:
    """The generated data root the run trained on (a folder+mask layout with a manifest)."""
    return next((run.parent / "data").glob("synthetic_zipper_seed0*"))


def _errors(capsys) -> list[str]:
    return [ln for ln in capsys.readouterr().err.splitlines() if ln.startswith("error:")]


def test_audit_reproduces_the_test_steps_reliance_and_writes_its_files(trained_run, tmp_path):
    run, results = trained_run
    out = tmp_path / "audit"
    s = audit(str(_best(run)), str(out), [f"data.root={_root(run)}", "data=folder", "data.batch_size=16"],
              split="test", batch_size=16)
    # the same images, the same partners (batch of 16), the same threshold: the numbers of the test step
    assert s["outside_reliance"] == pytest.approx(results["test/outside_reliance"], abs=1e-5)
    assert s["outside_flip"] == pytest.approx(results["test/outside_flip"], abs=1e-5)
    assert s["outside_reliance_blur"] == pytest.approx(results["test/outside_reliance_blur"], abs=1e-5)
    assert s["aoi_energy"] == pytest.approx(results["test/aoi_energy"], abs=1e-4)
    rows = list(csv.DictReader(open(out / "reliance.csv")))
    assert len(rows) == s["n"] and {"p_swap", "delta_swap", "flip_blur", "aoi_energy"} <= set(rows[0])
    assert json.loads((out / "summary.json").read_text())["n"] == s["n"]
    assert (out / "most_reliant.png").read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"


def test_audit_cli_and_bad_inputs_are_one_line(trained_run, tmp_path, capsys):
    run, _ = trained_run
    root = _root(run)
    out = tmp_path / "a"
    main([f"ckpt={_best(run)}", f"out={out}", f"data.root={root}", "split=val", "fills=swap", "top=2"])
    assert "audited" in capsys.readouterr().out and (out / "most_reliant.png").is_file()

    no_masks = tmp_path / "nomasks"
    shutil.copytree(root / "images", no_masks / "images")
    cases = [
        ([f"ckpt={_best(run)}", f"out={tmp_path / 'b'}", f"data.root={root}", "fills=paint"], "fills"),
        ([f"ckpt={root / 'manifest.csv'}", f"out={tmp_path / 'c'}", f"data.root={root}"], "not a ceod checkpoint"),
        ([f"ckpt={_best(run)}", f"out={tmp_path / 'd'}"], "data.root"),
        ([f"ckpt={_best(run)}", f"out={tmp_path / 'e'}", f"data.root={no_masks}", "data.manifest=null"], "mask"),
        ([f"ckpt={_best(run)}", f"out={tmp_path / 'f'}", f"data.root={root}", "split=holdout"], "split"),
    ]
    for args, culprit in cases:
        with pytest.raises(SystemExit) as e:
            main(args)
        errors = _errors(capsys)
        assert e.value.code == 2 and len(errors) == 1 and culprit in errors[0], (args, errors)
        assert not Path(args[1].partition("=")[2]).exists()  # nothing half-written
