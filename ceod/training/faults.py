"""What a run does when the machine, not the config, fails: full disk, lost permissions, vanished files, SIGTERM.

* :func:`worker_message` is the one-line message of an error re-raised from a DataLoader worker (the file
  that vanished), not the worker's traceback.
* :func:`environment_error` turns an ``OSError`` from the file system (``ENOSPC``, ``EDQUOT``, ``EROFS``,
  ``EACCES``, ``ENOENT`` of a file that vanished, ``EIO``) — also as the cause of another error — into one
  line naming the path, or None for others.
  (Checkpoint and metrics writes raise :class:`ceod.training.checkpoint_io.StorageError`, which names what was written.)
* :class:`Preemption` — on SIGTERM (what SLURM sends at preemption or at the time limit) Lightning stops after
  the current batch (``SIGTERMException``); this callback says where, and which resume point the rerun uses.
  The run then exits with :data:`SIGTERM_EXIT` and no ``FAILED`` marker. The resume point is the last
  finished epoch's ``last.ckpt``, never a mid-epoch state: without a resumable data loader Lightning cannot
  continue an epoch where it stopped, and the rerun repeats the interrupted epoch from its start — exactly
  what an uninterrupted run computes.
"""

from __future__ import annotations

import errno
import io
import re
from pathlib import Path

from lightning.pytorch.callbacks import Callback
from lightning.pytorch.utilities.exceptions import SIGTERMException

from ceod.console import info

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


def resume_point(out_dir: Path) -> str:
    """``…/last.ckpt (epoch N done)``, or a note that the rerun starts fresh."""
    import torch

    last = Path(out_dir) / "checkpoints" / "last.ckpt"
    try:
        epoch = torch.load(last, map_location="cpu", weights_only=False, mmap=True).get("epoch", "?")
    except Exception:
        return "none yet: the rerun starts from the beginning"
    return f"{last} (epoch {epoch} done)"


class Preemption(Callback):
    """On SIGTERM, one line: where the run stopped and what the rerun resumes from (see the module docstring)."""

    def __init__(self) -> None:
        self.stopped: str | None = None

    def on_exception(self, trainer, pl_module, exception: BaseException) -> None:
        if not isinstance(exception, SIGTERMException):
            return
        stage = trainer.state.stage.value if trainer.state.stage is not None else "run"
        where = f"{stage}, epoch {trainer.current_epoch}"
        if trainer.training:
            done = trainer.fit_loop.epoch_loop.batch_progress.current.completed
            where += f", after batch {done} of {trainer.num_training_batches}"
        self.stopped = where
        info(f"stopped by SIGTERM ({where}); resume point: {resume_point(Path(trainer.default_root_dir))}; "
             "rerun the same command to continue")
