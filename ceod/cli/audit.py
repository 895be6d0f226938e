"""``python -m ceod.audit``: what a trained model's decision depends on outside the AOI (:mod:`ceod.training.audit`)."""

from __future__ import annotations

import sys

from ceod.cli import common as cli
from ceod.console import info
from ceod.training.audit import USAGE, audit


def main(argv: list[str] | None = None) -> None:
    def go() -> None:
        words = sys.argv[1:] if argv is None else argv
        data = [w for w in words if w.startswith(("data=", "data.", "+data."))]
        if not any(w.startswith("data=") for w in data):
            data = ["data=folder", *data]
        a = cli.parse([w for w in words if w not in data], {
            "ckpt": (str, ...), "out": (str, ...), "split": (str, "all"), "fills": (str, "swap,blur"),
            "top": (int, 12), "batch_size": (int, 32)}, usage=USAGE)
        s = audit(data=data, **a)
        shown = ", ".join(f"{k} {v:.3f}" for k, v in s.items() if k.startswith(("outside", "aoi")) and v is not None)
        info(f"audited {s['n']} image(s) with an AOI: {shown} → {a['out']}")

    cli.run_command(go)


if __name__ == "__main__":
    main()
