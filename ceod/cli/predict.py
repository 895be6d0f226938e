"""``python -m ceod.predict``: score images with a trained checkpoint (:mod:`ceod.deploy.predict`)."""

from __future__ import annotations

import sys

from ceod.cli import common as cli
from ceod.console import info
from ceod.deploy.predict import USAGE, predict


def main(argv: list[str] | None = None) -> None:
    def go() -> None:
        a = cli.parse(sys.argv[1:] if argv is None else argv,
                      {"ckpt": (str, ...), "input": (str, ...), "out": (str, ...), "threshold": (float, None),
                       "heatmaps": (bool, True), "batch_size": (int, 32), "device": (str, "auto"),
                       "num_workers": (int, None)}, usage=USAGE)
        r = predict(**a)
        info(f"scored {r['n']} image(s) at threshold {r['threshold']:.4f} → {r['csv']}")

    cli.run_command(go)


if __name__ == "__main__":
    main()
