"""Generated benchmarks as a DataModule: the dataset is generated once (cached), then read as a folder.

Two generators share the contract ``config_for(variant, seed=…, **overrides)``, ``generate(root, cfg)``,
``GENERATOR_VERSION``: :mod:`ceod.data.synthetic` (synthetic zipper variants) and :mod:`ceod.data.digits`
(decoy digits). The variant name picks the generator.
"""

from __future__ import annotations

import fcntl
from dataclasses import asdict
from pathlib import Path

from omegaconf import DictConfig, OmegaConf

from ceod.data import digits, synthetic
from ceod.data.folder import FolderDataModule
from ceod.data.generated import read_meta
from ceod.errors import DataError


def generator_for(variant: str):
    """The generator module (:mod:`ceod.data.synthetic` or :mod:`ceod.data.digits`) that makes ``variant``."""
    return digits if variant in digits.VARIANTS else synthetic


class GeneratedDataModule(FolderDataModule):
    """A :class:`FolderDataModule` over ``root``, which is generated on first use (cached).

    ``variant`` names a preset of :mod:`ceod.data.synthetic`; ``generator`` overrides its fields
    (e.g. ``{"contrast": 0.1, "n_good": 40}``). The cached dataset must match: a root made with
    other parameters is an error, never silently reused.
    """

    def __init__(self, root: str, variant: str = "synthetic_zipper", generator_seed: int = 0,
                 generator: dict | None = None, **kwargs) -> None:
        super().__init__(root=root, **kwargs)
        if isinstance(generator, DictConfig):
            generator = OmegaConf.to_container(generator, resolve=True)
        gen = dict(generator or {})
        size = self.image_size
        gen.setdefault("size", size if isinstance(size, int) else max(size))
        self.generator = generator_for(variant)
        self.gen_config = self.generator.config_for(variant, seed=generator_seed, **gen)

    def prepare_data(self) -> None:
        # parallel sweep jobs may share the cache: one generates, the others wait and reuse it
        self.root.parent.mkdir(parents=True, exist_ok=True)
        with open(self.root.parent / f".{self.root.name}.lock", "w") as lock:
            fcntl.flock(lock, fcntl.LOCK_EX)
            try:
                self._prepare_locked()
            finally:
                fcntl.flock(lock, fcntl.LOCK_UN)

    def _prepare_locked(self) -> None:
        meta = read_meta(self.root)
        wanted = {"generator": self.generator.__name__, "version": self.generator.GENERATOR_VERSION,
                  "config": _jsonable(asdict(self.gen_config))}
        if meta is None:
            if self.root.exists() and any(self.root.iterdir()):
                raise DataError(f"data root {self.root} is not empty and holds no generated dataset (no meta.json)")
            print(f"[ceod] generating {self.generator.__name__} dataset in {self.root} …", flush=True)
            self.generator.generate(self.root, self.gen_config)
        elif _jsonable(meta) != wanted:
            raise DataError(
                f"data root {self.root} holds a generated dataset made with other parameters; "
                "delete it or choose another data.root")

    def setup(self, stage: str | None = None) -> None:
        if not Path(self.root, "meta.json").is_file():
            self.prepare_data()  # e.g. setup() called outside a Trainer
        super().setup(stage)


def _jsonable(obj):
    if isinstance(obj, dict):
        return {k: _jsonable(v) for k, v in obj.items()}
    if isinstance(obj, (list, tuple)):
        return [_jsonable(v) for v in obj]
    return obj


SyntheticZipperDataModule = GeneratedDataModule  # the name the synthetic_zipper configs use
