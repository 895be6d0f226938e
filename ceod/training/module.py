"""The LightningModule: one model, one loss chosen by config (CE = CEOD with ω = 0), metrics.

Batches are dicts {"image": B×C×H×W, "mask": B×H×W, "label": B}. Masks are read for the loss in
training and for the AOI metrics in val/test — never for the prediction: ``forward`` is a plain CNN.
"""

from __future__ import annotations

from collections.abc import Mapping
import itertools
from typing import Any, Callable

import lightning as L
import torch
from torch import Tensor, nn
from torchmetrics import MetricCollection
from torchmetrics.aggregation import CatMetric
from torchmetrics.classification import BinaryAUROC
from torchmetrics.functional.classification import binary_accuracy, binary_confusion_matrix, binary_f1_score

from ceod.core.batchnorm import recompute_batchnorm_stats
from ceod.core.cam import upsample
from ceod.core.losses.base import AttributionLoss, LossOutput
from ceod.core.metrics import AOIEnergy, PointingGame, youden_threshold
from ceod.core.reliance import FILLS, fill_outside, reliance, valid_for
from ceod.errors import ConfigError
from ceod.models import cam_head_weight


def _plain(config: Mapping) -> dict:
    """A config as plain, resolved containers (what a checkpoint's hyper_parameters hold)."""
    from omegaconf import DictConfig, OmegaConf

    return OmegaConf.to_container(config, resolve=True) if isinstance(config, DictConfig) else dict(config)


class CEODModule(L.LightningModule):
    """Trains ``model`` (forward → logits, features) with ``loss``; logs train/…, val/…, test/…."""

    def __init__(self, model: nn.Module | Mapping, loss: AttributionLoss | Mapping,
                 optimizer: Callable[..., torch.optim.Optimizer] | Mapping, finetune: Callable | Mapping | None = None,
                 bn_recalibration: bool = True, reliance: tuple[str, ...] | list[str] = ("swap", "blur")) -> None:
        """Each part is an object or its Hydra config (``_target_``; the optimizer ``_partial_``, called
        with ``params``; ``finetune`` ``_partial_``, called with the network). Configs are built here and
        recorded by ``save_hyperparameters`` (the one record of the network, which the checkpoint's
        ``ceod_inference`` refers to), so a checkpoint names its network, regime, loss and optimizer, and
        ``CEODModule.load_from_checkpoint(path)`` rebuilds it. ``finetune`` freezes the
        network here, before the Trainer (and DDP) wraps it. The defect class is the loss's."""
        super().__init__()
        parts = {"model": model, "loss": loss, "optimizer": optimizer, "finetune": finetune}
        configs = {k: _plain(v) for k, v in parts.items() if isinstance(v, Mapping)}
        bad = [f for f in reliance if f not in FILLS]
        if bad:
            raise ConfigError(f"module.reliance: unknown fill {bad[0]!r}; choose from {FILLS}")
        self.reliance_fills = tuple(reliance)
        self.save_hyperparameters({**configs, "bn_recalibration": bn_recalibration,
                                   "reliance": list(self.reliance_fills)}, logger=False)
        model, loss, self.optimizer_factory, finetune = (self._build(k, v) for k, v in parts.items())
        self.model = finetune(model) if finetune is not None else model
        self.loss = loss
        self.defect_class = loss.heat_spec.defect_class
        self.bn_recalibration = bn_recalibration
        self._build_eval_metrics(self.defect_class)

    @staticmethod
    def _build(key: str, spec: Any) -> Any:
        """``spec`` instantiated when it is a config, else as given; bad arguments: a ConfigError naming the target."""
        if not isinstance(spec, Mapping):
            return spec
        from ceod.training.user_errors import instantiate_node

        return instantiate_node(spec, key)

    def forward(self, x: Tensor) -> Tensor:
        """Inference: logits B×C. No mask, no CAM."""
        return self.model(x)[0]

    def _build_eval_metrics(self, defect_class: int) -> None:
        """Threshold-free metrics per stage, plus every score and label for the thresholded ones."""
        for stage in ("val", "test"):
            setattr(self, f"{stage}_metrics", MetricCollection(
                {"auroc": BinaryAUROC(), "aoi_energy": AOIEnergy(defect_class),
                 "pointing_game": PointingGame(defect_class)}, prefix=f"{stage}/"))
            kept = {f"{k}_{f}": CatMetric() for f in self.reliance_fills for k in ("prob", "valid")}
            setattr(self, f"{stage}_scores", MetricCollection({"prob": CatMetric(), "target": CatMetric(), **kept}))
        self.threshold = 0.5  # on P(defect); chosen on validation (Youden's J), saved in checkpoints
        self.confusion: dict[str, Tensor] = {}

    def training_step(self, batch: dict, batch_idx: int) -> Tensor:
        n = batch["label"].shape[0]
        x, mask, y, pairs = self.loss.counterfactuals(batch["image"], batch["mask"], batch["label"])
        x = self.loss.prepare_inputs(x, mask, y)
        logits, feats = self.model(x)
        out = self.loss(logits, y, mask, features=feats, head_weight=cam_head_weight(self.model), images=x,
                        step=self.global_step, pairs=pairs)
        self.log("train/loss", out.total, prog_bar=True, on_step=True, on_epoch=True, batch_size=n, sync_dist=True)
        self.log("train/ce", out.ce, on_step=False, on_epoch=True, batch_size=n, sync_dist=True)
        if out.consistency is not None:
            self.log("train/consistency", out.consistency, on_step=False, on_epoch=True, batch_size=n, sync_dist=True)
        self._log_train_penalty(out)
        return out.total

    def _log_train_penalty(self, out: LossOutput) -> None:
        """``train/<penalty_name>`` (CEOD: ``train/od``) and ``…_active``, averaged over the images that contribute
        (defective, valid AOI) only; per rank under DDP (no sync: a rank whose shard has no defective image in an
        epoch would never join the reduction)."""
        name, k = self.loss.penalty_name, int(out.contributes.sum())
        if name is None or out.penalty is None or not k:
            return
        self.log(f"train/{name}", out.penalty, on_step=False, on_epoch=True, batch_size=k)
        self.log(f"train/{name}_active", out.active, on_step=False, on_epoch=True, batch_size=k)

    def _eval_step(self, stage: str, batch: dict) -> None:
        x, mask, y = batch["image"], batch["mask"], batch["label"]
        head_weight = cam_head_weight(self.model)
        if head_weight is None and torch.is_inference_mode_enabled():
            raise ConfigError("Grad-CAM metrics on this model need autograd in val/test: set trainer.inference_mode=false")
        # Lightning evaluates under no_grad; only the general Grad-CAM path needs autograd. The loss (in eval
        # mode) computes the heat as in training, detached, and returns it for the AOI metrics.
        with torch.set_grad_enabled(head_weight is None):
            logits, feats = self.model(x)
            out = self.loss(logits, y, mask, features=feats, head_weight=head_weight)
        logits, heat = logits.detach(), upsample(out.heat, tuple(x.shape[-2:]))
        n = y.shape[0]
        self.log(f"{stage}/loss", out.total.detach(), batch_size=n, sync_dist=True)
        self.log(f"{stage}/ce", out.ce.detach(), batch_size=n, sync_dist=True)
        if self.loss.penalty_name is not None and out.penalty is not None:
            self.log(f"{stage}/{self.loss.penalty_name}", out.penalty.detach(), batch_size=n, sync_dist=True)
        prob = logits.float().softmax(dim=1)[:, self.defect_class]
        target = (y == self.defect_class).long()
        metrics: MetricCollection = getattr(self, f"{stage}_metrics")
        for name, metric in metrics.items(keep_base=True):
            if isinstance(metric, (AOIEnergy, PointingGame)):
                metric.update(heat, mask, y)
            else:
                metric.update(prob, target)
        scores: MetricCollection = getattr(self, f"{stage}_scores")
        scores["prob"].update(prob)
        scores["target"].update(target.float())
        if self.reliance_fills:
            self._update_reliance(scores, x, mask)

    def _update_reliance(self, scores: MetricCollection, x: Tensor, mask: Tensor) -> None:
        """P(defect) on each fill's composite of ``x`` (B×C×H×W; the outside of ``mask`` B×H×W replaced)."""
        with torch.no_grad():
            composites = torch.cat([fill_outside(x, mask, f) for f in self.reliance_fills])
            probs = self.model(composites)[0].float().softmax(dim=1)[:, self.defect_class].split(x.shape[0])
        for fill, p in zip(self.reliance_fills, probs):
            scores[f"prob_{fill}"].update(p)
            scores[f"valid_{fill}"].update(valid_for(mask, fill).float())

    def _log_reliance(self, stage: str, prob: Tensor, kept: dict[str, Tensor], auroc: Tensor | None) -> None:
        """``outside_reliance`` (mean |ΔP|) and ``outside_flip`` per fill (suffix ``_<fill>`` but for swap)."""
        for fill in self.reliance_fills:
            delta, flip = reliance(prob, kept[f"prob_{fill}"], kept[f"valid_{fill}"].bool(), self.threshold)
            suffix = "" if fill == "swap" else f"_{fill}"
            self.log(f"{stage}/outside_reliance{suffix}", delta, sync_dist=True)
            self.log(f"{stage}/outside_flip{suffix}", flip, sync_dist=True)
            if fill == "swap" and auroc is not None:  # a selection score that does not reward the shortcut alone
                self.log(f"{stage}/auroc_minus_reliance", auroc - delta, sync_dist=True)

    def _eval_epoch_end(self, stage: str) -> None:
        metrics: MetricCollection = getattr(self, f"{stage}_metrics")
        # Every value below is computed from states torchmetrics has already gathered from all processes,
        # so it is the same on every rank; sync_dist=True only averages equal numbers (and tells Lightning so).
        computed = metrics.compute()
        self.log_dict(computed, sync_dist=True)
        metrics.reset()
        scores: MetricCollection = getattr(self, f"{stage}_scores")
        values = {k: m.compute().reshape(-1) for k, m in scores.items(keep_base=True)}
        prob, target = values.pop("prob"), values.pop("target")
        scores.reset()
        target = target.long()
        if stage == "val" and not self.trainer.sanity_checking:
            self.threshold = youden_threshold(prob, target)
        t = self.threshold
        self.log(f"{stage}/threshold", t, sync_dist=True)
        if self.reliance_fills:
            self._log_reliance(stage, prob, values, computed.get(f"{stage}/auroc"))
        for name, fn in (("acc", binary_accuracy), ("f1", binary_f1_score)):
            self.log(f"{stage}/{name}", fn(prob, target, threshold=t), sync_dist=True)
            self.log(f"{stage}/{name}@0.5", fn(prob, target, threshold=0.5), sync_dist=True)
        cm = binary_confusion_matrix(prob, target, threshold=t)
        self.confusion[stage] = cm.cpu()
        for (i, j), name in {(0, 0): "tn", (0, 1): "fp", (1, 0): "fn", (1, 1): "tp"}.items():
            self.log(f"{stage}/{name}", cm[i, j].float(), sync_dist=True)

    def on_fit_start(self) -> None:
        """Counterfactual training images need AOI masks: a training set without any is one error line."""
        swap = self.loss.opts.outside_swap
        samples = getattr(getattr(self.trainer, "datamodule", None), "samples", {}).get("train")
        if swap != "none" and samples and all(getattr(s, "mask", None) is None for s in samples):
            raise ConfigError(f"loss.outside_swap={swap} replaces what lies outside each image's AOI, but no training "
                              "image has an AOI mask (set data.mask_dir, or loss.outside_swap=none)")

    def on_validation_epoch_start(self) -> None:
        """Before validating a training epoch: BN running statistics recomputed over the training set."""
        if not self.bn_recalibration or self.trainer.sanity_checking or self.trainer.state.fn != "fit":
            return
        loader = self.trainer.train_dataloader
        if loader is None:
            return
        limit = self.trainer.num_training_batches  # limit_train_batches / fast_dev_run respected
        limit = None if limit == float("inf") else int(limit)
        # per process under DDP: each rank's shard (buffers are re-broadcast from rank 0 at the next step)
        batches = (b["image"].to(self.device) for b in itertools.islice(loader, limit))
        recompute_batchnorm_stats(self.model, batches)

    def on_save_checkpoint(self, checkpoint: dict) -> None:
        checkpoint["ceod_threshold"] = float(self.threshold)

    def on_load_checkpoint(self, checkpoint: dict) -> None:
        self.threshold = float(checkpoint.get("ceod_threshold", 0.5))

    def validation_step(self, batch: dict, batch_idx: int) -> None:
        self._eval_step("val", batch)

    def on_validation_epoch_end(self) -> None:
        self._eval_epoch_end("val")

    def test_step(self, batch: dict, batch_idx: int) -> None:
        self._eval_step("test", batch)

    def on_test_epoch_end(self) -> None:
        self._eval_epoch_end("test")

    def configure_optimizers(self) -> torch.optim.Optimizer:
        """The configured optimizer over the trainable parameters (those the finetune regime left on)."""
        return self.optimizer_factory(params=[p for p in self.parameters() if p.requires_grad])
