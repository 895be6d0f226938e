"""The LightningModule: one model, one loss chosen by config (CE = CEOD with ω = 0), metrics.

Batches are dicts {"image": B×C×H×W, "mask": B×H×W, "label": B}. Masks are read for the loss in
training and for the AOI metrics in val/test — never for the prediction: ``forward`` is a plain CNN.
"""

from __future__ import annotations

from typing import Any, Callable

import lightning as L
import torch
from torch import Tensor, nn
from torchmetrics import MetricCollection
from torchmetrics.classification import BinaryAccuracy, BinaryAUROC, BinaryConfusionMatrix, BinaryF1Score

from ceod.cam import grad_cam
from ceod.errors import ConfigError
from ceod.loss import CEODLoss
from ceod.metrics import AOIEnergy, PointingGame


class CEODModule(L.LightningModule):
    """Trains ``model`` (forward → logits, features) with ``loss``; logs train/…, val/…, test/…."""

    def __init__(self, model: nn.Module, loss: CEODLoss, optimizer: Callable[..., torch.optim.Optimizer],
                 scheduler: Callable | None = None, defect_class: int = 1) -> None:
        super().__init__()
        self.save_hyperparameters(ignore=["model", "loss", "optimizer", "scheduler"], logger=False)
        self.optimizer_factory, self.scheduler_factory = optimizer, scheduler
        self.model = model
        self.loss = loss
        self.defect_class = defect_class
        for stage in ("val", "test"):
            setattr(self, f"{stage}_metrics", MetricCollection(
                {"acc": BinaryAccuracy(), "auroc": BinaryAUROC(), "f1": BinaryF1Score(),
                 "aoi_energy": AOIEnergy(defect_class), "pointing_game": PointingGame(defect_class)},
                prefix=f"{stage}/"))
            setattr(self, f"{stage}_confmat", BinaryConfusionMatrix())
        self.confusion: dict[str, Tensor] = {}

    def forward(self, x: Tensor) -> Tensor:
        """Inference: logits B×C. No mask, no CAM."""
        return self.model(x)[0]

    @property
    def _head_weight(self) -> Tensor | None:
        return getattr(self.model, "cam_head_weight", None)

    def training_step(self, batch: dict, batch_idx: int) -> Tensor:
        logits, feats = self.model(batch["image"])
        out = self.loss(logits, batch["label"], batch["mask"], features=feats, head_weight=self._head_weight)
        n = batch["label"].shape[0]
        self.log("train/loss", out.total, prog_bar=True, on_step=True, on_epoch=True, batch_size=n)
        self.log("train/ce", out.ce, on_step=False, on_epoch=True, batch_size=n)
        self.log("train/od", out.od, on_step=False, on_epoch=True, batch_size=n)
        self.log("train/od_active", out.active, on_step=False, on_epoch=True, batch_size=n)
        return out.total

    def _eval_step(self, stage: str, batch: dict) -> None:
        x, mask, y = batch["image"], batch["mask"], batch["label"]
        head_weight = self._head_weight
        if head_weight is None and torch.is_inference_mode_enabled():
            raise ConfigError("Grad-CAM metrics on this model need autograd in val/test: set trainer.inference_mode=false")
        # Lightning evaluates under no_grad; only the general Grad-CAM path needs autograd.
        with torch.set_grad_enabled(head_weight is None):
            logits, feats = self.model(x)
            heat = grad_cam(feats, logits, self.defect_class, head_weight, create_graph=False,
                            size=tuple(x.shape[-2:]), score=getattr(self.loss, "cam_score", "logit"))
        logits, heat = logits.detach(), heat.detach()
        out = self.loss(logits, y, mask, heat=heat)
        n = y.shape[0]
        self.log(f"{stage}/loss", out.total, batch_size=n, sync_dist=True)
        self.log(f"{stage}/ce", out.ce, batch_size=n, sync_dist=True)
        self.log(f"{stage}/od", out.od, batch_size=n, sync_dist=True)
        prob = logits.float().softmax(dim=1)[:, self.defect_class]
        target = (y == self.defect_class).long()
        metrics: MetricCollection = getattr(self, f"{stage}_metrics")
        for name, metric in metrics.items(keep_base=True):
            if isinstance(metric, (AOIEnergy, PointingGame)):
                metric.update(heat, mask, y)
            else:
                metric.update(prob, target)
        getattr(self, f"{stage}_confmat").update(prob, target)

    def _eval_epoch_end(self, stage: str) -> None:
        metrics: MetricCollection = getattr(self, f"{stage}_metrics")
        self.log_dict(metrics.compute(), sync_dist=True)  # already synced by torchmetrics; avoids the warning
        metrics.reset()
        confmat = getattr(self, f"{stage}_confmat")
        cm = confmat.compute()
        confmat.reset()
        self.confusion[stage] = cm.cpu()
        for (i, j), name in {(0, 0): "tn", (0, 1): "fp", (1, 0): "fn", (1, 1): "tp"}.items():
            self.log(f"{stage}/{name}", cm[i, j].float(), sync_dist=True)

    def validation_step(self, batch: dict, batch_idx: int) -> None:
        self._eval_step("val", batch)

    def on_validation_epoch_end(self) -> None:
        self._eval_epoch_end("val")

    def test_step(self, batch: dict, batch_idx: int) -> None:
        self._eval_step("test", batch)

    def on_test_epoch_end(self) -> None:
        self._eval_epoch_end("test")

    def configure_optimizers(self) -> Any:
        params = [p for p in self.parameters() if p.requires_grad]
        optimizer = self.optimizer_factory(params=params)
        if self.scheduler_factory is None:
            return optimizer
        return {"optimizer": optimizer, "lr_scheduler": {"scheduler": self.scheduler_factory(optimizer=optimizer)}}
