"""Tables of the decoy-zoo study (issue 16): per decoy kind, test AUROC, the share of the decoy's cost each
method recovers, and what the decision depends on (outside reliance by swap) beside the heat map (AOI energy).

    python experiments/zoo_report.py [--out experiments/results/study_zoo]

recovered = (M_decoy − CE_decoy) / (CE_control − CE_decoy) on mean test AUROC, with the kind's own control where
it was run, else the benchmark's shipped control (same images; the decoy independent of the label).
reliance ratio = M's test outside_reliance / CE's on the same decoy benchmark (≤ 0.5 is the issue's target).
"""

from __future__ import annotations

import argparse
import statistics
from pathlib import Path

from study_report import footer, load, mean, ms  # noqa: E402  (sibling script)

ROOT = Path(__file__).resolve().parents[1]


def _col(seeds: dict, key: str) -> list:
    return [r.get(key) for r in seeds.values() if r.get(key) is not None]


def control_of(runs, decoy: str) -> str:
    base, _, kind = decoy.rpartition("_")[0].partition("_")
    own = f"{base}_{kind}_control" if kind else f"{base}_control"
    return own if (own, "ce") in runs else f"{base}_control"


def decoy_table(runs) -> tuple[list[str], dict]:
    lines = ["| decoy benchmark | method | seeds | test AUROC | recovered | outside reliance (swap) | reliance / CE's "
             "| flips | reliance (blur) | AOI energy |", "|---|---|---|---|---|---|---|---|---|---|"]
    summary: dict[str, dict[str, tuple[float, float]]] = {}
    decoys = sorted({b for b, _ in runs if b.endswith("_decoy")})
    for bench in decoys:
        ce = runs.get((bench, "ce"), {})
        ce_c = mean(_col(runs.get((control_of(runs, bench), "ce"), {}), "test/auroc"))
        ce_d, ce_r = mean(_col(ce, "test/auroc")), mean(_col(ce, "test/outside_reliance"))
        for method in sorted({m for b, m in runs if b == bench and not m.endswith("_sel")}, key=lambda m: (m != "ce", m)):
            seeds = runs[(bench, method)]
            auc, rel = mean(_col(seeds, "test/auroc")), mean(_col(seeds, "test/outside_reliance"))
            rec = (auc - ce_d) / (ce_c - ce_d) if None not in (auc, ce_d, ce_c) and ce_c != ce_d else None
            ratio = rel / ce_r if rel is not None and ce_r else None
            summary.setdefault(bench, {})[method] = (rec, ratio)
            fmt = lambda v, p="{:.2f}": "–" if v is None else p.format(v)  # noqa: E731
            lines.append(f"| {bench} | {method} | {len(seeds)} | {ms(_col(seeds, 'test/auroc'))} | "
                         f"{fmt(rec, '{:.0%}') if method != 'ce' else '–'} | {ms(_col(seeds, 'test/outside_reliance'))} | "
                         f"{fmt(ratio) if method != 'ce' else '1'} | {ms(_col(seeds, 'test/outside_flip'))} | "
                         f"{ms(_col(seeds, 'test/outside_reliance_blur'))} | {ms(_col(seeds, 'test/aoi_energy'))} |")
    return lines, summary


def control_table(runs) -> list[str]:
    lines = ["| control benchmark | method | seeds | test AUROC | Δ vs CE (paired) | outside reliance | AOI energy |",
             "|---|---|---|---|---|---|---|"]
    for bench in sorted({b for b, _ in runs if b.endswith("_control")}):
        ce = runs.get((bench, "ce"), {})
        for method in sorted({m for b, m in runs if b == bench}, key=lambda m: (m != "ce", m)):
            seeds = runs[(bench, method)]
            paired = [seeds[s]["test/auroc"] - ce[s]["test/auroc"] for s in seeds if s in ce]
            delta = "–" if method == "ce" or not paired else ms(paired)
            lines.append(f"| {bench} | {method} | {len(seeds)} | {ms(_col(seeds, 'test/auroc'))} | {delta} | "
                         f"{ms(_col(seeds, 'test/outside_reliance'))} | {ms(_col(seeds, 'test/aoi_energy'))} |")
    return lines


def selection_table(runs) -> list[str]:
    """The epoch chosen by val AUROC − val outside reliance (``<m>_sel``) against the last epoch (``<m>``)."""
    lines = ["| benchmark | method | last epoch: test AUROC | chosen: test AUROC | Δ (paired) | last: reliance "
             "| chosen: reliance |", "|---|---|---|---|---|---|---|"]
    for bench, sel in sorted((b, m) for b, m in runs if m.endswith("_sel")):
        base = sel[: -len("_sel")]
        last, chosen = runs.get((bench, base), {}), runs[(bench, sel)]
        paired = [chosen[s]["test/auroc"] - last[s]["test/auroc"] for s in chosen if s in last]
        lines.append(f"| {bench} | {base} | {ms(_col(last, 'test/auroc'))} | {ms(_col(chosen, 'test/auroc'))} | "
                     f"{ms(paired)} | {ms(_col(last, 'test/outside_reliance'))} | {ms(_col(chosen, 'test/outside_reliance'))} |")
    return lines


def targets(summary: dict) -> list[str]:
    """Per method: on how many decoy benchmarks it meets ≥ 80 % recovery and reliance ≤ half of CE's."""
    methods = sorted({m for v in summary.values() for m in v} - {"ce"})
    lines = ["| method | benchmarks | recovery ≥ 80 % | reliance ≤ ½ CE's | both | worst recovery |", "|---|---|---|---|---|---|"]
    for m in methods:
        cells = [v[m] for v in summary.values() if m in v and v[m][0] is not None]
        rec_ok = sum(r >= 0.8 for r, _ in cells)
        rel_ok = sum(q is not None and q <= 0.5 for _, q in cells)
        both = sum(r >= 0.8 and q is not None and q <= 0.5 for r, q in cells)
        worst = min((r for r, _ in cells), default=None)
        lines.append(f"| {m} | {len(cells)} | {rec_ok} | {rel_ok} | {both} | {'–' if worst is None else f'{worst:.0%}'} |")
    return lines


def report(out: Path) -> str:
    runs = load(out)
    if not runs:
        return f"no results under {out}"
    dec, summary = decoy_table(runs)
    return "\n".join([*dec, "", *control_table(runs), "", *targets(summary), "", *selection_table(runs), "",
                      footer(runs)])


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    p.add_argument("--out", type=Path, default=ROOT / "experiments" / "results" / "study_zoo")
    print(report(p.parse_args().out))


if __name__ == "__main__":
    main()
