"""``python -m ceod.aoi fit …``: the command line of :mod:`ceod.aoi.fit`."""

from __future__ import annotations

import argparse
import sys

from ceod.aoi.fit import __doc__ as DOC, run_fit
from ceod.cli.common import exit_status


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(prog="python -m ceod.aoi", description=DOC.split("\n")[0])
    sub = p.add_subparsers(dest="command", required=True)
    f = sub.add_parser("fit", help="fit on a few drawn AOI masks, write masks for every image")
    f.add_argument("--images", required=True, help="image folder (any depth)")
    f.add_argument("--masks", required=True, help="drawn AOI masks mirroring --images (a few, ~8)")
    f.add_argument("--out", required=True, help="output folder (must be empty or absent)")
    f.add_argument("--model", default="net", help="net (default) | forest")
    f.add_argument("--holdout", type=int, default=-1, help="drawn masks held out to measure IoU (default: a quarter)")
    f.add_argument("--size", type=int, default=None,
                   help="working width in px (images are downscaled to it; default 128 for net, 256 for forest)")
    f.add_argument("--steps", type=int, default=1000, help="net: training steps of batch 8 (default 1000)")
    f.add_argument("--seed", type=int, default=0)
    f.add_argument("--overwrite", action="store_true")
    a = p.parse_args(argv)
    return exit_status(lambda: run_fit(a))


if __name__ == "__main__":
    sys.exit(main())
