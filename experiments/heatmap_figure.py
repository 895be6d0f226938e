"""Heat maps of the same test images under CE, CEOD and the baselines (experiments/README.md §1).

    python experiments/heatmap_figure.py --benchmark digits_decoy [--methods ce ceod rrr energy bg_random]

Trains each method once (seed 0, the study's protocol: ``experiments/study.py``; a finished run's checkpoint
under ``--runs`` is reused), then draws one row per method over the same defective test images: the
defect-class heat map of each method's own loss (margin CAM for CEOD) over the image, the AOI outlined,
P(defect) in the title. Writes ``experiments/results/heatmaps_<benchmark>.png``.
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

import numpy as np
import torch

sys.path.insert(0, str(Path(__file__).resolve().parent))
import study  # noqa: E402  (sibling script: benchmarks, methods, protocol)

ROOT = study.ROOT


def train_or_load(bench: str, method: str, runs: Path, data_dir: Path) -> Path:
    """The tested checkpoint of (bench, method, seed 0), training it first when absent."""
    out = runs / bench / method
    done = sorted(out.glob("checkpoints/epoch*.ckpt"))
    if done:
        return done[-1]
    from hydra import compose, initialize_config_dir
    from hydra.core.global_hydra import GlobalHydra
    from hydra.core.hydra_config import HydraConfig
    from omegaconf import open_dict

    import ceod.training.pipeline  # noqa: F401
    from ceod.training.pipeline import train

    overrides = [*study.BENCHMARKS[bench], *study.METHODS[method], "seed=0", *study.COMMON]
    GlobalHydra.instance().clear()
    with initialize_config_dir(config_dir=str(ROOT / "conf"), version_base="1.3"):
        cfg = compose(config_name="train", overrides=overrides, return_hydra_config=True)
    HydraConfig().set_config(cfg)
    with open_dict(cfg):
        cfg.paths.output_dir, cfg.paths.data_dir = str(out), str(data_dir)
        del cfg["hydra"]
    train(cfg)
    return sorted(out.glob("checkpoints/epoch*.ckpt"))[-1]


def test_batch(bench: str, data_dir: Path, n: int) -> dict:
    """The first ``n`` defective test images of the benchmark (a fixed set for every method)."""
    from hydra import compose, initialize_config_dir
    from hydra.core.global_hydra import GlobalHydra
    from hydra.utils import instantiate

    import ceod.training.pipeline  # noqa: F401  (resolvers)

    GlobalHydra.instance().clear()
    with initialize_config_dir(config_dir=str(ROOT / "conf"), version_base="1.3"):
        cfg = compose(config_name="train", overrides=[*study.BENCHMARKS[bench], f"paths.data_dir={data_dir}",
                                                       "data.manifest_out=null"])
    dm = instantiate(cfg.data)
    dm.prepare_data()
    dm.setup("test")
    images, masks = [], []
    for batch in dm.test_dataloader():
        keep = batch["label"] == 1
        images.append(batch["image"][keep]), masks.append(batch["mask"][keep])
        if sum(len(i) for i in images) >= n:
            break
    return {"image": torch.cat(images)[:n], "mask": torch.cat(masks)[:n]}


def draw(rows: dict[str, tuple[np.ndarray, np.ndarray]], images: np.ndarray, masks: np.ndarray, path: Path) -> None:
    """One row per method: images N×C×H×W (normalised), heats and masks N×H×W."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    from ceod.deploy.figures import overlay

    n = images.shape[0]
    fig, axes = plt.subplots(len(rows), n, figsize=(1.6 * n, 1.75 * len(rows)), squeeze=False)
    for r, (method, (probs, heats)) in enumerate(rows.items()):
        for c in range(n):
            ax = axes[r, c]
            ax.imshow(overlay(images[c], heats[c]))
            ax.contour(masks[c], levels=[0.5], colors="white", linewidths=0.6)
            ax.set_xticks([]), ax.set_yticks([])
            ax.set_title(f"p={probs[c]:.2f}", fontsize=7)
            if c == 0:
                ax.set_ylabel(method, fontsize=8)
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    plt.close(fig)


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    p.add_argument("--benchmark", default="digits_decoy", choices=list(study.BENCHMARKS))
    p.add_argument("--methods", nargs="+", default=["ce", "ceod", "rrr", "energy", "bg_random"])
    p.add_argument("--n", type=int, default=8)
    p.add_argument("--runs", type=Path, default=ROOT / "outputs" / "heatmap_figure")
    p.add_argument("--data-dir", type=Path, default=ROOT / "data" / "study")
    a = p.parse_args(argv)
    from ceod.deploy.predict import score_images
    from ceod.training.module import CEODModule

    batch = test_batch(a.benchmark, a.data_dir, a.n)
    rows = {}
    for method in a.methods:
        module = CEODModule.load_from_checkpoint(train_or_load(a.benchmark, method, a.runs, a.data_dir),
                                                 map_location="cpu").eval()
        prob, heat = score_images(module.model, batch["image"], module.loss.heat_spec)
        rows[method] = (prob.numpy(), heat.numpy())
    out = ROOT / "experiments" / "results" / f"heatmaps_{a.benchmark}.png"
    draw(rows, batch["image"].numpy(), batch["mask"].numpy(), out)
    print(f"wrote {out}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
