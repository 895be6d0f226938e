"""Tables and the plot of the annotation-budget study (issue 18, experiments/README.md §7).

    python experiments/budget_report.py [--out experiments/results/study_budget] [--zoo experiments/results/study_zoo]

Recovery is §1's: (method − CE on the decoy) / (CE on the control − CE on the decoy), test AUROC, with the 3-seed
CE means of the decoy zoo (same protocol, data and seeds; the budget study's ``cs_mf1`` cells reproduce the zoo's
full-annotation ``ceod_swap_tight`` runs bitwise). "Of full" divides by the recovery of the same loss with every
mask. Writes budget.md and budget.png into ``--out``.
"""

from __future__ import annotations

import argparse
import json
import statistics as st
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
BENCH = {"digits_decoy": "digits_control", "synthetic_decoy": "synthetic_control"}
TRAIN = {"digits_decoy": (216, 216), "synthetic_decoy": (216, 184)}  # training images (good, defective)
FRACTIONS = (0.01, 0.02, 0.05, 0.1, 0.25, 0.5)
COLOURS = {"cs_mf": "tab:blue", "cs_fit": "tab:orange", "cs_shared": "tab:green", "ceod_mf": "tab:red"}
FULL = {"cs": "ceod_swap_tight", "ceod": "ceod", "rrr": "rrr_mf1", "energy": "energy_mf1", "bg_random": "bg_random_mf1"}
WAYS = {"cs_mf": "partial: CE only on the rest", "cs_fit": "fit: ceod.aoi fit masks the rest",
        "cs_shared": "shared: one mask (majority of the drawn)", "ceod_mf": "partial, loss=ceod"}


def load(folder: Path, method: str) -> dict[int, dict]:
    out = {}
    for p in sorted((folder / method).glob("seed*.json")) if (folder / method).is_dir() else []:
        r = json.loads(p.read_text())
        out[r["seed"]] = r
    return out


def drawn(bench: str, f: float) -> int:
    """How many training masks ``data.mask_fraction=f`` keeps (round per class, ceod.data.masks.keep_fraction)."""
    return sum(int(round(f * n)) for n in TRAIN[bench])


def pct(xs: list[float]) -> str:
    m = st.mean(xs)
    return "n/a" if m != m else f"{m:.0%}"


def fmt(xs: list[float], d: int = 3) -> str:
    if not xs:
        return "–"
    return f"{st.mean(xs):.{d}f} ± {st.stdev(xs):.{d}f}" if len(xs) > 1 else f"{xs[0]:.{d}f}"


class Study:
    def __init__(self, out: Path, zoo: Path) -> None:
        self.out, self.zoo = out, zoo

    def runs(self, bench: str, method: str) -> dict[int, dict]:
        found = load(self.out / bench, method)
        return found or load(self.zoo / bench, method)

    def ce(self, bench: str) -> tuple[float, float]:
        dec = [r["test/auroc"] for r in load(self.zoo / bench, "ce").values()]
        con = [r["test/auroc"] for r in load(self.zoo / BENCH[bench], "ce").values()]
        return st.mean(dec), st.mean(con)

    def recovery(self, bench: str, auroc: float) -> float:
        dec, con = self.ce(bench)
        return (auroc - dec) / (con - dec)

    def row(self, bench: str, method: str, full: str) -> dict | None:
        runs = self.runs(bench, method)
        if not runs:
            return None
        base = {s: r["test/auroc"] for s, r in self.runs(bench, full).items()}
        au = [r["test/auroc"] for r in runs.values()]
        rec = [self.recovery(bench, a) for a in au]
        full_rec = st.mean(self.recovery(bench, a) for a in base.values()) if base else float("nan")
        paired = [runs[s]["test/auroc"] - base[s] for s in runs if s in base]
        rel = [r["test/outside_reliance"] for r in runs.values() if r.get("test/outside_reliance") is not None]
        of_full = [x / full_rec if full_rec > 0.1 else float("nan") for x in rec]  # no gain to keep: n/a
        return {"n": len(runs), "auroc": au, "rec": rec, "of_full": of_full, "paired": paired,
                "reliance": rel, "seconds": [r["seconds"] for r in runs.values()],
                "commits": sorted({r["commit"] for r in runs.values()})}


def budget_table(s: Study) -> tuple[list[str], dict]:
    lines = ["| benchmark | way | share of masks | drawn (defective) | n | test AUROC | outside reliance | recovered "
             "| of full | Δ vs full (paired) |", "|---|---|---|---|---|---|---|---|---|---|"]
    curves: dict = {}
    for bench in BENCH:
        for prefix, way in WAYS.items():
            full = FULL["ceod" if prefix.startswith("ceod") else "cs"]
            for f in (*FRACTIONS, 1.0):
                method = full if f == 1.0 else f"{prefix}{f:g}"
                if f == 1.0 and prefix not in ("cs_mf", "ceod_mf"):
                    continue
                r = s.row(bench, method, full)
                if r is None:
                    continue
                n = drawn(bench, f)
                defective = int(round(f * TRAIN[bench][1]))
                curves.setdefault((bench, prefix), []).append((n, st.mean(r["of_full"])))
                lines.append(f"| {bench} | {way} | {f:.0%} | {n} ({defective}) | {r['n']} | {fmt(r['auroc'])} | "
                             f"{fmt(r['reliance'])} | {st.mean(r['rec']):.0%} | **{pct(r['of_full'])}** | "
                             f"{fmt(r['paired']) if f < 1 else '–'} |")
    return lines, curves


def other_tables(s: Study) -> list[str]:
    lines = ["", "Imperfect masks (every training image annotated, `loss=ceod_swap`; Δ paired by seed against exact "
             "masks):", "", "| benchmark | masks | n | test AUROC | Δ vs exact | outside reliance | of full |",
             "|---|---|---|---|---|---|---|"]
    for bench in BENCH:
        for m, name in (("cs_box", "boxes (`box`)"), ("cs_dilate3", "dilated 3 px"), ("cs_erode2", "eroded 2 px"),
                        ("cs_shift4", "shifted 4 px")):
            r = s.row(bench, m, FULL["cs"])
            if r:
                lines.append(f"| {bench} | {name} | {r['n']} | {fmt(r['auroc'])} | {fmt(r['paired'])} | "
                             f"{fmt(r['reliance'])} | {pct(r['of_full'])} |")
    lines += ["", "The other losses that take masks (partial annotation: CE on the rest):", "",
              "| benchmark | loss | masks | n | test AUROC | outside reliance | recovered | of full |",
              "|---|---|---|---|---|---|---|---|"]
    for bench in BENCH:
        for loss in ("rrr", "energy", "bg_random"):
            for m, share in ((f"{loss}_mf1", "100 %"), (f"{loss}_mf0.5", "50 %"), (f"{loss}_mf0.1", "10 %"),
                             (f"{loss}_mf0.02", "2 %")):
                r = s.row(bench, m, FULL[loss])
                if r:
                    lines.append(f"| {bench} | {loss} | {share} | {r['n']} | {fmt(r['auroc'])} | {fmt(r['reliance'])} | "
                                 f"{st.mean(r['rec']):.0%} | {pct(r['of_full'])} |")
    return lines


def plot(curves: dict, path: Path) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, axes = plt.subplots(1, len(BENCH), figsize=(11, 4), sharey=True)
    for ax, bench in zip(axes, BENCH):
        for prefix, way in WAYS.items():
            pts = sorted(curves.get((bench, prefix), []))
            if pts:
                ax.plot([p[0] for p in pts], [100 * p[1] for p in pts], marker="o", label=way, color=COLOURS[prefix])
        ax.axhline(80, color="grey", lw=0.8, ls="--")
        ax.set_xscale("log")
        ax.set_xlabel("drawn AOI masks (training images)")
        ax.set_title(bench)
        ax.grid(alpha=0.3)
    axes[0].set_ylabel("% of the full-annotation recovery")
    handles = {h.get_label(): h for ax in axes for h in ax.get_lines() if not h.get_label().startswith("_")}
    axes[-1].legend(handles.values(), handles.keys(), fontsize=8, loc="lower right")
    fig.tight_layout()
    fig.savefig(path, dpi=110)


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    p.add_argument("--out", type=Path, default=ROOT / "experiments" / "results" / "study_budget")
    p.add_argument("--zoo", type=Path, default=ROOT / "experiments" / "results" / "study_zoo")
    a = p.parse_args()
    s = Study(a.out, a.zoo)
    lines, curves = budget_table(s)
    text = "\n".join(lines + other_tables(s)) + "\n"
    (a.out / "budget.md").write_text(text)
    plot(curves, a.out / "budget.png")
    print(text)


if __name__ == "__main__":
    main()
