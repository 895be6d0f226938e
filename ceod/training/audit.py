"""Audit a checkpoint: does its decision depend on what lies outside the AOI? — on any folder+mask data.

    python -m ceod.audit ckpt=<file.ckpt> out=<dir> [data=folder] data.root=<dir> [data.<key>=…]
                         [split=all|train|val|test] [fills=swap,blur] [top=12] [batch_size=32]

For every image with an AOI mask, the content outside the AOI is replaced (:mod:`ceod.core.reliance`: another
image's outside, a blurred copy, or noise) while the inside is kept, and P(defect) is compared. Writes
``<out>/reliance.csv`` (per image: P, P per fill, |ΔP|, flipped at the checkpoint's threshold, AOI energy of
its Grad-CAM), ``<out>/summary.json`` (outside_reliance, outside_flip per fill, AOI energy, n) and
``<out>/most_reliant.png`` (the images whose decision depends most on the outside: image with AOI, Grad-CAM,
the swapped composite, and the occlusion map — where swapping the outside moves P). A model with high AOI
energy can still read a decoy; this measures the decision, not the heat map. Files are written whole.
"""

from __future__ import annotations

import json
import shutil
from pathlib import Path

import numpy as np
import torch
from torch.utils.data import DataLoader

from ceod.data.layout import prepare_out, write_csv
from ceod import CONF_DIR as conf
from ceod.deploy import figures
from ceod.errors import ConfigError, DataError
from ceod.core.metrics import AOIEnergy
from ceod.deploy.checkpoint import RECORD_KEY, build_model, heat_spec_of, load_checkpoint, threshold_of
from ceod.deploy.predict import score_images
from ceod.core.reliance import FILLS, fill_outside, occlusion_map, partner_roll, valid_for

USAGE = ("python -m ceod.audit ckpt=FILE out=DIR data.root=DIR [data=folder] [data.KEY=VALUE …] "
         "[split=all] [fills=swap,blur] [top=12] [batch_size=32]")
SPLITS = ("train", "val", "test")


def datamodule(record: dict, overrides: list[str]):
    """The DataModule of ``data=…`` overrides (Hydra's data group) at the checkpoint's preprocessing, no augmentation."""
    from hydra import compose, initialize_config_dir
    from hydra.core.global_hydra import GlobalHydra
    from hydra.errors import HydraException
    from hydra.utils import instantiate

    import ceod.training.pipeline  # noqa: F401  (resolvers)

    pre = record["preprocess"]
    fixed = [f"data.image_size={json.dumps(pre['image_size'])}", f"data.channels={pre['channels']}",
             f"data.mean={json.dumps(pre['mean'])}", f"data.std={json.dumps(pre['std'])}",
             "data.augment=false", "data.num_workers=0", "data.manifest_out=null"]

    GlobalHydra.instance().clear()
    try:
        with initialize_config_dir(config_dir=str(conf), version_base="1.3"):
            cfg = compose(config_name="train", overrides=[*overrides, *fixed])
    except HydraException as e:
        raise ConfigError(f"bad data option: {str(e).strip().splitlines()[0]}") from None
    if cfg.data.get("root") in (None, "???"):
        raise ConfigError("missing data.root=DIR (the folder+mask data to audit)")
    return instantiate(cfg.data)


def audit(ckpt: str, out: str, data: list[str], split: str = "all", fills: str = "swap,blur", top: int = 12,
          batch_size: int = 32) -> dict:
    """Measure outside reliance of ``ckpt`` on the data ``data`` (Hydra overrides); returns the summary."""
    fill_list = [f for f in fills.split(",") if f]
    bad = [f for f in fill_list if f not in FILLS] or ([] if fill_list else ["(none)"])
    if bad:
        raise ConfigError(f"fills: unknown fill {bad[0]!r}; choose from {FILLS}")
    if split not in ("all", *SPLITS):
        raise ConfigError(f"split must be all, train, val or test, got {split!r}")
    if top < 0 or batch_size < 1:
        raise ConfigError(f"top must be ≥ 0 and batch_size ≥ 1, got {top}, {batch_size}")
    checkpoint = load_checkpoint(ckpt)
    record = checkpoint[RECORD_KEY]
    thr = threshold_of(checkpoint)
    model = build_model(checkpoint, ckpt)
    dm = datamodule(record, data)
    dm.setup()
    out_dir, created = prepare_out(out)
    try:
        summary = _write(model, record, dm, out_dir, split, fill_list, thr, batch_size, top, ckpt, data)
    except BaseException:
        if created:
            shutil.rmtree(out_dir, ignore_errors=True)
        raise
    return summary


def _write(model, record, dm, out_dir: Path, split, fills, thr, batch_size, top, ckpt, data) -> dict:
    """Measure, then write reliance.csv, summary.json and (with ``top``) most_reliant.png into ``out_dir``."""
    from ceod.data.layout import atomic_write

    rows, keep = _measure(model, record, dm, SPLITS if split == "all" else (split,), fills, thr, batch_size)
    if not rows:
        raise DataError(f"no image with an AOI mask in split {split} of {' '.join(data)}: the audit measures what "
                        "lies outside the AOI, so it needs masks (data.mask_dir)")
    summary = _summary(rows, fills, thr, ckpt)
    header = ["path", "split", "label", "p_defect", *[f"p_{f}" for f in fills],
              *[f"delta_{f}" for f in fills], *[f"flip_{f}" for f in fills], "aoi_energy"]
    write_csv(out_dir / "reliance.csv", header, [[r[k] for k in header] for r in rows])
    atomic_write(out_dir / "summary.json", lambda t: Path(t).write_text(json.dumps(summary, indent=1) + "\n"))
    if top and "swap" in fills:
        _figure(model, record, keep, rows, top, out_dir / "most_reliant.png")
    return summary


def _measure(model, record, dm, splits, fills, thr, batch_size) -> tuple[list[dict], dict]:
    """Per-image rows over ``splits``, and the tensors the figure needs (image, mask, partner) by row index."""
    spec = heat_spec_of(record)
    cls = spec.defect_class
    rows, keep = [], {}
    for split in splits:
        ds = dm.datasets[split]
        for batch in DataLoader(ds, batch_size=batch_size, shuffle=False):
            x, mask, y, idx = batch["image"], batch["mask"], batch["label"], batch["index"]
            prob, heat = score_images(model, x, spec)
            energy = AOIEnergy(cls).score(heat.float(), (mask > 0.5).float())
            with torch.no_grad():
                pf = {f: model(fill_outside(x, mask, f))[0].float().softmax(1)[:, cls] for f in fills}
            valid = {f: valid_for(mask, f) for f in fills}
            partner = partner_roll(x.shape[0])
            for j in range(x.shape[0]):
                if not bool((mask[j] > 0.5).any()):
                    continue
                r = {"path": str(ds.samples[int(idx[j])].image), "split": split, "label": int(y[j]),
                     "p_defect": round(float(prob[j]), 6), "aoi_energy": round(float(energy[j]), 6)}
                for f in fills:
                    ok = bool(valid[f][j])
                    r[f"p_{f}"] = round(float(pf[f][j]), 6)
                    r[f"delta_{f}"] = round(abs(float(pf[f][j] - prob[j])), 6) if ok else ""
                    r[f"flip_{f}"] = int((float(pf[f][j]) >= thr) != (float(prob[j]) >= thr)) if ok else ""
                keep[len(rows)] = (x[j], mask[j], x[int(partner[j])], mask[int(partner[j])], heat[j])
                rows.append(r)
    return rows, keep


def _summary(rows: list[dict], fills: list[str], thr: float, ckpt: str) -> dict:
    defective = [r["aoi_energy"] for r in rows if r["label"] == 1]  # as the training metric: defective images
    s = {"checkpoint": str(ckpt), "threshold": thr, "n": len(rows),
         "aoi_energy": float(np.mean(defective)) if defective else None}
    for f in fills:
        d = [r[f"delta_{f}"] for r in rows if r[f"delta_{f}"] != ""]
        fl = [r[f"flip_{f}"] for r in rows if r[f"flip_{f}"] != ""]
        suffix = "" if f == "swap" else f"_{f}"
        s[f"outside_reliance{suffix}"] = float(np.mean(d)) if d else None
        s[f"outside_flip{suffix}"] = float(np.mean(fl)) if fl else None
    return s


def _figure(model, record, keep, rows, top, path: Path) -> None:
    """The ``top`` images with the largest swap |ΔP|: image + AOI, Grad-CAM, composite, occlusion map."""
    from matplotlib.figure import Figure

    cls = heat_spec_of(record).defect_class
    order = sorted((i for i in keep if rows[i]["delta_swap"] != ""), key=lambda i: -rows[i]["delta_swap"])[:top]
    if not order:
        return
    fig = Figure(figsize=(8, 2.1 * len(order)))
    with torch.no_grad():
        predict = lambda b: model(b)[0].float().softmax(1)[:, cls]  # noqa: E731
        for r, i in enumerate(order):
            img, mask, other, other_mask, heat = keep[i]
            comp = fill_outside(torch.stack([img, other]), torch.stack([mask, other_mask]), "swap")[0]
            occ = occlusion_map(predict, img, mask, other, other_mask)
            panels = [(figures.display_image(img.numpy()), f"P={rows[i]['p_defect']:.2f} label={rows[i]['label']}"),
                      (figures.overlay(img.numpy(), heat.numpy()) / 255.0, f"Grad-CAM, AOI {rows[i]['aoi_energy']:.2f}"),
                      (figures.display_image(comp.numpy()), f"outside swapped P={rows[i]['p_swap']:.2f}")]
            for c, (pic, title) in enumerate(panels):
                ax = fig.add_subplot(len(order), 4, 4 * r + c + 1)
                ax.imshow(pic)
                if c == 0:
                    ax.contour(mask.numpy(), levels=[0.5], colors="lime", linewidths=0.8)
                ax.set_title(title, fontsize=7)
                ax.axis("off")
            ax = fig.add_subplot(len(order), 4, 4 * r + 4)
            lim = max(float(occ.abs().max()), 1e-3)
            ax.imshow(occ.numpy(), cmap="coolwarm", vmin=-lim, vmax=lim, extent=(0, img.shape[-1], img.shape[-2], 0))
            ax.contour(mask.numpy(), levels=[0.5], colors="k", linewidths=0.8)
            ax.set_title(f"ΔP by swapped cell (±{lim:.2f})", fontsize=7)
            ax.axis("off")
    fig.tight_layout()
    figures.save_figure(fig, path, dpi=90)
