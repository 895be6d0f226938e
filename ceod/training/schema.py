"""Typed schema of the run-level config values, checked at start-up before any data is read.

The dataclasses below are OmegaConf structured configs: merging the user's resolved values into them checks
each declared key's type (``data.batch_size=abc`` → one line naming ``data.batch_size``); :data:`LIMITS` adds
the ranges a type cannot say. Keys not declared here pass through (their own constructors check them).
"""

from __future__ import annotations

import dataclasses
import tempfile
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Callable, Optional, Union

from omegaconf import DictConfig, OmegaConf
from omegaconf.errors import ValidationError

from ceod.data.sources import FolderTree
from ceod.errors import ConfigError, DataError

Number = Union[int, float]


@dataclass
class TrainerSchema:
    max_epochs: Optional[int] = None
    max_steps: int = -1
    num_nodes: int = 1
    precision: Optional[Union[int, str]] = None
    log_every_n_steps: Optional[int] = None
    fast_dev_run: Union[bool, int] = False
    limit_train_batches: Optional[Number] = None
    limit_val_batches: Optional[Number] = None
    limit_test_batches: Optional[Number] = None
    num_sanity_val_steps: Optional[int] = None
    accumulate_grad_batches: int = 1
    check_val_every_n_epoch: Optional[int] = 1
    gradient_clip_val: Optional[Number] = None
    inference_mode: bool = False
    enable_progress_bar: Optional[bool] = None


@dataclass
class DataSchema:
    batch_size: int = 32
    num_workers: int = 0
    channels: int = 1
    root: Optional[str] = None
    mask_fraction: Number = 1.0
    missing_masks: str = "error"
    mask_noise: Optional[str] = None
    mask_seed: int = 0


@dataclass
class OptimizerSchema:
    lr: Number = 1e-3
    weight_decay: Number = 0.0


@dataclass
class RunSchema:
    seed: int = 0
    train: bool = True
    test: bool = True
    ckpt_path: Optional[str] = None
    resume: str = "auto"
    trainer: TrainerSchema = field(default_factory=TrainerSchema)
    data: DataSchema = field(default_factory=DataSchema)
    optimizer: OptimizerSchema = field(default_factory=OptimizerSchema)


def _at_least(lo: float) -> Callable[[Any], str | None]:
    return lambda v: None if v >= lo else f"must be ≥ {lo:g}"


def _mask_noise(v: Any) -> str | None:
    from ceod.data.masks import noise_problem

    return noise_problem(v)


def _fraction_or_count(v: Any) -> str | None:
    if isinstance(v, bool) or v < 0 or (isinstance(v, float) and v > 1):
        return "must be a count ≥ 0 or a fraction in [0, 1]"
    return None


LIMITS: dict[str, Callable[[Any], str | None]] = {
    "seed": lambda v: None if 0 <= v < 2**32 else "must be in [0, 2^32)",
    "resume": lambda v: None if v in ("auto", "force") else "must be auto or force",
    "trainer.max_epochs": _at_least(-1),
    "trainer.max_steps": _at_least(-1),
    "trainer.num_nodes": _at_least(1),
    "trainer.log_every_n_steps": _at_least(1),
    "trainer.fast_dev_run": _at_least(0),
    "trainer.limit_train_batches": _fraction_or_count,
    "trainer.limit_val_batches": _fraction_or_count,
    "trainer.limit_test_batches": _fraction_or_count,
    "trainer.num_sanity_val_steps": _at_least(-1),
    "trainer.accumulate_grad_batches": _at_least(1),
    "trainer.check_val_every_n_epoch": _at_least(1),
    "trainer.gradient_clip_val": _at_least(0),
    "data.batch_size": _at_least(1),
    "data.num_workers": _at_least(0),
    "data.channels": lambda v: None if v in (1, 3) else "must be 1 or 3",
    "data.mask_fraction": lambda v: None if 0 <= v <= 1 else "must lie in [0, 1]",
    "data.missing_masks": lambda v: None if v in ("error", "ce") else "must be error or ce",
    "data.mask_noise": _mask_noise,
    "data.mask_seed": lambda v: None if 0 <= v < 2**32 else "must be in [0, 2^32)",
    "optimizer.lr": lambda v: None if v > 0 else "must be > 0",
    "optimizer.weight_decay": _at_least(0),
}


_READABLE = {"int": "an integer", "Number": "a number", "bool": "true or false", "str": "a string",
             "Union[bool, int]": "true/false or an integer", "Union[int, str]": "an integer or a string"}


def _declared_type(key: str) -> str:
    """'an integer', 'a number or null', … for a schema key (field types are strings here)."""
    node: Any = RunSchema
    for part in key.split("."):
        fields = {f.name: f for f in dataclasses.fields(node)} if dataclasses.is_dataclass(node) else {}
        if part not in fields:
            return "a valid value"
        f = fields[part]
        node = f.default_factory if f.default_factory is not dataclasses.MISSING else f.type
    text = str(node)
    optional = text.startswith("Optional[")
    text = text[len("Optional["):-1] if optional else text
    return _READABLE.get(text, text) + (" or null" if optional else "")


def _get(tree: dict, key: str) -> Any:
    for part in key.split("."):
        if not isinstance(tree, dict) or part not in tree:
            return None
        tree = tree[part]
    return tree


def _declared(schema: type, values: dict) -> dict:
    """The part of ``values`` the dataclass ``schema`` declares (undeclared keys pass through unchecked)."""
    out = {}
    for f in dataclasses.fields(schema):
        if f.name in values:
            value = values[f.name]
            nested = f.default_factory if f.default_factory is not dataclasses.MISSING else None
            out[f.name] = _declared(nested, value) if nested and isinstance(value, dict) else value
    return out


def validate(cfg: DictConfig) -> None:
    """Raise a one-line ConfigError for the first bad run-level value (type, range, data.root)."""
    values = OmegaConf.to_container(cfg, resolve=True)
    try:
        OmegaConf.merge(OmegaConf.structured(RunSchema), _declared(RunSchema, values))
    except ValidationError as e:
        key = e.full_key or str(e.key)
        raise ConfigError(f"{key}={e.value!r}: must be {_declared_type(key)}") from None
    for key, check in LIMITS.items():
        value = _get(values, key)
        problem = check(value) if value is not None else None
        if problem:
            raise ConfigError(f"{key}={value!r}: {problem}")
    check_data_root(values.get("data") or {})


def check_data_root(data: dict) -> None:
    """data.root usable, checked before anything is built (model, loss, trainer: a missing dataset is the
    first and only line). A generated dataset (``data.generator`` in its config) needs a root it can create
    and write; any other source's root is checked by its class's ``check_root(data)`` where it has one
    (MVTec AD: the category folder), else a folder tree's root must be a folder.
    """
    root = data.get("root")
    if not root or root == "???":  # missing: the DataModule's own one-line error names data.root
        return
    if "generator" in data:
        _check_writable(Path(root).absolute())
        return
    source = _source_class(data)
    check = getattr(source, "check_root", None)
    if check is not None:
        check(data)
    elif source is FolderTree:
        for key, name in (("root", "data root"), ("test_root", "test root")):
            if data.get(key) and not Path(data[key]).is_dir():
                raise DataError(f"{name} not found: {data[key]} (set data.{key})")


def _source_class(data: dict) -> type | None:
    """The class of ``data.source`` (FolderTree, the DataModule's default, when unset), None when unknown."""
    from hydra.utils import get_object

    source = data.get("source")
    if source is None:
        return FolderTree if str(data.get("_target_", "")).endswith("DefectDataModule") else None
    target = source.get("_target_") if isinstance(source, dict) else None
    try:
        found = get_object(str(target)) if target else None
    except Exception:  # a bad _target_: instantiating the data names it
        return None
    return found if isinstance(found, type) else None


def _check_writable(root: Path) -> None:
    """A generated dataset's root can be created and written (tried, not inferred from permission bits, which
    say nothing for root or on network file systems)."""
    if (root / "manifest.csv").is_file():
        return  # already generated: read-only is fine
    created = [p for p in (root, *root.parents) if not p.exists()]  # removed again: the generator makes them
    try:
        root.mkdir(parents=True, exist_ok=True)
        with tempfile.TemporaryFile(dir=root):
            pass
        for folder in created:
            folder.rmdir()
    except OSError as e:
        raise ConfigError(f"data.root={root}: cannot write the generated dataset there ({e.strerror}); "
                          "set data.root or CEOD_DATA_DIR to a writable folder") from None
