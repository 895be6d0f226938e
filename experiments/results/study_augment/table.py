"""§1d's table: augmentation on vs off on the shipped benchmarks (experiments/README.md §1d).

    python experiments/results/study_augment/table.py

On: this folder's cs_aug / ce_aug (loss=ceod_swap / loss=ce, data.augment=true), seeds 0-2. Off: this folder's
cs / ce (data.augment=false) where they ran (seed 0 of the decoys, a reproduction check), else §1c's identical
cells (experiments/results/study_zoo: ceod_swap_tight = today's loss=ceod_swap, ce); the check prints |Δ|.
"""

from __future__ import annotations

import json
import statistics as st
from pathlib import Path

HERE = Path(__file__).resolve().parent
ZOO = HERE.parent / "study_zoo"
BENCH = ("digits_decoy", "digits_control", "synthetic_decoy", "synthetic_control")
ARMS = {("ceod_swap", "on"): ("cs_aug", None), ("ce", "on"): ("ce_aug", None),
        ("ceod_swap", "off"): ("cs", "ceod_swap_tight"), ("ce", "off"): ("ce", "ce")}
SEEDS = (0, 1, 2)


def load(path: Path) -> dict | None:
    if not path.is_file():
        return None
    rec = json.loads(path.read_text())
    return rec if "test/auroc" in rec else None


def cells(bench: str, loss: str, arm: str) -> tuple[list[dict], list[float]]:
    """The records of one row (seeds 0-2) and |Δ AUROC| of every off cell run here and in §1c."""
    here, zoo = ARMS[loss, arm]
    out, check = [], []
    for s in SEEDS:
        rec = load(HERE / bench / here / f"seed{s}.json")
        old = load(ZOO / bench / zoo / f"seed{s}.json") if zoo else None
        if rec and old:
            check.append(abs(rec["test/auroc"] - old["test/auroc"]))
        if rec or old:
            out.append({**(rec or old), "here": rec is not None})
    return out, check


def ms(xs: list[float], f: str = ".3f") -> str:
    return f"{st.mean(xs):{f}} ± {st.stdev(xs):{f}}" if len(xs) > 1 else (f"{xs[0]:{f}}" if xs else "–")


def main() -> None:
    print("| benchmark | loss | augment | seeds | test AUROC | outside reliance | outside flip | aoi_energy "
          "| recovered | s / run (seeds run here) |")
    print("|---|---|---|---|---|---|---|---|---|---|")
    checks = []
    mean = {}
    for bench in BENCH:
        for loss in ("ce", "ceod_swap"):
            for arm in ("off", "on"):
                recs, check = cells(bench, loss, arm)
                checks += check
                mean[bench, loss, arm] = st.mean(r["test/auroc"] for r in recs) if recs else None
    for bench in BENCH:
        for loss in ("ce", "ceod_swap"):
            for arm in ("off", "on"):
                recs, _ = cells(bench, loss, arm)
                rec = "–"
                ctrl = bench.replace("decoy", "control")
                if bench.endswith("decoy") and recs and mean.get((ctrl, "ce", arm)) is not None:
                    lo, hi = mean[bench, "ce", arm], mean[ctrl, "ce", arm]
                    rec = f"{(mean[bench, loss, arm] - lo) / (hi - lo):.0%}"
                here = [r["seconds"] for r in recs if r["here"]]
                print(f"| {bench} | {loss} | {arm} | {len(recs)} | {ms([r['test/auroc'] for r in recs])} "
                      f"| {ms([r['test/outside_reliance'] for r in recs])} | {ms([r['test/outside_flip'] for r in recs])} "
                      f"| {ms([r['test/aoi_energy'] for r in recs])} | {rec} | {ms(here, '.0f')} |")
    print(f"\nreproduction: {len(checks)} off cell(s) rerun here, max |Δ test AUROC| vs §1c = "
          f"{max(checks) if checks else float('nan'):.2g}")


if __name__ == "__main__":
    main()
