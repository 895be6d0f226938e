"""Checkpoints written so that a reader sees the old file or the new one, never a part of one.

:class:`AtomicCheckpointIO` is the Trainer's ``CheckpointIO`` plugin (``conf/trainer/default.yaml``): every
checkpoint Lightning writes — ``last.ckpt``, the best epoch, Lightning's SLURM ``hpc_ckpt_*`` — is streamed
by ``torch.save`` into a temporary file *in the same folder* (``.last.ckpt.tmp-<host>-<pid>-<random>``),
flushed and fsynced, then ``os.replace``d over the old file, and the folder is fsynced. Until the rename the
previous file is untouched, so a kill, a node loss or a full disk during the write leaves the previous
resume point complete. (Lightning's own ``TorchCheckpointIO`` writes the file through an fsspec transaction
whose temporary file lies in the system temp folder and is *copied* over the old one: a fault during that
copy truncates the only resume point.)

A write that fails with an ``OSError`` (``ENOSPC``, ``EDQUOT``, ``EROFS``, ``EACCES`` …) removes its
temporary file and raises :class:`StorageError`, one line naming the path and what was written. Temporary
files left by killed writers are removed by :func:`remove_stale_temporaries` at the next start.
"""

from __future__ import annotations

import errno
import os
import secrets
import socket
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

import torch
from lightning.fabric.plugins.io.torch_io import TorchCheckpointIO

from ceod.data.layout import current_umask, fsync_path, pid_alive
from ceod.errors import CeodError

STALE_S = 24 * 3600
TMP_MARK = ".tmp-"


class StorageError(CeodError):
    """Writing a run's output failed for a reason outside the program (full disk, read-only, no permission)."""

    def __init__(self, what: str, path: str | Path, error: OSError, hint: str = "") -> None:
        code = errno.errorcode.get(error.errno or 0, "")
        reason = f"{error.strerror or error} ({code})" if code else str(error.strerror or error)
        tail = f"; {hint}" if hint else ""
        super().__init__(f"cannot write {what} {path}: {reason}{tail}")
        self.path, self.errno = Path(path), error.errno


def temporary_name(path: Path) -> Path:
    """``.NAME.tmp-<host>-<pid>-<random>`` beside ``path``: hidden, never matching ``*.ckpt`` (nor, with
    ``hpc_ckpt_`` spelt ``hpc-ckpt-``, Lightning's scan for its SLURM checkpoints)."""
    name = path.name.replace("hpc_ckpt_", "hpc-ckpt-")
    return path.with_name(f".{name}{TMP_MARK}{socket.gethostname()}-{os.getpid()}-{secrets.token_hex(3)}")


class _Recording:
    """A file whose ``write`` remembers its first ``OSError``: torch's C++ zip writer reports a failed write
    (a full disk) as a ``RuntimeError`` about file positions, and the cause would be lost."""

    def __init__(self, f) -> None:
        self._f, self.error = f, None

    def write(self, data) -> int:
        try:
            return self._f.write(data)
        except OSError as e:
            self.error = self.error or e
            raise

    def __getattr__(self, key: str):
        return getattr(self._f, key)


def write_atomically(path: str | Path, write: Callable[[Any], None], mode: str = "wb", fsync: bool = True) -> Path:
    """Call ``write(file)`` on a temporary file beside ``path``, flush + fsync it, rename it to ``path``.

    On any error (or interrupt) the temporary file is removed and ``path`` keeps its old content; a failed
    write surfaces as its ``OSError`` (``ENOSPC`` …) whatever the writer made of it. ``fsync=False`` skips
    the two fsyncs: still atomic for readers and against a killed process, not against a crash of the machine.
    """
    path = Path(path)
    tmp = temporary_name(path)
    try:
        with open(tmp, mode) as raw:
            f = _Recording(raw)
            try:
                write(f)
            except Exception as e:
                if f.error is not None and f.error is not e:
                    raise f.error from e
                raise
            raw.flush()
            if fsync:
                os.fsync(raw.fileno())
        os.chmod(tmp, 0o666 & ~current_umask())
        os.replace(tmp, path)
    except BaseException:
        tmp.unlink(missing_ok=True)
        raise
    if fsync:
        fsync_path(path.parent)
    return path


def remove_stale_temporaries(folder: str | Path) -> list[Path]:
    """Remove ``.*.tmp-<host>-<pid>-*`` files in ``folder`` whose writer is gone (this host, dead pid) or that
    are older than a day → the removed paths. Live writers' files are kept."""
    removed, host = [], socket.gethostname()
    for p in Path(folder).glob(f".*{TMP_MARK}*"):
        parts = p.name.rsplit(TMP_MARK, 1)[-1].rsplit("-", 2)
        try:
            dead = len(parts) == 3 and parts[0] == host and not pid_alive(int(parts[1]))
            old = time.time() - p.stat().st_mtime > STALE_S
        except (ValueError, OSError):
            continue
        if p.is_file() and (dead or old):
            p.unlink(missing_ok=True)
            removed.append(p)
    return removed


class AtomicCheckpointIO(TorchCheckpointIO):
    """``TorchCheckpointIO`` whose saves are atomic and durable (see the module docstring); loads unchanged.

    ``fsync=False`` (``trainer.plugins.0.fsync=false``): atomic for readers and against a killed process, but
    a crash of the machine may lose the newest checkpoint — for file systems where fsync is slow. Remote paths
    (``scheme://``) go to Lightning's own implementation.
    """

    def __init__(self, fsync: bool = True) -> None:
        super().__init__()
        self.fsync = bool(fsync)

    def save_checkpoint(self, checkpoint: dict[str, Any], path, storage_options: Any | None = None) -> None:
        if storage_options is not None or "://" in str(path):
            return super().save_checkpoint(checkpoint, path, storage_options)
        path = Path(path)
        what = f"checkpoint (epoch {checkpoint.get('epoch', '?')})"
        try:
            path.parent.mkdir(parents=True, exist_ok=True)
            write_atomically(path, lambda f: torch.save(checkpoint, f), fsync=self.fsync)
        except OSError as e:
            raise StorageError(what, path, e, "the checkpoints written before are intact; fix the cause, then rerun "
                               "the same command to resume") from e
