"""Which checkpoint a restarted run continues from — and what it does when that one cannot be read.

Candidates (:func:`resume_candidates`): ``checkpoints/last.ckpt`` and Lightning's SLURM ``hpc_ckpt_N.ckpt``
(the resume points, newest first), then the other ``checkpoints/*.ckpt`` (the best epoch's: full training
state too), newest first. The first one that is readable, saved at an epoch end and written by this config
(:func:`ceod.training.run_dir.config_hash`; ``resume=force``: any config) is taken:

* an unreadable one (truncated, zero bytes, not a checkpoint) is named in a warning and moved aside as
  ``NAME.corrupt`` (:func:`move_aside`), and the next candidate is tried; the log says which one is used and
  from which epoch;
* one saved at a batch boundary by :class:`ceod.training.faults.Preemption` (SIGTERM mid-epoch: it holds the loader's
  position and the random states, :mod:`ceod.data.resumable_loader`) is resumed from that batch; one saved mid-epoch
  otherwise (Lightning's SIGUSR1 handler under sbatch, inside a step) is skipped: the epoch restarts from its
  beginning — exactly what an uninterrupted run computes;
* checkpoints of epochs after the chosen one are removed (:func:`prune_after`): the resumed run writes them
  again, and a stale one would block its file name (or, for ``hpc_ckpt_*``, be resumed by Lightning itself);
* nothing usable although there were checkpoints (all unreadable, or only ``*.corrupt`` ones left): a fresh
  start with ``resume=force``, else one ``error:`` line saying how to proceed.
"""

from __future__ import annotations

from pathlib import Path

import torch
from omegaconf import DictConfig

from ceod.errors import ConfigError
from ceod.training.run_dir import RunFolderConflict, changed_keys, config_hash, is_rank_zero, read_checkpoint

__all__ = ["resume_candidates", "move_aside", "prune_after", "resume_checkpoint"]


def _newest_first(paths) -> list[Path]:
    stamped = []
    for p in paths:
        try:
            stamped.append((p.stat().st_mtime, p))
        except OSError:  # vanished meanwhile
            continue
    return [p for _, p in sorted(stamped, reverse=True)]


def resume_candidates(out_dir: Path) -> list[Path]:
    """The checkpoints a restarted run may resume from, in the order they are tried (module docstring)."""
    last = out_dir / "checkpoints" / "last.ckpt"
    primary = _newest_first([last, *out_dir.glob("hpc_ckpt_*.ckpt")])
    return primary + _newest_first(p for p in (out_dir / "checkpoints").glob("*.ckpt") if p != last)


def inert_name(name: str) -> str:
    """``name`` such that Lightning's SLURM resume, which takes any file with ``hpc_ckpt_`` and digits in its
    name for one of its checkpoints, never picks it up."""
    return name.replace("hpc_ckpt_", "hpc-ckpt-")


def move_aside(path: Path) -> Path | None:
    """Rename an unreadable checkpoint to ``NAME.corrupt`` (``.corrupt.1`` … if taken) → the new path, or None
    when it cannot be moved (or on a rank other than 0, which leaves it to rank 0)."""
    if not is_rank_zero():
        return None
    base = inert_name(path.name) + ".corrupt"
    target, n = path.with_name(base), 0
    while target.exists():
        n += 1
        target = path.with_name(f"{base}.{n}")
    try:
        path.rename(target)
    except OSError:
        return None
    return target


def _epoch(path: Path) -> int | None:
    try:
        return int(torch.load(path, map_location="cpu", weights_only=False, mmap=True).get("epoch", -1))
    except Exception:
        return None


def prune_after(found: list[Path], chosen: Path | None, epoch: int, note) -> None:
    """Remove (rank 0) the checkpoints of ``found`` other than ``chosen`` whose epoch is after ``epoch``."""
    if not is_rank_zero():
        return
    for p in found:
        e = _epoch(p) if p != chosen and p.is_file() else None
        if e is not None and e > epoch:
            p.unlink(missing_ok=True)
            note(f"removed {p} (epoch {e}, later than the resume point: the resumed run writes it again)")


def _usable(path: Path, note) -> tuple[dict | None, str]:
    """(the checkpoint, "ok") or (None, why: "unreadable" — told and moved aside —, "mid-epoch", "vanished")."""
    try:
        ckpt = read_checkpoint(path, f"the run folder's {path.name}")
    except ConfigError as e:
        if not path.is_file():
            return None, "vanished"
        moved = move_aside(path)
        note(f"warning: {e}; " + (f"moved aside as {moved.name}" if moved else "left in place"))
        return None, "unreadable"
    if not ckpt.get("ceod_run", {}).get("epoch_end", True) and "ceod_resume" not in ckpt:
        note(f"skipping {path} (saved mid-epoch {ckpt.get('epoch', '?')}: that epoch restarts from its beginning)")
        return None, "mid-epoch"
    return ckpt, "ok"


def _check_config(ckpt: dict, record: dict, out_dir: Path) -> None:
    old = ckpt.get("ceod_run", {}).get("config")
    if old is None or config_hash(old) != config_hash(record):
        what = "; ".join(changed_keys(old, record)[:4]) if old is not None else "no config recorded"
        raise RunFolderConflict(
            f"run folder {out_dir} holds a run of another config ({what}): start fresh in a new folder "
            f"(hydra.run.dir=<new dir>, or delete {out_dir / 'checkpoints'}) or resume it anyway with resume=force")


def resume_checkpoint(cfg: DictConfig, out_dir: Path, record: dict, note=print) -> tuple[str | None, dict | None]:
    """(checkpoint path, its contents) the run starts from, or (None, None) for a fresh start.

    ``ckpt_path`` set: that file (any config — an explicit choice). Else, when training and not under
    fast_dev_run, the rule of the module docstring; ``note`` prints what it did.
    """
    if cfg.get("ckpt_path") is not None:
        if cfg.ckpt_path in ("last", "best", "hpc"):
            return cfg.ckpt_path, None
        return str(cfg.ckpt_path), read_checkpoint(cfg.ckpt_path)
    if not cfg.get("train", True) or cfg.trainer.get("fast_dev_run"):
        return None, None
    found, unusable = resume_candidates(out_dir), []
    for i, path in enumerate(found):
        ckpt, why = _usable(path, note)
        if ckpt is None:
            unusable.append(why)
            continue
        if cfg.get("resume", "auto") != "force":
            _check_config(ckpt, record, out_dir)
        if "unreadable" in unusable:
            note(f"falling back to {path} (epoch {ckpt.get('epoch', '?')}), the newest readable resume point")
        prune_after(found, path, int(ckpt.get("epoch", -1)), note)
        return str(path), ckpt
    corrupt = sorted((out_dir / "checkpoints").glob("*.corrupt*")) + sorted(out_dir.glob("*.corrupt*"))
    if not corrupt and "unreadable" not in unusable:  # nothing, or only a first epoch's mid-epoch hpc_ckpt
        prune_after(found, None, -1, note)
        return None, None
    if cfg.get("resume", "auto") == "force":
        note(f"warning: no usable checkpoint in {out_dir}: starting afresh (resume=force)")
        prune_after(found, None, -1, note)
        return None, None
    raise ConfigError(f"no usable checkpoint in {out_dir} (unreadable, moved aside: "
                      f"{', '.join(p.name for p in corrupt) or 'none'}): rerun with resume=force to start this "
                      "folder afresh, or start in a new folder (hydra.run.dir=<new dir>)")
