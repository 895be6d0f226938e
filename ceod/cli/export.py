"""``python -m ceod.export``: a checkpoint as ONNX or TorchScript (:mod:`ceod.deploy.export`)."""

from __future__ import annotations

import sys

from ceod.cli import common as cli
from ceod.console import info
from ceod.deploy.export import USAGE, export


def main(argv: list[str] | None = None) -> None:
    def go() -> None:
        a = cli.parse(sys.argv[1:] if argv is None else argv,
                      {"ckpt": (str, ...), "format": (str, ...), "out": (str, ...), "heatmap": (bool, False),
                       "check": (bool, True)}, usage=USAGE)
        r = export(**a)
        checked = f" (max |Δ| vs PyTorch {r['max_abs_diff']:.1e})" if r["max_abs_diff"] is not None else ""
        info(f"wrote {r['path']}{checked}")

    cli.run_command(go)


if __name__ == "__main__":
    main()
