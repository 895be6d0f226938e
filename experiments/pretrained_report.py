"""Tables of the pretrained regime study (issue 17, experiments/README.md §9): EfficientNet-Lite0 with ImageNet
weights, finetune regime × loss, on the decoy and control benchmarks, beside the custom CNN from scratch.

    python experiments/pretrained_report.py [--out experiments/results/study_pretrained] [--write]

Per product (decoy digits, synthetic zipper) and cell ``<regime>_<loss>``: test AUROC on the decoy and on its
control (mean ± std over seeds), Δ vs the same regime's CE paired by seed, **recovered** = (M_decoy − CE_decoy)
/ (CE_control − CE_decoy) on the same regime's CE means, the decision's outside reliance (mean |ΔP(defect)|
when the outside is swapped) and the heat map's AOI energy on the decoy test set, and minutes per run.
The custom-CNN rows are the decoy zoo's runs (§1c: 64 px, same protocol and data, seeds 0–2).
``--write`` also writes ``<out>/pretrained.md``.
"""

from __future__ import annotations

import argparse
from pathlib import Path

from study_report import footer, load, mean, ms  # noqa: E402  (sibling script)

ROOT = Path(__file__).resolve().parents[1]
OUT = ROOT / "experiments" / "results" / "study_pretrained"
ZOO = ROOT / "experiments" / "results" / "study_zoo"
PRODUCTS = {"digits": ("digits_decoy", "digits_control"), "zipper": ("synthetic_decoy", "synthetic_control")}
REGIMES = ("transfer", "last_n", "full")
LOSSES = ("ce", "ceod_paper", "ceod", "ceod_swap")
REFERENCE = {"ce": "ce", "ceod": "ceod", "ceod_swap": "ceod_swap_tight"}  # loss → its zoo method name


def _col(seeds: dict, key: str) -> list:
    return [r.get(key) for r in seeds.values() if r.get(key) is not None]


def _paired(seeds: dict, ce: dict) -> list[float]:
    return [seeds[s]["test/auroc"] - ce[s]["test/auroc"] for s in seeds if s in ce]


MIN_COST = 0.05  # below this decoy cost (CE control − CE decoy) the recovered share is not defined


def recovered(dec: dict, ce: dict) -> tuple[float | None, str]:
    """(share, text): (M_decoy − CE_decoy) / (CE_control − CE_decoy), every mean over the seeds M's decoy cell
    has (so a cell with fewer seeds is compared with CE on the same ones)."""
    seeds = [s for s in dec if s in ce.get("decoy", {}) and s in ce.get("control", {})]
    if not seeds:
        return None, "–"
    auc = mean([dec[s]["test/auroc"] for s in seeds])
    ce_d = mean([ce["decoy"][s]["test/auroc"] for s in seeds])
    ce_c = mean([ce["control"][s]["test/auroc"] for s in seeds])
    if ce_c - ce_d < MIN_COST:
        return None, f"n/a (cost {ce_c - ce_d:+.3f})"
    share = (auc - ce_d) / (ce_c - ce_d)
    return share, f"{share:.0%}"


def _row(label: str, loss: str, cells: dict, ce: dict) -> str:
    """One Markdown row: ``cells`` = {"decoy": seeds, "control": seeds}, ``ce`` the same for CE."""
    dec, con = cells.get("decoy", {}), cells.get("control", {})
    rec = "–" if loss == "ce" else recovered(dec, ce)[1]
    d_dec = "–" if loss == "ce" else ms(_paired(dec, ce.get("decoy", {})))
    d_con = "–" if loss == "ce" else ms(_paired(con, ce.get("control", {})))
    minutes = mean(_col(dec, "seconds") + _col(con, "seconds"))
    return (f"| {label} | {loss} | {len(dec)}/{len(con)} | {ms(_col(dec, 'test/auroc'))} | {d_dec} | **{rec}** | "
            f"{ms(_col(con, 'test/auroc'))} | {d_con} | {ms(_col(dec, 'test/outside_reliance'))} | "
            f"{ms(_col(dec, 'test/aoi_energy'))} | {'–' if minutes is None else f'{minutes / 60:.1f}'} |")


def product_table(runs, zoo, product: str) -> list[str]:
    decoy, control = PRODUCTS[product]
    lines = [f"**{product}** ({decoy} / {control})", "",
             "| model · regime | loss | seeds (decoy/control) | decoy AUROC | Δ vs CE | recovered | control AUROC "
             "| Δ vs CE | outside reliance (decoy) | AOI energy (decoy) | min / run |", "|---|---|---|---|---|---|---|---|---|---|---|"]

    def block(label: str, source, name) -> None:
        ce = {"decoy": source.get((decoy, name("ce")), {}), "control": source.get((control, name("ce")), {})}
        for loss in LOSSES:
            cells = {"decoy": source.get((decoy, name(loss)), {}), "control": source.get((control, name(loss)), {})}
            if cells["decoy"] or cells["control"]:
                lines.append(_row(label, loss, cells, ce))

    for regime in REGIMES:
        block(f"Lite0 · {regime}", runs, lambda loss, r=regime: f"{r}_{loss}")
    block("custom CNN (scratch, 64 px)", zoo, lambda loss: REFERENCE.get(loss, "-"))
    return lines


def arm_table(runs) -> list[str]:
    """The CAM layer / AOI dilation arm (decoys, last_n, loss=ceod) beside the default cell."""
    arms = sorted({m for _, m in runs if m.startswith("last_n_ceod_") and m not in ("last_n_ceod_paper", "last_n_ceod_swap")})
    if not arms:
        return []
    lines = ["| decoy benchmark | cell | seeds | test AUROC | Δ vs last_n_ceod (paired) | recovered | outside reliance "
             "| AOI energy | pointing game |", "|---|---|---|---|---|---|---|---|---|"]
    for product, (decoy, control) in PRODUCTS.items():
        ce = {"decoy": runs.get((decoy, "last_n_ce"), {}), "control": runs.get((control, "last_n_ce"), {})}
        base = runs.get((decoy, "last_n_ceod"), {})
        for m in ["last_n_ceod", *arms]:
            seeds = runs.get((decoy, m), {})
            rec = recovered(seeds, ce)[1]
            delta = "–" if m == "last_n_ceod" else ms(_paired(seeds, base))
            lines.append(f"| {decoy} | {m} | {len(seeds)} | {ms(_col(seeds, 'test/auroc'))} | {delta} | {rec} | "
                         f"{ms(_col(seeds, 'test/outside_reliance'))} | {ms(_col(seeds, 'test/aoi_energy'))} | "
                         f"{ms(_col(seeds, 'test/pointing_game'))} |")
    return lines


def target_table(runs) -> list[str]:
    """The issue's target per regime and loss: recovery ≥ 80 % on both decoys, ≤ 0.01 cost on both controls."""
    lines = ["| regime | loss | digits: recovered / control Δ | zipper: recovered / control Δ | target met |",
             "|---|---|---|---|---|"]
    for regime in REGIMES:
        for loss in LOSSES[1:]:
            cells, ok = [], True
            for decoy, control in PRODUCTS.values():
                ce = {"decoy": runs.get((decoy, f"{regime}_ce"), {}), "control": runs.get((control, f"{regime}_ce"), {})}
                dec, con = runs.get((decoy, f"{regime}_{loss}"), {}), runs.get((control, f"{regime}_{loss}"), {})
                share, text = recovered(dec, ce)
                delta = mean(_paired(con, ce["control"]))
                ok = ok and share is not None and share >= 0.8 and delta is not None and delta >= -0.01
                cells.append(f"{text} / {'–' if delta is None else f'{delta:+.3f}'}")
            lines.append(f"| {regime} | {loss} | {cells[0]} | {cells[1]} | {'yes' if ok else '**no**'} |")
    return lines


def cost_table(runs) -> list[str]:
    """Mean wall seconds per run (all four benchmarks) by regime × loss, and the ratio to the regime's CE."""
    lines = ["| regime | " + " | ".join(f"{loss} s (× CE)" for loss in LOSSES) + " |", "|---|" + "---|" * len(LOSSES)]
    for regime in REGIMES:
        secs = {loss: mean([s for (b, m), seeds in runs.items() if m == f"{regime}_{loss}" for s in _col(seeds, "seconds")])
                for loss in LOSSES}
        ce = secs["ce"]
        lines.append(f"| {regime} | " + " | ".join("–" if v is None else f"{v:.0f} ({v / ce:.2f})" if ce else f"{v:.0f}"
                                                   for v in secs.values()) + " |")
    return lines


def report(out: Path) -> str:
    runs, zoo = load(out), load(ZOO)
    if not runs:
        return f"no results under {out}"
    parts = []
    for product in PRODUCTS:
        parts += [*product_table(runs, zoo, product), ""]
    parts += ["The target (pretrained CEOD vs pretrained CE of the same regime: ≥ 80 % of the decoy's cost recovered, "
              "≤ 0.01 AUROC lost without the decoy, on both products):", "", *target_table(runs), ""]
    parts += ["Run time (wall seconds per 15-epoch run incl. data loading and testing, one thread, two runs at a "
              "time on 2 cores):", "", *cost_table(runs), ""]
    arm = arm_table(runs)
    if arm:
        parts += ["CAM layer / AOI dilation (decoys, finetune=last_n, loss=ceod):", "", *arm, ""]
    return "\n".join([*parts, footer(runs)])


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    p.add_argument("--out", type=Path, default=OUT)
    p.add_argument("--write", action="store_true", help="also write <out>/pretrained.md")
    a = p.parse_args()
    text = report(a.out)
    print(text)
    if a.write:
        (a.out / "pretrained.md").write_text(text + "\n")


if __name__ == "__main__":
    main()
