"""Figures callback and inference record on real tiny runs: PNGs, TensorBoard and offline W&B images,
CE vs CEOD overlays, checkpoints that load with weights_only=True and from plain PyTorch."""

from __future__ import annotations

import functools
import re
from pathlib import Path

import numpy as np
import pytest
import torch
from hydra.utils import instantiate
from PIL import Image

from ceod.core.cam import HeatSpec
from ceod.deploy.checkpoint import heat_spec_of
from ceod.errors import ConfigError
from ceod.models.custom_cnn import CustomCNN
from ceod.training.callbacks import HeatMapFigures, InferenceRecord
from ceod.training.module import CEODModule

REPO = Path(__file__).resolve().parents[2]
FIGURES = ("val_heatmaps_best", "val_heatmaps_last", "val_heatmaps_epoch000", "val_heatmaps_epoch001",
           "test_confusion", "test_roc")


def _png(path: Path) -> np.ndarray:
    with Image.open(path) as im:
        im.verify()  # a complete, valid PNG
    with Image.open(path) as im:
        assert im.format == "PNG"
        return np.asarray(im.convert("RGB"))


def test_figures_are_valid_pngs(trained_run):
    run, _ = trained_run
    for name in FIGURES:
        arr = _png(run / "figures" / f"{name}.png")
        assert arr.shape[0] > 100 and arr.shape[1] > 100 and arr.std() > 10  # a picture, not a blank
    assert not list((run / "figures").glob(".*"))  # no temp files left
    rows = (run / "figures" / "test_scores.csv").read_text().splitlines()
    assert rows[0] == "path,label,defect_score" and len(rows) > 2


def test_tensorboard_receives_the_figures(trained_run):
    from tensorboard.backend.event_processing.event_accumulator import EventAccumulator

    run, _ = trained_run
    tags = set()
    for events in (run / "tensorboard").glob("events.out.tfevents.*"):
        acc = EventAccumulator(str(events), size_guidance={"images": 0})
        acc.Reload()
        tags |= set(acc.Tags()["images"])
    assert {f"figures/{n}" for n in FIGURES} <= tags


def test_offline_wandb_run_receives_the_images(trained_run):
    run, _ = trained_run
    media = list((run / "wandb").glob("offline-run-*/files/media/images/figures/*.png"))
    names = {re.sub(r"_\d+_[0-9a-f]+$", "", p.stem) for p in media}
    assert {"val_heatmaps_best", "val_heatmaps_last", "test_confusion", "test_roc"} <= names, names
    for p in media:
        _png(p)


def test_checkpoints_load_weights_only_with_inference_record(trained_run):
    run, _ = trained_run
    ckpts = sorted((run / "checkpoints").glob("*.ckpt"))
    assert ckpts
    for path in ckpts:
        ckpt = torch.load(path, map_location="cpu", weights_only=True)
        record = ckpt["ceod_inference"]
        assert record["model"]["_target_"] == "ceod.models.custom_cnn.CustomCNN"
        # the network is recorded once: the record holds the module's own hyper_parameters["model"] (one pickle)
        assert record["model"] is ckpt["hyper_parameters"]["model"]
        assert record["preprocess"] == {"image_size": [48, 48], "channels": 1, "mean": [0.45], "std": [0.15]}
        assert heat_spec_of(record) == HeatSpec(defect_class=1, score="logit", sign="relu")  # loss=ce's


def test_readme_plain_pytorch_snippet_runs(trained_run):
    """The README's five lines, run as written, score like ceod.deploy.predict's model."""
    from ceod.deploy.checkpoint import build_model, load_checkpoint

    run, _ = trained_run
    readme = (REPO / "README.md").read_text()
    snippet = readme.split("<!-- plain-pytorch -->", 1)[1].split("```python", 1)[1].split("```", 1)[0]
    path = str(next((run / "checkpoints").glob("epoch*.ckpt")))
    image = torch.rand(1, 48, 48)
    scope = {"path": path, "image": image}
    exec(snippet, scope)  # noqa: S102  (our own documentation)
    ckpt = load_checkpoint(path)
    with torch.no_grad():
        expected = build_model(ckpt)(((image - 0.45) / 0.15)[None])[0].softmax(1)[0, 1]
    assert abs(float(scope["p_defect"]) - float(expected)) < 1e-6


@pytest.mark.slow
def test_overlay_differs_between_ce_and_ceod(trained_run, make_cfg, tmp_path):
    """Same data, seed and schedule, CEOD instead of CE: the heat-map grid changes."""
    from ceod.training.pipeline import train

    run_ce, _ = trained_run
    train(make_cfg("loss=ceod_normalized", "logger=none", "trainer.max_epochs=2", "trainer.accelerator=cpu",
                   "+data.generator={n_good:40,n_defect:40}", "data.image_size=48", "data.batch_size=16",
                   "callbacks.figures.every_n_epochs=1", "trainer.enable_progress_bar=false", "test=false"))
    ce = _png(run_ce / "figures" / "val_heatmaps_epoch001.png").astype(float)
    ceod = _png(tmp_path / "run" / "figures" / "val_heatmaps_epoch001.png").astype(float)
    assert ce.shape == ceod.shape
    assert np.abs(ce - ceod).mean() > 1.0  # grey levels, averaged over the whole grid


def test_callbacks_group_composes_and_switches_off(make_cfg):
    cfg = make_cfg()
    kinds = {type(instantiate(c)) for c in cfg.callbacks.values() if c is not None}
    assert {HeatMapFigures, InferenceRecord} <= kinds
    module = instantiate(cfg.module)
    record = instantiate(cfg.callbacks.inference_record).record(None, module)
    assert record["model"] is module.hparams["model"] and record["model"]["_target_"] == cfg.model._target_
    assert heat_spec_of(record) == module.loss.heat_spec == HeatSpec(cfg.loss.defect_class, cfg.loss.cam_score,
                                                                      cfg.loss.heat_sign)
    assert record["preprocess"]["channels"] == cfg.data.channels
    plain = CEODModule(CustomCNN(in_chans=1), instantiate(cfg.loss), functools.partial(torch.optim.Adamax))
    assert InferenceRecord(32, 1).record(None, plain) is None  # a network object: nothing to rebuild it from
    off = make_cfg("callbacks.figures=null")
    assert off.callbacks.figures is None and off.callbacks.inference_record is not None


def test_bad_every_n_epochs_is_a_config_error():
    with pytest.raises(ConfigError, match="every_n_epochs"):
        HeatMapFigures(every_n_epochs=0)
