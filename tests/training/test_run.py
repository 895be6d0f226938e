"""A run folder belongs to one config: resume only when it matches, last vs best, exact resume, markers, ids;
resume past an unreadable or mid-epoch checkpoint, a torn metrics row, a killed writer's temporary file."""

from __future__ import annotations

import csv
import os
import subprocess
import sys
from pathlib import Path

import pytest
import torch
from conftest import MICRO_OVERRIDES
from omegaconf import open_dict

from ceod.errors import ConfigError
from ceod.training.run_dir import read_checkpoint, run_id
from ceod.training.pipeline import train, train_with_log
from ceod.training.user_errors import one_line


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
        train_with_log(tiny_cfg("bad", "optimizer.lr=-1"))
    assert "optimizer.lr=-1" in (out / "FAILED").read_text()
    assert "optimizer.lr=-1" in (out / "train.log").read_text()
    good = tmp_path / "good"
    good.mkdir()
    train_with_log(tiny_cfg("good", "trainer.max_epochs=1", "trainer.limit_train_batches=1", "trainer.limit_val_batches=1",
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


# ------------------------------------------------------------------ resume past what a fault left (issue 19)
LOGGED = ("logger=default", "logger.tensorboard=null", "data.num_workers=0", "trainer.limit_train_batches=2",
          "trainer.limit_val_batches=2", "trainer.limit_test_batches=2")


def _rows(out: Path) -> list[dict]:
    with open(out / "csv" / "metrics.csv", newline="") as f:
        return [{k: v for k, v in r.items() if v != ""} for r in csv.DictReader(f)]


@pytest.fixture
def logged_cfg(tiny_cfg):
    """``tiny_cfg`` with metrics.csv, 2 batches per split and no DataLoader workers."""
    return lambda out, *overrides: tiny_cfg(out, *LOGGED, *overrides)


@pytest.mark.parametrize("damage", ["truncated", "zero-byte"])
def test_unreadable_last_ckpt_falls_back_to_the_newest_readable_one(logged_cfg, tmp_path, capsys, damage):
    """last.ckpt (epoch 2) damaged: warned about and moved aside as last.ckpt.corrupt; the run resumes from the
    best checkpoint (an earlier epoch), says which, and ends bitwise like an uninterrupted 4-epoch run."""
    full = train(logged_cfg("full", "trainer.max_epochs=4"))
    train(logged_cfg("split", "trainer.max_epochs=3", "test=false"))
    last = tmp_path / "split" / "checkpoints" / "last.ckpt"
    data = last.read_bytes()
    last.write_bytes(data[: len(data) // 2] if damage == "truncated" else b"")
    best = next((tmp_path / "split" / "checkpoints").glob("epoch*.ckpt"))  # the fallback
    best_epoch = torch.load(best, weights_only=False)["epoch"]
    assert best_epoch < 2
    capsys.readouterr()
    resumed = train(logged_cfg("split", "trainer.max_epochs=4"))
    said = capsys.readouterr().out
    assert f"warning: cannot read checkpoint {last}" in said and "moved aside as last.ckpt.corrupt" in said
    assert (tmp_path / "split" / "checkpoints" / "last.ckpt.corrupt").stat().st_size == len(data) // 2 * (
        damage == "truncated")
    assert f"falling back to {best} (epoch {best_epoch})" in said and f"(epoch {best_epoch} done)" in said
    for key in ("test/auroc", "test/acc", "val/auroc"):
        assert resumed[key] == full[key], key
    assert _rows(tmp_path / "split") == _rows(tmp_path / "full")
    a, b = _ckpt(tmp_path / "full")["state_dict"], _ckpt(tmp_path / "split")["state_dict"]
    assert all(torch.equal(a[k], b[k]) for k in a)


def test_no_readable_checkpoint_is_one_line_unless_forced(logged_cfg, tmp_path, capsys):
    """Every checkpoint unreadable: one ConfigError saying how to proceed; resume=force starts afresh and
    equals a fresh run."""
    train(logged_cfg("run", "trainer.max_epochs=1", "test=false"))
    for p in (tmp_path / "run" / "checkpoints").glob("*.ckpt"):
        p.write_bytes(b"")
    with pytest.raises(ConfigError) as err:
        train(logged_cfg("run", "trainer.max_epochs=1", "test=false"))
    message = str(err.value)
    assert "no usable checkpoint" in message and "resume=force" in message and "\n" not in message
    assert not list((tmp_path / "run" / "checkpoints").glob("*.ckpt"))  # all moved aside …
    with pytest.raises(ConfigError, match="no usable checkpoint"):  # … and the next start still refuses
        train(logged_cfg("run", "trainer.max_epochs=1", "test=false"))
    forced = train(logged_cfg("run", "trainer.max_epochs=1", "test=false", "resume=force"))
    fresh = train(logged_cfg("fresh", "trainer.max_epochs=1", "test=false"))
    assert forced["val/auroc"] == fresh["val/auroc"] and forced["train/loss"] == fresh["train/loss"]


def test_torn_metrics_row_and_stale_temporaries_are_cleaned(tmp_path):
    """What a kill mid-append leaves in metrics.csv (a last line with no newline) is dropped on resume, and
    the rewrite is atomic; a dead writer's temporary checkpoint is removed, a live one's kept."""
    import socket

    from ceod.training.checkpoint_io import remove_stale_temporaries
    from ceod.training.loggers import CSVLogger

    log = CSVLogger(save_dir=str(tmp_path), name="csv", version="")
    (tmp_path / "csv").mkdir()
    (tmp_path / "csv" / "metrics.csv").write_text("epoch,step,val/auroc\n0,3,0.5\n1,7,0.6\n2,11,0.7\n3,1")
    log.resume_after(2)
    log.log_metrics({"val/auroc": 0.8, "epoch": 3}, step=15)
    log.save()
    rows = (tmp_path / "csv" / "metrics.csv").read_text().splitlines()
    assert rows == ["epoch,step,val/auroc", "0,3,0.5", "1,7,0.6", "2,11,0.7", "3,15,0.8"]
    (tmp_path / "csv" / "metrics.csv").write_text("epoch,st")  # torn inside the header (a full disk)
    log = CSVLogger(save_dir=str(tmp_path), name="csv", version="")
    log.resume_after(0, {"step": 3, "metrics": {"train/loss_epoch": 0.25}})  # the checkpoint's epoch row
    log.save()
    assert (tmp_path / "csv" / "metrics.csv").read_text().splitlines() == ["epoch,step,train/loss_epoch", "0,3,0.25"]
    dead = subprocess.run([sys.executable, "-c", "import os; print(os.getpid())"], capture_output=True, text=True)
    host = socket.gethostname()
    stale = tmp_path / f".last.ckpt.tmp-{host}-{int(dead.stdout)}-abc123"
    live = tmp_path / f".last.ckpt.tmp-{host}-{os.getpid()}-abc123"
    for p in (stale, live):
        p.write_bytes(b"partial")
    assert remove_stale_temporaries(tmp_path) == [stale] and live.exists()


class HpcThenCrash:
    """Test-side fault: in epoch 1, after batch 0, save Lightning's SLURM checkpoint (what its SIGUSR1 handler
    does under sbatch) and crash — once (``<marker>`` remembers it)."""

    def __new__(cls, marker: str):
        from lightning.pytorch.callbacks import Callback

        class _Crash(Callback):
            def on_train_batch_end(self, trainer, pl_module, outputs, batch, batch_idx):
                if trainer.current_epoch == 1 and batch_idx == 0 and not Path(marker).exists():
                    Path(marker).touch()
                    trainer.save_checkpoint(trainer._checkpoint_connector.hpc_save_path(trainer.default_root_dir))
                    raise RuntimeError("node lost")

        return _Crash()


def test_mid_epoch_hpc_checkpoint_is_skipped_for_an_exact_resume(logged_cfg, tmp_path, capsys):
    """A mid-epoch hpc_ckpt_1.ckpt (newer than last.ckpt) is not resumed — Lightning would replay a partial epoch
    with the wrong batches — but skipped and removed: the run restarts epoch 1 from last.ckpt (epoch 0) and ends
    bitwise like an uninterrupted run."""
    fault = f"+callbacks.crash={{_target_:test_run.HpcThenCrash,marker:{tmp_path / 'crashed'}}}"
    with pytest.raises(RuntimeError, match="node lost"):
        train(logged_cfg("run", "trainer.max_epochs=2", fault))
    hpc = tmp_path / "run" / "hpc_ckpt_1.ckpt"
    assert hpc.is_file() and torch.load(hpc, weights_only=False)["ceod_run"]["epoch_end"] is False
    capsys.readouterr()
    resumed = train(logged_cfg("run", "trainer.max_epochs=2", fault))
    said = capsys.readouterr().out
    assert f"skipping {hpc} (saved mid-epoch 1" in said and "last.ckpt (epoch 0 done)" in said, said
    assert not hpc.exists()
    full = train(logged_cfg("full", "trainer.max_epochs=2"))
    for key in ("test/auroc", "test/acc", "val/auroc"):
        assert resumed[key] == full[key], key
    a, b = (_ckpt(tmp_path / d)["state_dict"] for d in ("full", "run"))
    assert all(torch.equal(a[k], b[k]) for k in a)


def test_epoch_row_lost_between_checkpoint_and_log_is_restored(logged_cfg, tmp_path):
    """Lightning logs an epoch's training row just after last.ckpt is written; a kill in between lost it. The
    checkpoint carries the row (ceod_run.epoch_log) and the resumed CSV logger writes it back: metrics.csv
    then equals an uninterrupted run's."""
    train(logged_cfg("full", "trainer.max_epochs=2", "test=false"))
    train(logged_cfg("split", "trainer.max_epochs=1", "test=false"))
    pending = _ckpt(tmp_path / "split")["ceod_run"]["epoch_log"]
    assert "train/loss_epoch" in pending["metrics"]
    path = tmp_path / "split" / "csv" / "metrics.csv"
    with open(path, newline="") as f:
        reader = csv.DictReader(f)
        keys, rows = reader.fieldnames, list(reader)
    lost = [r for r in rows if r.get("train/loss_epoch")]
    assert len(lost) == 1 and float(lost[0]["train/loss_epoch"]) == pending["metrics"]["train/loss_epoch"]
    with open(path, "w", newline="") as f:  # the file as the kill left it
        writer = csv.DictWriter(f, fieldnames=keys)
        writer.writeheader()
        writer.writerows(r for r in rows if not r.get("train/loss_epoch"))
    train(logged_cfg("split", "trainer.max_epochs=2", "test=false"))
    assert _rows(tmp_path / "split") == _rows(tmp_path / "full")
