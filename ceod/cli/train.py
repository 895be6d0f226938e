"""``python -m ceod.train [+experiment=NAME] [key=value ...]``: Hydra's CLI around :func:`ceod.training.pipeline.train_with_log`,
with user errors reported on one ``error:`` line (exit 2) so that one sweep job fails alone.
"""

from __future__ import annotations

import os
import sys

import hydra
from omegaconf import DictConfig

from ceod import CONF_DIR
from ceod.training.pipeline import train_with_log
from ceod.training.user_errors import one_line


def report_user_errors(fn):
    """Run ``fn()``; a user error (see :func:`one_line`) prints one ``error:`` line and exits 2."""
    try:
        return fn()
    except Exception as e:
        message = one_line(e)
        if message is None:
            raise
        print(f"error: {message}", file=sys.stderr)
        sys.exit(2)


@hydra.main(version_base="1.3", config_path=str(CONF_DIR), config_name="train")
def main(cfg: DictConfig) -> float | None:
    """Hydra task: train and test; user errors exit 2 with one line (so one sweep job fails alone)."""
    results = report_user_errors(lambda: train_with_log(cfg))
    return results.get("best/val/auroc", results.get("val/auroc"))  # the value a sweeper optimises


def cli() -> None:
    """``python -m ceod.train``: Hydra's CLI, with config errors reported on one line (exit 2).

    Set HYDRA_FULL_ERROR=1 for Hydra's own full report and stack traces.
    """
    if os.environ.get("HYDRA_FULL_ERROR"):
        main()
        return
    os.environ["HYDRA_FULL_ERROR"] = "1"  # make Hydra raise instead of printing a multi-line report
    report_user_errors(main)


if __name__ == "__main__":
    cli()
