"""What the outside-reliance metric adds to a validation epoch (issue 16 target: ≤ 10 %).

    python experiments/bench_reliance.py [--reps 5] [--threads 1]

Times the validation epoch of the decoy-digits benchmark (162 images, 64 px, custom CNN, the Grad-CAM metrics
on) with ``module.reliance`` = [] (none), [swap] and [swap, blur] (the default), interleaved so machine noise
hits each alike; the median of ``--reps``. Two epochs are timed: ``trainer.validate`` alone, and the validation
of a training epoch (which first recomputes the BN statistics over the 432 training images).
"""

from __future__ import annotations

import argparse
import statistics
import tempfile
import time
from pathlib import Path

import torch

ROOT = Path(__file__).resolve().parents[1]
SETTINGS = {"none": "[]", "swap": "[swap]", "swap+blur": "[swap,blur]"}


def build(tmp: str, reliance: str):
    from hydra import compose, initialize_config_dir
    from hydra.core.global_hydra import GlobalHydra
    from hydra.utils import instantiate
    from omegaconf import open_dict

    import ceod.training.pipeline  # noqa: F401  (resolvers)

    GlobalHydra.instance().clear()
    with initialize_config_dir(config_dir=str(ROOT / "conf"), version_base="1.3"):
        cfg = compose("train", overrides=["+experiment=decoy_digits", f"module.reliance={reliance}", "logger=none"])
    with open_dict(cfg):
        cfg.paths.output_dir = tmp
        cfg.paths.data_dir = str(ROOT / "data")
    return instantiate(cfg.module), instantiate(cfg.data)


def time_epochs(module, dm) -> tuple[float, float]:
    """(seconds of trainer.validate, seconds of the validation inside a 1-batch training epoch)."""
    import lightning as L

    kw = dict(accelerator="cpu", logger=False, enable_checkpointing=False, enable_progress_bar=False,
              enable_model_summary=False, inference_mode=False)
    trainer = L.Trainer(**kw)
    t0 = time.perf_counter()
    trainer.validate(module, datamodule=dm, verbose=False)
    alone = time.perf_counter() - t0
    trainer = L.Trainer(max_epochs=1, limit_train_batches=1, num_sanity_val_steps=0, **kw)
    t1 = time.perf_counter()
    trainer.fit(module, datamodule=dm)
    total = time.perf_counter() - t1
    return alone, total


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    p.add_argument("--reps", type=int, default=5)
    p.add_argument("--threads", type=int, default=1)
    a = p.parse_args()
    torch.set_num_threads(a.threads)
    times = {k: ([], []) for k in SETTINGS}
    with tempfile.TemporaryDirectory() as tmp:
        built = {k: build(tmp, v) for k, v in SETTINGS.items()}
        for r in range(a.reps + 1):
            for k, (module, dm) in built.items():
                alone, fit = time_epochs(module, dm)
                if r:  # the first round warms the caches up
                    times[k][0].append(alone)
                    times[k][1].append(fit)
    print(f"torch threads {a.threads}, median of {a.reps}")
    print("| module.reliance | validation epoch (s) | × none | 1-batch train epoch + BN recalibration + validation (s) | × none |")
    print("|---|---|---|---|---|")
    base = [statistics.median(v) for v in times["none"]]
    for k, (alone, fit) in times.items():
        ma, mf = statistics.median(alone), statistics.median(fit)
        print(f"| {SETTINGS[k]} | {ma:.2f} | {ma / base[0]:.2f} | {mf:.2f} | {mf / base[1]:.2f} |")


if __name__ == "__main__":
    main()
