"""The inference record in checkpoints: ``checkpoint["ceod_inference"]`` (:mod:`ceod.deploy.checkpoint`), so
:mod:`ceod.deploy.predict` and :mod:`ceod.deploy.export` need nothing else.

Each part has one source: the network is the LightningModule's own record (``hparams["model"]``, written by
``save_hyperparameters``; the record refers to that same object, so the file holds it once), the heat map is the
loss's (``loss.heat_spec``), and the preprocessing is the data's — the only part this callback is given.
"""

from __future__ import annotations

from typing import Any

import lightning as L
from lightning.pytorch.callbacks import Callback
from omegaconf import DictConfig, ListConfig, OmegaConf

from ceod.console import info
from ceod.deploy.checkpoint import RECORD_KEY, inference_record

PREPROCESS_KEYS = ("image_size", "channels", "mean", "std")


def plain(value: Any) -> Any:
    """OmegaConf nodes → plain dicts/lists (what ``torch.load(weights_only=True)`` accepts)."""
    if isinstance(value, (DictConfig, ListConfig)):
        return OmegaConf.to_container(value, resolve=True)
    if isinstance(value, tuple):
        return list(value)
    return value


class InferenceRecord(Callback):
    """Writes ``checkpoint["ceod_inference"]`` = {"model", "preprocess": {"image_size": [H, W], "channels",
    "mean", "std"}, "defect_class", "cam_score", "heat_sign"}, plain Python values only.

    ``image_size``, ``channels``, ``mean``, ``std``: the configured preprocessing, replaced by the DataModule's
    actual one where it has the same attributes (e.g. pretrained mean/std filled in at run time). A module
    built from a network object (no config in ``hparams["model"]``) gets no record: there is nothing to rebuild
    the network from.
    """

    def __init__(self, image_size: Any, channels: int, mean: Any = None, std: Any = None) -> None:
        self.preprocess = {"image_size": plain(image_size), "channels": int(channels), "mean": plain(mean),
                           "std": plain(std)}
        self._warned = False

    def preprocessing(self, trainer: L.Trainer | None = None) -> dict:
        """The preprocessing record: the configured one, the DataModule's values where it has them."""
        pre = dict(self.preprocess)
        dm = getattr(trainer, "datamodule", None) if trainer is not None else None
        for key in PREPROCESS_KEYS:
            if dm is not None and hasattr(dm, key):
                pre[key] = plain(getattr(dm, key))
        if isinstance(pre["image_size"], int):
            pre["image_size"] = [pre["image_size"], pre["image_size"]]
        for key in ("mean", "std"):
            pre[key] = [float(v) for v in pre[key]] if pre[key] is not None else None
        return pre

    def record(self, trainer: L.Trainer | None, pl_module: L.LightningModule) -> dict | None:
        """The record of ``pl_module`` (a :class:`ceod.training.module.CEODModule`), or None without a network config."""
        model = pl_module.hparams.get("model")
        if model is None:
            return None
        return inference_record(model, self.preprocessing(trainer), pl_module.loss.heat_spec)

    def on_save_checkpoint(self, trainer: L.Trainer, pl_module: L.LightningModule, checkpoint: dict) -> None:
        record = self.record(trainer, pl_module)
        if record is not None:
            checkpoint[RECORD_KEY] = record
        elif not self._warned:
            self._warned = True
            info("the module was given a network object, not a config: checkpoints carry no ceod_inference "
                 "record (predict/export cannot read them)")
