"""``python -m ceod.mvtec``: estimated zipper AOIs to inspect and reuse, and the offline augmented set.

    python -m ceod.mvtec aoi --root ROOT --out AOI_DIR [--margin 0.03] [--preview 16]
        estimated AOI masks in the data.aoi_dir layout (AOI_DIR/{train/good,test/<type>}/NNN.png)
        + AOI_DIR/aoi_preview.png; warnings name images whose AOI cannot be right
    python -m ceod.mvtec augment --root ROOT --out OUT --n 400 [--aoi-dir D | --aoi-mask F]
        the paper's augmented set in the folder layout (train with data=folder data.root=OUT);
        OUT/source_manifest.csv lists the sources and OUT/source_aoi/ keeps estimated source AOIs
(``augment`` is also the default: ``python -m ceod.mvtec --root … --out …``.)
"""

from __future__ import annotations

import argparse
import csv
import shutil
import sys
import tempfile
from pathlib import Path

from ceod.cli.common import exit_status
from ceod.console import warn
from ceod.aoi.preview import pick_across_types, write_preview
from ceod.data.layout import atomic_directory, require_empty
from ceod.benchmarks.mvtec import DEFAULT_TYPE_LABELS, PREVIEW_NAME, MVTecZipperSource, category_dir, records
from ceod.aoi.mvtec import attach_aois, relabel, sanity_messages


def aoi(a: argparse.Namespace) -> str:
    """Estimate and write every image's AOI; → the summary line."""
    out = Path(a.out)
    require_empty(out, a.overwrite)
    recs = records(category_dir(Path(a.root)), DEFAULT_TYPE_LABELS)
    with atomic_directory(out, class_dirs=False) as tmp:
        recs = attach_aois(recs, "estimated", tmp, a.margin, geometry=True, skip_corrupt=a.skip_corrupt)
        relabel(recs, "geometry", DEFAULT_TYPE_LABELS, a.min_share)
        msgs, flagged = sanity_messages(recs, "geometry", DEFAULT_TYPE_LABELS, str(out / PREVIEW_NAME))
        if a.preview:
            write_preview(pick_across_types(recs, a.preview, flagged), tmp / PREVIEW_NAME)
    for m in msgs:
        warn(m)
    kept = sum(r["label"] for r in recs)
    return (f"wrote {len(recs)} AOI masks to {out} (the data.aoi_dir layout) and {out / PREVIEW_NAME}; with them, "
            f"{kept} of {sum(r['mvtec_label'] for r in recs)} defective images have a defect on the zipper. "
            f"Check, correct, then: python -m ceod.train +experiment=mvtec_zipper data.root={a.root} data.aoi_dir={out}")


def _keep_sources(audit: Path, out: Path, tmp: Path) -> None:
    """Copy the source manifest (and estimated source AOIs, to OUT/source_aoi/) into the output."""
    est = audit / "aoi_estimated"
    if est.is_dir():
        shutil.copytree(est, tmp / "source_aoi")
    with open(audit / "data_manifest.csv", newline="") as f:
        rows = list(csv.DictReader(f))
    for r in rows:
        if r.get("aoi_source") == "estimated":  # was a path into the audit folder, gone after the command
            r["mask"] = str(out.resolve() / "source_aoi" / Path(r["mask"]).relative_to(est))
    with open(tmp / "source_manifest.csv", "w", newline="") as f:
        w = csv.DictWriter(f, fieldnames=list(rows[0]))
        w.writeheader()
        w.writerows(rows)
    if (audit / PREVIEW_NAME).is_file():
        shutil.copy(audit / PREVIEW_NAME, tmp / PREVIEW_NAME)


def augment(a: argparse.Namespace) -> str:
    from ceod.data.datamodule import DefectDataModule
    from ceod.data.sources import relative
    from ceod.data.transforms import write_augmented_set

    out = Path(a.out)
    require_empty(out, a.overwrite)
    with tempfile.TemporaryDirectory(prefix="ceod-mvtec-") as audit:
        dm = DefectDataModule(a.root, MVTecZipperSource, aoi_dir=a.aoi_dir, aoi_mask=a.aoi_mask, relabel=a.relabel,
                              image_size=a.image_size, channels=a.channels, seed=a.seed, aug_vflip=0.5,
                              manifest_out=audit)
        dm.setup()
        items, loaders = [], []
        for split, ds in dm.datasets.items():
            for j, s in enumerate(ds.samples):
                items.append((relative(s.image, dm.source.root), s.label, split))
                loaders.append((ds, j))
        transform = dm.aug.transform(dm.size)
        write_augmented_set(items, lambda i: loaders[i][0].raw(loaders[i][1]), out, a.n, transform, seed=a.seed,
                            keep_originals=not a.no_originals, overwrite=a.overwrite,
                            finalize=lambda tmp: _keep_sources(Path(audit), out, tmp))
    return f"wrote {a.n} images to {out} (folder layout; train with data=folder data.root={out})"


def parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(prog="python -m ceod.mvtec", description=__doc__.split("\n")[0])
    sub = p.add_subparsers(dest="command", required=True)
    q = sub.add_parser("aoi", help="write estimated zipper AOIs in the data.aoi_dir layout")
    q.add_argument("--root", required=True, help="folder holding zipper/ (or zipper/ itself)")
    q.add_argument("--out", required=True, help="output folder (must be empty or absent)")
    q.add_argument("--margin", type=float, default=0.03, help="widen the chain by this fraction of the width")
    q.add_argument("--min-share", type=float, default=0.5, help="geometry rule used for the warnings")
    q.add_argument("--preview", type=int, default=16, help="images in aoi_preview.png (0: none)")
    q.add_argument("--skip-corrupt", action="store_true")
    q.add_argument("--overwrite", action="store_true")
    q.set_defaults(run=aoi)
    g = sub.add_parser("augment", help="write the offline augmented set in the folder layout")
    g.add_argument("--root", required=True, help="folder holding zipper/ (or zipper/ itself)")
    g.add_argument("--out", required=True, help="output folder (must be empty or absent)")
    g.add_argument("--n", type=int, default=400, help="images to write (default: the paper's 400)")
    g.add_argument("--aoi-dir", help="zipper AOI masks mirroring zipper/ (default: estimated)")
    g.add_argument("--aoi-mask", help="one AOI mask for every image")
    g.add_argument("--relabel", default="auto", choices=["auto", "geometry", "type"])
    g.add_argument("--image-size", type=int, default=256)
    g.add_argument("--channels", type=int, default=1, choices=[1, 3])
    g.add_argument("--seed", type=int, default=0)
    g.add_argument("--no-originals", action="store_true", help="augment every image, sources included")
    g.add_argument("--overwrite", action="store_true")
    g.set_defaults(run=augment)
    return p


def main(argv: list[str] | None = None) -> int:
    argv = list(sys.argv[1:] if argv is None else argv)
    if argv and argv[0].startswith("--") and argv[0] not in ("--help", "-h"):
        argv.insert(0, "augment")  # the original form: python -m ceod.mvtec --root … --out …
    a = parser().parse_args(argv)
    return exit_status(lambda: a.run(a))


if __name__ == "__main__":
    sys.exit(main())
