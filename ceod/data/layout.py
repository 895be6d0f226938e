"""The folder layout that ceod's writers produce and ``data=folder`` reads, written atomically.

    OUT/images/{good,defect}/…   OUT/masks/{good,defect}/…   OUT/manifest.csv

Written files and folders get the permissions of any new file (0666/0777 minus the umask), not the
owner-only ones of ``tempfile`` — a shared cluster cache stays readable to the group. A temporary
folder is named ``.OUT.tmp-<host>-<pid>-…``; one left by a killed writer (its process gone, or
older than a day) is removed by the next writer of OUT.
"""

from __future__ import annotations

import csv
import io
import os
import shutil
import socket
import tempfile
import time
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from pathlib import Path

from ceod.data.samples import CLASS_NAMES
from ceod.errors import DataError

CLASS_DIRS = dict(enumerate(CLASS_NAMES))  # label → class folder


STALE_S = 24 * 3600


def current_umask() -> int:
    """The process's umask (read without changing it)."""
    mask = os.umask(0)
    os.umask(mask)
    return mask


def pid_alive(pid: int) -> bool:
    """Whether process ``pid`` (on this host) still runs; unknowable cases count as alive."""
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except (PermissionError, OverflowError):
        return True
    return True


def remove_stale_temporaries(out: Path) -> list[Path]:
    """Remove ``.OUT.tmp-*`` folders beside ``out`` whose writer is gone (same host, dead pid) or that
    are older than a day; → the removed paths."""
    removed = []
    for p in out.parent.glob(f".{out.name}.tmp-*"):
        if p.is_dir() and writer_gone(p, p.name[len(f".{out.name}.tmp-"):]):
            shutil.rmtree(p, ignore_errors=True)
            removed.append(p)
    return removed


def writer_gone(path: Path, tag: str) -> bool:
    """Whether the temporary ``path``, tagged ``<host>-<pid>-<random>`` by its writer, is stale: written on
    this host by a process that is gone, or older than a day. Unreadable tags or paths count as live."""
    parts = tag.rsplit("-", 2)
    try:
        dead = len(parts) == 3 and parts[0] == socket.gethostname() and not pid_alive(int(parts[1]))
        return dead or time.time() - path.stat().st_mtime > STALE_S
    except (ValueError, OSError):
        return False


def shared_permissions(path: Path) -> None:
    """Give ``path`` (and, for a folder, everything in it) the permissions of a new file or folder."""
    mask = current_umask()
    paths = [path, *path.rglob("*")] if path.is_dir() else [path]
    for p in paths:
        os.chmod(p, (0o777 if p.is_dir() else 0o666) & ~mask)


@contextmanager
def atomic_directory(out: Path, class_dirs: bool = True) -> Iterator[Path]:
    """Yield a temporary folder beside ``out`` (holding the empty class folders unless ``class_dirs``
    is false); on success it replaces ``out``, on any error it is removed — a reader never sees a
    half-written dataset. Stale temporaries of killed writers are removed first."""
    out = Path(out)
    out.parent.mkdir(parents=True, exist_ok=True)
    remove_stale_temporaries(out)
    tmp = Path(tempfile.mkdtemp(prefix=f".{out.name}.tmp-{socket.gethostname()}-{os.getpid()}-", dir=out.parent))
    try:
        if class_dirs:
            for cls in CLASS_DIRS.values():
                (tmp / "images" / cls).mkdir(parents=True)
                (tmp / "masks" / cls).mkdir(parents=True)
        yield tmp
        shared_permissions(tmp)
        if out.exists():
            shutil.rmtree(out)
        os.replace(tmp, out)
    except BaseException:
        shutil.rmtree(tmp, ignore_errors=True)
        raise


def atomic_write(path: Path, write: Callable[[Path], None]) -> Path:
    """Call ``write(tmp)`` on a temporary file beside ``path``, fsync it, then rename it to ``path`` (shared
    permissions); on any error the temporary file is removed and ``path`` is untouched."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, name = tempfile.mkstemp(prefix=f".{path.stem}-", suffix=path.suffix, dir=path.parent)
    os.close(fd)
    tmp = Path(name)
    try:
        write(tmp)
        fsync_path(tmp)
        shared_permissions(tmp)
        os.replace(tmp, path)
        fsync_path(path.parent)  # the rename itself survives a crash
    finally:
        tmp.unlink(missing_ok=True)
    return path


def fsync_path(path: Path) -> None:
    """Flush ``path`` (a file, or a folder's entries) to the disk; silently skipped where not supported."""
    try:
        fd = os.open(path, os.O_RDONLY)
    except OSError:
        return
    try:
        os.fsync(fd)
    except OSError:
        pass
    finally:
        os.close(fd)


def require_empty(out: Path, overwrite: bool = False, flag: str = "--overwrite") -> None:
    """Raise a DataError when ``out`` exists and is not empty (unless ``overwrite``)."""

    out = Path(out)
    if out.exists() and not out.is_dir():
        raise DataError(f"output {out} exists and is not a folder")
    if out.exists() and any(out.iterdir()) and not overwrite:
        raise DataError(f"output folder {out} exists and is not empty (pass {flag})")


def write_manifest(path: Path, rows: list[dict], fields: list[str]) -> None:
    """``manifest.csv`` with the given columns (image, mask, label, split first)."""
    with open(path, "w", newline="") as f:
        w = csv.DictWriter(f, fieldnames=fields)
        w.writeheader()
        w.writerows(rows)


def prepare_out(out: str | Path) -> tuple[Path, bool]:
    """Create ``out`` and prove it writable (a temp file), before any work → (out, whether it was created)."""
    out = Path(out)
    created = not out.exists()
    try:
        out.mkdir(parents=True, exist_ok=True)
        with tempfile.TemporaryFile(dir=out):
            pass
    except OSError as e:
        raise DataError(f"output folder not writable: {out} ({e.strerror or e})") from None
    return out, created


def write_csv(path: Path, header: list[str], rows: list) -> Path:
    """A CSV written whole (temp file + rename)."""
    buf = io.StringIO()
    w = csv.writer(buf)
    w.writerow(header)
    w.writerows(rows)
    return atomic_write(path, lambda tmp: Path(tmp).write_text(buf.getvalue()))
