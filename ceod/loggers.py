"""Lightning's CSVLogger, made resumable: a resumed run appends to ``metrics.csv`` instead of replacing it.

Rows are written as they are logged (``flush_logs_every_n_steps=1``), so a kill loses none. On resume from
a checkpoint of epoch ``e`` the rows of epochs ≤ ``e`` are kept and the rows of the interrupted epoch
(> ``e``, which the resumed run trains again) are dropped: the file then reads like an uninterrupted run's.
"""

from __future__ import annotations

import csv
import os
from typing import Any

from lightning.pytorch.loggers import CSVLogger as _LightningCSVLogger
from lightning.pytorch.loggers.csv_logs import ExperimentWriter
from lightning.pytorch.loggers.logger import rank_zero_experiment


class _AppendingWriter(ExperimentWriter):
    """ExperimentWriter that keeps the rows of epochs ≤ ``keep_through`` (None: a fresh file)."""

    def __init__(self, log_dir: str, keep_through: int | None) -> None:
        self.keep_through = keep_through
        super().__init__(log_dir=log_dir)

    def _check_log_dir_exists(self) -> None:  # Lightning's version deletes metrics.csv
        path = self.metrics_file_path
        if not os.path.isfile(path):
            return
        if self.keep_through is None:
            os.remove(path)
            return
        with open(path, newline="") as f:
            reader = csv.DictReader(f)
            keys = list(reader.fieldnames or [])
            rows = [r for r in reader if not r.get("epoch") or float(r["epoch"]) <= self.keep_through]
        tmp = path + ".tmp"
        with open(tmp, "w", newline="") as f:
            writer = csv.DictWriter(f, fieldnames=keys)
            writer.writeheader()
            writer.writerows(rows)
        os.replace(tmp, path)
        self.metrics_keys = keys


class CSVLogger(_LightningCSVLogger):
    """``lightning.pytorch.loggers.CSVLogger`` writing every row at once and appending on resume.

    Call :meth:`resume_after` with the checkpoint's epoch before the first log to keep earlier rows.
    """

    def __init__(self, *args: Any, flush_logs_every_n_steps: int = 1, **kwargs: Any) -> None:
        super().__init__(*args, flush_logs_every_n_steps=flush_logs_every_n_steps, **kwargs)
        self._keep_through: int | None = None

    def resume_after(self, epoch: int) -> None:
        """Keep the rows of epochs ≤ ``epoch`` (the checkpoint's) already in ``metrics.csv``."""
        self._keep_through = int(epoch)

    @property
    @rank_zero_experiment
    def experiment(self) -> _AppendingWriter:
        if self._experiment is None:
            self._fs.makedirs(self.root_dir, exist_ok=True)
            self._experiment = _AppendingWriter(self.log_dir, self._keep_through)
        return self._experiment
