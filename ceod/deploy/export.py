"""The deployable classifier of a checkpoint as ONNX or TorchScript:

    python -m ceod.export ckpt=<file.ckpt> format=onnx|torchscript out=<file> [heatmap=false] [check=true]

Input ``image``: B×C×H×W float in [0, 1] at the training size (C, H, W from the checkpoint: resize and
channel conversion as in :mod:`ceod.data.samples`); the normalisation is inside. Output
``defect_probability`` (B), and with ``heatmap=true`` also ``heatmap`` (B×H×W, the Grad-CAM of the defect
class; needs a global-average-pool → linear head, whose CAM has a closed form). The batch size is dynamic.
``check=true`` (default) runs the exported file (onnxruntime / torch.jit) on random images and requires
its outputs to equal PyTorch's within 1e-4. The file appears only when complete (temp file + rename).
"""

from __future__ import annotations

import warnings
from pathlib import Path

import torch
from torch import Tensor, nn

from ceod.core.cam import HeatSpec
from ceod.deploy.checkpoint import RECORD_KEY, build_model, heat_spec_of, load_checkpoint
from ceod.errors import ConfigError, DataError
from ceod.models import cam_head_weight

USAGE = "python -m ceod.export ckpt=FILE format=onnx|torchscript out=FILE [heatmap=false] [check=true]"
FORMATS = ("onnx", "torchscript")
TOLERANCE = 1e-4


class Deployable(nn.Module):
    """image B×C×H×W in [0, 1] → P(defect) B, or (P(defect) B, heat B×H×W of ``spec``) with ``heatmap``."""

    def __init__(self, net: nn.Module, preprocess: dict, spec: HeatSpec, heatmap: bool = False) -> None:
        super().__init__()
        self.net, self.spec, self.heatmap = net.eval(), spec, heatmap
        c = int(preprocess["channels"])
        mean, std = preprocess.get("mean"), preprocess.get("std")
        self.register_buffer("mean", torch.tensor(mean if mean is not None else [0.0] * c).view(1, -1, 1, 1))
        self.register_buffer("std", torch.tensor(std if std is not None else [1.0] * c).view(1, -1, 1, 1))
        if heatmap and cam_head_weight(net) is None:
            raise ConfigError("heatmap=true needs a global-average-pool → linear head (closed-form Grad-CAM); "
                              f"{type(net).__name__} has none — export with heatmap=false")

    def forward(self, image: Tensor):
        logits, feats = self.net((image - self.mean) / self.std)
        prob = logits.softmax(dim=1)[:, self.spec.defect_class]
        if not self.heatmap:
            return prob
        return prob, self.spec.heat(feats, None, cam_head_weight(self.net), size=tuple(image.shape[-2:]))


def deployable(ckpt_path: str | Path, heatmap: bool = False) -> tuple[Deployable, Tensor]:
    """(the wrapped model in eval mode, an example input 2×C×H×W) of a ceod checkpoint."""
    ckpt = load_checkpoint(ckpt_path)
    record = ckpt[RECORD_KEY]
    pre = record["preprocess"]
    size = pre["image_size"]
    h, w = (size, size) if isinstance(size, int) else size
    model = Deployable(build_model(ckpt, ckpt_path), pre, heat_spec_of(record), heatmap)
    return model.eval(), torch.rand(2, int(pre["channels"]), h, w)


def _to_onnx(model: nn.Module, example: Tensor, path: str) -> None:
    try:
        import onnx  # noqa: F401
        import onnxscript  # noqa: F401
    except ImportError:
        raise ConfigError("format=onnx needs onnx and onnxscript: pip install 'ceod[export]'") from None
    names = ["defect_probability", "heatmap"] if getattr(model, "heatmap", False) else ["defect_probability"]
    program = torch.onnx.export(model, (example,), dynamo=True, input_names=["image"], output_names=names,
                                dynamic_shapes={"image": {0: torch.export.Dim("batch", min=1)}},
                                optimize=True, verbose=False)
    program.save(path)


def _to_torchscript(model: nn.Module, example: Tensor, path: str) -> None:
    with torch.no_grad(), warnings.catch_warnings():
        warnings.simplefilter("ignore", FutureWarning)  # "torch.jit is deprecated": still what C++/mobile load
        warnings.simplefilter("ignore", torch.jit.TracerWarning)  # shape checks: the input size is fixed
        traced = torch.jit.trace(model, (example,), check_trace=False)
        torch.jit.save(traced, path)


def run_exported(path: str | Path, fmt: str, images: Tensor) -> list[Tensor]:
    """The exported file's outputs on ``images`` (onnxruntime for ONNX, torch.jit for TorchScript)."""
    if fmt == "onnx":
        try:
            import onnxruntime as ort
        except ImportError:
            raise ConfigError("check=true for ONNX needs onnxruntime: pip install 'ceod[export]'") from None
        session = ort.InferenceSession(str(path), providers=["CPUExecutionProvider"])
        return [torch.from_numpy(o) for o in session.run(None, {"image": images.numpy()})]
    with torch.no_grad(), warnings.catch_warnings():
        warnings.simplefilter("ignore", FutureWarning)
        out = torch.jit.load(str(path))(images)
    return list(out) if isinstance(out, (tuple, list)) else [out]


def max_difference(model: nn.Module, path: str | Path, fmt: str, images: Tensor) -> float:
    """max |exported − PyTorch| over all outputs on ``images``."""
    with torch.no_grad():
        ref = model(images)
    ref = list(ref) if isinstance(ref, (tuple, list)) else [ref]
    got = run_exported(path, fmt, images)
    if len(got) != len(ref):
        raise DataError(f"exported file {path} has {len(got)} outputs, expected {len(ref)}")
    return max(float((g.float() - r.float()).abs().max()) for g, r in zip(got, ref))


def export(ckpt: str, format: str, out: str, heatmap: bool = False, check: bool = True) -> dict:
    """Write the deployable model; returns {"path", "max_abs_diff" (None without check)}."""
    from ceod.data.layout import atomic_write

    if format not in FORMATS:
        raise ConfigError(f"format must be one of {list(FORMATS)}, got {format!r}")
    model, example = deployable(ckpt, heatmap)
    out_path = Path(out)
    if out_path.is_dir():
        raise DataError(f"out must be a file path, got the folder {out_path}")
    try:
        out_path.parent.mkdir(parents=True, exist_ok=True)
    except OSError as e:
        raise DataError(f"output folder not writable: {out_path.parent} ({e.strerror or e})") from None
    writer = _to_onnx if format == "onnx" else _to_torchscript
    diff: list[float] = []

    def write(tmp: str) -> None:
        writer(model, example, tmp)
        if check:  # on another batch size than the example: the batch axis must be dynamic
            diff.append(max_difference(model, tmp, format, torch.rand(3, *example.shape[1:])))
            if diff[0] > TOLERANCE:
                raise DataError(f"exported {format} differs from PyTorch by {diff[0]:.2e} > {TOLERANCE} (not written)")

    try:
        atomic_write(out_path, write)
    except PermissionError as e:
        raise DataError(f"output folder not writable: {out_path.parent} ({e.strerror or e})") from None
    return {"path": out_path, "max_abs_diff": diff[0] if diff else None}
