"""Resuming inside an epoch, exactly: the train loader's position, the random states, the epoch's running means.

What SIGTERM (SLURM preemption without ``--signal``) interrupts is an epoch. :class:`ceod.training.faults.Preemption`
then saves ``last.ckpt`` at the batch boundary where Lightning stopped, and the rerun continues from that batch
and ends bitwise like an uninterrupted run (CPU, ``trainer.deterministic=true``, ``data.num_workers=0``). Three
things besides the model, the optimizer and Lightning's loop counters make that exact:

* **The loader's position.** :class:`ResumableLoader` (the train loader, ``ceod.data.datamodule``) is a
  ``DataLoader`` whose :class:`EpochSampler` draws the epoch's permutation exactly as ``RandomSampler`` does
  (same seed from torch's global generator, same order: runs are unchanged) and remembers its seed. Lightning
  saves and restores loaders that have ``state_dict`` / ``load_state_dict`` (``fit_loop`` →
  ``combined_loader``): the state holds the seed and the number of batches trained, and the restored loader
  starts that permutation after them.
* **The random states** (torch, numpy, python; CUDA where initialised). Lightning fetches one batch ahead, so
  the data of batch *k* was drawn (augmentation in the loader) *before* step *k − 1* ran: the loader keeps the
  states seen before each of its last fetches, and the resumed loader sets the one recorded before the first
  batch it yields, then, before the next fetch, the state at the save — the sequence of draws of an
  uninterrupted run. (With ``num_workers > 0`` the order and the skip are exact, the workers' augmentation
  draws are not.)
* **The epoch's running means**: :mod:`ceod.training.epoch_results`.
"""

from __future__ import annotations

import random
from typing import Any

import numpy as np
import torch
from torch.utils.data import DataLoader, RandomSampler

from ceod.errors import ConfigError

KEEP = 4  # random states kept, of the latest fetches (Lightning prefetches one batch)


def _raw_state() -> tuple:
    """The global random states as the libraries give them (cheap: taken before every fetch)."""
    cuda = torch.cuda.get_rng_state_all() if torch.cuda.is_available() and torch.cuda.is_initialized() else None
    return torch.get_rng_state(), np.random.get_state(), random.getstate(), cuda


def rng_state(raw: tuple | None = None) -> dict:
    """torch, numpy, python (and CUDA, where initialised) global random states (now, or ``raw``), as types a
    ``weights_only`` checkpoint load accepts (tensors, numbers, strings, tuples)."""
    torch_state, (name, keys, pos, has_gauss, gauss), python, cuda = raw if raw is not None else _raw_state()
    numpy = (name, torch.from_numpy(keys.astype(np.int64)), int(pos), int(has_gauss), float(gauss))
    return {"torch": torch_state, "numpy": numpy, "python": python, "cuda": cuda}


def set_rng_state(state: dict) -> None:
    torch.set_rng_state(state["torch"])
    name, keys, pos, has_gauss, gauss = state["numpy"]
    np.random.set_state((name, keys.numpy().astype(np.uint32), pos, has_gauss, gauss))
    random.setstate(state["python"])
    if state.get("cuda") is not None and torch.cuda.is_available():
        torch.cuda.set_rng_state_all(state["cuda"])


class EpochSampler(RandomSampler):
    """``RandomSampler`` (no replacement) that remembers each permutation's seed and can start a permutation
    after its first ``skip`` indices (:meth:`resume_at`)."""

    def __init__(self, data_source) -> None:
        super().__init__(data_source)
        self.seed: int | None = None
        self._resume: tuple[int, int] | None = None

    def resume_at(self, seed: int, skip: int) -> None:
        self._resume = (int(seed), int(skip))

    def __iter__(self):
        if self._resume is not None:
            (seed, skip), self._resume = self._resume, None
        else:  # the draw RandomSampler makes, at the same moment (the first index): the same order
            seed, skip = int(torch.empty((), dtype=torch.int64).random_().item()), 0
        self.seed = seed
        generator = torch.Generator()
        generator.manual_seed(seed)
        yield from torch.randperm(len(self.data_source), generator=generator).tolist()[skip:]


class ResumableLoader(DataLoader):
    """A ``DataLoader`` that Lightning can save and restore mid-epoch (see the module docstring).

    ``shuffle=True`` uses an :class:`EpochSampler`; another sampler (Lightning's DistributedSampler under DDP)
    makes it an ordinary loader whose state says it cannot resume inside an epoch (:attr:`resumable`).
    """

    def __init__(self, dataset, *args, shuffle: bool | None = None, sampler=None, **kwargs) -> None:
        if shuffle and sampler is None and kwargs.get("batch_sampler") is None:
            sampler, shuffle = EpochSampler(dataset), None
        super().__init__(dataset, *args, shuffle=shuffle, sampler=sampler, **kwargs)
        self._fetched, self._before = 0, {}
        self._plan: dict | None = None  # a restored position, applied by the next iterator
        self._mark: int | None = None  # batches trained, set for the save of a mid-epoch checkpoint

    @property
    def resumable(self) -> bool:
        return isinstance(self.sampler, EpochSampler) and self.batch_size is not None and not self.drop_last

    def __iter__(self):
        return _Tracked(self, super().__iter__())

    def mark(self, batches: int | None) -> None:
        """The next :meth:`state_dict` describes the position after ``batches`` trained batches (None: none)."""
        self._mark = batches

    def state_dict(self) -> dict[str, Any]:
        if self._mark is None or not self.resumable:
            return {"position": None}
        k = self._mark
        before = {j: rng_state(raw) for j, raw in self._before.items() if j >= k}
        return {"position": {"seed": self.sampler.seed, "batches": k, "fetched": self._fetched, "before": before,
                             "now": rng_state(), "batch_size": self.batch_size}}

    def load_state_dict(self, state: dict[str, Any]) -> None:
        position = (state or {}).get("position")
        if position is None or not self.resumable:
            return
        if position["batch_size"] != self.batch_size:
            raise ConfigError(f"the checkpoint's train loader position is for batch size {position['batch_size']}, "
                              f"not {self.batch_size}: resume with that data.batch_size")
        self.sampler.resume_at(position["seed"], position["batches"] * self.batch_size)
        self._plan = position


class _Tracked:
    """The loader's iterator: records the random state before each fetch; replays a restored position's."""

    def __init__(self, loader: ResumableLoader, inner) -> None:
        self.loader, self.inner = loader, inner
        self.plan, loader._plan = loader._plan, None
        loader._fetched, loader._before = (self.plan["batches"] if self.plan else 0), {}

    def __iter__(self):
        return self

    def __len__(self) -> int:
        return len(self.inner)

    def __next__(self):
        loader, j = self.loader, self.loader._fetched
        if self.plan is not None:
            state = self.plan["before"].get(j, self.plan["now"] if j == self.plan["fetched"] else None)
            if state is not None:
                set_rng_state(state)
            if j >= self.plan["fetched"]:
                self.plan = None
        loader._before[j] = _raw_state()
        loader._before.pop(j - KEEP, None)
        batch = next(self.inner)
        loader._fetched = j + 1
        return batch
