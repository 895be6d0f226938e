"""End to end: composed configs with fast_dev_run, the CLI on a tiny dataset, one-line errors."""

from __future__ import annotations

import csv
from pathlib import Path

import pytest
import torch
from hydra.utils import get_class, instantiate
from omegaconf import OmegaConf

from ceod import CONF_DIR
from ceod.models.custom_cnn import CustomCNN
from ceod.training.pipeline import train
from ceod.training.user_errors import one_line


def test_custom_cnn_parameter_count_and_outputs():
    model = CustomCNN(in_chans=3)
    n = sum(p.numel() for p in model.parameters() if p.requires_grad)
    assert abs(n - 294_994) <= 0.05 * 294_994
    logits, feats = model(torch.rand(2, 3, 128, 128))
    assert logits.shape == (2, 2) and feats.shape == (2, 128, 16, 16)
    assert sum(isinstance(m, torch.nn.Conv2d) for m in model.modules()) == 8
    assert sum(isinstance(m, torch.nn.BatchNorm2d) for m in model.modules()) == 8
    assert sum(isinstance(m, torch.nn.MaxPool2d) for m in model.modules()) == 3


@pytest.mark.parametrize("loss", ["ce", "ceod", "ceod_linear"])
def test_fast_dev_run_from_composed_config(make_cfg, tiny_root, loss):
    cfg = make_cfg(f"loss={loss}", "trainer.fast_dev_run=true", "trainer.accelerator=cpu", f"data.root={tiny_root}",
                   "+data.generator={n_good:24,n_defect:20}", "data.image_size=64", "data.batch_size=8")
    results = train(cfg)
    assert {"train/loss", "test/auroc", "test/acc", "test/f1", "test/aoi_energy", "test/pointing_game"} <= set(results)
    assert all(v == v for k, v in results.items() if k.startswith("train/"))  # no NaN


def test_default_run_is_the_recommended_loss_on_the_synthetic_zipper(make_cfg):
    """`python -m ceod.train` with no arguments: the README's recommended loss and benchmark, and an optimizer and
    trainer the CAM losses can run with (gradients in evaluation: inference_mode off)."""
    cfg = make_cfg()
    assert cfg.loss == make_cfg("loss=ceod_swap").loss and cfg.data == make_cfg("data=synthetic_zipper").data
    opt = instantiate(cfg.optimizer)(params=[torch.nn.Parameter(torch.zeros(1))])
    assert isinstance(opt, torch.optim.Optimizer) and opt.defaults["lr"] == cfg.optimizer.lr
    assert cfg.trainer.inference_mode is False


EXPERIMENTS = sorted(p.stem for p in (Path(CONF_DIR) / "experiment").glob("*.yaml"))


def leaves(node, prefix="") -> set[str]:
    """The dotted paths of a config's leaves (a dict-valued default counts as its keys)."""
    if not isinstance(node, dict):
        return {prefix}
    return set().union(*(leaves(v, f"{prefix}{k}.") for k, v in node.items())) if node else {prefix}


@pytest.mark.parametrize("experiment", EXPERIMENTS)
def test_each_experiment_only_overrides(make_cfg, experiment):
    """An experiment chooses groups and overrides keys; it adds none the same group choices do not already have
    (a key only an experiment has would be a default living outside its group's file)."""
    defaults = OmegaConf.load(Path(CONF_DIR) / "experiment" / f"{experiment}.yaml").defaults
    choices = [f"{k.removeprefix('override /')}={v}" for d in defaults for k, v in d.items()]
    with_exp, plain = (OmegaConf.to_container(make_cfg(*over), resolve=False)
                       for over in ([f"+experiment={experiment}"], choices))
    added = leaves(with_exp) - leaves(plain)
    assert not added, f"+experiment={experiment} adds {sorted(added)}"
    cfg = make_cfg(f"+experiment={experiment}", "trainer.max_epochs=3", "data.batch_size=16")
    assert cfg.task_name == experiment and cfg.trainer.max_epochs == 3 and cfg.data.batch_size == 16


@pytest.mark.slow
def test_cli_end_to_end(run_cli, tmp_path):
    r = run_cli("trainer.max_epochs=2", "+data.generator={n_good:20,n_defect:20}", "data.image_size=64",
                "data.batch_size=16", "trainer.accelerator=cpu", "hydra.run.dir=out")
    assert r.returncode == 0, r.stderr[-3000:]
    for key in ("accuracy", "AUROC", "F1", "AOI energy", "confusion matrix"):
        assert key in r.stdout
    out = tmp_path / "out"
    assert (out / "config.yaml").is_file() and (out / ".hydra" / "overrides.yaml").is_file()
    assert (out / "checkpoints" / "last.ckpt").is_file() and len(list((out / "checkpoints").glob("*.ckpt"))) == 2
    assert list((out / "tensorboard").glob("events.out.tfevents.*"))
    assert "test results" in (out / "train.log").read_text() and not (out / "FAILED").exists()
    with open(out / "csv" / "metrics.csv") as f:
        cols = next(csv.reader(f))
    assert {"val/auroc", "test/auroc", "train/od", "train/ce", "val/aoi_energy"} <= set(cols)
    assert len(list((tmp_path / "data").glob("synthetic_zipper_seed0_*/manifest.csv"))) == 1  # own cache folder


@pytest.mark.slow  # a subprocess or a full run: make test-all / CI
def test_a_run_ends_with_one_table_and_no_lightning_noise(run_cli):
    """A tiny real run (no terminal): our result table only, no Lightning tip or warning about its own code, no
    progress bar of ours; Lightning's other messages stay (the filters are targeted)."""
    r = run_cli("trainer.max_epochs=1", "+data.generator={n_good:16,n_defect:16}", "data.image_size=32",
                "data.batch_size=8", "trainer.accelerator=cpu", "trainer.enable_progress_bar=false",
                "callbacks.figures=null", "logger=none", "hydra.run.dir=out", timeout=300)
    assert r.returncode == 0, r.stderr[-3000:]
    both = r.stdout + r.stderr
    assert r.stdout.count("test results") == 1 and "confusion matrix" in r.stdout
    assert "Test metric" not in both and "DataLoader 0" not in both  # Lightning's test table
    assert "💡" not in both and "litlogger" not in both and "litmodels" not in both, r.stderr
    assert "LeafSpec" not in both and "_pytree" not in both, r.stderr
    assert "check images" not in both and "generate:" not in both  # bars only on a terminal
    assert "Seed set to 0" in r.stderr and "`Trainer.fit` stopped" in r.stderr


@pytest.mark.parametrize("args, culprit", [
    (["trainer.max_epoch=3"], "trainer.max_epoch"),
    (["data=nosuch"], "data/nosuch"),
    (["loss.variant=cube"], "loss.variant"),
    (["+loss.foo=1"], "loss.foo"),
    (["data.mean=[0.5,0.5]"], "data.mean"),
    (["data=folder", "data.root=/nonexistent/ceod"], "/nonexistent/ceod"),
    (["data=folder"], "data.root"),
    (["train=false"], "ckpt_path"),
    (["ckpt_path=/nonexistent/x.ckpt"], "/nonexistent/x.ckpt"),
    (["trainer.precision=banana"], "precision"),
    (["logger.csv.bogus=1"], "logger.csv"),
])
def test_bad_input_is_one_line(make_cfg, args, culprit):
    """In-process: composing or running fails, and one_line (what the CLI prints) names the culprit."""
    with pytest.raises(Exception) as err:
        cfg = make_cfg("trainer.accelerator=cpu", "trainer.fast_dev_run=true", *args)
        train(cfg)
    line = one_line(err.value)
    assert line is not None and "\n" not in line and culprit in line, (line, repr(err.value))


@pytest.mark.parametrize("args, culprit", [
    pytest.param(["trainer.max_epoch=3"], "trainer.max_epoch", marks=pytest.mark.slow),  # Hydra composition
    (["data.batch_size=abc"], "data.batch_size"),  # inside the run
])
def test_cli_errors_are_one_line_with_exit_code_2(run_cli, tmp_path, args, culprit):
    """The CLI wiring: one error line, exit 2, no traceback; a run that started is marked FAILED."""
    r = run_cli(*args, "hydra.run.dir=out", timeout=120)
    assert r.returncode == 2 and len(r.errors) == 1 and culprit in r.errors[0], r.stderr[-2000:]
    assert "Traceback" not in r.stderr
    marker = tmp_path / "out" / "FAILED"
    assert culprit in marker.read_text() if args[0].startswith("data.") else not marker.exists()


@pytest.mark.slow  # a subprocess or a full run: make test-all / CI
def test_missing_mvtec_root_is_the_first_and_only_line(run_cli):
    """Checked before the model, loss and trainer are built: nothing printed before the error line."""
    r = run_cli("data=mvtec_zipper", "data.root=/nonexistent/mvtec", "hydra.run.dir=out", timeout=120)
    assert r.returncode == 2 and r.stdout == "", r.stdout
    assert r.stderr.splitlines() == r.errors and "MVTec AD zipper not found under /nonexistent/mvtec" in r.errors[0]


def test_empty_image_folder_is_one_line(make_cfg, tmp_path):
    (tmp_path / "ds" / "images" / "good").mkdir(parents=True)
    with pytest.raises(Exception) as err:
        train(make_cfg("data=folder", f"data.root={tmp_path / 'ds'}", "trainer.accelerator=cpu"))
    assert one_line(err.value) == f"no images found under {tmp_path / 'ds' / 'images'}"


def test_generator_list_values_and_requeue_resume(make_cfg, tmp_path, capsys):
    """List-valued generator overrides work; a second run in the same dir resumes from last.ckpt."""
    over = ("data.generator={n_good:12,n_defect:12,band_width:[0.2,0.3]}", "data.image_size=48",
            "data.batch_size=8", "trainer.accelerator=cpu", "trainer.max_epochs=1", "logger=none")
    first = train(make_cfg(*over))
    assert "test/auroc" in first
    last = tmp_path / "run" / "checkpoints" / "last.ckpt"
    assert last.is_file()
    steps = torch.load(last, weights_only=False)["global_step"]
    capsys.readouterr()
    again = train(make_cfg(*over[:-2], "trainer.max_epochs=2", "logger=none"))
    assert f"resuming from {last}" in capsys.readouterr().out
    assert torch.load(last, weights_only=False)["global_step"] == 2 * steps  # one more epoch, not two
    assert "best/val/auroc" in again


LOSSES = sorted(p.stem for p in (Path(CONF_DIR) / "loss").glob("*.yaml"))


@pytest.mark.parametrize("name", LOSSES)
def test_each_loss_preset_reaches_the_instantiated_loss(make_cfg, name):
    """Every key of a composed loss preset is an option of the loss built from it, with the preset's value."""
    cfg = make_cfg(f"loss={name}").loss
    loss = instantiate(cfg)
    given = {k: v for k, v in OmegaConf.to_container(cfg).items() if k != "_target_"}
    got = {k: getattr(loss.opts, k) for k in given}
    assert got == given and type(loss) is get_class(cfg._target_)
