"""What a run does when the machine, not the config, fails: full disk, lost permissions, vanished files, SIGTERM.

* :func:`worker_message` is the one-line message of an error re-raised from a DataLoader worker (the file
  that vanished), not the worker's traceback.
* :func:`environment_error` turns an ``OSError`` from the file system (``ENOSPC``, ``EDQUOT``, ``EROFS``,
  ``EACCES``, ``ENOENT`` of a file that vanished, ``EIO``) — also as the cause of another error — into one
  line naming the path, or None for others.
  (Checkpoint and metrics writes raise :class:`ceod.training.checkpoint_io.StorageError`, which names what was written.)
* :class:`Preemption` — on SIGTERM (what SLURM sends at preemption or at the time limit) Lightning stops after
  the current batch (``SIGTERMException``); inside a training epoch this callback then saves ``last.ckpt``
  *at that batch* (the loader's position, the random states and the epoch's running means with it:
  :mod:`ceod.data.resumable_loader`), waits until it is durable, and says where the run stopped and what the rerun resumes
  from. The rerun continues from that batch and ends like an uninterrupted run. Stopped elsewhere (in an
  epoch's last batch or its validation, in testing, under DDP, or where the write fails), the resume point
  stays the last finished epoch's ``last.ckpt`` and the rerun repeats the interrupted epoch from its start.
  The run then exits with :data:`SIGTERM_EXIT` and no ``FAILED`` marker.
"""

from __future__ import annotations

import errno
import io
import re
from pathlib import Path

from lightning.pytorch.callbacks import Callback, ModelCheckpoint
from lightning.pytorch.utilities.exceptions import SIGTERMException

from ceod.errors import CeodError
from ceod.console import info
from ceod.training.epoch_results import epoch_results, merge_results

SIGTERM_EXIT = 143  # 128 + SIGTERM: stopped on request, resumable (shells and schedulers read it so)
_WRITE = {errno.ENOSPC: " (disk full)", errno.EDQUOT: " (quota exceeded)", errno.EROFS: ""}
_ACCESS = (errno.EACCES, errno.EPERM)
_WORKER = re.compile(r"^(\w*Error): \[Errno (\d+)\] ([^:]+): '(.+)'$", re.M)  # a DataLoader worker's traceback
RESUME_HINT = "fix the cause, then rerun the same command to resume"


def worker_message(text: str) -> str:
    """The original one-line message of an error a DataLoader worker re-raised ("Caught X in DataLoader worker
    process 0. Original Traceback … ceod.errors.DataError: image not found: …"); other text unchanged."""
    if not (text.startswith("Caught ") and "Original Traceback" in text):
        return text
    last = [ln for ln in text.splitlines() if ln.strip()][-1].strip()
    head, sep, message = last.partition(": ")
    return message if sep and re.fullmatch(r"[\w.]+", head) else last


def _os_error_parts(e: OSError) -> tuple[int | None, str | None, str]:
    """(errno, filename, strerror) of ``e``, also when a DataLoader worker re-raised it as text."""
    if e.errno is not None or e.filename is not None:
        return e.errno, e.filename, e.strerror or str(e)
    found = _WORKER.findall(str(e))
    if found:
        _, code, strerror, filename = found[-1]
        return int(code), filename, strerror
    return None, None, str(e)


def _open_file_of(tb) -> str | None:
    """The name of a file object open in the innermost frame of ``tb`` that has one: the file a failed
    ``write`` was writing (``OSError`` from ``write`` names no file), e.g. Hydra's ``.hydra/config.yaml``."""
    frames = []
    while tb is not None:
        frames.append(tb.tb_frame)
        tb = tb.tb_next
    for frame in reversed(frames):
        for value in frame.f_locals.values():
            if isinstance(value, io.IOBase) and isinstance(getattr(value, "name", None), str):
                return value.name
    return None


def environment_error(e: BaseException) -> str | None:
    """One line for a file-system failure outside the program's control — ``e`` or the error that caused it
    (logging's "Unable to configure handler" for an unwritable log file) — None for anything else."""
    seen, cause = set(), False
    while e is not None and id(e) not in seen:
        seen.add(id(e))
        line = _os_error_line(e, cause) if isinstance(e, OSError) else None
        if line is not None:
            return line
        e, cause = e.__cause__, True
    return None


def _os_error_line(e: OSError, cause: bool = False) -> str | None:
    """The line for ``e``; as the cause of another error only a write or permission failure counts (a missing
    file behind, say, a missing-config error is that error's to report)."""
    code, filename, strerror = _os_error_parts(e)
    filename = filename or _open_file_of(e.__traceback__)
    if code in _WRITE:
        return f"cannot write {filename or '(unknown file)'}: {strerror}{_WRITE[code]}; {RESUME_HINT}"
    if filename is None or (cause and code not in _ACCESS):
        return None
    if code in _ACCESS:
        return f"permission denied: {filename} ({strerror}); {RESUME_HINT}"
    if code == errno.ENOENT:
        return f"file not found: {filename} (moved or deleted while the run used it?); {RESUME_HINT}"
    if code == errno.EIO:
        return f"I/O error on {filename} ({strerror}); {RESUME_HINT}"
    return None


def progress(ckpt: dict) -> str:
    """``epoch N done``, or ``epoch N, K of M batches done`` for a mid-epoch resume point."""
    mid = ckpt.get("ceod_resume")
    if mid:
        return f"epoch {ckpt.get('epoch', '?')}, {mid['batches']} of {mid['num_batches']} batches done"
    return f"epoch {ckpt.get('epoch', '?')} done"


def resume_point(out_dir: Path) -> str:
    """``…/last.ckpt (epoch N done)`` (or ``(epoch N, K of M batches done)``), or a note that the rerun starts
    fresh."""
    import torch

    last = Path(out_dir) / "checkpoints" / "last.ckpt"
    try:
        ckpt = torch.load(last, map_location="cpu", weights_only=False, mmap=True)
    except Exception:
        return "none yet: the rerun starts from the beginning"
    return f"{last} ({progress(ckpt)})"


def _wait_for_checkpoints(trainer) -> None:
    """Join the checkpoint plugin's background commits (:class:`ceod.training.checkpoint_io.AtomicCheckpointIO`)."""
    getattr(trainer.strategy.checkpoint_io, "wait", lambda: None)()


class Preemption(Callback):
    """On SIGTERM: a mid-epoch resume point where possible and one line saying where the run stopped and what
    the rerun resumes from; on a resume from such a point, the epoch's running means come back (module
    docstring, :mod:`ceod.data.resumable_loader`)."""

    def __init__(self) -> None:
        self.stopped: str | None = None
        self._saving: dict | None = None  # what the mid-epoch checkpoint being written records
        self._restore: dict = {}  # running means still to add back in the resumed epoch

    def on_exception(self, trainer, pl_module, exception: BaseException) -> None:
        if not isinstance(exception, SIGTERMException):
            return
        stage = trainer.state.stage.value if trainer.state.stage is not None else "run"
        where = f"{stage}, epoch {trainer.current_epoch}"
        if trainer.training:
            done = trainer.fit_loop.epoch_loop.batch_progress.current.completed
            where += f", after batch {done} of {trainer.num_training_batches}"
        self.stopped = where
        self._save_mid_epoch(trainer)
        _wait_for_checkpoints(trainer)
        info(f"stopped by SIGTERM ({where}); resume point: {resume_point(Path(trainer.default_root_dir))}; "
             "rerun the same command to continue")

    def _save_mid_epoch(self, trainer) -> bool:
        """Save ``last.ckpt`` at the current batch boundary if the run is inside a training epoch whose loader can
        resume there → whether it did (a failed write is a warning: the epoch-end resume point stays)."""
        loop = trainer.fit_loop
        done, total = loop.epoch_loop.batch_progress.current.completed, trainer.num_training_batches
        loaders = loop._combined_loader.flattened if loop._combined_loader is not None else []
        last = next((c for c in trainer.checkpoint_callbacks if isinstance(c, ModelCheckpoint)
                     and c.filename == "last" and c.dirpath), None)
        if not (trainer.training and 0 < done < total and last is not None and not trainer.fast_dev_run
                and loaders and all(getattr(dl, "resumable", False) for dl in loaders)):
            return False
        self._saving = {"batches": done, "num_batches": total, "results": epoch_results(trainer),
                        "step": loop.epoch_loop._batches_that_stepped}  # rows logged from here on are the rerun's
        for dl in loaders:
            dl.mark(done)
        try:
            trainer.save_checkpoint(Path(last.dirpath) / f"last{last.FILE_EXTENSION}")
            _wait_for_checkpoints(trainer)
        except (OSError, CeodError) as e:
            info(f"warning: could not save a mid-epoch resume point ({e}); the last finished epoch's stays")
            return False
        finally:
            self._saving = None
            for dl in loaders:
                dl.mark(None)
        return True

    def on_save_checkpoint(self, trainer, pl_module, checkpoint: dict) -> None:
        if self._saving is not None:
            checkpoint["ceod_resume"] = self._saving

    def on_load_checkpoint(self, trainer, pl_module, checkpoint: dict) -> None:
        self._restore = dict((checkpoint.get("ceod_resume") or {}).get("results") or {})

    def on_train_batch_end(self, trainer, pl_module, outputs, batch, batch_idx: int) -> None:
        if self._restore:
            self._restore = merge_results(trainer, self._restore)

    def on_train_epoch_end(self, trainer, pl_module) -> None:
        if self._restore:
            merge_results(trainer, self._restore, epoch_end=True)
            self._restore = {}
