"""Defaults in one place: conf/data/datamodule.yaml is the user-facing default of every DataModule key, every data
config inherits it, and DefectDataModule's keyword defaults are the same values (composition, not copied numbers)."""

from __future__ import annotations

import inspect
import math
from pathlib import Path

import pytest
from hydra.utils import get_class, instantiate
from omegaconf import OmegaConf

from ceod import CONF_DIR
from ceod.data.datamodule import DefectDataModule

DATA_DIR = Path(CONF_DIR) / "data"
DATA_CONFIGS = sorted(p.stem for p in DATA_DIR.glob("*.yaml") if p.stem != "datamodule")
WIRED = {"mask_seed", "manifest_out"}  # interpolated in the YAML (${seed}, ${paths.output_dir}): the run sets them


def base() -> dict:
    """conf/data/datamodule.yaml as written (interpolations unresolved)."""
    return OmegaConf.to_container(OmegaConf.load(DATA_DIR / "datamodule.yaml"), resolve=False)


def keyword_defaults() -> dict:
    params = inspect.signature(DefectDataModule.__init__).parameters
    return {k: p.default for k, p in params.items() if p.kind is p.KEYWORD_ONLY}


def same(a, b) -> bool:
    """Equal as configuration values: lists and tuples alike, floats to 1e-4 (4/3 is 1.3333 in YAML)."""
    if isinstance(a, (list, tuple)) and isinstance(b, (list, tuple)):
        return len(a) == len(b) and all(same(x, y) for x, y in zip(a, b))
    if isinstance(a, float) or isinstance(b, float):
        return not isinstance(a, bool) and not isinstance(b, bool) and math.isclose(a, b, rel_tol=1e-4)
    return type(a) is type(b) and a == b


def test_datamodule_yaml_names_exactly_the_constructor_keys():
    """A key added to the DataModule without its YAML default (or the reverse) fails here."""
    cfg = base()
    assert get_class(cfg.pop("_target_")) is DefectDataModule
    assert set(cfg) == set(keyword_defaults())


def test_constructor_defaults_are_the_yaml_defaults():
    """The one default of each key is the YAML's; Python's keyword default may not drift from it."""
    cfg, py = base(), keyword_defaults()
    wired = {k for k, v in cfg.items() if isinstance(v, str) and "${" in v}
    assert wired == WIRED  # a newly interpolated key: decide what its Python default means
    drift = {k: (cfg[k], py[k]) for k in cfg if k in py and k not in wired and not same(cfg[k], py[k])}
    assert not drift, f"conf/data/datamodule.yaml vs DefectDataModule defaults: {drift}"


def test_same_detects_drift():
    assert same([0.75, 1.3333], (0.75, 4 / 3)) and same(None, None) and same("auto", "auto")
    assert not same(True, 1.0) and not same(0, False) and not same([0.8, 1.0], (0.8,)) and not same(2, 0)


@pytest.mark.parametrize("name", DATA_CONFIGS)
def test_every_data_config_inherits_the_datamodule_defaults(make_cfg, name):
    """Composed, each data config has every DataModule key; what it adds is its source's (no stray key)."""
    cfg = make_cfg(f"data={name}", "data.root=/nonexistent/ceod")
    data = OmegaConf.to_container(cfg.data, resolve=False)
    assert get_class(data["_target_"]) is DefectDataModule
    assert set(base()) <= set(data), f"data={name} does not inherit conf/data/datamodule.yaml"
    source = get_class(data["source"]["_target_"])
    own = set(data) - set(base()) - {"source"}
    accepted = set(inspect.signature(source).parameters)
    assert own <= accepted, f"data={name}: {sorted(own - accepted)} are neither DataModule nor {source.__name__} keys"


@pytest.mark.parametrize("name", DATA_CONFIGS)
def test_every_data_config_instantiates_without_touching_data(make_cfg, name):
    """The composed keys are exactly what DefectDataModule (and its source) accept: instantiation is the check."""
    cfg = make_cfg(f"data={name}", "data.root=/nonexistent/ceod")
    dm = instantiate(cfg.data)
    assert isinstance(dm, DefectDataModule) and dm.loaders.batch_size == cfg.data.batch_size


def test_generated_benchmarks_train_without_augmentation_and_folder_data_with(make_cfg):
    """The decision of experiments/README.md §1d: the shipped generated benchmarks (the default run, make train,
    the study) train unaugmented; user data (folder, MVTec) gets the datamodule.yaml augmentation."""
    generated = [n for n in DATA_CONFIGS if "GeneratedSource" in make_cfg(f"data={n}").data.source._target_]
    assert {"synthetic_zipper", "decoy_digits", "synthetic_zipper_decoy"} <= set(generated)
    for name in DATA_CONFIGS:
        dm = instantiate(make_cfg(f"data={name}", "data.root=/nonexistent/ceod").data)
        assert (dm.aug.loader_transform(dm.size) is None) == (name in generated), name
    default = instantiate(make_cfg().data)
    assert default.aug.loader_transform(default.size) is None
    assert instantiate(make_cfg("data.augment=true").data).aug.loader_transform((8, 8)) is not None
