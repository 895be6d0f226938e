"""A run folder's life: its name, the config that made it, when it resumes, how it ends.

* :func:`run_id` names the folder: the SLURM job id on a cluster (a requeued job finds its folder again),
  else the launch time to the millisecond plus a random suffix (concurrent launches never share one).
* :func:`config_record` is the resolved config minus the run-location and run-control keys
  (:data:`RUN_CONTROL`); its hash goes into every checkpoint (:class:`RunState`). Auto-resume from
  ``checkpoints/last.ckpt`` happens only when the hashes match (:func:`resume_checkpoint`); an unreadable
  ``last.ckpt`` is moved aside as ``last.ckpt.corrupt`` and the newest readable checkpoint is used instead.
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


def resume_candidates(out_dir: Path) -> list[Path]:
    """Checkpoints a restarted run may resume from, in order: ``checkpoints/last.ckpt`` and Lightning's SLURM
    ``hpc_ckpt_*.ckpt``, newest first (the resume points), then the other ``checkpoints/*.ckpt`` (the best
    epoch's), newest first — the fallbacks."""
    def newest_first(paths) -> list[Path]:
        stamped = []
        for p in paths:
            try:
                stamped.append((p.stat().st_mtime, p))
            except OSError:  # vanished meanwhile
                continue
        return [p for _, p in sorted(stamped, reverse=True)]

    last = out_dir / "checkpoints" / "last.ckpt"
    primary = newest_first([last, *out_dir.glob("hpc_ckpt_*.ckpt")])
    return primary + newest_first(p for p in (out_dir / "checkpoints").glob("*.ckpt") if p != last)


def prune_after(found: list[Path], chosen: Path, epoch: int, note) -> None:
    """Remove the checkpoints of epochs after the resume point (rank 0): the resumed run writes them again,
    and a stale one would block its name or be taken for a later resume point."""
    if not is_rank_zero():
        return
    for p in found:
        if p == chosen:
            continue
        try:
            later = int(torch.load(p, map_location="cpu", weights_only=False, mmap=True).get("epoch", -1)) > epoch
        except Exception:
            continue
        if later:
            p.unlink(missing_ok=True)
            note(f"removed {p} (a later epoch than the resume point; the resumed run writes it again)")


def move_aside(path: Path) -> Path | None:
    """Rename an unreadable checkpoint to ``NAME.corrupt`` (``.corrupt.1`` … if taken) → the new path, or None
    when it cannot be moved (other ranks leave it to rank 0)."""
    if not is_rank_zero():
        return None
    target, n = path.with_name(path.name + ".corrupt"), 0
    while target.exists():
        n += 1
        target = path.with_name(f"{path.name}.corrupt.{n}")
    try:
        path.rename(target)
    except OSError:
        return None
    return target


def _readable(path: Path, note) -> dict | None:
    """The checkpoint at ``path``, or None (told through ``note``) when it is unreadable (moved aside),
    vanished, or saved mid-epoch (resuming it would not repeat an uninterrupted run)."""
    try:
        ckpt = read_checkpoint(path, f"the run folder's {path.name}")
    except ConfigError as e:
        if not path.is_file():
            return None
        moved = move_aside(path)
        note(f"warning: {e}; " + (f"moved aside as {moved.name}" if moved else "left in place"))
        return None
    if not ckpt.get("ceod_run", {}).get("epoch_end", True):
        note(f"skipping {path} (saved mid-epoch {ckpt.get('epoch', '?')}; the epoch restarts from its beginning)")
        return None
    return ckpt


def resume_checkpoint(cfg: DictConfig, out_dir: Path, record: dict, note=print) -> tuple[str | None, dict | None]:
    """(checkpoint path, its contents) the run starts from, or (None, None) for a fresh start.

    ``ckpt_path`` set: that file (any config — an explicit choice). Else, when training and not under
    fast_dev_run, the first readable epoch-end checkpoint of :func:`resume_candidates` — an unreadable one is
    moved aside as ``*.corrupt`` and the next one tried — written by this config (``resume=force``: by any
    config); checkpoints of later epochs are removed (:func:`prune_after`). None readable (or only ``*.corrupt`` ones left): a fresh start with ``resume=force``, else one
    ConfigError line.
    """
    resume = cfg.get("resume", "auto")
    if cfg.get("ckpt_path") is not None:
        if cfg.ckpt_path in ("last", "best", "hpc"):
            return cfg.ckpt_path, None
        return str(cfg.ckpt_path), read_checkpoint(cfg.ckpt_path)
    if not cfg.get("train", True) or cfg.trainer.get("fast_dev_run"):
        return None, None
    found, corrupt = resume_candidates(out_dir), sorted((out_dir / "checkpoints").glob("*.ckpt.corrupt*"))
    if not found and not corrupt:
        return None, None
    for i, path in enumerate(found):
        ckpt = _readable(path, note)
        if ckpt is None:
            continue
        old = ckpt.get("ceod_run", {}).get("config")
        if resume != "force" and (old is None or config_hash(old) != config_hash(record)):
            what = "; ".join(changed_keys(old, record)[:4]) if old is not None else "no config recorded"
            raise RunFolderConflict(
                f"run folder {out_dir} holds a run of another config ({what}): start fresh in a new folder "
                f"(hydra.run.dir=<new dir>, or delete {out_dir / 'checkpoints'}) or resume it anyway with resume=force")
        if i:
            note(f"falling back to {path} (epoch {ckpt.get('epoch', '?')}), the newest readable resume point")
        prune_after(found, path, int(ckpt.get("epoch", -1)), note)
        return str(path), ckpt
    if resume == "force":
        note(f"warning: no usable checkpoint in {out_dir}: starting fresh (resume=force)")
        return None, None
    moved = ", ".join(p.name for p in corrupt) or "none"
    raise ConfigError(f"no usable checkpoint in {out_dir} (unreadable, moved aside: {moved}): "
                      "rerun with resume=force to start this folder afresh, or start in a new folder "
                      "(hydra.run.dir=<new dir>)")


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
    """

    def __init__(self, seed: int, record: dict) -> None:
        self.seed, self.record = int(seed), record
        self._start_epoch = 0
        self._seeded: int | None = None
        self._epoch_end = True

    def on_save_checkpoint(self, trainer, pl_module, checkpoint: dict) -> None:
        checkpoint["ceod_run"] = {"config": self.record, "config_hash": config_hash(self.record),
                                  "epoch_end": self._epoch_end}  # false: saved mid-epoch (e.g. hpc_ckpt)

    def on_train_batch_end(self, trainer, pl_module, outputs, batch, batch_idx: int) -> None:
        self._epoch_end = batch_idx + 1 >= trainer.num_training_batches

    def on_load_checkpoint(self, trainer, pl_module, checkpoint: dict) -> None:
        self._start_epoch = int(checkpoint.get("epoch", -1)) + 1  # checkpoints are written at epoch ends

    def on_fit_start(self, trainer, pl_module) -> None:
        seed_epoch(self.seed, self._start_epoch)
        self._seeded = self._start_epoch

    def on_train_epoch_start(self, trainer, pl_module) -> None:
        self._epoch_end = False
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
    from ceod.checkpoint_io import write_atomically

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
