"""Score new images with a trained checkpoint — no masks:

    python -m ceod.predict ckpt=<file.ckpt> input=<dir|file|glob> out=<dir> [threshold=T] [heatmaps=false]
                           [batch_size=32] [device=auto|cpu|cuda] [num_workers=auto]

Writes ``<out>/predictions.csv`` (path, defect_score = P(defect), predicted_label at the checkpoint's
threshold or ``threshold=``, predicted_class) and ``<out>/heatmaps/<name>.png`` (Grad-CAM overlays of the
defect class at the model's input size). Unreadable images are skipped and listed in ``<out>/skipped.csv``;
if none can be read it is an error. Files are written whole (temp file + rename). Images are read
batch by batch (never all in memory) with the exact preprocessing of training, read from the checkpoint.
"""

from __future__ import annotations

import glob
import os
import shutil
import tempfile
from collections import deque
from contextlib import nullcontext
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import torch
from torch import Tensor, nn
from torch.utils.data import DataLoader, Dataset

from ceod.core.cam import HeatSpec
from ceod.core.threads import one_thread
from ceod.data.layout import prepare_out, write_csv
from ceod.data.samples import CLASS_NAMES
from ceod.deploy import figures
from ceod.deploy.checkpoint import RECORD_KEY, build_model, heat_spec_of, load_checkpoint, threshold_of
from ceod.console import progress_bar, warn
from ceod.deploy.network import as_input, for_inference
from ceod.errors import CeodError, ConfigError, DataError
from ceod.models import cam_head_weight

USAGE = ("python -m ceod.predict ckpt=FILE input=DIR|FILE|GLOB out=DIR [threshold=T] [heatmaps=true] "
         "[batch_size=32] [device=auto] [num_workers=auto]")


# ----------------------------------------------------------------------------- scoring
def score_images(model: nn.Module, images: Tensor, spec: HeatSpec, heat: bool = True) -> tuple[Tensor, Tensor | None]:
    """(P(defect) B, the heat map of ``spec`` B×H×W or None), detached, for B×C×H×W images."""
    head_weight = cam_head_weight(model)
    with torch.set_grad_enabled(heat and head_weight is None):
        logits, feats = model(images)
        cam = None
        if heat:  # small elementwise work: on the CPU one thread costs 10× less than spinning ones
            with one_thread() if images.device.type == "cpu" else nullcontext():
                cam = spec.heat(feats, logits, head_weight, size=tuple(images.shape[-2:])).float()
    return logits.detach().float().softmax(dim=1)[:, spec.defect_class], cam


# ----------------------------------------------------------------------------- inputs
def find_images(spec: str) -> list[tuple[Path, str]]:
    """(path, name) of every image a dir (recursive), file or glob names; name = path relative to the
    dir (the glob's fixed part, the file's folder), used for the heat-map file."""
    from ceod.data.samples import IMAGE_SUFFIXES

    p = Path(spec)
    if p.is_dir():
        base, files = p, sorted(f for f in p.rglob("*") if f.is_file())
    elif p.is_file():
        base, files = p.parent, [p]
    elif glob.has_magic(spec):
        files = sorted(Path(f) for f in glob.glob(spec, recursive=True) if Path(f).is_file())
        base = Path(os.path.commonpath([str(f.parent) for f in files])) if files else p.parent
    else:
        raise DataError(f"input not found: {spec} (a folder, an image file or a glob)")
    images = [(f, str(f.relative_to(base))) for f in files if f.suffix.lower() in IMAGE_SUFFIXES]
    if not images:
        raise DataError(f"no images in {spec} (looked for {', '.join(IMAGE_SUFFIXES)})")
    return images


class ImageFiles(Dataset):
    """Items {"image": C×H×W preprocessed exactly as in training, "ok": bool, "error": str, "index": int}.

    Reading and preprocessing are the training data's own (:class:`ceod.data.dataset.SegmentedImageDataset`
    without masks); an unreadable file gives ``ok=False`` and a zero image instead of raising.
    """

    def __init__(self, paths: list[Path], preprocess: dict) -> None:
        from ceod.data.dataset import SegmentedImageDataset
        from ceod.data.samples import Sample

        size = preprocess["image_size"]
        self.size = (size, size) if isinstance(size, int) else tuple(size)
        self.data = SegmentedImageDataset([Sample(p, None, 0) for p in paths], self.size, preprocess["channels"],
                                          preprocess.get("mean"), preprocess.get("std"))
        self.channels = preprocess["channels"]

    def __len__(self) -> int:
        return len(self.data)

    def __getitem__(self, i: int) -> dict:
        try:
            return {"image": self.data[i]["image"], "ok": True, "error": "", "index": i}
        except CeodError as e:
            return {"image": torch.zeros(self.channels, *self.size), "ok": False, "error": str(e), "index": i}


# ----------------------------------------------------------------------------- outputs
def heatmap_names(names: list[str]) -> list[str]:
    """``a/b.png`` → ``a/b.png``, ``a/b.bmp`` → ``a/b.png``; when two files share a stem the suffix stays in."""
    stems = [str(Path(n).with_suffix("")) for n in names]
    dup = {s for s in stems if stems.count(s) > 1} if len(set(stems)) < len(stems) else set()
    return [f"{s}{'_' + Path(n).suffix.lstrip('.') if s in dup else ''}.png" for s, n in zip(stems, names)]


# ----------------------------------------------------------------------------- the command
def predict(ckpt: str, input: str, out: str, threshold: float | None = None, heatmaps: bool = True,
            batch_size: int = 32, device: str = "auto", num_workers: int | None = None, progress: bool | None = None) -> dict:
    """Score every image of ``input``; returns {"n", "skipped", "threshold", "csv"}. See the module docstring.

    All or nothing: heat maps go to a temp folder renamed to ``<out>/heatmaps`` at the end, the CSVs are
    renamed into place, and a failed run removes what it created.
    """
    if batch_size is None or batch_size < 1:
        raise ConfigError(f"batch_size must be ≥ 1, got {batch_size}")
    checkpoint = load_checkpoint(ckpt)
    thr = threshold_of(checkpoint, threshold)
    images = find_images(input)
    dev = _device(device)
    model = for_inference(build_model(checkpoint, ckpt), dev)  # BN folded, channels-last: same outputs, faster
    out_dir, created = prepare_out(out)
    tmp = Path(tempfile.mkdtemp(prefix=".heatmaps-", dir=out_dir)) if heatmaps else None
    try:
        rows, skipped = _score_all(model, checkpoint[RECORD_KEY], images, thr, tmp, batch_size, dev,
                                   num_workers, progress)
        if not rows:
            raise DataError(f"none of the {len(images)} image(s) in {input} could be read; first: {skipped[0][1]}")
        csv_path = write_csv(out_dir / "predictions.csv", ["path", "defect_score", "predicted_label",
                                                           "predicted_class"], rows)
        (out_dir / "skipped.csv").unlink(missing_ok=True)  # a stale list from an earlier run
        if skipped:
            write_csv(out_dir / "skipped.csv", ["path", "reason"], skipped)
            warn(f"skipped {len(skipped)} unreadable image(s), listed in {out_dir / 'skipped.csv'}")
        if tmp is not None:
            shutil.rmtree(out_dir / "heatmaps", ignore_errors=True)
            os.replace(tmp, out_dir / "heatmaps")
    except BaseException:
        if tmp is not None:
            shutil.rmtree(tmp, ignore_errors=True)
        if created:
            shutil.rmtree(out_dir, ignore_errors=True)
        raise
    return {"n": len(rows), "skipped": len(skipped), "threshold": thr, "csv": csv_path}


def _score_all(model: nn.Module, record: dict, images: list[tuple[Path, str]], thr: float, heat_dir: Path | None,
               batch_size: int, dev: torch.device, num_workers: int | None, progress: bool | None) -> tuple[list, list]:
    """Batches through the model → (csv rows, [(path, reason)] skipped); heat maps written to ``heat_dir``."""
    names = heatmap_names([n for _, n in images])
    workers = _workers(num_workers, dev)
    loader = DataLoader(ImageFiles([p for p, _ in images], record["preprocess"]), batch_size=batch_size,
                        num_workers=workers, pin_memory=dev.type == "cuda")
    rows, skipped, pending = [], [], deque()
    spec = heat_spec_of(record)
    batches = iter(progress_bar(loader, "predict", unit="batch", enabled=progress))
    # PNG encoding (PIL releases the GIL) overlaps the next batch: one thread on a CPU run, whose cores the
    # forward keeps busy; on a GPU the CPU's cores are free for it
    with ThreadPoolExecutor(max_workers=1 if dev.type == "cpu" else max(2, workers)) as writer:
        while True:
            with one_thread():  # per-image reading in this process: intra-op threads only spin
                batch = next(batches, None)
            if batch is None:
                break
            ok = batch["ok"]
            skipped += [(str(images[i][0]), e) for i, e, good in zip(batch["index"].tolist(), batch["error"],
                                                                      ok.tolist()) if not good]
            if not ok.any():
                continue
            idx, x = (batch["index"].tolist(), batch["image"]) if ok.all() else (batch["index"][ok].tolist(),
                                                                                 batch["image"][ok])
            x = as_input(x.to(dev, non_blocking=True))
            prob, heat = score_images(model, x, spec, heat=heat_dir is not None)
            for i, p in zip(idx, prob.cpu().tolist()):
                rows.append((str(images[i][0]), f"{p:.8f}", int(p >= thr), CLASS_NAMES[int(p >= thr)]))
            if heat_dir is not None:
                with one_thread() if dev.type == "cpu" else nullcontext():
                    pictures = figures.overlays(x, heat, record["preprocess"]).cpu().numpy()  # on the device
                pending += [writer.submit(figures.write_png, pictures[j], heat_dir / names[i])
                            for j, i in enumerate(idx)]
                while len(pending) > 2 * batch_size:
                    pending.popleft().result()
        for f in pending:
            f.result()
    return rows, skipped


def _workers(num_workers: int | None, dev: torch.device) -> int:
    """DataLoader processes: as given, else (auto) 0 on a CPU run (decoding in this process, while the
    forward has the cores) and up to 8 on a GPU run (decoding is then the bottleneck)."""
    if num_workers is None:
        return 0 if dev.type == "cpu" else min(8, max(1, (os.cpu_count() or 2) - 1))
    if num_workers < 0:
        raise ConfigError(f"num_workers must be ≥ 0, got {num_workers}")
    return num_workers


def _device(name: str) -> torch.device:
    if name == "auto":
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    try:
        dev = torch.device(name)
    except RuntimeError:
        raise ConfigError(f"device must be auto, cpu or cuda[:N], got {name!r}") from None
    if dev.type == "cuda" and not torch.cuda.is_available():
        raise ConfigError(f"device={name}: no CUDA device here (use device=cpu or auto)")
    return dev
