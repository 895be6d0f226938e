"""CPU threads for small per-image work."""

from __future__ import annotations

from collections.abc import Iterator
from contextlib import contextmanager


@contextmanager
def one_thread() -> Iterator[None]:
    """torch on one intra-op thread inside (small per-image work on a CPU: 5-10× less CPU than 2 spinning
    threads, which also stall for seconds when the cores are shared)."""
    import torch

    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    try:
        yield
    finally:
        torch.set_num_threads(threads)
