"""Checkpoint writes under SIGKILL, and what atomic writing costs (issue 19).

    python experiments/bench_checkpoint.py                          # 60 kills per writer + overhead, both folders
    python experiments/bench_checkpoint.py --kills 100 --repeats 30 --out experiments/results/bench_checkpoint.json

**Kill points.** A folder holds a complete checkpoint (epoch 0). A forked child process writes the next one
(epoch 1) over it with one of three writers and is SIGKILLed after a random delay, uniform in [0, 1.5 × the
median duration of the write in such a child left alone], counted from the child's "starting" byte on a
pipe: kill points spread over the whole write, a few after it. Then the file is loaded: epoch 0 (the old one
survived), epoch 1 (the new one is complete) or unreadable / missing (truncated: the resume point is lost).
Writers: ``atomic`` = :class:`ceod.training.checkpoint_io.AtomicCheckpointIO` (temp file in the same folder, fsync,
rename); ``lightning`` = Lightning's ``TorchCheckpointIO`` (buffer → fsspec transaction: a temp file in the
system temp folder, *moved* over the target — a copy when the run folder is on another file system);
``in_place`` = ``torch.save(ckpt, path)``. The run folder is ``--kill-dir`` (default ``/dev/shm``: a tmpfs, a
different file system from ``/tmp``, like a cluster's scratch beside a node-local ``/tmp``).

**Overhead.** What a save costs the training loop — the time the save call blocks, plus what the next
``wait`` of the background commit still blocks after ``--gap`` s of "training" (an epoch is seconds; the
default 0.2 s is shorter than any) — for the custom CNN's checkpoint (weights + Adamax state, 3.4 MB) and
EfficientNet-B0's (46 MB), saved over an existing file, in each folder of ``--dirs``. The writers are
interleaved in a new random order each round (the machine is noisy), every one followed by the same gap:
``atomic`` = ``AtomicCheckpointIO()`` (serialise here, fsync + rename + folder fsync in the background);
``atomic_sync`` = ``AtomicCheckpointIO(background=False)`` (the same, all in the caller: what ceod did
before); ``atomic_nofsync`` = ``AtomicCheckpointIO(fsync=False)`` (rename, no fsync); ``lightning`` and
``in_place`` as above. Medians and minima are reported, and for ``atomic`` the median time until the new
file is durable and renamed (``durable``). ``--kills 0`` times only.
"""

from __future__ import annotations

import argparse
import json
import os
import random
import shutil
import signal
import statistics
import tempfile
import time
from pathlib import Path

import torch

from ceod.training.checkpoint_io import AtomicCheckpointIO


def checkpoint(model: torch.nn.Module, epoch: int) -> dict:
    """A Lightning-shaped checkpoint: weights plus two Adamax moment buffers per parameter."""
    state = {k: v.clone() for k, v in model.state_dict().items()}
    moments = {i: {"exp_avg": torch.randn_like(p), "exp_inf": torch.rand_like(p), "step": torch.tensor(7.0)}
               for i, p in enumerate(model.parameters())}
    return {"epoch": epoch, "global_step": 100 * epoch, "state_dict": state,
            "optimizer_states": [{"state": moments, "param_groups": [{"lr": 0.002}]}], "callbacks": {}}


def models() -> dict[str, torch.nn.Module]:
    import timm

    from ceod.models.custom_cnn import CustomCNN

    return {"custom_cnn": CustomCNN(in_chans=1), "efficientnet_b0": timm.create_model("efficientnet_b0",
                                                                                         num_classes=2)}


def _in_place(ckpt: dict, path: Path) -> None:
    torch.save(ckpt, path)


class Atomic:
    """``AtomicCheckpointIO(**options).save_checkpoint`` (a writer), ``complete=True``: it waits for the
    background commit too (a child killed in the kill trials must have written the whole file)."""

    def __init__(self, complete: bool = False, **options) -> None:
        self.io, self.complete = AtomicCheckpointIO(**options), complete
        self.durable: list[float] = []  # s from the call to the rename, of the background commits

    def __call__(self, ckpt: dict, path: Path) -> None:
        start = time.perf_counter()
        self.io.save_checkpoint(ckpt, path)
        if self.io._pending:
            self.io._pending[-1][0].add_done_callback(lambda _: self.durable.append(time.perf_counter() - start))
        if self.complete:
            self.io.wait()

    def wait(self) -> None:
        self.io.wait()


def writers(complete: bool = False) -> dict:
    from lightning.fabric.plugins.io.torch_io import TorchCheckpointIO

    return {"atomic": Atomic(complete), "lightning": TorchCheckpointIO().save_checkpoint, "in_place": _in_place,
            "atomic_nofsync": Atomic(fsync=False), "atomic_sync": Atomic(background=False)}


def time_save(write, ckpt: dict, path: Path, gap: float) -> float:
    """The time ``write`` blocks its caller: the call, then (after ``gap`` s) a wait for its background work."""
    start = time.perf_counter()
    write(ckpt, path)
    blocked = time.perf_counter() - start
    time.sleep(gap)
    start = time.perf_counter()
    getattr(write, "wait", lambda: None)()
    return blocked + time.perf_counter() - start


def outcome(path: Path) -> str:
    """old | new | corrupt | missing: what a restarted run would find at ``path``."""
    if not path.exists():
        return "missing"
    try:
        return {0: "old", 1: "new"}.get(torch.load(path, weights_only=False)["epoch"], "corrupt")
    except Exception:
        return "corrupt"


def kill_trial(write, old: dict, new: dict, folder: Path, delay: float | None) -> str | float:
    """Write ``old`` completely, fork a child writing ``new`` over it, SIGKILL it ``delay`` s after it starts
    the write → what the file holds then; ``delay=None``: let it finish → the write's duration in s."""
    shutil.rmtree(folder, ignore_errors=True)
    folder.mkdir(parents=True)
    path = folder / "last.ckpt"
    torch.save(old, path)
    r, w = os.pipe()
    pid = os.fork()
    if pid == 0:  # the child: say "start", write, say "done", vanish without cleanup
        try:
            os.write(w, b"s")
            write(new, path)
            os.write(w, b"d")
        finally:
            os._exit(0)
    os.close(w)
    os.read(r, 1)
    start = time.perf_counter()
    if delay is None:
        os.read(r, 1)
        span = time.perf_counter() - start
        os.waitpid(pid, 0)
        os.close(r)
        return span
    time.sleep(delay)
    os.kill(pid, signal.SIGKILL)
    os.waitpid(pid, 0)
    os.close(r)
    return outcome(path)


def kill_points(model: torch.nn.Module, folder: Path, kills: int, seed: int) -> dict:
    """``kills`` random kill points per writer → {writer: {outcome: count, "write_ms": median}}."""
    rng, old, new = random.Random(seed), checkpoint(model, 0), checkpoint(model, 1)
    result = {}
    for name, write in writers(complete=True).items():
        if name in ("atomic_nofsync", "atomic_sync"):
            continue
        span = statistics.median(kill_trial(write, old, new, folder / "trial", None) for _ in range(5))
        counts = {"old": 0, "new": 0, "corrupt": 0, "missing": 0}
        for _ in range(kills):
            counts[kill_trial(write, old, new, folder / "trial", rng.uniform(0, 1.5 * span))] += 1
        result[name] = {**counts, "write_ms": round(1000 * span, 1)}
        print(f"  {name:<10} write {1000 * span:7.1f} ms   {counts}", flush=True)
    shutil.rmtree(folder, ignore_errors=True)
    return result


def overhead(models_: dict, folder: Path, repeats: int, gap: float) -> dict:
    """{model: {"median"|"min": {writer: ms blocked}, "durable_ms": …}} of saves over an existing file in
    ``folder``, writers interleaved, each followed by ``gap`` s."""
    folder.mkdir(parents=True, exist_ok=True)
    out = {}
    for mname, model in models_.items():
        ckpt, ws = checkpoint(model, 1), writers()
        times = {name: [] for name in ws}
        for name, write in ws.items():  # warm-up, and the file to overwrite
            time_save(write, ckpt, folder / f"{name}.ckpt", 0)
        ws["atomic"].durable.clear()
        order, rng = list(ws.items()), random.Random(repeats)
        for _ in range(repeats):  # a new order each round: a fixed one biased the first writer by ~40 %
            rng.shuffle(order)
            for name, write in order:
                times[name].append(time_save(write, ckpt, folder / f"{name}.ckpt", gap))
        size = (folder / "atomic.ckpt").stat().st_size / 2**20
        out[mname] = {"MB": round(size, 1), "durable_ms": round(1000 * statistics.median(ws["atomic"].durable), 2)}
        for stat, fn in (("median", statistics.median), ("min", min)):
            row = {n: round(1000 * fn(t), 2) for n, t in times.items()}
            out[mname][stat] = row
            rel = {n: 100 * (row[n] / row["lightning"] - 1) for n in ("atomic", "atomic_sync", "atomic_nofsync")}
            print(f"  {mname:<16}{size:6.1f} MB {stat:>6}: " + "  ".join(f"{n} {row[n]:.1f}" for n in times)
                  + " ms → vs lightning: " + ", ".join(f"{n} {v:+.1f} %" for n, v in rel.items())
                  + f"; atomic vs in_place {100 * (row['atomic'] / row['in_place'] - 1):+.1f} %", flush=True)
        print(f"  {mname:<16} atomic: durable and renamed after {out[mname]['durable_ms']:.1f} ms (median)", flush=True)
        for w in ws.values():
            getattr(getattr(w, "io", None), "teardown", lambda: None)()
    shutil.rmtree(folder, ignore_errors=True)
    return out


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--kills", type=int, default=60)
    parser.add_argument("--repeats", type=int, default=20)
    parser.add_argument("--kill-dir", default="/dev/shm" if os.path.isdir("/dev/shm") else tempfile.gettempdir())
    parser.add_argument("--dirs", nargs="+", default=["/dev/shm", tempfile.gettempdir()],
                        help="folders to time the writers in (default: a tmpfs and the disk)")
    parser.add_argument("--gap", type=float, default=0.2, help="s of 'training' after each save (default 0.2)")
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--out", default=None, help="write the figures as JSON here")
    args = parser.parse_args()
    torch.manual_seed(args.seed)
    torch.set_num_threads(1)
    ms = models()
    report = {"kills": {}, "overhead": {}, "temp_dir": tempfile.gettempdir()}
    for mname, model in ms.items() if args.kills else ():
        folder = Path(tempfile.mkdtemp(prefix="ceod-kill-", dir=args.kill_dir))
        print(f"kill points: {mname} in {folder} (st_dev {os.stat(folder).st_dev}; "
              f"temp dir st_dev {os.stat(tempfile.gettempdir()).st_dev})", flush=True)
        report["kills"][mname] = kill_points(model, folder, args.kills, args.seed)
    for d in args.dirs:
        folder = Path(tempfile.mkdtemp(prefix="ceod-time-", dir=d))
        print(f"overhead in {Path(d).resolve()}:", flush=True)
        report["overhead"][str(Path(d).resolve())] = overhead(ms, folder, args.repeats, args.gap)
    if args.out:
        Path(args.out).write_text(json.dumps(report, indent=1) + "\n")


if __name__ == "__main__":
    main()
