"""Real launchers, no mocks: DDP over 2 CPU processes (gloo), Hydra multirun via submitit_local, W&B offline."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import pytest
import yaml

TINY = ["data.generator={n_good:16,n_defect:16}", "data.image_size=48", "data.batch_size=8", "trainer.accelerator=cpu"]


def _cli(*args: str, cwd: Path, timeout: int = 300, env: dict | None = None) -> subprocess.CompletedProcess:
    full_env = {**os.environ, "CEOD_DATA_DIR": str(cwd / "data"), **(env or {})}
    full_env.pop("HYDRA_FULL_ERROR", None)
    return subprocess.run([sys.executable, "-m", "ceod.train", *args], cwd=cwd, env=full_env, capture_output=True,
                          text=True, timeout=timeout)


@pytest.mark.slow
def test_ddp_two_cpu_processes_with_ceod(tmp_path):
    r = _cli("trainer=ddp_cpu", "trainer.max_epochs=1", "loss=ceod", *TINY, "hydra.run.dir=out", cwd=tmp_path)
    assert r.returncode == 0, r.stderr[-3000:]
    assert "Initializing distributed: GLOBAL_RANK: 1, MEMBER: 2/2" in r.stdout + r.stderr
    assert r.stdout.count("test results") == 1  # printed by rank 0 only
    assert list((tmp_path / "out" / "checkpoints").glob("*.ckpt"))


@pytest.mark.slow
def test_multirun_with_submitit_local(tmp_path):
    r = _cli("-m", "hydra/launcher=local", "loss=ce,ceod", "trainer.max_epochs=1", "trainer.limit_train_batches=1",
             "trainer.limit_val_batches=1", "logger=none", *TINY, "hydra.sweep.dir=sweep", cwd=tmp_path, timeout=400)
    assert r.returncode == 0, r.stderr[-3000:]
    omegas = sorted(yaml.safe_load((tmp_path / "sweep" / str(i) / "config.yaml").read_text())["loss"]["omega"]
                    for i in (0, 1))
    assert omegas == [0.0, 0.001]
    assert list((tmp_path / "sweep" / ".submitit").rglob("*_result.pkl"))  # ran through submitit


@pytest.mark.slow
def test_wandb_offline_logger(tmp_path):
    r = _cli("logger=wandb", "logger.wandb.offline=true", "trainer.max_epochs=1", *TINY, "hydra.run.dir=out",
             cwd=tmp_path, env={"WANDB_MODE": "offline", "WANDB_SILENT": "true"})
    assert r.returncode == 0, r.stderr[-3000:]
    runs = list((tmp_path / "out" / "wandb").glob("offline-run-*"))
    assert len(runs) == 1 and list(runs[0].glob("*.wandb"))
    assert (tmp_path / "out" / "csv" / "metrics.csv").is_file()  # CSV still written beside W&B


def test_run_id_is_fixed_per_launch_and_named_by_slurm_job(monkeypatch):
    import time

    from ceod.train import run_id

    for var in ("CEOD_RUN_ID", "SLURM_JOB_ID", "SLURM_ARRAY_JOB_ID", "SLURM_ARRAY_TASK_ID"):
        monkeypatch.delenv(var, raising=False)
    first = run_id()
    time.sleep(1.1)
    assert run_id() == first  # every job of a sweep lands in the same folder
    monkeypatch.delenv("CEOD_RUN_ID")
    monkeypatch.setenv("SLURM_JOB_ID", "4242")
    assert run_id() == "slurm-4242"  # a requeued job finds its own folder again
    monkeypatch.delenv("CEOD_RUN_ID")
    monkeypatch.setenv("SLURM_ARRAY_JOB_ID", "77")
    monkeypatch.setenv("SLURM_ARRAY_TASK_ID", "3")
    assert run_id() == "slurm-77_3"
