"""Console messages for users: printed once, by the global rank-zero process only, and kept in train.log.

:func:`log_to_file` makes a run folder's ``train.log`` hold the run's log: the ``[ceod]`` messages, the
result table (:func:`echo`) and Lightning's own messages.
"""

from __future__ import annotations

import logging
from pathlib import Path
from typing import Callable

from lightning.fabric.utilities.rank_zero import rank_zero_only


@rank_zero_only
def info(msg: str) -> None:
    """Print ``[ceod] msg`` on rank 0 (every DDP/SLURM process runs the same script)."""
    print(f"[ceod] {msg}", flush=True)
    _runlog.info(msg)


@rank_zero_only
def echo(text: str) -> None:
    """Print ``text`` as is (e.g. the result table) on rank 0; also into train.log."""
    print(text, flush=True)
    _runlog.info(text)


_runlog = logging.getLogger("ceod.runlog")  # console printing is done by info/echo; this one only feeds files
_runlog.setLevel(logging.INFO)
_runlog.propagate = False


def log_to_file(path: Path) -> Callable[[], None]:
    """Append the run's messages to ``path`` (rank 0 only); returns the function that stops it.

    Covers :func:`info`/:func:`echo` and Lightning's loggers when they do not reach the root logger
    (Hydra's own ``train.log`` handler already gets those that do).
    """
    if rank_zero_only.rank != 0:
        return lambda: None
    handler = logging.FileHandler(path, mode="a")
    handler.setFormatter(logging.Formatter("[%(asctime)s][%(name)s][%(levelname)s] - %(message)s"))
    handler.setLevel(logging.INFO)
    targets = [_runlog] + [lg for lg in map(logging.getLogger, ("lightning.pytorch", "lightning.fabric"))
                           if not lg.propagate]
    for lg in targets:
        lg.addHandler(handler)

    def stop() -> None:
        for lg in targets:
            lg.removeHandler(handler)
        handler.close()

    return stop


class _PrintHandler(logging.Handler):
    """Messages of the Lightning-free layers (``logging.getLogger("ceod.models…")``) printed like :func:`info`."""

    def emit(self, record: logging.LogRecord) -> None:
        info(record.getMessage())


_ceod = logging.getLogger("ceod")
if not any(isinstance(h, _PrintHandler) for h in _ceod.handlers):
    _ceod.addHandler(_PrintHandler(logging.INFO))
    _ceod.setLevel(logging.INFO)
    _ceod.propagate = False
