"""Heat-map figures for every logger: grids of a fixed set of validation images (half defective) for the best
checkpoint (the checkpoint monitor's) and the last epoch, drawn when training ends (nothing runs per epoch), and
every ``every_n_epochs`` epochs if set. At test: confusion matrix, ROC curve, the most confident mistakes, and
``test_scores.csv`` (path, label, P(defect) per image). PNGs go to ``<run dir>/figures/`` and to every logger that
takes images (TensorBoard ``add_image``, W&B ``log_image``; CSV has none). Global rank 0 only.
"""


from __future__ import annotations

import copy
import heapq
from pathlib import Path

import lightning as L
import numpy as np
import torch
from lightning.pytorch.callbacks import Callback
from lightning.pytorch.trainer.states import TrainerFn

from ceod.console import info
from ceod.deploy import figures
from ceod.deploy.checkpoint import network_weights
from ceod.deploy.predict import score_images


def defect_heat(model: torch.nn.Module, pl_module: L.LightningModule,
                images: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """(P(defect) B, the defect-class heat map B×H×W) of ``model`` for B×C×H×W images, detached on the CPU;
    the heat map is the one ``pl_module``'s loss trains and the checkpoint records (``loss.heat_spec``)."""
    prob, heat = score_images(model, images, pl_module.loss.heat_spec)
    return prob.cpu(), heat.cpu()


class HeatMapFigures(Callback):
    """Figures of what the model looks at; see the module docstring. ``every_n_epochs=None``: best + last only."""

    def __init__(self, every_n_epochs: int | None = None, n_images: int = 8, n_mistakes: int = 8, ncols: int = 4,
                 dirname: str = "figures", dpi: int = 100) -> None:
        if every_n_epochs is not None and every_n_epochs < 1:
            from ceod.errors import ConfigError

            raise ConfigError(f"callbacks.figures.every_n_epochs must be ≥ 1 or null, got {every_n_epochs}")
        self.every_n_epochs, self.n_images, self.n_mistakes = every_n_epochs, n_images, n_mistakes
        self.ncols, self.dirname, self.dpi = ncols, dirname, dpi
        self._fixed: dict[str, torch.Tensor] | None = None
        self._test: dict[str, list] = {}
        self.written: list[Path] = []

    # ------------------------------------------------------------------ helpers
    def _dir(self, trainer: L.Trainer) -> Path:
        return Path(trainer.default_root_dir) / self.dirname

    def _fixed_batch(self, trainer: L.Trainer) -> dict[str, torch.Tensor] | None:
        """The first n/2 good and n/2 defective validation images (fixed for the whole run)."""
        if self._fixed is None:
            loader = trainer.val_dataloaders
            dataset = getattr(loader, "dataset", None)
            if dataset is None:
                return None
            want, picked = {0: self.n_images // 2, 1: self.n_images - self.n_images // 2}, []
            for i in range(len(dataset)):
                item = dataset[i]
                y = int(item["label"])
                if want.get(y, 0) > 0:
                    want[y] -= 1
                    picked.append(item)
                if not any(want.values()):
                    break
            if not picked:
                return None
            self._fixed = {k: torch.stack([torch.as_tensor(p[k]) for p in picked]) for k in ("image", "mask", "label")}
        return self._fixed

    def _snapshot(self, model: torch.nn.Module, pl_module: L.LightningModule,
                  batch: dict[str, torch.Tensor]) -> dict[str, np.ndarray]:
        """P(defect) and heat of ``model`` (eval mode) on ``batch``, with the images, as numpy arrays."""
        prob, heat = defect_heat(model, pl_module, batch["image"].to(pl_module.device))
        return {"image": batch["image"].float().numpy(), "mask": batch["mask"].float().numpy(),
                "label": batch["label"].numpy(), "prob": prob.numpy(), "heat": heat.numpy()}

    def _grid(self, pl_module: L.LightningModule, snap: dict[str, np.ndarray], title: str):
        return figures.heat_grid(snap["image"], snap["heat"], snap["mask"], snap["label"], snap["prob"],
                                 threshold=_threshold(pl_module), tau=_tau(pl_module), ncols=self.ncols, title=title)

    def publish(self, trainer: L.Trainer, name: str, fig, step: int) -> Path:
        """PNG to ``<run dir>/figures/<name>.png``, then to every logger that takes images."""
        path = figures.save_figure(fig, self._dir(trainer) / f"{name}.png", dpi=self.dpi)
        self.written.append(path)
        for logger in trainer.loggers:
            if hasattr(logger, "log_image"):  # W&B (and others with the same method)
                logger.log_image(key=f"figures/{name}", images=[str(path)])
            elif hasattr(getattr(logger, "experiment", None), "add_image"):  # TensorBoard
                from PIL import Image

                with Image.open(path) as im:
                    array = np.asarray(im.convert("RGB"))
                logger.experiment.add_image(f"figures/{name}", array, global_step=step, dataformats="HWC")
        return path

    # ------------------------------------------------------------------ validation
    def on_validation_end(self, trainer: L.Trainer, pl_module: L.LightningModule) -> None:
        """Only with ``every_n_epochs``: a grid of this epoch (best and last are drawn at the end of training)."""
        if (trainer.sanity_checking or not trainer.is_global_zero or trainer.state.fn != TrainerFn.FITTING
                or not self.every_n_epochs or (trainer.current_epoch + 1) % self.every_n_epochs):
            return
        batch = self._fixed_batch(trainer)
        if batch is not None:
            epoch = trainer.current_epoch
            fig = self._grid(pl_module, self._snapshot(pl_module.model, pl_module, batch), f"validation, epoch {epoch}")
            self.publish(trainer, f"val_heatmaps_epoch{epoch:03d}", fig, trainer.global_step)

    def on_train_end(self, trainer: L.Trainer, pl_module: L.LightningModule) -> None:
        """Grids of the last epoch (the weights now) and of the best checkpoint (loaded into a copy)."""
        batch = self._fixed_batch(trainer) if trainer.is_global_zero else None
        if batch is None:
            return
        modes = {m: m.training for m in pl_module.modules()}
        pl_module.eval()
        try:
            last = self._snapshot(pl_module.model, pl_module, batch)
            best_path = getattr(trainer.checkpoint_callback, "best_model_path", "") or ""
            best_epoch, best = None, None
            if Path(best_path).is_file():
                ckpt = torch.load(best_path, map_location="cpu", weights_only=True)
                best_epoch = int(ckpt.get("epoch", -1))
                if best_epoch != trainer.current_epoch:
                    net = copy.deepcopy(pl_module.model)
                    net.load_state_dict(network_weights(ckpt["state_dict"]))
                    best = self._snapshot(net.eval(), pl_module, batch)
                    del net
        finally:
            for m, mode in modes.items():
                m.train(mode)
        step = trainer.global_step
        if best_epoch is not None:
            fig = self._grid(pl_module, best if best is not None else last, f"validation, best epoch ({best_epoch})")
            self.publish(trainer, "val_heatmaps_best", fig, step)
        fig = self._grid(pl_module, last, f"validation, last epoch ({trainer.current_epoch})")
        self.publish(trainer, "val_heatmaps_last", fig, step)

    # ------------------------------------------------------------------ test
    def on_test_epoch_start(self, trainer: L.Trainer, pl_module: L.LightningModule) -> None:
        self._test = {"label": [], "prob": [], "path": [], "mistakes": []}

    def on_test_batch_end(self, trainer, pl_module, outputs, batch, batch_idx, dataloader_idx=0) -> None:
        if not trainer.is_global_zero:
            return
        with torch.no_grad():
            logits = pl_module.model(batch["image"])[0]
        prob = logits.float().softmax(dim=1)[:, pl_module.loss.heat_spec.defect_class].cpu()
        label = batch["label"].cpu()
        self._test["label"] += label.tolist()
        self._test["prob"] += prob.tolist()
        samples = getattr(getattr(trainer.test_dataloaders, "dataset", None), "samples", None)
        index = batch.get("index") if isinstance(batch, dict) else None
        self._test["path"] += ([str(samples[i].image) for i in index.tolist()] if samples is not None and index is not None
                               else [""] * len(label))
        thr, heap = _threshold(pl_module), self._test["mistakes"]
        for i, (p, y) in enumerate(zip(prob.tolist(), label.tolist())):
            if (p >= thr) != bool(y):
                confidence = p if p >= thr else 1 - p
                key = (confidence, batch_idx, i)
                item = (key, batch["image"][i].cpu(), batch["mask"][i].cpu(), label[i])
                if len(heap) < self.n_mistakes:
                    heapq.heappush(heap, item)
                elif key > heap[0][0]:
                    heapq.heapreplace(heap, item)

    def on_test_epoch_end(self, trainer: L.Trainer, pl_module: L.LightningModule) -> None:
        if not trainer.is_global_zero or not self._test.get("label"):
            return
        labels, probs, thr, step = self._test["label"], self._test["prob"], _threshold(pl_module), trainer.global_step
        from ceod.data.layout import write_csv

        write_csv(self._dir(trainer) / "test_scores.csv", ["path", "label", "defect_score"],
                  [(p, y, f"{s:.8f}") for p, y, s in zip(self._test["path"], labels, probs)])
        self.publish(trainer, "test_confusion", figures.confusion_figure(labels, probs, thr,
                                                                         f"test, threshold {thr:.2f}"), step)
        roc = figures.roc_figure(labels, probs, "test ROC")
        if roc is not None:
            self.publish(trainer, "test_roc", roc, step)
        mistakes = sorted(self._test["mistakes"], key=lambda m: m[0], reverse=True)
        if not mistakes:
            info("figures: no test mistakes to show")
            return
        batch = {"image": torch.stack([m[1] for m in mistakes]), "mask": torch.stack([m[2] for m in mistakes]),
                 "label": torch.stack([m[3] for m in mistakes])}
        fig = self._grid(pl_module, self._snapshot(pl_module.model, pl_module, batch), "test: most confident mistakes")
        self.publish(trainer, "test_mistakes", fig, step)


def _threshold(pl_module: L.LightningModule) -> float:
    return float(getattr(pl_module, "threshold", 0.5))


def _tau(pl_module: L.LightningModule) -> float:
    """The loss's hottest-pixel fraction τ (drawn as a contour); 0.5 when the loss has none or uses the
    whole heat map (τ = 0), where a contour at 0 would outline everything."""
    tau = getattr(pl_module.loss.opts, "tau", 0.0)  # CEOD's option; the baselines have none
    return float(tau) if tau > 0 else 0.5
