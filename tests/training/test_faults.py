"""Faults lose nothing (issue 19), by fault injection on real processes and real files.

SIGKILL in the middle of a (slowed) checkpoint write, then SIGTERM mid-epoch; a full disk during a checkpoint
write (a real tmpfs where one can be mounted, else ``OSError(ENOSPC)`` injected at ``open``), then the folder
read-only; the data root deleted mid-run. After each: what is on disk (every ``*.ckpt`` complete, no temporary
left behind, the right marker, one ``error:`` line) and that the next run resumes from the last complete epoch
and ends bitwise like an uninterrupted run (deterministic CPU). The injector (``tests/training/fault_inject.py``)
changes only the file layer or the timing, never ceod code. Unreadable and mid-epoch checkpoints, torn
metrics rows: ``tests/training/test_run.py``.
"""

from __future__ import annotations

import csv
import os
import re
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest
import torch
from conftest import MICRO_OVERRIDES
from omegaconf import open_dict

from ceod.training.pipeline import train

ARGS = ["data.generator={n_good:16,n_defect:16}", "data.image_size=32", "data.batch_size=4", "data.num_workers=0",
        "trainer.accelerator=cpu", "trainer.deterministic=true", "trainer.enable_progress_bar=false",
        "callbacks.figures=null", "logger.tensorboard=null", "trainer.max_epochs=2", "trainer.limit_train_batches=4",
        "trainer.limit_val_batches=2", "trainer.limit_test_batches=2"]

#: ``python INJECTOR <ceod.train args>``: ceod.training.pipeline with the faults the CEOD_FAULT_* variables ask for
INJECTOR = Path(__file__).with_name("fault_inject.py")


class Lab:
    """Runs ``ceod.training.pipeline`` (through the injector) in one folder shared by the module's tests."""

    def __init__(self, root: Path) -> None:
        self.root = root
        self.injector = INJECTOR
        self.env = {k: v for k, v in os.environ.items() if k not in ("HYDRA_FULL_ERROR", "CEOD_RUN_ID")}
        self.env.update(CEOD_DATA_DIR=str(root / "data"), OMP_NUM_THREADS="1", MKL_NUM_THREADS="1")

    def start(self, run_dir: str | Path, *extra: str, faults: dict | None = None) -> subprocess.Popen:
        cmd = [sys.executable, str(self.injector), *ARGS, *extra, f"hydra.run.dir={run_dir}"]
        return subprocess.Popen(cmd, cwd=self.root, env={**self.env, **(faults or {})}, stdout=subprocess.PIPE,
                                stderr=subprocess.PIPE, text=True)

    def run(self, run_dir: str | Path, *extra: str, faults: dict | None = None) -> subprocess.CompletedProcess:
        proc = self.start(run_dir, *extra, faults=faults)
        out, err = proc.communicate(timeout=300)
        return subprocess.CompletedProcess(proc.args, proc.returncode, out, err)


@pytest.fixture(scope="module")
def lab(tmp_path_factory) -> Lab:
    return Lab(tmp_path_factory.mktemp("faults"))


@pytest.fixture(scope="module")
def reference(lab) -> tuple[str, Path]:
    """The uninterrupted run: (its stdout, its folder)."""
    r = lab.run("reference")
    assert r.returncode == 0, r.stderr[-3000:]
    return r.stdout, lab.root / "reference"


def _table(stdout: str) -> list[str]:
    lines = stdout.splitlines()
    start = lines.index("test results")
    return lines[start:lines.index("confusion matrix (rows: true, cols: predicted at the threshold chosen on "
                                   "validation)", start) + 3]


def _rows(out: Path) -> list[dict]:
    with open(out / "csv" / "metrics.csv", newline="") as f:
        return [{k: v for k, v in r.items() if v != ""} for r in csv.DictReader(f)]


def _weights(path: Path) -> dict:
    return torch.load(path, map_location="cpu", weights_only=False)["state_dict"]


def assert_complete(out: Path) -> dict[str, int]:
    """Every ``*.ckpt`` under ``out`` loads; no temporary file is left → {name: epoch}."""
    epochs = {p.name: torch.load(p, map_location="cpu", weights_only=False)["epoch"]
              for p in out.rglob("*.ckpt")}
    leftovers = [p.name for p in out.rglob(".*tmp*")]
    assert not leftovers, leftovers
    return epochs


def assert_same_as(reference, resumed: subprocess.CompletedProcess, out: Path) -> None:
    """The resumed run ends like the uninterrupted one: test table, metrics.csv rows, final weights (bitwise)."""
    stdout, ref = reference
    assert resumed.returncode == 0, resumed.stderr[-3000:]
    assert _table(resumed.stdout) == _table(stdout)
    assert _rows(out) == _rows(ref)
    a, b = _weights(ref / "checkpoints" / "last.ckpt"), _weights(out / "checkpoints" / "last.ckpt")
    assert a.keys() == b.keys() and all(torch.equal(a[k], b[k]) for k in a)


def _wait_for(predicate, proc: subprocess.Popen, timeout: float = 120) -> None:
    deadline = time.time() + timeout
    while not predicate():
        assert proc.poll() is None, "the run ended before the fault: " + proc.communicate()[1][-2000:]
        assert time.time() < deadline, "timed out waiting for the fault point"
        time.sleep(0.01)


@pytest.mark.slow
def test_sigkill_mid_write_then_sigterm_mid_epoch_lose_nothing(lab, reference):
    """1. SIGKILL while epoch 1's last.ckpt is being written (slowed), once its temporary file has bytes:
    last.ckpt still holds epoch 0, complete. 2. The rerun removes the temporary and resumes from epoch 0; it is
    sent SIGTERM after its first step of epoch 1 (steps slowed to 0.15 s): it saves last.ckpt at that batch,
    says where it stopped and the resume point in one line, exit 143, no FAILED marker. 3. The next rerun
    continues from that batch and ends like the uninterrupted run."""
    out = lab.root / "killed"
    last = out / "checkpoints" / "last.ckpt"
    proc = lab.start(out, faults={"CEOD_FAULT_MATCH": ".last.ckpt.tmp-", "CEOD_FAULT_SKIP": "1",
                                  "CEOD_FAULT_SLOW_WRITE": "0.02"})
    _wait_for(lambda: last.is_file() and any(p.stat().st_size > 0 for p in last.parent.glob(".last.ckpt.tmp-*")),
              proc)
    proc.kill()
    assert proc.wait() == -signal.SIGKILL
    assert list(last.parent.glob(".last.ckpt.tmp-*"))  # the killed writer's partial file …
    assert torch.load(last, weights_only=False)["epoch"] == 0  # … never last.ckpt

    steps = lab.root / "steps.txt"
    proc = lab.start(out, faults={"CEOD_FAULT_SLOW_STEP": "0.15", "CEOD_FAULT_STEP_FILE": str(steps)})
    _wait_for(steps.is_file, proc)  # epoch 1 has begun
    proc.send_signal(signal.SIGTERM)
    stdout, stderr = proc.communicate(timeout=120)
    assert proc.returncode == 143, stderr[-3000:]
    assert "resuming from" in stdout and "last.ckpt (epoch 0 done)" in stdout, stdout
    stop = re.search(r"stopped by SIGTERM \(train, epoch 1, after batch ([1-3]) of 4\); resume point: \S+last\.ckpt "
                     r"\(epoch 1, ([1-3]) of 4 batches done\)", stdout)
    assert stop and stop[1] == stop[2], stdout
    assert "Traceback" not in stderr and not (out / "FAILED").exists()
    assert assert_complete(out)["last.ckpt"] == 1  # every checkpoint complete, the temporary gone

    resumed = lab.run(out)
    assert f"resuming from {last} (epoch 1, {stop[1]} of 4 batches done)" in resumed.stdout, resumed.stdout
    assert_same_as(reference, resumed, out)


@pytest.mark.slow
def test_sigterm_mid_epoch_saves_that_batch_and_the_rerun_ends_bitwise_alike(lab, reference):
    """SLURM preemption without --signal: SIGTERM two steps into epoch 1 of a fresh run (steps slowed to 0.3 s;
    augmentation in the loader and the swap partners draw random numbers). last.ckpt then holds epoch 1 at the
    batch where Lightning stopped — the loader's position and the random states with it — and the rerun
    continues from there: the same weights, metrics.csv rows (the epoch's running means included) and test
    table as the uninterrupted run, bitwise."""
    out, steps = lab.root / "preempted", lab.root / "preempted-steps.txt"
    proc = lab.start(out, faults={"CEOD_FAULT_SLOW_STEP": "0.3", "CEOD_FAULT_STEP_FILE": str(steps)})
    _wait_for(lambda: steps.is_file() and len(steps.read_text().splitlines()) >= 6, proc)  # 4 + 2 steps
    proc.send_signal(signal.SIGTERM)
    stdout, stderr = proc.communicate(timeout=120)
    assert proc.returncode == 143 and "Traceback" not in stderr, stderr[-3000:]
    ckpt = torch.load(out / "checkpoints" / "last.ckpt", map_location="cpu", weights_only=False)
    done = ckpt["ceod_resume"]["batches"]
    assert ckpt["epoch"] == 1 and 2 <= done <= 3 and ckpt["ceod_run"]["epoch_end"] is False, ckpt["ceod_resume"]
    assert f"after batch {done} of 4); resume point: " in stdout and f"(epoch 1, {done} of 4 batches done)" in stdout
    assert not (out / "FAILED").exists() and assert_complete(out)

    resumed = lab.run(out)
    assert f"(epoch 1, {done} of 4 batches done)" in resumed.stdout and "skipping" not in resumed.stdout
    assert_same_as(reference, resumed, out)


def _mount_small_disk(where: Path, size: str) -> bool:
    """A tmpfs of ``size`` at ``where`` (root only); False where it cannot be mounted."""
    where.mkdir()
    if os.environ.get("CEOD_TEST_NO_MOUNT"):  # exercise the injected-ENOSPC path where mounting works
        return False
    try:
        r = subprocess.run(["mount", "-t", "tmpfs", "-o", f"size={size}", "tmpfs", str(where)], capture_output=True)
    except OSError:
        return False
    return r.returncode == 0


@pytest.mark.slow
def test_full_disk_is_one_line_and_the_folder_resumes_once_space_is_freed(lab, reference):
    """Epoch 1's checkpoint does not fit (a tmpfs that holds epoch 0's two checkpoints, 3.6 MB each, plus 1.5 MB,
    not a third one; or ENOSPC injected): one error line naming the file, exit 2, last.ckpt still epoch 0, no
    temporary. Then (tmpfs only) the folder read-only: one line naming the file. After the disk grows and is
    writable again, the same command resumes from epoch 0 and ends like the uninterrupted run."""
    disk = lab.root / "disk"
    size = (reference[1] / "checkpoints" / "last.ckpt").stat().st_size
    mounted = _mount_small_disk(disk, f"{(2 * size + 1536 * 1024) // 1024}k")
    faults = {} if mounted else {"CEOD_FAULT_MATCH": ".ckpt.tmp-", "CEOD_FAULT_SKIP": "2",
                                 "CEOD_FAULT_ENOSPC_AFTER": "100000"}
    out = disk / "run"
    try:
        r = lab.run(out, faults=faults)
        assert r.returncode == 2, r.stderr[-3000:]
        errors = [ln for ln in r.stderr.splitlines() if ln.startswith("error:")]
        assert len(errors) == 1 and "Traceback" not in r.stderr, r.stderr  # one line, no traceback
        line = errors[0]
        assert line.startswith("error: cannot write checkpoint (epoch 1)") and "No space left on device" in line
        assert "checkpoints" in line and "rerun the same command" in line
        assert assert_complete(out)["last.ckpt"] == 0
        assert not (out / "FAILED.tmp").exists()
        if (out / "FAILED").exists():
            assert "No space left on device" in (out / "FAILED").read_text()
        if mounted:  # an unwritable folder next: one line naming the first file it could not write
            subprocess.run(["mount", "-o", "remount,ro", str(disk)], check=True)
            r = lab.run(out)
            errors = [ln for ln in r.stderr.splitlines() if ln.startswith("error:")]
            assert r.returncode == 2 and len(errors) == 1 and "Traceback" not in r.stderr, r.stderr[-3000:]
            assert errors[0].startswith(f"error: cannot write {out}") and "Read-only file system" in errors[0]
            subprocess.run(["mount", "-o", "remount,rw,size=64m", str(disk)], check=True)
        resumed = lab.run(out)
        assert "resuming from" in resumed.stdout and "(epoch 0 done)" in resumed.stdout, resumed.stdout
        assert not (out / "FAILED").exists()
        assert_same_as(reference, resumed, out)
    finally:
        if mounted:
            subprocess.run(["umount", "-l", str(disk)], capture_output=True)


# ------------------------------------------------------------------ in-process faults
@pytest.fixture
def tiny_cfg(make_cfg, micro_root, tmp_path):
    def _make(out: str, *overrides: str):
        micro = [o for o in MICRO_OVERRIDES if "data=folder" not in overrides or "generator" not in o]
        cfg = make_cfg(f"data.root={micro_root}", *micro, "data.num_workers=0", "trainer.accelerator=cpu",
                       "trainer.deterministic=true", "trainer.enable_progress_bar=false", "callbacks.figures=null",
                       "logger=default", "logger.tensorboard=null", "trainer.limit_train_batches=2",
                       "trainer.limit_val_batches=2", "trainer.limit_test_batches=2", *overrides)
        with open_dict(cfg):
            cfg.paths.output_dir = str(tmp_path / out)
        return cfg

    return _make


class DeleteAfterEpoch0:
    """Test-side fault: a Lightning callback that deletes the data root once epoch 0 is checkpointed — once
    (``<root>.vanished`` remembers it), so the rerun of the same command (same config) finds its data."""

    def __new__(cls, root: str):
        import shutil

        from lightning.pytorch.callbacks import Callback

        class _Delete(Callback):
            def on_train_epoch_start(self, trainer, pl_module):
                done = Path(root + ".vanished")
                if trainer.current_epoch == 1 and not done.exists():
                    done.touch()
                    shutil.rmtree(root)

        return _Delete()


@pytest.mark.slow  # a subprocess or a full run: make test-all / CI
def test_vanished_data_root_mid_run_is_one_line_and_resumes(tiny_cfg, micro_root, tmp_path, capsys):
    """The data root disappears in epoch 1 (images read from disk by a DataLoader worker): one line naming the
    missing image (not the worker's traceback), a FAILED marker with it, last.ckpt still epoch 0; with the
    data back, the same command resumes from epoch 0 and ends like an uninterrupted run."""
    import shutil

    from ceod.training.pipeline import train_with_log
    from ceod.training.user_errors import one_line

    root = tmp_path / "data_copy"
    shutil.copytree(micro_root, root)
    folder = ("data=folder", f"data.root={root}", "data.cache=false", "data.num_workers=1",
              "data.persistent_workers=false", "trainer.max_epochs=2")
    fault = f"+callbacks.vanish={{_target_:test_faults.DeleteAfterEpoch0,root:{root}}}"
    (tmp_path / "run").mkdir()
    with pytest.raises(Exception) as err:
        train_with_log(tiny_cfg("run", *folder, fault))
    line = one_line(err.value)
    assert line is not None and line.startswith(f"image not found: {root}") and "\n" not in line, line
    assert line in (tmp_path / "run" / "FAILED").read_text()
    assert torch.load(tmp_path / "run" / "checkpoints" / "last.ckpt", weights_only=False)["epoch"] == 0
    shutil.copytree(micro_root, root)
    capsys.readouterr()
    resumed = train_with_log(tiny_cfg("run", *folder, fault))
    assert "last.ckpt (epoch 0 done)" in capsys.readouterr().out
    full = train(tiny_cfg("full", *folder))
    assert not (tmp_path / "run" / "FAILED").exists()
    for key in ("test/auroc", "test/acc", "val/auroc"):
        assert resumed[key] == full[key], key
    assert _rows(tmp_path / "run") == _rows(tmp_path / "full")


def test_worker_and_file_system_errors_are_one_line():
    """A DataLoader worker's re-raised error keeps its own message; ENOSPC and a vanished file name the path."""
    import errno

    from ceod.training.faults import environment_error, worker_message

    wrapped = ("Caught DataError in DataLoader worker process 0.\nOriginal Traceback (most recent call last):\n"
               '  File "x.py", line 1, in f\nceod.errors.DataError: image not found: /data/a.png\n')
    assert worker_message(wrapped) == "image not found: /data/a.png"
    full = environment_error(OSError(errno.ENOSPC, "No space left on device", "/runs/x/csv/metrics.csv"))
    assert full.startswith("cannot write /runs/x/csv/metrics.csv: No space left on device (disk full)")
    gone = environment_error(FileNotFoundError(wrapped.replace("ceod.errors.DataError: image not found: /data/a.png",
                                               "FileNotFoundError: [Errno 2] No such file or directory: '/d/b.png'")))
    assert gone.startswith("file not found: /d/b.png") and "\n" not in gone
    assert environment_error(OSError("no errno")) is None and environment_error(ValueError("x")) is None
    for code, expect in ((errno.EROFS, "cannot write /r/train.log: Read-only file system;"), (errno.ENOENT, None)):
        try:  # what logging raises for a log file it cannot open: the OSError is the cause, and counts
            try:
                raise OSError(code, os.strerror(code), "/r/train.log")
            except OSError as e:
                raise ValueError("Unable to configure handler 'file'") from e
        except ValueError as chained:
            line = environment_error(chained)
        assert line is None if expect is None else line.startswith(expect), line
