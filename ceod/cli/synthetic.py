"""``python -m ceod.cli.synthetic``: the command line of :mod:`ceod.benchmarks.synthetic`."""

from __future__ import annotations

import argparse
import sys

from ceod.benchmarks.synthetic import VARIANTS, __doc__ as DOC, config_for, generate
from ceod.cli.common import exit_status


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(prog="python -m ceod.cli.synthetic", description=DOC.split("\n")[0])
    p.add_argument("--out", required=True, help="output folder (must be empty or absent)")
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--variant", default="synthetic_zipper", choices=sorted(VARIANTS))
    p.add_argument("--n-good", type=int)
    p.add_argument("--n-defect", type=int)
    p.add_argument("--size", type=int)
    p.add_argument("--contrast", type=float, help="defect contrast against the surface (subtlety)")
    p.add_argument("--decoy-p", type=float, help="decoy ⇔ label strength in train/val (0.5 = uncorrelated)")
    p.add_argument("--overwrite", action="store_true")
    a = p.parse_args(argv)

    def run() -> str:
        cfg = config_for(a.variant, seed=a.seed, n_good=a.n_good, n_defect=a.n_defect, size=a.size,
                         contrast=a.contrast, decoy_p=a.decoy_p)
        out = generate(a.out, cfg, overwrite=a.overwrite)
        return f"wrote {cfg.n_good} good + {cfg.n_defect} defective images ({a.variant}, seed {cfg.seed}) to {out}"

    return exit_status(run)


if __name__ == "__main__":
    sys.exit(main())
