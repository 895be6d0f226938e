"""The generated benchmarks by name: which generator makes a variant, and :class:`GeneratedSource`, the data source
(``data=synthetic_zipper``, ``data=decoy_digits``…) that makes one once into its root and reads it as a folder tree."""

from __future__ import annotations

import fcntl
from dataclasses import asdict, dataclass, fields
from pathlib import Path

from omegaconf import DictConfig, OmegaConf

from ceod.benchmarks import digits, synthetic
from ceod.benchmarks.generated import read_meta
from ceod.console import info
from ceod.data.sources import Context, FolderTree, Found
from ceod.errors import DataError


def _with_new_defaults(meta: dict, cfg) -> dict:
    """``meta`` with the generator options it predates (fields of ``cfg`` its config lacks) at their defaults:
    a cache written before an option existed was made with the option's default, so it stays valid."""
    defaults = {f.name: f.default for f in fields(cfg)}
    config = meta.get("config", {})
    return {**meta, "config": {**{k: v for k, v in defaults.items() if k not in config}, **config}}


def generator_for(variant: str):
    """The generator module (:mod:`ceod.benchmarks.synthetic` or :mod:`ceod.benchmarks.digits`) that makes ``variant``."""
    return digits if variant in digits.VARIANTS else synthetic


@dataclass
class GeneratedSource:
    """A generated benchmark in ``root``, made on first use (cached), then read as a :class:`FolderTree`.

    ``variant`` names a preset of :mod:`ceod.benchmarks.synthetic` or :mod:`ceod.benchmarks.digits` (they share
    ``config_for(variant, seed=…, **overrides)``, ``generate(root, cfg)``, ``GENERATOR_VERSION``);
    ``generator`` overrides its fields (e.g. ``{"contrast": 0.1, "n_good": 40}``; the image size defaults
    to data.image_size). A cached root made with other parameters is an error, never silently reused.
    """

    root: Path
    variant: str = "synthetic_zipper"
    generator_seed: int = 0
    generator: dict | None = None

    def __post_init__(self) -> None:
        self.root = Path(self.root)
        if isinstance(self.generator, DictConfig):
            self.generator = OmegaConf.to_container(self.generator, resolve=True)
        self.generator = dict(self.generator or {})
        self.config()  # a bad variant or option: an error now

    def config(self, size: tuple[int, int] | None = None):
        gen = {"size": max(size) if size else None, **self.generator}
        return generator_for(self.variant).config_for(self.variant, seed=self.generator_seed, **gen)

    def prepare(self, ctx: Context) -> None:
        # parallel sweep jobs may share the cache: one generates, the others wait and reuse it
        self.root.parent.mkdir(parents=True, exist_ok=True)
        with open(self.root.parent / f".{self.root.name}.lock", "w") as lock:
            fcntl.flock(lock, fcntl.LOCK_EX)
            try:
                self._prepare_locked(ctx)
            finally:
                fcntl.flock(lock, fcntl.LOCK_UN)

    def _prepare_locked(self, ctx: Context) -> None:
        generator, cfg = generator_for(self.variant), self.config(ctx.size)
        meta = read_meta(self.root)
        wanted = {"generator": generator.GENERATOR_ID, "version": generator.GENERATOR_VERSION,
                  "config": _jsonable(asdict(cfg))}
        if meta is None:
            if self.root.exists() and any(self.root.iterdir()):
                raise DataError(f"data root {self.root} is not empty and holds no generated dataset (no meta.json)")
            info(f"generating {generator.__name__} dataset in {self.root} …")
            generator.generate(self.root, cfg)
        elif _jsonable(_with_new_defaults(meta, cfg)) != wanted:
            raise DataError(f"data root {self.root} holds a generated dataset made with other parameters; "
                            "delete it or choose another data.root")

    def discover(self, ctx: Context) -> Found:
        if not (self.root / "meta.json").is_file():
            self.prepare(ctx)  # e.g. setup() called outside a Trainer
        return FolderTree(self.root).discover(ctx)


def _jsonable(obj):
    if isinstance(obj, dict):
        return {k: _jsonable(v) for k, v in obj.items()}
    if isinstance(obj, (list, tuple)):
        return [_jsonable(v) for v in obj]
    return obj
