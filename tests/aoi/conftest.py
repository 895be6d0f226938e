"""The drawn-mask fixture of the ``ceod.aoi fit`` tests."""

from __future__ import annotations

import shutil
from pathlib import Path

import pytest

from ceod.benchmarks.synthetic import config_for, generate


@pytest.fixture(scope="session")
def drawn(tmp_path_factory) -> tuple[Path, Path]:
    """(synthetic root with 28 images at 64 px, a folder holding 8 of its AOI masks)."""
    base = tmp_path_factory.mktemp("aoi")
    root = generate(base / "syn", config_for("synthetic_zipper", n_good=14, n_defect=14, size=64, seed=3))
    masks = sorted((root / "masks").rglob("*.png"))
    for m in masks[::3][:8]:
        dest = base / "drawn" / m.relative_to(root / "masks")
        dest.parent.mkdir(parents=True, exist_ok=True)
        shutil.copy(m, dest)
    return root, base / "drawn"
