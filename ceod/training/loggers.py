"""Lightning's CSVLogger, made resumable: a resumed run appends to ``metrics.csv`` instead of replacing it.

Rows are written as they are logged (``flush_logs_every_n_steps=1``), so a kill loses none. On resume from
a checkpoint of epoch ``e`` the rows of epochs ≤ ``e`` are kept and the rows of the interrupted epoch
(> ``e``, which the resumed run trains again) are dropped: the file then reads like an uninterrupted run's.
A row torn by a kill mid-append is dropped too, the epoch's training row that Lightning logs just after the
checkpoint is restored from the checkpoint if a kill lost it, and that rewrite is atomic; a full disk is one line.
"""

from __future__ import annotations

import csv
import io
import os
from typing import Any

from lightning.pytorch.loggers import CSVLogger as _LightningCSVLogger
from lightning.pytorch.loggers.csv_logs import ExperimentWriter
from lightning.pytorch.loggers.logger import rank_zero_experiment

from ceod.training.checkpoint_io import StorageError, write_atomically
from ceod.training.faults import RESUME_HINT


def _complete_rows(path: str, keep_through: int, before_step: int | None = None) -> tuple[list[str], list[dict]]:
    """(columns, rows of epochs ≤ ``keep_through``) of ``metrics.csv``, without a row torn by a kill mid-append
    (a last line with no newline) and without rows whose epoch does not parse; ``before_step`` (a mid-epoch
    resume point): of epoch ``keep_through`` only the rows logged before that step."""
    with open(path, newline="") as f:
        text = f.read()
    if not text.endswith("\n"):
        text = text[: text.rfind("\n") + 1]
    reader = csv.DictReader(io.StringIO(text, newline=""))
    keys, rows = list(reader.fieldnames or []), []
    for r in reader:
        if None in r or None in r.values():  # a field too many or too few
            continue
        try:
            epoch = float(r["epoch"]) if r.get("epoch") else None
            later = before_step is not None and epoch == keep_through and float(r.get("step") or 0) >= before_step
            if epoch is None or (epoch <= keep_through and not later):
                rows.append(r)
        except ValueError:
            continue
    return keys, rows


def _restore_epoch_row(keys: list[str], rows: list[dict], epoch: int, pending: dict | None) -> None:
    """Append the checkpoint's epoch-end training row (``ceod_run.epoch_log``) when the file lacks it: the
    run was killed between writing the checkpoint and logging that row."""
    metrics = (pending or {}).get("metrics") or {}
    have = any(r.get("epoch") and float(r["epoch"]) == epoch and all(r.get(k) for k in metrics) for r in rows)
    if not metrics or have:
        return
    keys += [k for k in ("epoch", "step", *metrics) if k not in keys]  # also into a file torn inside its header
    rows.append({**{k: "" for k in keys}, **metrics, "epoch": epoch, "step": pending["step"]})


class _AppendingWriter(ExperimentWriter):
    """ExperimentWriter that keeps the rows of epochs ≤ ``keep_through`` (None: a fresh file); a failed write
    is a StorageError naming ``metrics.csv``."""

    def __init__(self, log_dir: str, keep_through: int | None, pending: dict | None = None,
                 before_step: int | None = None) -> None:
        self.keep_through, self.pending, self.before_step = keep_through, pending, before_step
        super().__init__(log_dir=log_dir)

    def _check_log_dir_exists(self) -> None:  # Lightning's version deletes metrics.csv
        path = self.metrics_file_path
        if not os.path.isfile(path):
            return
        if self.keep_through is None:
            os.remove(path)
            return
        keys, rows = _complete_rows(path, self.keep_through, self.before_step)
        _restore_epoch_row(keys, rows, self.keep_through, self.pending)
        buffer = io.StringIO(newline="")
        writer = csv.DictWriter(buffer, fieldnames=keys)
        writer.writeheader()
        writer.writerows(rows)
        data = buffer.getvalue().encode()
        try:
            write_atomically(path, lambda f: f.write(data))
        except OSError as e:
            raise StorageError("metrics (rows of the finished epochs)", path, e) from e
        self.metrics_keys = keys

    def save(self) -> None:
        try:
            super().save()
        except OSError as e:
            raise StorageError("a metrics row", self.metrics_file_path, e, RESUME_HINT) from e


class CSVLogger(_LightningCSVLogger):
    """``lightning.pytorch.loggers.CSVLogger`` writing every row at once and appending on resume.

    Call :meth:`resume_after` with the checkpoint's epoch before the first log to keep earlier rows.
    """

    def __init__(self, *args: Any, flush_logs_every_n_steps: int = 1, **kwargs: Any) -> None:
        super().__init__(*args, flush_logs_every_n_steps=flush_logs_every_n_steps, **kwargs)
        self._keep_through: int | None = None
        self._pending: dict | None = None
        self._before_step: int | None = None

    def resume_after(self, epoch: int, epoch_log: dict | None = None, before_step: int | None = None) -> None:
        """Keep the rows of epochs ≤ ``epoch`` (the checkpoint's) already in ``metrics.csv``; ``epoch_log`` (the
        checkpoint's ``ceod_run.epoch_log``) restores that epoch's training row if a kill lost it;
        ``before_step`` (a mid-epoch checkpoint's ``ceod_resume.step``): of ``epoch``, only the rows logged
        before the resume point (a run killed after resuming there had logged more)."""
        self._keep_through, self._pending, self._before_step = int(epoch), epoch_log, before_step

    @property
    @rank_zero_experiment
    def experiment(self) -> _AppendingWriter:
        if self._experiment is None:
            self._fs.makedirs(self.root_dir, exist_ok=True)
            self._experiment = _AppendingWriter(self.log_dir, self._keep_through, self._pending, self._before_step)
        return self._experiment
