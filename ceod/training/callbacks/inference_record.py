"""The inference record in checkpoints: ``checkpoint["ceod_inference"]`` (model config, preprocessing, CAM score,
defect class), so :mod:`ceod.deploy.predict` and :mod:`ceod.deploy.export` need nothing else."""

from __future__ import annotations

from typing import Any

import lightning as L
from lightning.pytorch.callbacks import Callback
from omegaconf import DictConfig, ListConfig, OmegaConf


def plain(value: Any) -> Any:
    """OmegaConf nodes → plain dicts/lists (what ``torch.load(weights_only=True)`` accepts)."""
    if isinstance(value, (DictConfig, ListConfig)):
        return OmegaConf.to_container(value, resolve=True)
    if isinstance(value, tuple):
        return list(value)
    return value



class InferenceRecord(Callback):
    """Writes ``checkpoint["ceod_inference"]``: {"model": Hydra config with _target_, "preprocess":
    {"image_size", "channels", "mean", "std"}, "cam_score", "heat_sign", "defect_class"}, plain Python values only.

    The configured preprocessing is replaced by the DataModule's actual one when it has the same
    attributes (e.g. pretrained mean/std filled in at run time).
    """

    def __init__(self, model: Any, image_size: Any, channels: int, mean: Any = None, std: Any = None,
                 cam_score: str = "logit", defect_class: int = 1) -> None:
        self.model = plain(model)
        self.preprocess = {"image_size": plain(image_size), "channels": int(channels), "mean": plain(mean),
                           "std": plain(std)}
        self.cam_score, self.defect_class = cam_score, int(defect_class)

    def record(self, trainer: L.Trainer | None = None, pl_module: L.LightningModule | None = None) -> dict:
        pre = dict(self.preprocess)
        dm = getattr(trainer, "datamodule", None) if trainer is not None else None
        for key in ("image_size", "channels", "mean", "std"):
            if dm is not None and hasattr(dm, key):
                pre[key] = plain(getattr(dm, key))
        if isinstance(pre["image_size"], int):
            pre["image_size"] = [pre["image_size"], pre["image_size"]]
        for key in ("mean", "std"):
            pre[key] = [float(v) for v in pre[key]] if pre[key] is not None else None
        opts = getattr(getattr(pl_module, "loss", None), "opts", None)
        cam_score = getattr(opts, "cam_score", self.cam_score)
        heat_sign = getattr(opts, "heat_sign", "relu")
        defect_class = int(getattr(pl_module, "defect_class", self.defect_class))
        return {"model": self.model, "preprocess": pre, "cam_score": cam_score, "heat_sign": heat_sign,
                "defect_class": defect_class}

    def on_save_checkpoint(self, trainer: L.Trainer, pl_module: L.LightningModule, checkpoint: dict) -> None:
        checkpoint["ceod_inference"] = self.record(trainer, pl_module)
