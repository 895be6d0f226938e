"""Tables of the study (``experiments/study.py report``): one row per benchmark × method, the paired
per-seed difference to CE, and how much of the shortcut's cost each method recovers.

recovered = (M_decoy − CE_decoy) / (CE_control − CE_decoy), on mean test AUROC (1 = all of it).
"""

from __future__ import annotations

import json
import statistics
from collections import defaultdict
from pathlib import Path

PAIRS = {"synthetic": ("synthetic_decoy", "synthetic_control"), "digits": ("digits_decoy", "digits_control")}


def load(out: Path) -> dict[tuple[str, str], dict[int, dict]]:
    """{(benchmark, method): {seed: record}} from ``out/<benchmark>/<method>/seed<S>.json``."""
    runs: dict[tuple[str, str], dict[int, dict]] = defaultdict(dict)
    for path in sorted(out.glob("*/*/seed*.json")):
        rec = json.loads(path.read_text())
        runs[(rec["benchmark"], rec["method"])][rec["seed"]] = rec
    return runs


def ms(values: list[float]) -> str:
    values = [v for v in values if v is not None]
    if not values:
        return "–"
    if len(values) == 1:
        return f"{values[0]:.3f}"
    return f"{statistics.mean(values):.3f} ± {statistics.stdev(values):.3f}"


def mean(values) -> float | None:
    values = [v for v in values if v is not None]
    return statistics.mean(values) if values else None


def main_table(runs) -> list[str]:
    lines = ["| benchmark | method | seeds | test AUROC | Δ AUROC vs CE (paired) | aoi_energy | pointing game "
             "| acc @ val thr | acc @ 0.5 | min / run |", "|---|---|---|---|---|---|---|---|---|---|"]
    for (bench, method), seeds in sorted(runs.items()):
        col = lambda k: [r.get(k) for r in seeds.values()]  # noqa: E731
        ce = runs.get((bench, "ce"), {})
        paired = [seeds[s]["test/auroc"] - ce[s]["test/auroc"] for s in seeds if s in ce]
        delta = "–" if method == "ce" or not paired else ms(paired)
        minutes = mean(col("seconds"))
        lines.append(f"| {bench} | {method} | {len(seeds)} | {ms(col('test/auroc'))} | {delta} | "
                     f"{ms(col('test/aoi_energy'))} | {ms(col('test/pointing_game'))} | {ms(col('test/acc'))} | "
                     f"{ms(col('test/acc@0.5'))} | {minutes / 60:.1f} |")
    return lines


def recovery_table(runs) -> list[str]:
    lines = ["| benchmark | method | CE control | CE decoy | method decoy | recovered share of the shortcut's cost |",
             "|---|---|---|---|---|---|"]
    for name, (decoy, control) in PAIRS.items():
        ce_c = mean(r["test/auroc"] for r in runs.get((control, "ce"), {}).values())
        ce_d = mean(r["test/auroc"] for r in runs.get((decoy, "ce"), {}).values())
        if ce_c is None or ce_d is None:
            continue
        for (bench, method), seeds in sorted(runs.items()):
            if bench != decoy or method == "ce":
                continue
            m = mean(r["test/auroc"] for r in seeds.values())
            share = (m - ce_d) / (ce_c - ce_d) if ce_c != ce_d else float("nan")
            lines.append(f"| {name} | {method} | {ce_c:.3f} | {ce_d:.3f} | {m:.3f} | {share:.2f} |")
    return lines


def report(out: Path) -> str:
    runs = load(out)
    if not runs:
        return f"no study results under {out}"
    return "\n".join([*main_table(runs), "", *recovery_table(runs), "", footer(runs)])


def footer(runs) -> str:
    """How many runs, their CPU-process hours and the commits they ran at."""
    commits = sorted({r["commit"] for seeds in runs.values() for r in seeds.values()})
    hours = sum(r["seconds"] for seeds in runs.values() for r in seeds.values()) / 3600
    return f"{sum(len(s) for s in runs.values())} runs, {hours:.1f} CPU-process hours, commits: {', '.join(commits)}"
