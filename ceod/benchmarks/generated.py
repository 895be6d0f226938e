"""What the generated benchmarks (:mod:`ceod.benchmarks.synthetic`, :mod:`ceod.benchmarks.digits`) share: named presets,
the seeded per-class split, and the writer of the folder layout (images/, masks/, manifest.csv,
geometry.jsonl, meta.json) — atomic, so a reader never sees a half-written dataset.
"""

from __future__ import annotations

import json
from collections.abc import Iterable
from dataclasses import asdict, replace
from pathlib import Path

import numpy as np
from PIL import Image

from ceod.benchmarks.decoys import KINDS
from ceod.console import progress_bar
from ceod.data.layout import CLASS_DIRS, atomic_directory, require_empty, write_manifest
from ceod.data.samples import split_by_class
from ceod.errors import CeodError


def preset(variants: dict, variant: str, kind: str, **overrides):
    """``variants[variant]`` (a frozen dataclass) with ``overrides`` applied; None values are ignored, lists
    become tuples; an unknown variant or field is a CeodError naming it."""
    if variant not in variants:
        raise CeodError(f"unknown {kind} variant {variant!r}; choose one of {sorted(variants)}")
    overrides = {k: (tuple(v) if isinstance(v, list) else v) for k, v in overrides.items() if v is not None}
    known = type(variants[variant]).__dataclass_fields__
    unknown = sorted(set(overrides) - set(known))
    if unknown:
        raise CeodError(f"unknown {kind} generator option(s) {unknown}; known: {sorted(known)}")
    return replace(variants[variant], **overrides)


def seeded_split(seed: int, labels: np.ndarray, fractions: tuple[float, float, float]) -> list[str]:
    """train/val/test per image (labels N ∈ {0, 1}): :func:`ceod.data.samples.split_by_class` seeded with
    ``(seed, 7)``, per-split rounding — deterministic, so a generated dataset is the same bytes on every machine."""
    return split_by_class(labels, fractions, np.random.default_rng([seed, 7]), cumulative=False)


def write_generated(out: Path, samples: Iterable[tuple[np.ndarray, np.ndarray, int, str, dict]], generator: str,
                    version: int, cfg, overwrite: bool = False, total: int | None = None) -> Path:
    """Write ``samples`` — (image H×W float in [0, 1], AOI H×W bool, label, split, geometry record) — to ``out``
    in the folder layout, with ``meta.json`` naming the generator, its version and ``cfg`` (a dataclass).
    ``total``: how many samples come (for the progress bar on a terminal)."""
    require_empty(out, overwrite, "overwrite=True / --overwrite")
    with atomic_directory(out) as tmp:
        rows, geoms = [], []
        for i, (img, aoi, label, split, geom) in enumerate(progress_bar(samples, "generate", total, "image")):
            rel_img, rel_mask = f"images/{CLASS_DIRS[label]}/{i:05d}.png", f"masks/{CLASS_DIRS[label]}/{i:05d}.png"
            Image.fromarray((img * 255 + 0.5).astype(np.uint8), mode="L").save(tmp / rel_img)
            Image.fromarray(aoi.astype(np.uint8) * 255, mode="L").save(tmp / rel_mask)
            rows.append({"image": rel_img, "mask": rel_mask, "label": label, "split": split})
            geoms.append({"image": rel_img, "label": label, "split": split, **geom})
        write_manifest(tmp / "manifest.csv", rows, ["image", "mask", "label", "split"])
        (tmp / "geometry.jsonl").write_text("".join(json.dumps(g) + "\n" for g in geoms))
        meta = {"generator": generator, "version": version, "config": asdict(cfg)}
        (tmp / "meta.json").write_text(json.dumps(meta, indent=2) + "\n")
    return out


def read_meta(root: str | Path) -> dict | None:
    """The ``meta.json`` of a generated dataset (generator, version, config), None when there is none."""
    path = Path(root) / "meta.json"
    return json.loads(path.read_text()) if path.is_file() else None


def generator_tag(overrides) -> str:
    """The Hydra resolver ``${generator_tag:${data.generator}}`` of generated data roots: '' for the preset
    dataset, else '_<hash>' of the generator overrides (so each variant gets its own cache folder)."""
    if not overrides:
        return ""
    import hashlib

    from omegaconf import DictConfig, OmegaConf

    items = OmegaConf.to_container(overrides, resolve=True) if isinstance(overrides, DictConfig) else overrides
    return "_" + hashlib.sha1(json.dumps(items, sort_keys=True).encode()).hexdigest()[:8]


def check_split_and_decoy(split, decoy_p: float | None, decoy_kind: str, own_kind: str) -> None:
    """A generator config's shared checks (CeodError): ``split`` three non-negative fractions summing to 1,
    ``decoy_p`` in [0, 1] or None, ``decoy_kind`` the generator's own (``own_kind``) or one of the zoo's."""
    if len(split) != 3 or abs(sum(split) - 1.0) > 1e-6 or min(split) < 0:
        raise CeodError(f"split must be three non-negative fractions summing to 1, got {split}")
    if decoy_p is not None and not 0.0 <= decoy_p <= 1.0:
        raise CeodError(f"decoy_p must lie in [0, 1] or be null, got {decoy_p}")
    if decoy_kind not in (own_kind, *KINDS):
        raise CeodError(f"decoy_kind must be {own_kind!r} or one of {KINDS}, got {decoy_kind!r}")
