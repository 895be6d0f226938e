"""The folder layout that ceod's writers produce and ``data=folder`` reads, written atomically.

    OUT/images/{good,defect}/…   OUT/masks/{good,defect}/…   OUT/manifest.csv
"""

from __future__ import annotations

import csv
import os
import shutil
import tempfile
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path

CLASS_DIRS = {0: "good", 1: "defect"}


@contextmanager
def atomic_directory(out: Path) -> Iterator[Path]:
    """Yield a temporary folder beside ``out`` holding the empty class folders; on success it
    replaces ``out``, on any error it is removed — a reader never sees a half-written dataset."""
    out.parent.mkdir(parents=True, exist_ok=True)
    tmp = Path(tempfile.mkdtemp(prefix=f".{out.name}.tmp-", dir=out.parent))
    try:
        for cls in CLASS_DIRS.values():
            (tmp / "images" / cls).mkdir(parents=True)
            (tmp / "masks" / cls).mkdir(parents=True)
        yield tmp
        if out.exists():
            shutil.rmtree(out)
        os.replace(tmp, out)
    except BaseException:
        shutil.rmtree(tmp, ignore_errors=True)
        raise


def write_manifest(path: Path, rows: list[dict], fields: list[str]) -> None:
    """``manifest.csv`` with the given columns (image, mask, label, split first)."""
    with open(path, "w", newline="") as f:
        w = csv.DictWriter(f, fieldnames=fields)
        w.writeheader()
        w.writerows(rows)
