"""The checkpoint as deploy reads it — one format, written by training and read by predict, export and audit.

A ceod checkpoint is Lightning's (``state_dict`` of the LightningModule, ``hyper_parameters``) plus
``checkpoint["ceod_inference"]``::

    {"model": the network's Hydra config (_target_ …) — the module's own hyper_parameters["model"] object,
              so the file stores it once,
     "preprocess": {"image_size": [H, W], "channels", "mean", "std"},
     "defect_class", "cam_score", "heat_sign": the heat map (:meth:`ceod.core.cam.HeatSpec.record`)}

and ``checkpoint["ceod_threshold"]`` (chosen on validation). Plain Python values only: it loads with
``torch.load(weights_only=True)``. No Lightning here.
"""

from __future__ import annotations

import zipfile
from pathlib import Path

import torch
from torch import Tensor, nn

from ceod.core.cam import HeatSpec
from ceod.errors import ConfigError, DataError

RECORD_KEY = "ceod_inference"
NETWORK_PREFIX = "model."  # the LightningModule holds the network as ``.model``


def inference_record(model_config: dict, preprocess: dict, spec: HeatSpec) -> dict:
    """``checkpoint["ceod_inference"]`` from the network's config, the preprocessing and the heat spec."""
    return {"model": model_config, "preprocess": preprocess, **spec.record()}


def heat_spec_of(record: dict) -> HeatSpec:
    """The heat map a checkpoint's record names."""
    return HeatSpec.from_record(record)


def network_weights(state_dict: dict[str, Tensor]) -> dict[str, Tensor]:
    """The network's own state dict from the LightningModule's (keys ``model.…``, prefix dropped)."""
    return {k[len(NETWORK_PREFIX):]: v for k, v in state_dict.items() if k.startswith(NETWORK_PREFIX)}


def load_checkpoint(path: str | Path) -> dict:
    """The checkpoint dict (read with ``weights_only=True``); CeodError unless it is a ceod checkpoint."""
    path = Path(path)
    if not path.is_file():
        raise DataError(f"checkpoint not found: {path} (ckpt)")
    if not zipfile.is_zipfile(path):
        raise DataError(f"not a ceod checkpoint: {path} (not a PyTorch checkpoint file)")
    try:
        ckpt = torch.load(path, map_location="cpu", weights_only=True)
    except Exception as e:  # noqa: BLE001  (pickle, zip and unpickler errors all mean the same here)
        raise DataError(f"not a ceod checkpoint: {path} (torch.load with weights_only=True refuses it: "
                        f"{type(e).__name__})") from None
    if not isinstance(ckpt, dict) or RECORD_KEY not in ckpt or "state_dict" not in ckpt:
        raise DataError(f"not a ceod checkpoint: {path} (no {RECORD_KEY} record; checkpoints written by "
                        "python -m ceod.train carry one)")
    return ckpt


def build_model(ckpt: dict, source: str | Path = "checkpoint") -> nn.Module:
    """The network of a ceod checkpoint, weights loaded, in eval mode (forward → logits B×2, features B×K×h×w)."""
    from hydra.utils import instantiate

    cfg = dict(ckpt[RECORD_KEY]["model"])
    if cfg.get("pretrained"):
        cfg["pretrained"] = False  # the checkpoint holds the weights
    try:
        net = instantiate(cfg)
    except Exception as e:  # noqa: BLE001
        cause = e.__cause__ or e
        raise DataError(f"cannot build the model of {source} ({cfg.get('_target_')}): "
                        f"{str(cause).strip().splitlines()[0] if str(cause).strip() else type(cause).__name__}") from None
    try:
        net.load_state_dict(network_weights(ckpt["state_dict"]))
    except RuntimeError as e:
        raise DataError(f"weights of {source} do not fit its model: {str(e).strip().splitlines()[1:2] or e}") from None
    return net.eval()


def threshold_of(ckpt: dict, override: float | None = None) -> float:
    """``threshold=`` if given, else ``checkpoint["ceod_threshold"]`` (chosen on validation), else 0.5."""
    value = override if override is not None else ckpt.get("ceod_threshold", 0.5)
    value = float(value)
    if not 0.0 <= value <= 1.0:
        raise ConfigError(f"threshold must lie in [0, 1], got {value}")
    return value
