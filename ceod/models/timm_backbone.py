"""Any timm image model as a CEOD model: ``forward(x) -> (logits B×C, features B×K×h×w)``.

* The Grad-CAM layer is, by default, the last conv feature map — the output of timm's
  ``forward_features`` (EfficientNet: conv_head → bn2 → act; ResNet: layer4). ``cam_layer``
  overrides it with a module path (``blocks.5``); its output is then captured by a forward hook.
* ``cam_head_weight`` is the classifier weight when the head is exactly global average pool →
  (dropout) → linear on those features — checked numerically on the model itself, not by name —
  which selects the analytic CAM path; otherwise ``None`` and the general autograd path is used.
* ImageNet weights are loaded offline only: from ``weights`` (a ``.safetensors`` file or a torch
  state dict, read with ``weights_only=True``), else from a file already in the local Hugging Face
  or torch-hub cache. Nothing is ever downloaded; with no file the model stops with a ConfigError.
  The ImageNet classifier is dropped (the head has 2 classes). A greyscale model (``in_chans=1``)
  accepts 3-channel weights: the first conv's weights are summed over their input channels.
* ``pretrained_normalization`` is the (mean, std) of the pretrained weights from timm's
  ``resolve_data_config``, adapted to ``in_chans`` (1 channel: the average); ``None`` without weights.
"""

from __future__ import annotations

import difflib
import os
from collections.abc import Mapping
from pathlib import Path
from urllib.parse import urlparse

import timm
import torch
import torch.nn.functional as F
from torch import Tensor, nn

from ceod.errors import ConfigError
from ceod.log import info

_PREFIXES = ("module.", "model.", "backbone.")  # DDP, Lightning checkpoint, TimmClassifier.state_dict()


def _few(keys: list[str], n: int = 3) -> str:
    return ", ".join(keys[:n]) + (", …" if len(keys) > n else "")


def _as_tuple(value) -> tuple[str, ...]:
    if not value:
        return ()
    return (value,) if isinstance(value, str) else tuple(value)


def _close_names(name: str, candidates: list[str], n: int = 3, cutoff: float = 0.6) -> list[str]:
    """The ``n`` most similar names; ties in alphabetical order (efficientnet_bo → efficientnet_b0 first)."""
    scored = []
    for c in candidates:
        m = difflib.SequenceMatcher(None, name.lower(), c.lower())
        if m.real_quick_ratio() >= cutoff and m.quick_ratio() >= cutoff and m.ratio() >= cutoff:
            scored.append((-m.ratio(), c))
    return [c for _, c in sorted(scored)[:n]]


def check_model_name(name: str) -> None:
    """ConfigError naming close timm models when ``name`` is not one."""
    if timm.is_model(name):
        return
    close = _close_names(name.split(".")[0], timm.list_models())
    hint = f"; did you mean {', '.join(close)}?" if close else " (see timm.list_models())"
    raise ConfigError(f"unknown timm model {name!r} in model.name{hint}")


def load_weights_file(path: str | os.PathLike) -> dict[str, Tensor]:
    """A state dict from ``.safetensors`` or a torch file (``weights_only=True``), wrappers and prefixes removed."""
    path = Path(path).expanduser()
    if not path.is_file():
        raise ConfigError(f"model.weights file not found: {path}")
    try:
        if path.suffix == ".safetensors":
            from safetensors.torch import load_file

            state = load_file(str(path), device="cpu")
        else:
            state = torch.load(path, map_location="cpu", weights_only=True)
    except Exception as e:  # noqa: BLE001 — any unreadable file is a user error
        first = str(e).strip().splitlines()[0] if str(e).strip() else type(e).__name__
        raise ConfigError(f"cannot read model.weights {path} as safetensors or a weights-only torch state dict: "
                          f"{first}") from None
    for wrapper in ("state_dict", "model", "state_dict_ema"):
        if isinstance(state, Mapping) and isinstance(state.get(wrapper), Mapping):
            state = state[wrapper]
            break
    if not isinstance(state, Mapping) or not all(isinstance(v, Tensor) for v in state.values()):
        raise ConfigError(f"model.weights {path} is not a state dict (name → tensor)")
    state = dict(state)
    changed = True
    while changed and state:
        changed = False
        for prefix in _PREFIXES:
            if all(k.startswith(prefix) for k in state):
                state = {k[len(prefix):]: v for k, v in state.items()}
                changed = True
    return state


def cached_weights(pretrained_cfg: Mapping) -> Path | None:
    """A weights file for ``pretrained_cfg`` already in the local HF or torch-hub cache (no network)."""
    hf_id = pretrained_cfg.get("hf_hub_id")
    if hf_id:
        from huggingface_hub import try_to_load_from_cache

        for filename in (pretrained_cfg.get("hf_hub_filename"), "model.safetensors", "pytorch_model.bin"):
            if filename:
                found = try_to_load_from_cache(hf_id, filename)
                if isinstance(found, str) and Path(found).is_file():
                    return Path(found)
    url = pretrained_cfg.get("url")
    if url:
        found = Path(torch.hub.get_dir()) / "checkpoints" / os.path.basename(urlparse(url).path)
        if found.is_file():
            return found
    return None


def _adapt_normalization(values, in_chans: int) -> tuple[float, ...]:
    values = tuple(float(v) for v in values)
    if len(values) == in_chans:
        return values
    if in_chans == 1:
        return (sum(values) / len(values),)
    return tuple(values[i % len(values)] for i in range(in_chans))


def _producer(root: nn.Module, fn, x: Tensor) -> tuple[str, object]:
    """(path of the outermost module of ``root`` whose output is ``fn(x)`` — '' if none —, fn(x)),
    run once in eval mode without grad."""
    outputs: list[tuple[str, object]] = []
    handles = [m.register_forward_hook(lambda mod, args, out, name=name: outputs.append((name, out)))
               for name, m in root.named_modules() if name]
    was_training = root.training
    try:
        root.eval()
        with torch.no_grad():
            result = fn(x)
    finally:
        for h in handles:
            h.remove()
        root.train(was_training)
    matches = [name for name, out in outputs if out is result]  # hooks fire innermost first
    return (matches[-1] if matches else ""), result


def find_cam_layer(model: nn.Module, example: Tensor) -> str:
    """Module path of the Grad-CAM layer of any CEOD model: the outermost module whose output is the
    ``features`` that ``model(example)`` returns ('' if no module outputs them as they are)."""
    path, _ = _producer(model, lambda x: model(x)[1], example)
    return path


class TimmClassifier(nn.Module):
    """A timm model with a ``num_classes`` head returning (logits, CAM-layer features)."""

    def __init__(self, name: str = "efficientnet_b0", num_classes: int = 2, in_chans: int = 3,
                 pretrained: bool = False, weights: str | None = None, cam_layer: str | None = None,
                 timm_kwargs: Mapping | None = None) -> None:
        super().__init__()
        check_model_name(name)
        self.name, self.num_classes, self.in_chans = name, int(num_classes), int(in_chans)
        self.backbone = timm.create_model(name, pretrained=False, num_classes=self.num_classes,
                                          in_chans=self.in_chans, **dict(timm_kwargs or {}))
        self.weights_source: str | None = None
        self.pretrained_normalization: tuple[tuple[float, ...], tuple[float, ...]] | None = None
        if pretrained or weights:
            self.load_pretrained(weights)
        self.auto_cam_layer = self._detect_cam_layer(required=not cam_layer)
        self.cam_layer = self._resolve_cam_layer(cam_layer)
        self._analytic = self.cam_layer == self.auto_cam_layer and self._head_is_gap_linear()

    # ------------------------------------------------------------------ weights
    def load_pretrained(self, weights: str | None = None) -> None:
        """Load ImageNet weights from ``weights`` or the local cache; ConfigError when there are none."""
        cfg = dict(getattr(self.backbone, "pretrained_cfg", None) or {})
        if weights:
            path = Path(weights).expanduser()
        else:
            path = cached_weights(cfg)
            if path is None:
                hub = f" (e.g. model.safetensors of huggingface.co/{cfg['hf_hub_id']})" if cfg.get("hf_hub_id") else ""
                raise ConfigError(
                    f"no local ImageNet weights for {self.name}: download them on a machine with internet{hub} "
                    "and pass model.weights=/path/to/file.safetensors")
        self.load_state(load_weights_file(path), source=str(path))
        data_cfg = timm.data.resolve_data_config({}, model=self.backbone)
        self.pretrained_normalization = (_adapt_normalization(data_cfg["mean"], self.in_chans),
                                         _adapt_normalization(data_cfg["std"], self.in_chans))
        self.weights_source = str(path)
        info(f"{self.name}: pretrained weights from {path}")

    def load_state(self, state: Mapping[str, Tensor], source: str = "state dict") -> None:
        """Load a backbone state dict: a mismatching classifier is dropped, the first conv adapted to
        ``in_chans``; any other missing, unexpected or mis-shaped key is a ConfigError naming keys."""
        cfg = dict(getattr(self.backbone, "pretrained_cfg", None) or {})
        own = self.backbone.state_dict()
        state = dict(state)
        from timm.models import adapt_input_conv

        for conv in _as_tuple(cfg.get("first_conv")):
            key = f"{conv}.weight"
            if key in state and key in own and state[key].ndim == 4 and state[key].shape[1] != own[key].shape[1]:
                state[key] = adapt_input_conv(self.in_chans, state[key])
        head = tuple(f"{c}." for c in _as_tuple(cfg.get("classifier")))
        if not head:
            head = tuple(n + "." for n, m in self.backbone.named_modules() if m is self.backbone.get_classifier())

        def is_head(k: str) -> bool:
            return k.startswith(head)

        for k in [k for k in state if is_head(k) and k in own and state[k].shape != own[k].shape]:
            del state[k]  # the ImageNet classifier: the 2-class head keeps its initialisation
        shape = [f"{k} {tuple(state[k].shape)}≠{tuple(own[k].shape)}"
                 for k in state if k in own and state[k].shape != own[k].shape]
        missing = [k for k in own if k not in state and not is_head(k) and not k.endswith("num_batches_tracked")]
        unexpected = [k for k in state if k not in own]
        if shape or missing or unexpected:
            parts = [f"{len(v)} {what} ({_few(v)})" for what, v in
                     (("missing keys", missing), ("unexpected keys", unexpected), ("shape mismatches", shape)) if v]
            raise ConfigError(f"weights {source} do not match {self.name}: " + "; ".join(parts))
        self.backbone.load_state_dict({k: v for k, v in state.items() if k in own}, strict=False)

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
                hint = f"; {where} {_few(children, 8)}" if children else ""
            else:
                close = _close_names(path, names, cutoff=0.5)
                hint = f"; close: {', '.join(close)}" if close else ""
            raise ConfigError(f"model.cam_layer {path!r} is not a module of {self.name}{hint}")
        if path == self.auto_cam_layer:
            return path
        was_training = self.backbone.training
        try:
            self.backbone.eval()
            logits, feats = self._hooked_forward(self._probe_input(), path)
            if not isinstance(feats, Tensor) or feats.ndim != 4:
                got = tuple(feats.shape) if isinstance(feats, Tensor) else type(feats).__name__
                raise ConfigError(f"model.cam_layer {path!r} of {self.name} outputs {got}, not a B×K×h×w feature map")
            (grad,) = torch.autograd.grad(logits.sum(), feats, allow_unused=True)
            if grad is None:
                raise ConfigError(f"model.cam_layer {path!r} of {self.name} does not feed the logits")
        finally:
            self.backbone.train(was_training)
        return path

    def _head_is_gap_linear(self) -> bool:
        """True when forward_head(f) == linear(mean_hw f) with the classifier's weight (eval mode, random f)."""
        classifier = self.backbone.get_classifier()
        if not isinstance(classifier, nn.Linear):
            return False
        was_training = self.backbone.training
        try:
            self.backbone.eval()
            with torch.no_grad():
                f = torch.rand(2, classifier.in_features, 3, 5)
                out = self.backbone.forward_head(f)
                ref = F.linear(f.mean(dim=(2, 3)), classifier.weight, classifier.bias)
        except Exception:  # noqa: BLE001 — a head that cannot take these features is not GAP → linear
            return False
        finally:
            self.backbone.train(was_training)
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
        if self.cam_layer != self.auto_cam_layer:
            return self._hooked_forward(x, self.cam_layer)
        feats = self._needs_grad(self.backbone.forward_features(x))
        return self.backbone.forward_head(feats), feats

    def extra_repr(self) -> str:
        return (f"name={self.name!r}, in_chans={self.in_chans}, cam_layer={self.cam_layer or 'forward_features'!r}, "
                f"analytic_cam={self._analytic}, weights={self.weights_source!r}")
