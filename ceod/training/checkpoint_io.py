"""Checkpoints written so that a reader sees the old file or the new one, never a part of one.

:class:`AtomicCheckpointIO` is the Trainer's ``CheckpointIO`` plugin (``conf/trainer/default.yaml``): every
checkpoint Lightning writes — ``last.ckpt``, the best epoch, Lightning's SLURM ``hpc_ckpt_*`` — is streamed
by ``torch.save`` into a temporary file *in the same folder* (``.last.ckpt.tmp-<host>-<pid>-<random>``),
flushed, fsynced, then ``os.replace``d over the old file, and the folder is fsynced. Until the rename the
previous file is untouched, so a kill, a node loss or a full disk during the write leaves the previous
resume point complete. (Lightning's own ``TorchCheckpointIO`` writes the file through an fsspec transaction
whose temporary file lies in the system temp folder and is *copied* over the old one: a fault during that
copy truncates the only resume point.)

The serialisation happens in the caller (what Lightning's writer costs anyway); the fsync, the rename and the
folder fsync — the wait for the disk — run in one background thread, in the order of the saves, so training
goes on meanwhile. A ``remove_checkpoint`` (the previous best) is queued behind them: the old file goes only
once the new one is durable and renamed. :meth:`AtomicCheckpointIO.wait` joins the queue; it runs before a
checkpoint is loaded, at teardown (end of fit or test, and after an interrupt: before a SIGTERM exit) and when
two commits are already pending. Durability: a killed *process* (SIGKILL, OOM) leaves the old or the new
file, complete — a commit still queued when it dies is lost, the temporary file stays (removed at the next
start), the previous checkpoint remains; a *machine* crash leaves the old or the new file complete too (the
rename comes after the file's fsync), and the newest one survives it once :meth:`wait` has returned.

A write that fails with an ``OSError`` (``ENOSPC``, ``EDQUOT``, ``EROFS``, ``EACCES`` …, also one the fsync
reports in the background) removes its temporary file and raises :class:`StorageError`, one line naming the
path and what was written — from the save, or from the next save, load, ``wait`` or teardown. Temporary files
left by killed writers are removed by :func:`remove_stale_temporaries` at the next start.
"""

from __future__ import annotations

import errno
import os
import secrets
import socket
from collections.abc import Callable
from concurrent.futures import Future, ThreadPoolExecutor
from pathlib import Path
from typing import Any

import torch
from lightning.fabric.plugins.io.torch_io import TorchCheckpointIO

from ceod.data.layout import current_umask, fsync_path, writer_gone
from ceod.errors import CeodError

TMP_MARK = ".tmp-"
_KEPT = "the checkpoints written before are intact; fix the cause, then rerun the same command to resume"


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


def _write_temporary(path: Path, write: Callable[[Any], None], mode: str) -> tuple[Path, Any]:
    """``write(file)`` into a new temporary file beside ``path``, flushed → (its path, the still open file).
    On any error the temporary file is removed; a failed write surfaces as its ``OSError`` (``ENOSPC`` …)
    whatever the writer made of it."""
    tmp = temporary_name(path)
    raw = None
    try:
        raw = open(tmp, mode)
        f = _Recording(raw)
        try:
            write(f)
        except Exception as e:
            if f.error is not None and f.error is not e:
                raise f.error from e
            raise
        raw.flush()
    except BaseException:
        if raw is not None:
            raw.close()
        tmp.unlink(missing_ok=True)
        raise
    return tmp, raw


def _commit(tmp: Path, raw, path: Path, fsync: bool, file_mode: int) -> Path:
    """fsync (``fsync``) and close the written temporary file, rename it to ``path``, fsync the folder; on any
    error the temporary file is removed and ``path`` keeps its old content."""
    try:
        try:
            if fsync:
                os.fsync(raw.fileno())
        finally:
            raw.close()
        os.chmod(tmp, file_mode)
        os.replace(tmp, path)
    except BaseException:
        tmp.unlink(missing_ok=True)
        raise
    if fsync:
        fsync_path(path.parent)
    return path


def write_atomically(path: str | Path, write: Callable[[Any], None], mode: str = "wb", fsync: bool = True) -> Path:
    """Call ``write(file)`` on a temporary file beside ``path``, flush + fsync it, rename it to ``path``.

    On any error (or interrupt) the temporary file is removed and ``path`` keeps its old content; a failed
    write surfaces as its ``OSError`` (``ENOSPC`` …) whatever the writer made of it. ``fsync=False`` skips
    the two fsyncs: still atomic for readers and against a killed process, not against a crash of the machine.
    """
    path = Path(path)
    tmp, raw = _write_temporary(path, write, mode)
    return _commit(tmp, raw, path, fsync, 0o666 & ~current_umask())


def remove_stale_temporaries(folder: str | Path) -> list[Path]:
    """Remove ``.*.tmp-<host>-<pid>-*`` files in ``folder`` whose writer is gone (this host, dead pid) or that
    are older than a day → the removed paths. Live writers' files are kept."""
    removed = []
    for p in Path(folder).glob(f".*{TMP_MARK}*"):
        if p.is_file() and writer_gone(p, p.name.rsplit(TMP_MARK, 1)[-1]):
            p.unlink(missing_ok=True)
            removed.append(p)
    return removed


class AtomicCheckpointIO(TorchCheckpointIO):
    """``TorchCheckpointIO`` whose saves are atomic and durable (see the module docstring); loads unchanged.

    ``fsync=False`` (``trainer.plugins.0.fsync=false``): atomic for readers and against a killed process, but
    a crash of the machine may lose the newest checkpoint — for file systems where fsync is slow; the rename
    then happens in the caller. ``background=False``: the fsyncs and the rename in the caller too (each save
    returns durable). Remote paths (``scheme://``) go to Lightning's own implementation.
    """

    MAX_PENDING = 2  # commits in flight before a save waits (the best and the last checkpoint of one epoch)

    def __init__(self, fsync: bool = True, background: bool = True) -> None:
        super().__init__()
        self.fsync, self.background = bool(fsync), bool(background)
        self._worker: ThreadPoolExecutor | None = None
        self._pending: list[tuple[Future, str, Path]] = []

    def save_checkpoint(self, checkpoint: dict[str, Any], path, storage_options: Any | None = None) -> None:
        if storage_options is not None or "://" in str(path):
            self.wait()
            return super().save_checkpoint(checkpoint, path, storage_options)
        path = Path(path)
        what = f"checkpoint (epoch {checkpoint.get('epoch', '?')})"
        self._collect(block=len(self._pending) >= self.MAX_PENDING)
        try:
            path.parent.mkdir(parents=True, exist_ok=True)
            tmp, raw = _write_temporary(path, lambda f: torch.save(checkpoint, f), "wb")
        except OSError as e:
            raise StorageError(what, path, e, _KEPT) from e
        args = (tmp, raw, path, self.fsync, 0o666 & ~current_umask())
        if not (self.fsync and self.background):
            try:
                _commit(*args)
            except OSError as e:
                raise StorageError(what, path, e, _KEPT) from e
            return
        if self._worker is None:
            self._worker = ThreadPoolExecutor(max_workers=1, thread_name_prefix="ceod-checkpoint-commit")
        self._pending.append((self._worker.submit(_commit, *args), what, path))

    def remove_checkpoint(self, path) -> None:
        """Remove ``path`` after the commits queued before (the new best is durable before the old one goes)."""
        if self._worker is None or not self._pending:
            return super().remove_checkpoint(path)
        self._pending.append((self._worker.submit(super().remove_checkpoint, path), "the old checkpoint", Path(path)))

    def load_checkpoint(self, path, map_location: Any | None = None, weights_only: bool | None = None):
        self.wait()
        return super().load_checkpoint(path, map_location=map_location, weights_only=weights_only)

    def wait(self) -> None:
        """Block until every queued commit is done; a failed one raises its :class:`StorageError`."""
        self._collect(block=True)

    def _collect(self, block: bool) -> None:
        """Forget the finished commits (all of them, if ``block``: waiting for them); raise the first failure."""
        kept, failure = [], None
        for future, what, path in self._pending:
            if block or future.done():
                error = future.exception()
                if error is not None and failure is None:
                    failure = (error, what, path)
            else:
                kept.append((future, what, path))
        self._pending = kept
        if failure is not None:
            error, what, path = failure
            if isinstance(error, OSError):
                raise StorageError(what, path, error, _KEPT) from error
            raise error

    def teardown(self) -> None:
        """Wait for the queued commits (end of fit/test, and after an interrupt), then stop the thread."""
        try:
            self.wait()
        finally:
            if self._worker is not None:
                self._worker.shutdown(wait=True)
                self._worker = None

    def __getstate__(self) -> dict:
        self.wait()  # a copy (DDP spawn) starts with nothing in flight
        return {**self.__dict__, "_worker": None, "_pending": []}
