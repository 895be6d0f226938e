"""``python tests/training/fault_inject.py <ceod.train args>``: ``python -m ceod.train`` with faults injected below it.

Used by ``tests/training/test_faults.py``; nothing of ceod is replaced, only the file layer (``open``) and the timing:

* ``CEOD_FAULT_MATCH=TEXT``: files opened for writing whose name contains TEXT are faulted, after the first
  ``CEOD_FAULT_SKIP`` of them: each ``write`` sleeps ``CEOD_FAULT_SLOW_WRITE`` s (a slow disk), and raises
  ``OSError(ENOSPC)`` once ``CEOD_FAULT_ENOSPC_AFTER`` bytes would be exceeded (a full one);
* ``CEOD_FAULT_SLOW_STEP=S``: every optimizer step is followed by S s of sleep, and by a line appended to
  ``CEOD_FAULT_STEP_FILE`` if set (so a test knows training has begun).
"""

from __future__ import annotations

import builtins
import errno
import os
import runpy
import sys
import time

MATCH = os.environ.get("CEOD_FAULT_MATCH", "")
SKIP = int(os.environ.get("CEOD_FAULT_SKIP", "0"))
FULL_AFTER = int(os.environ.get("CEOD_FAULT_ENOSPC_AFTER", "-1"))
SLOW_WRITE = float(os.environ.get("CEOD_FAULT_SLOW_WRITE", "0"))
SLOW_STEP = float(os.environ.get("CEOD_FAULT_SLOW_STEP", "0"))
STEP_FILE = os.environ.get("CEOD_FAULT_STEP_FILE")
_real_open = builtins.open
_opened = [0]


class Faulty:
    """A file whose writes are slow and/or run out of space; everything else is the real file's."""

    def __init__(self, f, name: str) -> None:
        self._f, self._name, self._written = f, name, 0

    def write(self, data) -> int:
        if SLOW_WRITE:
            time.sleep(SLOW_WRITE)
        if FULL_AFTER >= 0 and self._written + len(data) > FULL_AFTER:
            raise OSError(errno.ENOSPC, os.strerror(errno.ENOSPC), self._name)
        self._written += len(data)
        return self._f.write(data)

    def __enter__(self):
        return self

    def __exit__(self, *exc) -> None:
        self._f.close()

    def __getattr__(self, key: str):
        return getattr(self._f, key)


def faulty_open(file, mode="r", *args, **kwargs):
    """``open``, returning a :class:`Faulty` file for the matching writes."""
    f = _real_open(file, mode, *args, **kwargs)
    if MATCH and MATCH in str(file) and any(c in mode for c in "wa"):
        _opened[0] += 1
        if _opened[0] > SKIP:
            return Faulty(f, str(file))
    return f


def after_step(*_args) -> None:
    """Optimizer post-step hook: note the step, then sleep."""
    if STEP_FILE:
        with _real_open(STEP_FILE, "a") as f:
            print("step", file=f)
    time.sleep(SLOW_STEP)


if __name__ == "__main__":
    builtins.open = faulty_open
    if SLOW_STEP or STEP_FILE:
        from torch.optim.optimizer import register_optimizer_step_post_hook

        register_optimizer_step_post_hook(after_step)
    sys.argv = ["ceod.train", *sys.argv[1:]]
    runpy.run_module("ceod.train", run_name="__main__", alter_sys=True)
