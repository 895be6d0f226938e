"""ceod.console: the one progress bar (a terminal only, rank 0 only) and the rank rule of messages — with real
pipes and pseudo-terminals, no mocks."""

from __future__ import annotations

import ast
import fcntl
import io
import os
import select
import struct
import subprocess
import sys
import termios
from pathlib import Path

from ceod.console import global_rank, progress_bar

PROBE = ("import sys; from ceod.console import info, progress_bar; info('hello'); "
         "list(progress_bar(range(7), 'probe', unit='image')); "
         "print('lightning loaded' if any(m.split('.')[0] == 'lightning' for m in sys.modules) else '', flush=True)")


def _terminal(rows: int = 24, cols: int = 100) -> tuple[int, int]:
    """(master, slave) of a pseudo-terminal of rows × cols characters, as a terminal emulator makes one (0 × 0:
    as a fresh pty or some CI consoles report)."""
    master, slave = os.openpty()
    fcntl.ioctl(slave, termios.TIOCSWINSZ, struct.pack("HHHH", rows, cols, 0, 0))
    return master, slave


def _drain(fd: int, timeout: float = 60.0) -> str:
    """Everything readable from a pty master until the other side is closed (EIO), or nothing came for ``timeout``
    s (a child importing numpy and PIL on a loaded machine can take seconds before it writes)."""
    chunks = []
    while select.select([fd], [], [], timeout)[0]:
        try:
            data = os.read(fd, 65536)
        except OSError:  # EIO: every slave end closed
            break
        if not data:
            break
        chunks.append(data)
    return b"".join(chunks).decode(errors="replace")


def _run_probe(stderr_tty: bool, env: dict | None = None, args: tuple[str, ...] = ("-c", PROBE),
               size: tuple[int, int] = (24, 100)) -> tuple[str, str]:
    """(stdout, stderr) of ``python *args`` (PROBE) in a fresh interpreter; stderr a pseudo-terminal or a pipe."""
    env = {k: v for k, v in os.environ.items() if k not in ("RANK", "LOCAL_RANK", "SLURM_PROCID")} | (env or {})
    if not stderr_tty:
        r = subprocess.run([sys.executable, *args], capture_output=True, text=True, env=env, timeout=120)
        return r.stdout, r.stderr
    master, slave = _terminal(*size)
    try:
        p = subprocess.Popen([sys.executable, *args], stdout=subprocess.PIPE, stderr=slave, env=env, text=True)
        os.close(slave)
        err = _drain(master)
        out = p.communicate(timeout=120)[0]
    finally:
        os.close(master)
    return out, err


def test_progress_bar_is_off_when_not_a_terminal():
    buf = io.StringIO()
    bar = progress_bar(range(5), "probe", file=buf)
    assert bar.disable and list(bar) == [0, 1, 2, 3, 4] and buf.getvalue() == ""
    read, write = os.pipe()
    with os.fdopen(write, "w") as pipe:
        assert progress_bar(range(3), "probe", file=pipe).disable
    os.close(read)
    assert not progress_bar(range(3), "forced", file=io.StringIO(), enabled=True).disable  # predict's progress=true


def test_progress_bar_draws_on_a_pseudo_terminal():
    master, slave = _terminal()
    with os.fdopen(slave, "w") as tty:
        bar = progress_bar(range(4), "probe", unit="image", file=tty)
        assert not bar.disable
        assert list(bar) == [0, 1, 2, 3]
        bar.close()
    shown = _drain(master)
    os.close(master)
    assert "probe" in shown and "4/4" in shown and "image" in shown, shown


def test_a_command_shows_the_bar_on_a_terminal_only_and_on_rank_zero_only():
    out, err = _run_probe(stderr_tty=True)
    assert "probe" in err and "7/7" in err, err
    assert out.splitlines() == ["[ceod] hello", ""]  # and importing the console loads no Lightning
    out, err = _run_probe(stderr_tty=False)  # a log file, CI, a pipe
    assert err == "" and out.splitlines() == ["[ceod] hello", ""]
    out, err = _run_probe(stderr_tty=True, env={"RANK": "1"})  # a second DDP process: neither bar nor message
    assert "probe" not in err and out.strip() == "", (out, err)


def test_global_rank_follows_lightning_once_loaded():
    from lightning.fabric.utilities.rank_zero import rank_zero_only

    before = rank_zero_only.rank
    try:
        rank_zero_only.rank = 3  # what a Trainer sets in its DDP processes
        assert global_rank() == 3 and progress_bar(range(2), "x", file=sys.__stderr__).disable
    finally:
        rank_zero_only.rank = before
    assert global_rank() == before


def test_generating_a_benchmark_shows_its_bar_on_a_terminal(tmp_path):
    """The wiring of one long job (without a terminal: test_a_run_ends_with_one_table_and_no_lightning_noise)."""
    args = ("-m", "ceod.cli.synthetic", "--n-good", "5", "--n-defect", "4", "--size", "32")
    out, err = _run_probe(True, args=(*args, "--out", str(tmp_path / "tty")))
    assert "generate" in err and "9/9" in err and out.startswith("wrote 5 good + 4 defective"), (out, err)


def _printed_messages(path: Path) -> list[str]:
    """``print`` calls in ``path`` whose text starts like a console message (``[ceod] …``, ``warning: …``)."""
    found = []
    for node in ast.walk(ast.parse(path.read_text())):
        if isinstance(node, ast.Call) and getattr(node.func, "id", None) == "print" and node.args:
            first = node.args[0]
            part = first.values[0] if isinstance(first, ast.JoinedStr) and first.values else first
            text = part.value if isinstance(part, ast.Constant) and isinstance(part.value, str) else ""
            if text.startswith(("[ceod]", "warning:")):
                found.append(f"{path.parent.name}/{path.name}:{node.lineno}")
    return found


def test_messages_go_through_the_console(tmp_path):
    """ceod's own messages are console.info/warn (rank 0 only, kept in train.log), not raw prints; the ``error:``
    lines of the entry points and the results a command prints on purpose are not messages."""
    pkg = Path(__file__).resolve().parents[1] / "ceod"
    raw = [m for p in sorted(pkg.rglob("*.py")) if p.name != "console.py" for m in _printed_messages(p)]
    assert raw == [], raw
    probe = tmp_path / "probe.py"
    probe.write_text('n = 1\nprint(f"[ceod] {n} run(s)")\nprint("warning: x", file=None)\nprint("result")\n')
    assert _printed_messages(probe) == [f"{tmp_path.name}/probe.py:2", f"{tmp_path.name}/probe.py:3"]  # the check sees what it should


def test_a_terminal_that_reports_no_size_still_gets_a_bar():
    """A 0 × 0 terminal: tqdm alone draws an empty bar (or hides it as below the screen); ours falls back to 80 × 24."""
    _, err = _run_probe(True, size=(0, 0))
    assert "probe" in err and "7/7" in err, err
