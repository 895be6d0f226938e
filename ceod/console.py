"""Console messages for users: printed once, by the global rank-zero process only, and kept in train.log.

:func:`log_to_file` makes a run folder's ``train.log`` hold the run's log: the ``[ceod]`` messages, the
result table (:func:`echo`) and Lightning's own messages. :func:`progress_bar` is the one progress bar of
long work (on a terminal only); :func:`quiet_lightning` drops Lightning's advertising and a warning about
its own code.
"""

from __future__ import annotations

import logging
import os
import sys
import warnings
from pathlib import Path
from typing import IO, Callable, Iterable


def global_rank() -> int:
    """This process's global rank: Lightning's ``rank_zero_only.rank`` (which a Trainer sets under DDP) once
    Lightning is loaded, else the launcher's environment by Lightning's own rule — so that importing this
    module loads no Lightning (``ceod.deploy`` has none)."""
    flag = sys.modules.get("lightning_utilities.core.rank_zero")
    rank = getattr(getattr(flag, "rank_zero_only", None), "rank", None)
    if rank is not None:
        return int(rank)
    for key in ("RANK", "LOCAL_RANK", "SLURM_PROCID", "JSM_NAMESPACE_RANK"):
        if os.environ.get(key) is not None:
            return int(os.environ[key])
    return 0


def info(msg: str) -> None:
    """Print ``[ceod] msg`` on rank 0 (every DDP/SLURM process runs the same script)."""
    if global_rank() == 0:
        print(f"[ceod] {msg}", flush=True)
        _runlog.info(msg)


def echo(text: str) -> None:
    """Print ``text`` as is (e.g. the result table) on rank 0; also into train.log."""
    if global_rank() == 0:
        print(text, flush=True)
        _runlog.info(text)


def warn(msg: str) -> None:
    """Print ``warning: msg`` on stderr on rank 0 (the command lines' warnings, beside their ``error:`` lines)."""
    if global_rank() == 0:
        print(f"warning: {msg}", file=sys.stderr, flush=True)
        _runlog.warning(msg)


_runlog = logging.getLogger("ceod.runlog")  # console printing is done by info/echo; this one only feeds files
_runlog.setLevel(logging.INFO)
_runlog.propagate = False


def log_to_file(path: Path) -> Callable[[], None]:
    """Append the run's messages to ``path`` (rank 0 only); returns the function that stops it.

    Covers :func:`info`/:func:`echo` and Lightning's loggers when they do not reach the root logger
    (Hydra's own ``train.log`` handler already gets those that do).
    """
    if global_rank() != 0:
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


def progress_bar(iterable: Iterable | None = None, desc: str = "", total: int | None = None, unit: str = "it",
                 enabled: bool | None = None, file: IO[str] | None = None):
    """A tqdm bar over ``iterable`` on stderr (``file``), shown only on a terminal and by the global rank-zero
    process: never in logs, CI or test output, never once per DDP rank. ``enabled`` True/False forces it
    on/off (e.g. predict's ``progress=``). Use as an iterable, or call ``update(n)`` on it."""
    from tqdm import tqdm

    file = sys.stderr if file is None else file
    if enabled is None:
        try:
            enabled = global_rank() == 0 and file.isatty()
        except (AttributeError, ValueError):  # a closed or file-less stream
            enabled = False
    return tqdm(iterable, desc=desc, total=total, unit=unit, file=file, disable=not enabled,
                **_size(file))


def _size(file: IO[str]) -> dict:
    """{} (tqdm follows the terminal) unless the terminal reports no size — a fresh pseudo-terminal, some CI
    consoles: 0 × 0, where tqdm draws an empty bar, or hides it as below the screen — then 80 × 24."""
    try:
        size = os.get_terminal_size(file.fileno())
    except (AttributeError, OSError, ValueError):
        return {}
    return {} if size.columns > 0 and size.lines > 0 else {"ncols": size.columns or 80, "nrows": size.lines or 24}


class _DropTips(logging.Filter):
    """Lightning's advertising (``💡 Tip: For seamless cloud …`` litlogger/litmodels lines)."""

    def filter(self, record: logging.LogRecord) -> bool:
        return not str(record.msg).startswith("💡 Tip:")


def quiet_lightning() -> None:
    """Silence exactly two things Lightning prints that are no message for a ceod user: its advertising tips
    and the FutureWarning torch raises at Lightning's own ``LeafSpec()`` (lightning/pytorch/utilities/_pytree.py).
    Idempotent (a filter added again replaces itself)."""
    for name in ("lightning.pytorch.utilities.rank_zero", "lightning.fabric.utilities.rank_zero",
                 "lightning_utilities.core.rank_zero"):  # rank_zero_info logs through whichever was imported last
        logger = logging.getLogger(name)
        if not any(isinstance(f, _DropTips) for f in logger.filters):
            logger.addFilter(_DropTips())
    warnings.filterwarnings("ignore", message=r"`isinstance\(treespec, LeafSpec\)` is deprecated",
                            category=FutureWarning, module=r"lightning\.pytorch\.utilities\._pytree")
