"""Console messages for users: printed once, by the global rank-zero process only."""

from __future__ import annotations

from lightning.fabric.utilities.rank_zero import rank_zero_only


@rank_zero_only
def info(msg: str) -> None:
    """Print ``[ceod] msg`` on rank 0 (every DDP/SLURM process runs the same script)."""
    print(f"[ceod] {msg}", flush=True)
