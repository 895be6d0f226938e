"""The pieces of an exact mid-epoch resume (``ceod.data.resumable_loader``, ``ceod.training.epoch_results``) and of the background checkpoint commit
(``ceod.training.checkpoint_io``), on real loaders and files. The end-to-end SIGTERM case: ``tests/test_faults.py``."""

from __future__ import annotations

import os

import pytest
import torch
from torch.utils.data import DataLoader, Dataset

from ceod.training.checkpoint_io import AtomicCheckpointIO, StorageError
from ceod.errors import ConfigError
from ceod.data.resumable_loader import ResumableLoader


class Noisy(Dataset):
    """Items that draw from torch's global generator, as the loader-side augmentation does."""

    def __len__(self) -> int:
        return 10

    def __getitem__(self, i: int):
        return torch.tensor(float(i)), torch.rand(())


def _train(loader, steps: int | None = None, prefetched=None):
    """Lightning's order of draws: fetch one batch ahead, then a "step" that draws too → the batches and step
    draws seen; with ``steps`` it stops after that many steps (and returns the still open iterator)."""
    it = prefetched if prefetched is not None else iter(loader)
    seen, nxt = [], next(it, None)
    while nxt is not None and (steps is None or len(seen) < steps):
        batch, nxt = nxt, next(it, None)
        seen.append((batch[0].tolist(), batch[1].tolist(), torch.rand(()).item()))
    return seen, it


def test_resumable_loader_keeps_the_order_and_resumes_at_a_batch_with_the_same_draws():
    """Same permutation as DataLoader(shuffle=True) for the same seed; stopped after 2 of 4 batches and saved,
    a new loader restored from the state yields the other batches with the same random draws (data and steps),
    also when the global generator was disturbed in between; a state saved without a mark resumes nothing."""
    torch.manual_seed(3)
    plain, _ = _train(DataLoader(Noisy(), batch_size=3, shuffle=True))
    torch.manual_seed(3)
    full, _ = _train(ResumableLoader(Noisy(), batch_size=3, shuffle=True))
    assert full == plain and len(full) == 4

    torch.manual_seed(3)
    loader = ResumableLoader(Noisy(), batch_size=3, shuffle=True)
    head, _ = _train(loader, steps=2)
    loader.mark(2)
    state = loader.state_dict()
    loader.mark(None)
    assert head == full[:2] and state["position"]["batches"] == 2 and loader.state_dict() == {"position": None}

    torch.manual_seed(99)  # a new process: another random state until the loader restores its own
    again = ResumableLoader(Noisy(), batch_size=3, shuffle=True)
    again.load_state_dict(state)
    tail, _ = _train(again)
    assert tail == full[2:]
    again.load_state_dict({"position": None})
    torch.manual_seed(3)
    assert _train(again)[0] == full  # an unmarked state (an epoch-end checkpoint): a whole new epoch
    with pytest.raises(ConfigError, match="batch size 3, not 4: resume with that data.batch_size"):
        ResumableLoader(Noisy(), batch_size=4, shuffle=True).load_state_dict(state)


def test_background_commit_order_failure_and_fsync_false(tmp_path):
    """Saves return before their fsync + rename; the queue keeps their order, a removal waits behind them, a
    load or ``wait`` sees them done; a commit that fails in the background (the target is a folder) raises a
    one-line StorageError at the next wait and leaves no temporary file; ``fsync=False`` renames in the call."""
    io = AtomicCheckpointIO()
    a, b = tmp_path / "a.ckpt", tmp_path / "b.ckpt"
    io.save_checkpoint({"epoch": 0, "w": torch.ones(3)}, a)
    io.save_checkpoint({"epoch": 1, "w": torch.ones(3)}, a)
    io.save_checkpoint({"epoch": 2, "w": torch.ones(3)}, b)
    io.remove_checkpoint(a)
    assert io.load_checkpoint(b)["epoch"] == 2 and not a.exists()
    (tmp_path / "c.ckpt").mkdir()
    io.save_checkpoint({"epoch": 3}, tmp_path / "c.ckpt")
    with pytest.raises(StorageError) as err:
        io.wait()
    assert str(err.value).startswith(f"cannot write checkpoint (epoch 3) {tmp_path / 'c.ckpt'}: ")
    assert "\n" not in str(err.value) and sorted(os.listdir(tmp_path)) == ["b.ckpt", "c.ckpt"]
    io.teardown()
    assert io._worker is None

    quick = AtomicCheckpointIO(fsync=False)
    quick.save_checkpoint({"epoch": 4}, a)
    assert torch.load(a, weights_only=False)["epoch"] == 4 and quick._worker is None


def test_metrics_rows_logged_after_a_mid_epoch_resume_point_are_dropped(tmp_path):
    """Resumed from a mid-epoch checkpoint of epoch 1 at step 6 (a run that resumed there and was killed later
    had logged steps 6 and 7): the rows of epoch 1 before step 6 stay, the later ones go."""
    from ceod.training.loggers import CSVLogger

    (tmp_path / "csv").mkdir()
    (tmp_path / "csv" / "metrics.csv").write_text("epoch,step,train/loss_step,val/auroc\n0,3,,0.5\n1,4,0.9,\n"
                                                  "1,6,0.8,\n1,7,,0.6\n")
    log = CSVLogger(save_dir=str(tmp_path), name="csv", version="")
    log.resume_after(1, None, before_step=6)
    log.save()
    rows = (tmp_path / "csv" / "metrics.csv").read_text().splitlines()
    assert rows == ["epoch,step,train/loss_step,val/auroc", "0,3,,0.5", "1,4,0.9,"]


def test_running_means_come_back_bitwise_also_for_a_metric_the_rest_of_the_epoch_never_logs():
    """Lightning's own result collection: the epoch means of a run stopped after batch 2 and resumed equal the
    uninterrupted run's bitwise — ``train/loss`` (logged every batch), ``train/od`` (only in batch 1, as when
    the rest of the epoch has no defective image) and a max-reduced one. (Adding the saved sum at the end of
    the epoch instead would differ in the last bit for these losses.)"""
    from types import SimpleNamespace

    from lightning.pytorch.trainer.connectors.logger_connector.result import (
        _ResultCollection,
    )

    from ceod.training.epoch_results import epoch_results, merge_results

    batches = [{"loss": 0.7, "od": 0.3, "peak": 5.0}, {"loss": 0.33, "peak": 2.0}, {"loss": 0.9, "peak": 7.0},
               {"loss": 0.37, "peak": 1.0}]

    def log(results, batch):
        results.log("training_step", "train/loss", torch.tensor(batch["loss"]), on_step=True, batch_size=3)
        results.log("training_step", "peak", torch.tensor(batch["peak"]), reduce_fx="max", batch_size=3)
        if "od" in batch:
            results.log("training_step", "train/od", torch.tensor(batch["od"]), batch_size=1)

    def trainer(results):
        return SimpleNamespace(fit_loop=SimpleNamespace(epoch_loop=SimpleNamespace(_results=results)))

    full, head, tail = _ResultCollection(True), _ResultCollection(True), _ResultCollection(True)
    for b in batches:
        log(full, b)
    for b in batches[:2]:
        log(head, b)
    waiting = epoch_results(trainer(head))
    for b in batches[2:]:
        log(tail, b)
        waiting = merge_results(trainer(tail), waiting)
    assert list(waiting) == ["training_step.train/od"]
    assert merge_results(trainer(tail), waiting, epoch_end=True) == {}
    assert sorted(tail) == sorted(full)
    for key in full:
        assert torch.equal(tail[key].compute(), full[key].compute()), key
