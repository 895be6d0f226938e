"""A run folder's life: its name, the config that made it, when it resumes, how it ends.

* :func:`run_id` names the folder: the SLURM job id on a cluster (a requeued job finds its folder again),
  else the launch time to the millisecond plus a random suffix (concurrent launches never share one).
* :func:`config_record` is the resolved config minus the run-location and run-control keys
  (:data:`RUN_CONTROL`); its hash goes into every checkpoint (:class:`RunState`). Auto-resume from
  ``checkpoints/last.ckpt`` happens only when the hashes match (:func:`ceod.training.resume.resume_checkpoint`, which
  also falls back past an unreadable ``last.ckpt``).
* :class:`RunState` makes each training epoch's randomness a function of (seed, epoch) — set right before
  the epoch's data iterator is created — so a killed-and-resumed run repeats an uninterrupted one.
* :func:`failure_marker` leaves ``FAILED`` (the error line) in a run folder whose run raised.
"""

from __future__ import annotations

import hashlib
import json
import os
import random
import secrets
import time
from contextlib import contextmanager
from pathlib import Path
from typing import Any, Iterator

import numpy as np
import torch
from lightning.pytorch.callbacks import Callback
from omegaconf import DictConfig, OmegaConf

from ceod.errors import ConfigError

#: keys that say where a run writes or how long it goes on, not what it computes: they may change on resume
RUN_CONTROL = ("ckpt_path", "resume", "train", "test", "logger", "trainer.max_epochs", "trainer.max_steps",
               "trainer.max_time", "trainer.enable_progress_bar", "trainer.log_every_n_steps", "trainer.plugins")
RUN_DIR_TOKEN = "<run dir>"


class RunFolderConflict(ConfigError):
    """The run folder holds a run of another config (its folder is left untouched, no FAILED marker)."""


def run_id() -> str:
    """Name of this run's (or sweep's) folder, fixed once per launch and shared by its jobs.

    CEOD_RUN_ID if set (inherited by sweep jobs and DDP workers), else the SLURM job id (with array
    task) — stable across requeues — else ``YYYY-MM-DD_HH-MM-SS.mmm-xxxx`` (time + 4 random hex digits).
    """
    value = os.environ.get("CEOD_RUN_ID")
    if not value:
        job = os.environ.get("SLURM_ARRAY_JOB_ID") or os.environ.get("SLURM_JOB_ID")
        if job:
            task = os.environ.get("SLURM_ARRAY_TASK_ID")
            value = f"slurm-{job}" + (f"_{task}" if task and os.environ.get("SLURM_ARRAY_JOB_ID") else "")
        else:
            now = time.time()
            value = time.strftime("%Y-%m-%d_%H-%M-%S", time.localtime(now))
            value += f".{int(now % 1 * 1000):03d}-{secrets.token_hex(2)}"
        os.environ["CEOD_RUN_ID"] = value
    return value


def _drop(tree: dict, dotted: str) -> None:
    *parents, last = dotted.split(".")
    for key in parents:
        tree = tree.get(key) if isinstance(tree, dict) else None
        if tree is None:
            return
    if isinstance(tree, dict):
        tree.pop(last, None)


def config_record(cfg: DictConfig, out_dir: str | Path) -> dict:
    """The resolved config as plain data, minus :data:`RUN_CONTROL`, with the run folder written as a token."""
    tree = OmegaConf.to_container(cfg, resolve=True)
    tree.pop("hydra", None)
    for key in RUN_CONTROL:
        _drop(tree, key)
    text = json.dumps(tree, sort_keys=True, default=str).replace(str(out_dir), RUN_DIR_TOKEN)
    return json.loads(text)


def config_hash(record: dict) -> str:
    """12 hex digits identifying a :func:`config_record`."""
    return hashlib.sha1(json.dumps(record, sort_keys=True).encode()).hexdigest()[:12]


def _flat(tree: Any, prefix: str = "") -> dict[str, Any]:
    if isinstance(tree, dict):
        out: dict[str, Any] = {}
        for k, v in tree.items():
            out.update(_flat(v, f"{prefix}{k}."))
        return out
    return {prefix[:-1]: tree}


def changed_keys(old: dict, new: dict) -> list[str]:
    """Dotted keys whose values differ between two config records, e.g. ``loss.omega: 0.0 → 0.1``."""
    a, b = _flat(old), _flat(new)
    missing = object()
    return [f"{k}: {a.get(k, '(none)')} → {b.get(k, '(none)')}" for k in sorted(a.keys() | b.keys())
            if a.get(k, missing) != b.get(k, missing)]


def read_checkpoint(path: str | Path, key: str = "ckpt_path") -> dict:
    """A Lightning checkpoint as a dict (tensors memory-mapped); one-line ConfigError if it cannot be used."""
    try:
        ckpt = torch.load(path, map_location="cpu", weights_only=False, mmap=True)
    except FileNotFoundError:
        raise ConfigError(f"checkpoint not found: {path} ({key})") from None
    except Exception as e:  # truncated, not a torch file, unpickling error …: all say the same to a user
        first = (str(e).strip().splitlines() or [type(e).__name__])[0].split(". ")[0]  # torch's first sentence
        raise ConfigError(f"cannot read checkpoint {path} ({key}): {type(e).__name__}: {first}") from None
    if not isinstance(ckpt, dict) or "state_dict" not in ckpt:
        raise ConfigError(f"not a Lightning checkpoint (no state_dict): {path} ({key})")
    return ckpt


def seed_epoch(seed: int, epoch: int) -> None:
    """Seed torch, numpy and random from (seed, epoch): an epoch's randomness does not depend on history."""
    value = int(np.random.SeedSequence([seed, epoch]).generate_state(1)[0])
    torch.manual_seed(value)
    np.random.seed(value)
    random.seed(value)


class RunState(Callback):
    """Stores the config record in every checkpoint and seeds each training epoch from (seed, epoch).

    The seeding happens right before the epoch's data iterator is made (sampler order, augmentation,
    dropout follow from it): at fit start for the first epoch of this process (fresh or resumed — the
    iterator is made before ``on_train_epoch_start`` there), at ``on_train_epoch_start`` for the others.
    Exact for ``num_workers=0`` or non-persistent workers (persistent workers keep their RNG across epochs).
    Resumed inside an epoch (a SIGTERM resume point), that epoch's seeding is replayed and the loader then
    restores its position and the random states (:mod:`ceod.data.resumable_loader`).
    """

    def __init__(self, seed: int, record: dict) -> None:
        self.seed, self.record = int(seed), record
        self._start_epoch = 0
        self._seeded: int | None = None
        self._epoch_end, self._train_epoch_ended = True, False

    def on_save_checkpoint(self, trainer, pl_module, checkpoint: dict) -> None:
        checkpoint["ceod_run"] = {"config": self.record, "config_hash": config_hash(self.record),
                                  "epoch_end": self._epoch_end,  # false: saved mid-epoch (e.g. hpc_ckpt)
                                  "epoch_log": self._epoch_log(trainer)}

    def _epoch_log(self, trainer) -> dict | None:
        """The epoch's training metrics that Lightning logs just *after* the epoch-end checkpoint is written
        (a kill in between would lose their metrics.csv row): {"step", "metrics"} for the resumed CSV logger."""
        if not self._train_epoch_ended:
            return None
        try:
            logged = trainer._logger_connector.metrics["log"]  # what update_train_epoch_metrics will log
            step = trainer.fit_loop.epoch_loop._batches_that_stepped - 1  # the step it logs them at
            return {"step": int(step), "metrics": {k: float(v) for k, v in logged.items()}}
        except Exception:  # another Lightning version: the row may then be lost, nothing else
            return None

    def on_train_epoch_end(self, trainer, pl_module) -> None:
        self._train_epoch_ended = True  # runs before the checkpoint callbacks' on_train_epoch_end

    def on_train_batch_end(self, trainer, pl_module, outputs, batch, batch_idx: int) -> None:
        self._epoch_end = batch_idx + 1 >= trainer.num_training_batches

    def on_load_checkpoint(self, trainer, pl_module, checkpoint: dict) -> None:
        mid = "ceod_resume" in checkpoint  # saved inside its epoch (ceod.training.faults.Preemption): that epoch goes on
        self._start_epoch = int(checkpoint.get("epoch", -1)) + (0 if mid else 1)
        self._epoch_end = not mid

    def on_fit_start(self, trainer, pl_module) -> None:
        seed_epoch(self.seed, self._start_epoch)
        self._seeded = self._start_epoch

    def on_train_epoch_start(self, trainer, pl_module) -> None:
        self._epoch_end = self._train_epoch_ended = False
        if trainer.current_epoch != self._seeded:
            seed_epoch(self.seed, trainer.current_epoch)
        self._seeded = None


def is_rank_zero() -> bool:
    """True in the process that owns the run folder (before and after the Trainer exists)."""
    from lightning.fabric.utilities.rank_zero import rank_zero_only

    return getattr(rank_zero_only, "rank", 0) == 0


@contextmanager
def failure_marker(out_dir: Path, describe) -> Iterator[None]:
    """Write ``out_dir/FAILED`` (``describe(exception)``) if the body raises an Exception; remove it on success.

    The marker is written atomically and only if it can be (on a full disk it may not): it never hides the
    run's own error, and no temporary file is left. Interrupts (KeyboardInterrupt, SIGTERM, SLURM preemption)
    leave no marker: the run may be resumed.
    """
    from ceod.training.checkpoint_io import write_atomically

    marker = out_dir / "FAILED"
    try:
        yield
    except Exception as e:
        if is_rank_zero() and out_dir.is_dir() and not isinstance(e, RunFolderConflict):
            text = f"{time.strftime('%Y-%m-%d %H:%M:%S')} {describe(e)}\n".encode()
            try:
                write_atomically(marker, lambda f: f.write(text))
            except OSError:
                pass
        raise
    if is_rank_zero() and out_dir.is_dir():
        marker.unlink(missing_ok=True)
