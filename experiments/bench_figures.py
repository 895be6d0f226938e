"""What do the heat-map figures cost a training run? Wall time with and without ``callbacks.figures``,
and the time spent inside the callback's hooks (Lightning's SimpleProfiler).

    python experiments/bench_figures.py                          # default data (400 images, 128 px), 3 epochs
    python experiments/bench_figures.py --epochs 20 --repeats 1  # the default run of `make train`

After a 1-epoch warm-up run, each repeat trains and tests twice, figures on and off (the order alternates
between repeats), in this process (same data cache, same seed);
``--overrides`` are passed to the config as on the command line. The callback's share = its hooks' total
time (fit + test) ÷ the run's wall time; the wall-time ratio is reported too but moves by several
percent between runs on a shared machine.
"""

from __future__ import annotations

import argparse
import tempfile
import time
from pathlib import Path

from hydra import compose, initialize_config_dir
from hydra.core.global_hydra import GlobalHydra
from hydra.core.hydra_config import HydraConfig
from omegaconf import open_dict

import ceod.training.pipeline
from ceod.training.pipeline import train

CONF = str(Path(__file__).resolve().parents[1] / "conf")


def run(tmp: Path, name: str, figures: bool, overrides: list[str]) -> tuple[float, dict[str, float]]:
    """(wall seconds of train(), {hook: seconds inside it} for the HeatMapFigures hooks)."""
    prof = tmp / f"prof_{name}"
    over = [*overrides, "logger=default", "trainer.enable_progress_bar=false",
            "+trainer.profiler._target_=lightning.pytorch.profilers.SimpleProfiler",
            f"+trainer.profiler.dirpath={prof}", "+trainer.profiler.filename=perf"]
    if not figures:
        over.append("callbacks.figures=null")
    GlobalHydra.instance().clear()
    with initialize_config_dir(config_dir=CONF, version_base="1.3"):
        cfg = compose(config_name="train", return_hydra_config=True, overrides=over)
    HydraConfig().set_config(cfg)
    with open_dict(cfg):
        cfg.paths.output_dir = str(tmp / name)
        del cfg["hydra"]
    t = time.perf_counter()
    train(cfg)
    wall = time.perf_counter() - t
    hooks: dict[str, float] = {}  # the test report repeats the fit's actions: keep each action's largest total
    for report in prof.glob("*perf.txt"):
        for line in report.read_text().splitlines():
            if "HeatMapFigures" in line:
                cells = [c.strip() for c in line.split("|") if c.strip()]  # action | mean | calls | total | share
                hooks[cells[0]] = max(hooks.get(cells[0], 0.0), float(cells[3]))
    return wall, hooks


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--epochs", type=int, default=3)
    ap.add_argument("--repeats", type=int, default=2)
    ap.add_argument("--overrides", nargs="*", default=["trainer.accelerator=cpu"])
    args = ap.parse_args()
    overrides = [f"trainer.max_epochs={args.epochs}", *args.overrides]
    rows = []
    with tempfile.TemporaryDirectory() as tmp:
        run(Path(tmp), "warmup", True, ["trainer.max_epochs=1", *args.overrides])  # imports, data cache, kernels
        for k in range(args.repeats):
            if k % 2:  # alternate the order: load on this shared machine drifts
                off, _ = run(Path(tmp), f"off{k}", False, overrides)
                on, hooks = run(Path(tmp), f"on{k}", True, overrides)
            else:
                on, hooks = run(Path(tmp), f"on{k}", True, overrides)
                off, _ = run(Path(tmp), f"off{k}", False, overrides)
            rows.append((on, off, hooks))
    print(f"overrides: {' '.join(overrides)}")
    print(f"{'repeat':<8}{'with (s)':>10}{'without (s)':>13}{'wall ratio':>12}{'in hooks (s)':>14}{'hooks ÷ run':>13}")
    for k, (on, off, hooks) in enumerate(rows):
        total = sum(hooks.values())
        print(f"{k:<8}{on:>10.1f}{off:>13.1f}{on / off:>12.3f}{total:>14.2f}{total / on:>13.1%}")
    print("largest hooks (s, last repeat): " + ", ".join(
        f"{name.split('.')[-1]} {sec:.2f}" for name, sec in sorted(rows[-1][2].items(), key=lambda kv: -kv[1])[:4]))


if __name__ == "__main__":
    assert ceod.training.pipeline  # registers the config resolvers
    main()
