"""Summarise a run or a sweep: ``python -m ceod.report <run or multirun dir> [seeds=seed] [out=DIR]``.

Finds every run below the folder (a ``csv/metrics.csv`` beside a ``config.yaml``; local multiruns,
submitit/SLURM sweeps and single runs alike). Per dataset, one table of the final val/test metrics
(the last logged value of each) with the swept config values (those that differ between the runs'
``.hydra/overrides.yaml``) as columns, mean ± std over the seed keys. Writes ``report.md``,
``report.csv`` (one column per swept key, named by the key: ``loss``, ``loss.omega``…) and plots:
``report_<dataset>_omega.png`` (test AUROC and AOI energy against ω, one line per model/regime) and
``report_<dataset>_ce_vs_ceod.png`` (one bar per loss per model/regime).
All files are built first and then written whole (temp file + rename).
"""

from __future__ import annotations

import csv
import io
import statistics
from dataclasses import dataclass, field
from pathlib import Path

from omegaconf import OmegaConf

from ceod.console import progress_bar
from ceod.errors import DataError

USAGE = "python -m ceod.report DIR [seeds=seed] [out=DIR]"
METRICS = ("test/auroc", "test/acc", "test/f1", "test/aoi_energy", "test/pointing_game", "val/auroc",
           "val/aoi_energy")
SHOWN = ("test/auroc", "test/aoi_energy", "test/pointing_game", "test/f1", "val/auroc")


@dataclass
class Run:
    """One finished run: where it is, its dataset, its overrides, group choices, ω and final metrics."""

    path: Path
    dataset: str
    overrides: dict[str, str]
    choices: dict[str, str]
    omega: float | None
    metrics: dict[str, float] = field(default_factory=dict)

    @property
    def family(self) -> str:
        """Model and training regime, e.g. ``custom_cnn/full``."""
        return f"{self.choices.get('model', '?')}/{self.choices.get('finetune', 'full')}"


def final_metrics(path: Path) -> dict[str, float]:
    """The last non-empty value of each val/… and test/… column of a Lightning CSV log."""
    out: dict[str, float] = {}
    try:
        with open(path, newline="") as f:
            for row in csv.DictReader(f):
                for key, value in row.items():
                    if key and key.startswith(("val/", "test/")) and value not in ("", None):
                        try:
                            out[key] = float(value)
                        except ValueError:
                            pass
    except OSError as e:
        raise DataError(f"cannot read {path}: {e.strerror}") from None
    return out


def read_run(run_dir: Path) -> Run | None:
    """A :class:`Run` from a run folder, None when it has no config or no val/test metrics yet."""
    config = run_dir / "config.yaml"
    if not config.is_file():
        config = run_dir / ".hydra" / "config.yaml"
    metrics = final_metrics(run_dir / "csv" / "metrics.csv")
    if not config.is_file() or not metrics:
        return None
    cfg = OmegaConf.load(config)
    data = cfg.get("data") or {}
    dataset = str(data.get("variant") or (Path(str(data.get("root"))).name if data.get("root") else "")
                  or str(data.get("_target_", "data")).rsplit(".", 1)[-1])
    overrides: dict[str, str] = {}
    if (run_dir / ".hydra" / "overrides.yaml").is_file():
        for item in OmegaConf.load(run_dir / ".hydra" / "overrides.yaml"):
            key, _, value = str(item).partition("=")
            overrides[key.lstrip("+~")] = value
    choices: dict[str, str] = {}
    if (run_dir / ".hydra" / "hydra.yaml").is_file():
        node = OmegaConf.select(OmegaConf.load(run_dir / ".hydra" / "hydra.yaml"), "hydra.runtime.choices")
        choices = {str(k): str(v) for k, v in (node or {}).items()}
    if "model" not in choices and cfg.get("model") is not None:
        choices["model"] = str(cfg.model.get("name") or cfg.model.get("_target_", "?")).rsplit(".", 1)[-1]
    omega = OmegaConf.select(cfg, "loss.omega", default=None)
    return Run(run_dir, dataset, overrides, choices, float(omega) if omega is not None else None, metrics)


def find_runs(root: Path) -> list[Run]:
    """Every run below ``root`` (``root`` itself included), sorted by path."""
    if not root.is_dir():
        raise DataError(f"report folder not found: {root}")
    logs = sorted(root.rglob("csv/metrics.csv"))
    runs = [read_run(p.parent.parent) for p in progress_bar(logs, "read runs", len(logs), "run")]
    runs = [r for r in runs if r is not None]
    if not runs:
        raise DataError(f"no runs with metrics under {root} (looked for */csv/metrics.csv beside a config.yaml; "
                        "runs need the CSV logger, on in logger=default and logger=wandb)")
    return runs


def _fmt(values: list[float]) -> str:
    if not values:
        return ""
    if len(values) == 1:
        return f"{values[0]:.4f}"
    return f"{statistics.mean(values):.4f} ± {statistics.stdev(values):.4f}"


def group_runs(runs: list[Run], seed_keys: tuple[str, ...]) -> tuple[list[str], list[tuple[tuple, list[Run]]]]:
    """(swept keys, [(their values, runs)]): keys whose override differs between runs, seeds pooled."""
    keys = sorted({k for r in runs for k in r.overrides})
    swept = [k for k in keys if k not in seed_keys and len({r.overrides.get(k, "") for r in runs}) > 1]
    groups: dict[tuple, list[Run]] = {}
    for r in runs:
        groups.setdefault(tuple(r.overrides.get(k, "(default)") for k in swept), []).append(r)
    return swept, list(groups.items())


def tables(runs: list[Run], seed_keys: tuple[str, ...]) -> tuple[str, list[list[str]]]:
    """(report.md text, report.csv rows incl. header)."""
    md = ["# Report", ""]
    datasets = {d: [r for r in runs if r.dataset == d] for d in sorted({r.dataset for r in runs})}
    swept_keys = sorted({k for part in datasets.values() for k in group_runs(part, seed_keys)[0]})
    header = ["dataset", *swept_keys, "n_runs", *(f"{m}_{s}" for m in METRICS for s in ("mean", "std")), "runs"]
    rows: list[list[str]] = [header]
    for dataset, part in datasets.items():
        swept, groups = group_runs(part, seed_keys)
        shown = [m for m in SHOWN if any(m in r.metrics for r in part)]
        md += [f"## {dataset}", "", f"{len(part)} run(s); mean ± std over {', '.join(seed_keys)} (n runs per row).", ""]
        md.append("| " + " | ".join([*swept, "n", *shown]) + " |")
        md.append("|" + "---|" * (len(swept) + 1 + len(shown)))
        for values, members in groups:
            cells = [_fmt([r.metrics[m] for r in members if m in r.metrics]) for m in shown]
            md.append("| " + " | ".join([*values, str(len(members)), *cells]) + " |")
            stats = []
            for m in METRICS:
                vals = [r.metrics[m] for r in members if m in r.metrics]
                stats += [f"{statistics.mean(vals):.8g}" if vals else "",
                          f"{statistics.stdev(vals):.8g}" if len(vals) > 1 else ""]
            # one column per key swept in any dataset (pandas pivots on them); a key this dataset does not sweep
            # holds its one common value
            given = dict(zip(swept, values))
            cells = [given.get(k, members[0].overrides.get(k, "")) for k in swept_keys]
            rows.append([dataset, *cells, str(len(members)), *stats, ";".join(str(r.path) for r in members)])
        md.append("")
    return "\n".join(md), rows


def _score(r: Run) -> tuple[float | None, float | None]:
    m = r.metrics
    return m.get("test/auroc", m.get("val/auroc")), m.get("test/aoi_energy", m.get("val/aoi_energy"))


def plots(runs: list[Run]) -> dict[str, object]:
    """{file name: matplotlib Figure} — ω curves and CE-vs-CEOD bars per dataset, where the runs allow."""
    from matplotlib.figure import Figure

    figs: dict[str, object] = {}
    for dataset in sorted({r.dataset for r in runs}):
        part = [r for r in runs if r.dataset == dataset and r.omega is not None]
        names = ("AUROC", "AOI energy")
        if len({r.omega for r in part}) > 1:
            fig = Figure(figsize=(8, 3.2), layout="constrained")
            axes = fig.subplots(1, 2)
            for family in sorted({r.family for r in part}):
                fam = [r for r in part if r.family == family]
                omegas = sorted({r.omega for r in fam})
                for k, ax in enumerate(axes):
                    ys = [[_score(r)[k] for r in fam if r.omega == w and _score(r)[k] is not None] for w in omegas]
                    pts = [(w, statistics.mean(y), statistics.stdev(y) if len(y) > 1 else 0.0)
                           for w, y in zip(omegas, ys) if y]
                    if pts:
                        ax.errorbar(*zip(*pts), marker="o", capsize=3, label=family)
            for ax, name in zip(axes, names):
                ax.set_xscale("symlog", linthresh=1e-3)
                ax.set(xlabel="ω (loss.omega)", ylabel=f"test {name}", title=f"{name} vs ω")
                ax.legend(fontsize=7)
            fig.suptitle(dataset, fontsize=10)
            figs[f"report_{dataset}_omega.png"] = fig
        losses = sorted({(r.choices.get("loss") or ("ce" if r.omega == 0 else f"ω={r.omega:g}")) for r in part})
        if any(r.omega == 0 for r in part) and any(r.omega for r in part):
            figs[f"report_{dataset}_ce_vs_ceod.png"] = _bars(part, losses, dataset, names, Figure)
    return figs


def _bars(part: list[Run], losses: list[str], dataset: str, names: tuple[str, str], Figure) -> object:
    fig = Figure(figsize=(8, 3.2), layout="constrained")
    axes = fig.subplots(1, 2)
    families = sorted({r.family for r in part})
    width = 0.8 / max(1, len(losses))
    for j, loss in enumerate(losses):
        for k, ax in enumerate(axes):
            means, errs = [], []
            for fam in families:
                ys = [_score(r)[k] for r in part if r.family == fam and _score(r)[k] is not None
                      and (r.choices.get("loss") or ("ce" if r.omega == 0 else f"ω={r.omega:g}")) == loss]
                means.append(statistics.mean(ys) if ys else float("nan"))
                errs.append(statistics.stdev(ys) if len(ys) > 1 else 0.0)
            ax.bar([i + j * width for i in range(len(families))], means, width, yerr=errs, capsize=3, label=loss)
    for ax, name in zip(axes, names):
        ax.set_xticks([i + width * (len(losses) - 1) / 2 for i in range(len(families))], families, fontsize=8)
        ax.set(ylabel=f"test {name}", title=f"{name}: CE vs CEOD")
        ax.legend(fontsize=7)
    fig.suptitle(dataset, fontsize=10)
    return fig


def report(dir: str, seeds: str = "seed", out: str | None = None) -> dict:
    """Build and write the report of ``dir``; returns {"runs", "files"}."""
    from ceod.data.layout import atomic_write
    from ceod.deploy.figures import save_figure

    root = Path(dir)
    runs = find_runs(root)
    seed_keys = tuple(k.strip() for k in (seeds or "").split(",") if k.strip())
    md, rows = tables(runs, seed_keys)
    figs = plots(runs)
    out_dir = Path(out) if out else root
    try:
        out_dir.mkdir(parents=True, exist_ok=True)
        buf = io.StringIO()
        csv.writer(buf).writerows(rows)
        files = [save_figure(fig, out_dir / name) for name, fig in figs.items()]
        md += "".join(f"\n![{name}]({name})\n" for name in figs)
        files.append(atomic_write(out_dir / "report.csv", lambda t: Path(t).write_text(buf.getvalue())))
        files.append(atomic_write(out_dir / "report.md", lambda t: Path(t).write_text(md)))
    except OSError as e:
        raise DataError(f"cannot write the report in {out_dir}: {e.strerror or e}") from None
    return {"runs": runs, "files": files, "markdown": md}
