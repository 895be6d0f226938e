"""Train several losses × seeds on one dataset and print test AUROC / accuracy / AOI energy.

Each run is a real `ceod.training.pipeline.train` call on the composed Hydra config (the same code path as
`python -m ceod.train`), so the numbers are what a user gets. Example (the README's table):

    python experiments/compare_losses.py --data synthetic_zipper_decoy --losses ce ceod_paper \\
        --seeds 0 1 2 --set trainer.max_epochs=20

Extra Hydra overrides go after --set (applied to every run); --tag names a variant of the
generator (`--gen contrast=0.08`), cached in its own data folder.
"""

from __future__ import annotations

import argparse
import json
import statistics
import sys
import tempfile
import time
from pathlib import Path

from hydra import compose, initialize_config_dir
from hydra.core.global_hydra import GlobalHydra
from hydra.core.hydra_config import HydraConfig
from omegaconf import open_dict

import ceod.training.pipeline  # noqa: F401  (registers resolvers)
from ceod.training.pipeline import train

CONF = str(Path(__file__).resolve().parents[1] / "conf")
KEYS = ("test/auroc", "test/acc", "test/aoi_energy", "test/pointing_game", "val/auroc")


def run_one(overrides: list[str], out_dir: Path) -> dict[str, float]:
    GlobalHydra.instance().clear()
    with initialize_config_dir(config_dir=CONF, version_base="1.3"):
        cfg = compose(config_name="train", overrides=overrides, return_hydra_config=True)
    HydraConfig().set_config(cfg)
    with open_dict(cfg):
        cfg.paths.output_dir = str(out_dir)
        del cfg["hydra"]
    return train(cfg)


def fmt(values: list[float]) -> str:
    if len(values) == 1:
        return f"{values[0]:.3f}"
    return f"{statistics.mean(values):.3f} ± {statistics.stdev(values):.3f}"


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    p.add_argument("--data", default="synthetic_zipper")
    p.add_argument("--losses", nargs="+", default=["ce", "ceod"], help="loss config names, or name:key=val,key=val")
    p.add_argument("--seeds", nargs="+", type=int, default=[0, 1, 2])
    p.add_argument("--gen", nargs="*", default=[], help="generator overrides, e.g. contrast=0.08 decoy_p=0.5")
    p.add_argument("--data-dir", default="data")
    p.add_argument("--set", nargs="*", default=[], dest="overrides")
    p.add_argument("--json", help="also write all results to this file")
    a = p.parse_args(argv)

    gen = {k: v for k, v in (g.split("=", 1) for g in a.gen)}
    tag = "_".join(f"{k}{v}" for k, v in sorted(gen.items()))
    root = Path(a.data_dir).resolve() / (f"{a.data}_{tag}" if tag else a.data)
    rows: dict[str, dict[str, list[float]]] = {}
    raw = []
    for spec in a.losses:
        name, _, extra = spec.partition(":")
        loss_over = [f"loss={name}"] + [f"loss.{kv}" for kv in extra.split(",") if kv]
        for seed in a.seeds:
            over = [f"data={a.data}", f"seed={seed}", "logger=none", "trainer.enable_progress_bar=false",
                    "trainer.accelerator=cpu", *loss_over, *a.overrides]
            if gen:
                over += ["+data.generator={" + ",".join(f"{k}:{v}" for k, v in gen.items()) + "}"]
            over.append(f"data.root={root}_seed{0}")
            t0 = time.time()
            with tempfile.TemporaryDirectory() as tmp:
                res = run_one(over, Path(tmp))
            res["seconds"] = time.time() - t0
            raw.append({"loss": spec, "seed": seed, **{k: res.get(k) for k in (*KEYS, "seconds")}})
            print(json.dumps(raw[-1]), flush=True)
            for k in KEYS:
                rows.setdefault(spec, {}).setdefault(k, []).append(res.get(k, float("nan")))
    print(f"\ndata={a.data} gen={gen or 'default'} seeds={a.seeds} overrides={a.overrides}")
    print("| loss | " + " | ".join(KEYS) + " |")
    print("|---" * (len(KEYS) + 1) + "|")
    for spec, cols in rows.items():
        print(f"| {spec} | " + " | ".join(fmt(cols[k]) for k in KEYS) + " |")
    if a.json:
        Path(a.json).write_text(json.dumps(raw, indent=1))
    return 0


if __name__ == "__main__":
    sys.exit(main())
