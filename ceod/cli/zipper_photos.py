"""``python -m ceod.cli.zipper_photos``: the command line of :mod:`ceod.benchmarks.zipper_photos`."""

from __future__ import annotations

import sys

from ceod.benchmarks.zipper_photos import build_mvtec_tree
from ceod.cli.common import exit_status


def main(argv: list[str] | None = None) -> int:
    """``python -m ceod.cli.zipper_photos --out DIR``: an MVTec-layout zipper tree with its truth (no download)."""
    import argparse

    p = argparse.ArgumentParser(prog="python -m ceod.cli.zipper_photos", description=main.__doc__)
    p.add_argument("--out", required=True)
    p.add_argument("--size", type=int, default=256)
    p.add_argument("--large", type=int, default=2, help="images written at 1024 px")
    p.add_argument("--seed", type=int, default=0)
    a = p.parse_args(argv)
    return exit_status(lambda: build_mvtec_tree(a.out, size=a.size, large=a.large, seed=a.seed))


if __name__ == "__main__":
    sys.exit(main())
