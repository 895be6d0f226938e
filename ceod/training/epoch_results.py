"""The training epoch's running means (``train/loss``, ``train/ce`` … logged ``on_epoch``) across a mid-epoch
resume: Lightning does not save them. :func:`epoch_results` stores each one's sum and count in the checkpoint
(:class:`ceod.training.faults.Preemption`), and :func:`merge_results` adds them back where the resumed epoch logs
the metric first (``0 + x`` is ``x`` exactly, so the sum is bitwise the same). The loader's position and the
random states: :mod:`ceod.data.resumable_loader`.
"""

from __future__ import annotations

import torch


def _reduction(meta) -> str | None:
    for name in ("mean", "sum", "max", "min"):
        if getattr(meta, f"is_{name}_reduction"):
            return name
    return None


def epoch_results(trainer) -> dict[str, dict]:
    """The training epoch's running (``on_epoch``) metrics: {key: {value, count, reduce, meta}}."""
    out = {}
    for key, m in trainer.fit_loop.epoch_loop._results.items():
        reduce = _reduction(m.meta)
        if not (m.is_tensor and m.meta.on_epoch and reduce):
            continue
        count = m.cumulated_batch_size.detach().cpu().clone() if reduce == "mean" else None
        meta = {k: getattr(m.meta, k) for k in ("fx", "name", "prog_bar", "logger", "on_step", "on_epoch")}
        out[key] = {"value": m.value.detach().cpu().clone(), "count": count, "reduce": reduce, "meta": meta}
    return out


def _combine(m, saved: dict) -> None:
    value = saved["value"].to(m.value.device)
    if saved["reduce"] in ("mean", "sum"):
        m.value = value + m.value  # the saved sum, then this batch's term: the uninterrupted order
    else:
        m.value = getattr(torch, saved["reduce"])(value, m.value)
    if saved["count"] is not None:
        m.cumulated_batch_size = saved["count"].to(m.cumulated_batch_size.device) + m.cumulated_batch_size


def merge_results(trainer, saved: dict[str, dict], epoch_end: bool = False) -> dict[str, dict]:
    """Add the saved running metrics into those the resumed epoch has logged since → the ones still waiting.
    ``epoch_end``: recreate those the rest of the epoch never logged (e.g. ``train/od`` without a defect)."""
    results, waiting = trainer.fit_loop.epoch_loop._results, {}
    for key, entry in saved.items():
        if key not in results and epoch_end:
            meta = entry["meta"]
            results.log(meta["fx"], meta["name"], torch.zeros(()), prog_bar=meta["prog_bar"], logger=meta["logger"],
                        on_step=meta["on_step"], on_epoch=meta["on_epoch"], reduce_fx=entry["reduce"], batch_size=1)
            m = results[key]
            m.value = entry["value"].to(m.value.device)
            if entry["count"] is not None:
                m.cumulated_batch_size = entry["count"].to(m.cumulated_batch_size.device)
        elif key in results:
            _combine(results[key], entry)
        else:
            waiting[key] = entry
    return waiting
