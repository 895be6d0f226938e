"""Shared fixtures: small generated datasets and composed configs (no downloads)."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import pytest
import torch
from hydra import compose, initialize_config_dir
from hydra.core.global_hydra import GlobalHydra
from hydra.core.hydra_config import HydraConfig
from omegaconf import open_dict

import ceod.training.pipeline  # noqa: F401  (registers the run_id resolver)
from ceod.benchmarks.synthetic import config_for, generate

CONF_DIR = str(Path(__file__).resolve().parents[1] / "conf")


def _share_the_cores() -> None:
    """Under pytest-xdist (``make test``: one worker per core, at most 4) each worker, and every process it
    starts, gets its share of the cores: K workers × N torch threads on N cores would oversubscribe them."""
    workers = int(os.environ.get("PYTEST_XDIST_WORKER_COUNT", "1"))
    if workers > 1:
        share = str(max(1, (os.cpu_count() or 1) // workers))
        os.environ.setdefault("OMP_NUM_THREADS", share)
        os.environ.setdefault("MKL_NUM_THREADS", share)
        torch.set_num_threads(int(os.environ["OMP_NUM_THREADS"]))


_share_the_cores()
TINY = dict(n_good=24, n_defect=20, size=64)


@pytest.fixture(autouse=True)
def _seed_and_threads():
    torch.manual_seed(0)
    yield


@pytest.fixture
def torch_one_thread():
    """torch on one intra-op thread for the test (timm's depthwise convs crawl with several on a shared 2-core CPU)."""
    n = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(n)


@pytest.fixture(scope="session")
def tiny_root(tmp_path_factory) -> Path:
    """A tiny synthetic_zipper dataset (44 images, 64 px)."""
    return generate(tmp_path_factory.mktemp("data") / "tiny", config_for("synthetic_zipper", **TINY))


MICRO = dict(n_good=16, n_defect=16, size=32)
MICRO_OVERRIDES = ("+data.generator={n_good:16,n_defect:16}", "data.image_size=32", "data.batch_size=4")


@pytest.fixture(scope="session")
def micro_root(tmp_path_factory) -> Path:
    """A micro synthetic_zipper dataset (32 images, 32 px) for run-lifecycle tests; use with MICRO_OVERRIDES."""
    return generate(tmp_path_factory.mktemp("data") / "micro", config_for("synthetic_zipper", **MICRO))


def compose_cfg(tmp_path: Path, overrides: list[str] | None = None):
    """The train config as `python -m ceod.train` would see it, outputs under tmp_path."""
    GlobalHydra.instance().clear()
    with initialize_config_dir(config_dir=CONF_DIR, version_base="1.3"):
        cfg = compose(config_name="train", return_hydra_config=True, overrides=overrides or [])
    HydraConfig().set_config(cfg)
    with open_dict(cfg):
        cfg.paths.output_dir = str(tmp_path / "run")
        cfg.paths.data_dir = str(tmp_path / "data")
        del cfg["hydra"]  # a Hydra task never sees the hydra node
    return cfg


@pytest.fixture
def make_cfg(tmp_path):
    def _make(*overrides: str):
        return compose_cfg(tmp_path, list(overrides))

    yield _make
    GlobalHydra.instance().clear()


def cli_env(cwd: Path, extra: dict | None = None) -> dict:
    """The environment of a CLI run in ``cwd``: generated data cached in cwd/data, Hydra's one-line errors on."""
    env = {k: v for k, v in os.environ.items() if k not in ("HYDRA_FULL_ERROR", "CEOD_RUN_ID")}  # own run folder
    return {**env, "CEOD_DATA_DIR": str(cwd / "data"), **(extra or {})}


@pytest.fixture
def run_cli(tmp_path):
    """``run_cli(*args, module="ceod.train", cwd=tmp_path, env=None, timeout=300)`` → CompletedProcess.

    The one way tests launch a ``python -m`` entry point (text output captured, never raises on exit code);
    ``result.errors`` holds its ``error:`` lines.
    """

    def _run(*args: str, module: str = "ceod.train", cwd: Path | None = None, env: dict | None = None,
             timeout: int = 300) -> subprocess.CompletedProcess:
        cwd = Path(cwd or tmp_path)
        r = subprocess.run([sys.executable, "-m", module, *args], cwd=cwd, env=cli_env(cwd, env),
                           capture_output=True, text=True, timeout=timeout)
        r.errors = [ln for ln in r.stderr.splitlines() if ln.startswith("error:")]  # the one-line errors
        return r

    return _run



@pytest.fixture(scope="session")
def trained_run(tmp_path_factory):
    """One tiny real run shared by the figures/predict/export tests: CE, 2 epochs, 80 images of 48 px,
    figures every epoch, CSV + TensorBoard + offline W&B loggers. → (run dir, results)."""
    import os

    from ceod.training.pipeline import train

    tmp = tmp_path_factory.mktemp("trained")
    old = {k: os.environ.get(k) for k in ("WANDB_MODE", "WANDB_SILENT")}
    os.environ.update(WANDB_MODE="offline", WANDB_SILENT="true")
    try:
        cfg = compose_cfg(tmp, ["loss=ce", "logger=wandb", "trainer.max_epochs=2", "trainer.accelerator=cpu",
                                "+data.generator={n_good:40,n_defect:40}", "data.image_size=48", "data.batch_size=16",
                                "callbacks.figures.every_n_epochs=1", "trainer.enable_progress_bar=false"])
        results = train(cfg)
    finally:
        GlobalHydra.instance().clear()
        for k, v in old.items():
            os.environ.pop(k) if v is None else os.environ.__setitem__(k, v)
    return tmp / "run", results


@pytest.fixture(scope="session")
def drawn(tmp_path_factory) -> tuple[Path, Path]:
    """For the ``ceod.aoi fit`` tests: (synthetic root with 28 images at 64 px, a folder holding 8 of its AOI masks)."""
    import shutil

    base = tmp_path_factory.mktemp("aoi")
    root = generate(base / "syn", config_for("synthetic_zipper", n_good=14, n_defect=14, size=64, seed=3))
    masks = sorted((root / "masks").rglob("*.png"))
    for m in masks[::3][:8]:
        dest = base / "drawn" / m.relative_to(root / "masks")
        dest.parent.mkdir(parents=True, exist_ok=True)
        shutil.copy(m, dest)
    return root, base / "drawn"
