"""Real launchers, no mocks: DDP over 2 CPU processes (gloo), Hydra multirun via submitit_local, the SLURM
script submitit writes, W&B offline, kill -9 and resume, concurrent launches."""

from __future__ import annotations

import csv
import os
import re
import subprocess
import sys
import time
from pathlib import Path

import pytest
import torch
import yaml
from conftest import cli_env

TINY = ["data.generator={n_good:16,n_defect:16}", "data.image_size=48", "data.batch_size=8", "trainer.accelerator=cpu"]
MICRO = ["data.generator={n_good:16,n_defect:16}", "data.image_size=32", "data.batch_size=4", "trainer.accelerator=cpu"]
QUIET = ["trainer.enable_progress_bar=false", "callbacks.figures=null"]


@pytest.mark.slow
def test_ddp_two_cpu_processes_with_ceod(run_cli, tmp_path):
    r = run_cli("trainer=ddp_cpu", "trainer.max_epochs=1", "loss=ceod", *TINY, *QUIET, "hydra.run.dir=out")
    assert r.returncode == 0, r.stderr[-3000:]
    assert "Initializing distributed: GLOBAL_RANK: 1, MEMBER: 2/2" in r.stdout + r.stderr
    assert r.stdout.count("test results") == 1  # printed by rank 0 only
    unsynced = [ln for ln in r.stderr.splitlines() if "sync_dist=True" in ln]
    assert all("train/od" in ln for ln in unsynced), unsynced  # val/test metrics are the same on every rank
    assert (tmp_path / "out" / "checkpoints" / "last.ckpt").is_file()


@pytest.mark.slow
def test_multirun_with_submitit_local(run_cli, tmp_path):
    r = run_cli("-m", "hydra/launcher=local", "loss=ce,ceod", "trainer.max_epochs=1", "trainer.limit_train_batches=1",
                "trainer.limit_val_batches=1", "logger=none", *TINY, *QUIET, "hydra.sweep.dir=sweep", timeout=400)
    assert r.returncode == 0, r.stderr[-3000:]
    omegas = sorted(yaml.safe_load((tmp_path / "sweep" / str(i) / "config.yaml").read_text())["loss"]["omega"]
                    for i in (0, 1))
    assert omegas == [0.0, 1.0]  # loss=ce, loss=ceod
    assert list((tmp_path / "sweep" / ".submitit").rglob("*_result.pkl"))  # ran through submitit


@pytest.mark.slow
def test_wandb_offline_logger(run_cli, tmp_path):
    r = run_cli("logger=wandb", "logger.wandb.offline=true", "trainer.max_epochs=1", *TINY, *QUIET, "hydra.run.dir=out",
                env={"WANDB_MODE": "offline", "WANDB_SILENT": "true"})
    assert r.returncode == 0, r.stderr[-3000:]
    runs = list((tmp_path / "out" / "wandb").glob("offline-run-*"))
    assert len(runs) == 1 and list(runs[0].glob("*.wandb"))
    assert (tmp_path / "out" / "csv" / "metrics.csv").is_file()  # CSV still written beside W&B


def _fake_slurm(bin_dir: Path, keep: Path) -> dict:
    """`srun`/`sbatch` stand-ins: sbatch keeps the script it is given and refuses it (nothing runs)."""
    bin_dir.mkdir()
    (bin_dir / "srun").write_text("#!/bin/sh\nexit 1\n")
    (bin_dir / "sbatch").write_text(f'#!/bin/sh\ncp "$1" "{keep}"\necho "sbatch: refused by the test" >&2\nexit 1\n')
    for tool in ("srun", "sbatch"):
        (bin_dir / tool).chmod(0o755)
    return {"PATH": f"{bin_dir}{os.pathsep}{os.environ['PATH']}"}


@pytest.mark.slow
def test_paper_sweep_on_slurm_writes_the_sbatch_script(run_cli, tmp_path):
    """`+sweep=paper hydra/launcher=slurm`: one array job over the 60 grid points, 4 tasks + 4 GPUs per node,
    srun, USR2 before the time limit (submitit requeues), --requeue; hydra.launcher.nodes=2 gives 2 nodes."""
    for nodes in (2,):
        script = tmp_path / f"sbatch_{nodes}.sh"
        r = run_cli("+sweep=paper", "hydra/launcher=slurm", "trainer=slurm", f"hydra.launcher.nodes={nodes}",
                    "hydra.launcher.partition=gpu", f"hydra.sweep.dir=sweep{nodes}",
                    env=_fake_slurm(tmp_path / f"bin{nodes}", script), timeout=180)
        assert script.is_file(), r.stderr[-3000:]
        text = script.read_text()
        for line in (f"#SBATCH --nodes={nodes}", "#SBATCH --ntasks-per-node=4", "#SBATCH --gpus-per-node=4",
                     "#SBATCH --requeue", "#SBATCH --partition=gpu"):
            assert line in text.splitlines(), (line, text)
        assert re.search(r"^#SBATCH --array=0-59(%\d+)?$", text, re.M)  # 5 omegas x 2 models x 2 regimes x 3 seeds
        assert re.search(r"^#SBATCH --signal=USR2@\d+$", text, re.M)
        assert re.search(r"^srun .*python\S* -u -m submitit\.core\._submit", text, re.M)


def _test_table(stdout: str) -> list[str]:
    lines = stdout.splitlines()
    start = lines.index("test results")
    return lines[start:start + 12]


def _rows(out: Path) -> list[dict]:
    with open(out / "csv" / "metrics.csv", newline="") as f:
        return [{k: v for k, v in r.items() if v != "" and not k.startswith("train/")} for r in csv.DictReader(f)]


@pytest.mark.slow
def test_kill_9_then_resume_equals_uninterrupted(run_cli, tmp_path):
    """Defect 4 for real: SIGKILL after epoch 0's checkpoint, rerun the same command → same results as a run
    never interrupted (deterministic CPU), and metrics.csv keeps every epoch's rows."""
    args = [*MICRO, *QUIET, "trainer.deterministic=true", "trainer.max_epochs=2", "logger.tensorboard=null",
            "trainer.limit_train_batches=3", "trainer.limit_val_batches=2", "trainer.limit_test_batches=2"]
    full = run_cli(*args, "hydra.run.dir=full")
    assert full.returncode == 0, full.stderr[-3000:]
    cmd = [sys.executable, "-m", "ceod.train", *args, "hydra.run.dir=killed"]
    proc = subprocess.Popen(cmd, cwd=tmp_path, env=cli_env(tmp_path), stdout=subprocess.DEVNULL,
                            stderr=subprocess.DEVNULL)
    last = tmp_path / "killed" / "checkpoints" / "last.ckpt"
    deadline = time.time() + 300
    while proc.poll() is None and not last.is_file() and time.time() < deadline:
        time.sleep(0.05)
    proc.kill()
    assert proc.wait() == -9, "the run ended before it could be killed"
    assert torch.load(last, weights_only=False)["epoch"] == 0
    resumed = run_cli(*args, "hydra.run.dir=killed")
    assert resumed.returncode == 0 and "resuming from" in resumed.stdout, resumed.stderr[-3000:]
    assert _test_table(resumed.stdout) == _test_table(full.stdout)
    assert _rows(tmp_path / "killed") == _rows(tmp_path / "full")


@pytest.mark.slow
def test_two_concurrent_launches_get_two_folders(tmp_path):
    """Defect 2: launches in the same second write to two run folders (time to the ms + random suffix)."""
    cmd = [sys.executable, "-m", "ceod.train", *MICRO, *QUIET, "trainer.fast_dev_run=true", "test=false"]
    env = cli_env(tmp_path)
    procs = [subprocess.Popen(cmd, cwd=tmp_path, env=env, stdout=subprocess.PIPE, stderr=subprocess.STDOUT,
                              text=True) for _ in range(2)]
    outputs = [p.communicate(timeout=300)[0] for p in procs]
    assert [p.returncode for p in procs] == [0, 0], outputs[0][-2000:] + outputs[1][-2000:]
    folders = sorted((tmp_path / "outputs" / "train").iterdir())
    assert len(folders) == 2 and all((f / "config.yaml").is_file() for f in folders)


@pytest.mark.slow
def test_ddp_matches_single_process_with_second_order_ceod(tmp_path):
    """2 CPU processes (gloo, 4 images each) == 1 process (8 images) after 3 SGD steps of the second-order
    CEOD loss (ω = 1, autograd Grad-CAM, BN-free network): DDP averages exactly the full batch's gradient."""
    script = Path(__file__).with_name("ddp_equivalence.py")
    weights = {}
    for mode in ("single", "ddp"):
        out = tmp_path / f"{mode}.pt"
        r = subprocess.run([sys.executable, str(script), mode, str(out)], cwd=tmp_path, env=cli_env(tmp_path),
                           capture_output=True, text=True, timeout=300)
        assert r.returncode == 0, r.stderr[-3000:]
        weights[mode] = torch.load(out, weights_only=True)
    assert "MEMBER: 2/2" in r.stdout + r.stderr
    start = __import__("ddp_equivalence").TinyNet().state_dict()
    for key, value in weights["single"].items():
        assert not torch.allclose(value, start[key])  # the steps moved every tensor
        torch.testing.assert_close(weights["ddp"][key], value, rtol=1e-5, atol=1e-6)


def test_paper_sweep_preset_is_the_papers_grid(make_cfg):
    """+sweep=paper: ω × model × regime × seed, each point composing to the papers' setting for that model."""
    from hydra import compose, initialize_config_dir
    from hydra.core.global_hydra import GlobalHydra
    from hydra.types import RunMode

    from ceod.training.schema import validate
    from conftest import CONF_DIR

    GlobalHydra.instance().clear()
    with initialize_config_dir(config_dir=CONF_DIR, version_base="1.3"):
        hydra_cfg = compose(config_name="train", overrides=["+sweep=paper"], return_hydra_config=True).hydra
    assert hydra_cfg.mode == RunMode.MULTIRUN  # `python -m ceod.train +sweep=paper` sweeps without -m
    grid = {k: str(v).split(",") for k, v in hydra_cfg.sweeper.params.items()}
    assert grid == {"+sweep/paper_model": ["custom_cnn", "efficientnet_b0"], "finetune": ["transfer", "last_n"],
                    "loss.omega": ["0", "1e-4", "1e-3", "1e-2", "1e-1"], "seed": ["0", "1", "2"]}
    cnn = make_cfg("+sweep=paper", "+sweep/paper_model=custom_cnn", "finetune=transfer", "loss.omega=1e-4")
    assert cnn.model._target_.endswith("CustomCNN") and cnn.data.channels == 1 and cnn.finetune.regime == "transfer"
    eff = make_cfg("+sweep=paper", "+sweep/paper_model=efficientnet_b0", "finetune=last_n", "loss.omega=1e-1")
    assert (eff.model.name, eff.model.pretrained, eff.data.channels, eff.data.mean) == ("efficientnet_b0", True, 3, None)
    assert eff.finetune.n == 20 and eff.loss.omega == 0.1 and eff.task_name == "paper"
    for cfg in (cnn, eff):
        validate(cfg)
