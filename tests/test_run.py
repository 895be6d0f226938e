"""A run folder belongs to one config: resume only when it matches, last vs best, exact resume, markers, ids."""

from __future__ import annotations

import csv
from pathlib import Path

import pytest
import torch
from conftest import MICRO_OVERRIDES
from omegaconf import open_dict

from ceod.errors import ConfigError
from ceod.run import read_checkpoint, run_id
from ceod.train import one_line, run, train


@pytest.fixture
def tiny_cfg(make_cfg, micro_root, tmp_path):
    """``tiny_cfg(out, *overrides)``: a fast deterministic CPU run on the tiny set, writing to tmp_path/out."""

    def _make(out: str, *overrides: str):
        cfg = make_cfg(f"data.root={micro_root}", *MICRO_OVERRIDES, "trainer.accelerator=cpu", "trainer.deterministic=true",
                       "trainer.enable_progress_bar=false", "callbacks.figures=null", "logger=none", *overrides)
        with open_dict(cfg):
            cfg.paths.output_dir = str(tmp_path / out)
        return cfg

    return _make


def _ckpt(out: Path, name: str = "last.ckpt") -> dict:
    return torch.load(out / "checkpoints" / name, map_location="cpu", weights_only=False)


def _val_rows(out: Path) -> list[dict]:
    with open(out / "csv" / "metrics.csv", newline="") as f:
        return [{k: v for k, v in r.items() if k.startswith(("val/", "epoch", "step")) and v != ""}
                for r in csv.DictReader(f) if r.get("val/auroc")]


def test_changed_config_does_not_resume(tiny_cfg, tmp_path):
    """Defect 1: a folder's last.ckpt of `loss=ce` is not resumed by `loss=ceod_normalized`."""
    train(tiny_cfg("run", "loss=ce", "trainer.max_epochs=1", "trainer.limit_train_batches=1", "test=false"))
    saved = (tmp_path / "run" / "config.yaml").read_text()
    with pytest.raises(ConfigError) as err:
        train(tiny_cfg("run", "loss=ceod_normalized", "trainer.max_epochs=1", "trainer.limit_train_batches=1"))
    message = str(err.value)
    assert "another config" in message and "loss.omega" in message and "resume=force" in message
    assert "\n" not in message
    assert (tmp_path / "run" / "config.yaml").read_text() == saved  # the folder still describes its run
    # resume=force takes it anyway; more epochs (a run-control key) resume without force
    forced = train(tiny_cfg("run", "loss=ceod_normalized", "resume=force", "trainer.max_epochs=2",
                            "trainer.limit_train_batches=1", "test=false"))
    assert _ckpt(tmp_path / "run")["global_step"] == 2 and "train/loss" in forced


def test_fast_dev_run_leaves_no_resumable_checkpoint(tiny_cfg, tmp_path):
    """Defect 1b: fast_dev_run writes no last.ckpt; the next real run trains."""
    train(tiny_cfg("run", "trainer.fast_dev_run=true", "test=false"))
    assert not list((tmp_path / "run").glob("checkpoints/*.ckpt"))
    train(tiny_cfg("run", "trainer.max_epochs=1", "trainer.limit_train_batches=2", "trainer.limit_val_batches=1",
                   "test=false"))
    assert _ckpt(tmp_path / "run")["global_step"] == 2


def test_last_checkpoint_is_the_last_epoch_not_the_best(tiny_cfg, tmp_path):
    """Defect 3: with no improvement after epoch 0 (lr ≈ 0), last.ckpt is still epoch 2; best stays epoch 0."""
    train(tiny_cfg("run", "finetune=transfer", "optimizer.lr=1e-12", "trainer.max_epochs=3",  # BN frozen too
                   "trainer.limit_train_batches=1", "test=false"))
    out = tmp_path / "run"
    last = _ckpt(out)
    assert last["epoch"] == 2 and last["global_step"] == 3
    best = [p for p in (out / "checkpoints").glob("*.ckpt") if p.name != "last.ckpt"]
    assert len(best) == 1 and best[0].name.startswith("epoch000")
    assert last["ceod_run"]["config_hash"] and "loss" in last["ceod_run"]["config"]


def test_resumed_run_equals_uninterrupted_run(tiny_cfg, tmp_path):
    """Defect 4: 1 epoch, then resumed to 2 == 2 epochs at once — weights bitwise, metrics and csv history."""
    logs = ("logger=default", "logger.tensorboard=null", "trainer.limit_train_batches=2", "trainer.limit_val_batches=2",
            "trainer.limit_test_batches=2")
    full = train(tiny_cfg("full", *logs, "trainer.max_epochs=2"))
    train(tiny_cfg("split", *logs, "trainer.max_epochs=1", "test=false"))
    resumed = train(tiny_cfg("split", *logs, "trainer.max_epochs=2"))
    a, b = _ckpt(tmp_path / "full")["state_dict"], _ckpt(tmp_path / "split")["state_dict"]
    assert a.keys() == b.keys() and all(torch.equal(a[k], b[k]) for k in a)
    for key in ("test/auroc", "test/acc", "best/val/auroc"):
        assert resumed[key] == full[key], key
    assert _val_rows(tmp_path / "split") == _val_rows(tmp_path / "full")  # epochs 0 and 1, none lost
    assert len(_val_rows(tmp_path / "full")) == 2


@pytest.mark.parametrize("override, culprit", [
    ("data.batch_size=-1", "data.batch_size=-1"),
    ("data.batch_size=0", "data.batch_size=0"),
    ("data.batch_size=abc", "data.batch_size='abc'"),
    ("trainer.max_epochs=abc", "trainer.max_epochs='abc'"),
    ("seed=abc", "seed='abc'"),
    ("optimizer.lr=-1", "optimizer.lr=-1"),
    ("trainer.limit_train_batches=1.5", "trainer.limit_train_batches"),
    ("resume=maybe", "resume"),
    ("loss.omega=abc", "loss.omega"),
    ("data.root=/proc/ceod/data", "data.root=/proc/ceod/data"),
])
def test_bad_value_is_one_line_naming_its_key(make_cfg, tmp_path, override, culprit):
    """Defect 6: each bad value is one ConfigError naming its key, raised before any data is read."""
    cfg = make_cfg("trainer.fast_dev_run=true", "trainer.accelerator=cpu", override)
    with pytest.raises(Exception) as err:
        train(cfg)
    line = one_line(err.value)  # what the CLI prints after "error: "
    assert line is not None and culprit in line and "\n" not in line
    assert not (tmp_path / "data").exists()  # nothing generated or decoded


def test_corrupt_checkpoint_is_one_line(make_cfg, tmp_path):
    bad = tmp_path / "bad.ckpt"
    bad.write_bytes(b"\x80\x04not a checkpoint" * 10)
    with pytest.raises(ConfigError, match=r"cannot read checkpoint .*bad\.ckpt \(ckpt_path\)"):
        train(make_cfg(f"ckpt_path={bad}", "trainer.accelerator=cpu"))
    with pytest.raises(ConfigError, match="checkpoint not found"):
        read_checkpoint(tmp_path / "none.ckpt")


def test_failed_run_is_marked_and_train_log_holds_the_log(tiny_cfg, tmp_path):
    """Defect 7 (run-folder part): FAILED holds the error line; train.log holds the run's messages."""
    out = tmp_path / "bad"
    out.mkdir()
    with pytest.raises(ConfigError):
        run(tiny_cfg("bad", "optimizer.lr=-1"))
    assert "optimizer.lr=-1" in (out / "FAILED").read_text()
    assert "optimizer.lr=-1" in (out / "train.log").read_text()
    good = tmp_path / "good"
    good.mkdir()
    run(tiny_cfg("good", "trainer.max_epochs=1", "trainer.limit_train_batches=1", "trainer.limit_val_batches=1",
                 "trainer.limit_test_batches=1"))
    log = (good / "train.log").read_text()
    assert not (good / "FAILED").exists()
    assert "trainable" in log and "test results" in log and "AUROC" in log


def test_run_ids_are_unique_within_a_second_and_fixed_per_launch(monkeypatch):
    """Defect 2: two launches in the same second get two folders; SLURM job ids stay the names."""
    for var in ("CEOD_RUN_ID", "SLURM_JOB_ID", "SLURM_ARRAY_JOB_ID", "SLURM_ARRAY_TASK_ID"):
        monkeypatch.delenv(var, raising=False)
    first = run_id()
    assert run_id() == first  # fixed within a launch: sweep jobs and DDP workers share it
    monkeypatch.delenv("CEOD_RUN_ID")
    second = run_id()
    assert second != first  # the old id (time to the second) gave both launches one folder
    monkeypatch.delenv("CEOD_RUN_ID")
    monkeypatch.setenv("SLURM_JOB_ID", "4242")
    assert run_id() == "slurm-4242"  # a requeued job finds its own folder again
    monkeypatch.delenv("CEOD_RUN_ID")
    monkeypatch.setenv("SLURM_ARRAY_JOB_ID", "77")
    monkeypatch.setenv("SLURM_ARRAY_TASK_ID", "3")
    assert run_id() == "slurm-77_3"
