"""``python -m ceod.report``: tables and plots over run folders (:mod:`ceod.training.report`)."""

from __future__ import annotations

import sys

from ceod.cli import common as cli
from ceod.console import info
from ceod.training.report import USAGE, report


def main(argv: list[str] | None = None) -> None:
    def go() -> None:
        a = cli.parse(sys.argv[1:] if argv is None else argv,
                      {"dir": (str, ...), "seeds": (str, "seed"), "out": (str, None)}, positional="dir", usage=USAGE)
        r = report(**a)
        print(r["markdown"])
        info(f"{len(r['runs'])} run(s) → {', '.join(str(f) for f in r['files'])}")

    cli.run_command(go)


if __name__ == "__main__":
    main()
