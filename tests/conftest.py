"""Shared fixtures: small generated datasets and composed configs (no downloads)."""

from __future__ import annotations

from pathlib import Path

import pytest
import torch
from hydra import compose, initialize_config_dir
from hydra.core.global_hydra import GlobalHydra
from hydra.core.hydra_config import HydraConfig
from omegaconf import open_dict

import ceod.train  # noqa: F401  (registers the run_id resolver)
from ceod.data.synthetic import config_for, generate

CONF_DIR = str(Path(__file__).resolve().parents[1] / "conf")
TINY = dict(n_good=24, n_defect=20, size=64)


@pytest.fixture(autouse=True)
def _seed_and_threads():
    torch.manual_seed(0)
    yield


@pytest.fixture(scope="session")
def tiny_root(tmp_path_factory) -> Path:
    """A tiny synthetic_zipper dataset (44 images, 64 px)."""
    return generate(tmp_path_factory.mktemp("data") / "tiny", config_for("synthetic_zipper", **TINY))


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
