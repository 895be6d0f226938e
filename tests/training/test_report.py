"""ceod.training.report: on a real 2-job Hydra multirun, and on run folders laid out as runs write them."""

from __future__ import annotations

import csv
import statistics
from pathlib import Path

import pytest
from omegaconf import OmegaConf
from PIL import Image

from ceod.cli.report import main
from ceod.training.report import report


def _fake_run(path: Path, overrides: list[str], loss: str, omega: float, auroc: float, energy: float,
              model: str = "custom_cnn") -> None:
    """A run folder as ``python -m ceod.train -m`` leaves it (config.yaml, .hydra/, csv/metrics.csv)."""
    (path / ".hydra").mkdir(parents=True)
    (path / "csv").mkdir()
    OmegaConf.save(OmegaConf.create({"data": {"variant": "synthetic_zipper"}, "loss": {"omega": omega},
                                     "model": {"_target_": "ceod.models.custom_cnn.CustomCNN"}}), path / "config.yaml")
    OmegaConf.save(OmegaConf.create(overrides), path / ".hydra" / "overrides.yaml")
    OmegaConf.save(OmegaConf.create({"hydra": {"runtime": {"choices": {"loss": loss, "model": model,
                                                                       "finetune": "full"}}}}),
                   path / ".hydra" / "hydra.yaml")
    with open(path / "csv" / "metrics.csv", "w", newline="") as f:
        w = csv.writer(f)
        w.writerow(["epoch", "step", "train/loss", "val/auroc", "test/auroc", "test/aoi_energy"])
        w.writerow([0, 3, 0.7, "", "", ""])
        w.writerow([0, 3, "", 0.5, "", ""])
        w.writerow([1, 7, "", auroc - 0.01, "", ""])  # the last val value counts
        w.writerow([1, 7, "", "", auroc, energy])


def test_report_pools_seeds_and_plots(tmp_path):
    values = {("ce", 0.0): [(0.80, 0.2), (0.84, 0.3)], ("ceod", 0.001): [(0.86, 0.5), (0.90, 0.7)],
              ("ceod", 0.1): [(0.88, 0.6), (0.92, 0.8)]}
    n = 0
    for (loss, omega), runs in values.items():
        for seed, (auroc, energy) in enumerate(runs):
            _fake_run(tmp_path / "sweep" / str(n), [f"loss={loss}", f"loss.omega={omega}", f"seed={seed}",
                                                    "trainer.max_epochs=2"], loss, omega, auroc, energy)
            n += 1
    r = report(str(tmp_path / "sweep"))
    assert len(r["runs"]) == 6
    with open(tmp_path / "sweep" / "report.csv", newline="") as f:
        rows = list(csv.DictReader(f))
    assert list(rows[0])[:4] == ["dataset", "loss", "loss.omega", "n_runs"]  # one column per swept key
    assert [(row["loss"], row["loss.omega"]) for row in rows] == [("ce", "0.0"), ("ceod", "0.001"), ("ceod", "0.1")]
    assert float(rows[1]["test/auroc_mean"]) == pytest.approx(0.88)
    assert float(rows[1]["test/auroc_std"]) == pytest.approx(statistics.stdev([0.86, 0.90]))
    assert float(rows[1]["val/auroc_mean"]) == pytest.approx(0.87) and rows[1]["n_runs"] == "2"
    md = (tmp_path / "sweep" / "report.md").read_text()
    assert "## synthetic_zipper" in md and "| loss | loss.omega | n |" in md and "0.8800 ± 0.0283" in md
    assert "max_epochs" not in md.split("## synthetic_zipper")[1].split("\n")[4]  # constant: not a column
    for name in ("report_synthetic_zipper_omega.png", "report_synthetic_zipper_ce_vs_ceod.png"):
        with Image.open(tmp_path / "sweep" / name) as im:
            im.verify()
        assert f"]({name})" in md


def test_report_csv_has_a_column_per_key_swept_in_any_dataset(tmp_path):
    """Keys swept in one dataset only: a column for each; a dataset that does not sweep a key holds its value."""
    for n, (variant, over) in enumerate([("zip", ["loss=ce", "lr=0.1"]), ("zip", ["loss=ceod", "lr=0.1"]),
                                         ("dig", ["loss=ce", "lr=0.1"]), ("dig", ["loss=ce", "lr=0.2"])]):
        _fake_run(tmp_path / "sweep" / str(n), over, "ce", 0.0, 0.8, 0.2)
        cfg = OmegaConf.load(tmp_path / "sweep" / str(n) / "config.yaml")
        cfg.data.variant = variant
        OmegaConf.save(cfg, tmp_path / "sweep" / str(n) / "config.yaml")
    report(str(tmp_path / "sweep"))
    with open(tmp_path / "sweep" / "report.csv", newline="") as f:
        rows = list(csv.DictReader(f))
    assert list(rows[0])[:4] == ["dataset", "loss", "lr", "n_runs"]
    assert [(r["dataset"], r["loss"], r["lr"]) for r in rows] == [("dig", "ce", "0.1"), ("dig", "ce", "0.2"),
                                                                  ("zip", "ce", "0.1"), ("zip", "ceod", "0.1")]


def test_no_runs_is_one_line_and_writes_nothing(tmp_path, capsys):
    (tmp_path / "empty" / "0").mkdir(parents=True)
    for args in (["dir=" + str(tmp_path / "empty")], [str(tmp_path / "nowhere")]):
        with pytest.raises(SystemExit) as e:
            main(args)
        assert e.value.code == 2
        errors = [ln for ln in capsys.readouterr().err.splitlines() if ln.startswith("error:")]
        assert len(errors) == 1 and ("no runs" in errors[0] or "not found" in errors[0]), errors
    assert [p.name for p in (tmp_path / "empty").iterdir()] == ["0"]


@pytest.mark.slow
def test_report_on_a_real_two_job_multirun(run_cli, tmp_path):
    r = run_cli("-m", "loss=ce,ceod", "trainer.max_epochs=1", "+data.generator={n_good:16,n_defect:16}",
                "data.image_size=32", "data.batch_size=8", "trainer.accelerator=cpu", "callbacks.figures=null",
                "trainer.enable_progress_bar=false", f"hydra.sweep.dir={tmp_path / 'sweep'}", timeout=600)
    assert r.returncode == 0, r.stderr[-3000:]
    out = run_cli(str(tmp_path / "sweep"), module="ceod.report", timeout=120)
    assert out.returncode == 0, out.stderr[-2000:]
    with open(tmp_path / "sweep" / "report.csv", newline="") as f:
        rows = list(csv.DictReader(f))
    assert [row["loss"] for row in rows] == ["ce", "ceod"] and "swept" not in rows[0]
    assert all(row["n_runs"] == "1" and 0 <= float(row["test/auroc_mean"]) <= 1 for row in rows)
    assert (tmp_path / "sweep" / "report_synthetic_zipper_ce_vs_ceod.png").is_file()
    assert "| loss | n | test/auroc |" in (tmp_path / "sweep" / "report.md").read_text()
