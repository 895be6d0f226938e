"""One training run from a composed config (what ``python -m ceod.train`` runs; :mod:`ceod.cli.train`).

Check the config and the run folder (schema, resume rule), build data, module, loggers, callbacks and
trainer from the Hydra config; fit; test the best checkpoint; print the result table. Outputs go to the
Hydra run dir (``outputs/<task_name>/<run id>/``): checkpoints/ (best + last), csv/metrics.csv, tensorboard/,
config.yaml, train.log, and FAILED when the run raised. User errors — and a full disk, a lost permission, a
vanished file (:mod:`ceod.training.faults`) — become one ``error:`` line (exit 2); SIGTERM stops after the current batch
and exits 143, resumable. Checkpoints and config.yaml are written atomically (:mod:`ceod.training.checkpoint_io`).
"""

from __future__ import annotations

import logging
from pathlib import Path

from omegaconf import DictConfig, OmegaConf
from lightning.pytorch.utilities.exceptions import SIGTERMException

from ceod.training.checkpoint_io import StorageError, remove_stale_temporaries, write_atomically
from ceod.benchmarks.generated import generator_tag
from ceod.data.samples import CLASS_NAMES
from ceod.errors import ConfigError
from ceod.training.faults import SIGTERM_EXIT, Preemption, progress
from ceod.console import echo, info, log_to_file, quiet_lightning
from ceod.training.resume import resume_checkpoint
from ceod.training.run_dir import RunState, config_record, failure_marker, is_rank_zero, run_id
from ceod.training.schema import validate
from ceod.training.user_errors import describe, instantiate_at

__all__ = ["train", "train_with_log"]


OmegaConf.register_new_resolver("run_id", run_id, replace=True)
OmegaConf.register_new_resolver("generator_tag", generator_tag, replace=True)  # data roots of generated sets


def _run_folder(cfg: DictConfig) -> Path:
    """The run folder (created); an unusable one is a one-line ConfigError."""
    out_dir = Path(cfg.paths.output_dir)
    try:
        out_dir.mkdir(parents=True, exist_ok=True)
    except OSError as e:
        raise ConfigError(f"cannot create the run folder {out_dir}: {e.strerror} (set hydra.run.dir)") from None
    return out_dir


def _start(cfg: DictConfig) -> tuple[Path, dict, str | None, dict | None]:
    """Checks before any data is read → (run folder, config record, checkpoint path to start from, its contents).

    Typed run-level values (:mod:`ceod.training.schema`); the run folder's resume rule (:func:`ceod.training.resume.resume_checkpoint`).
    """
    validate(cfg)
    out_dir = _run_folder(cfg)
    record = config_record(cfg, out_dir)
    if is_rank_zero():
        for folder in (out_dir, out_dir / "checkpoints", out_dir / "csv"):  # left by writers killed mid-save
            if folder.is_dir():
                remove_stale_temporaries(folder)
    ckpt_path, ckpt = resume_checkpoint(cfg, out_dir, record, note=info)
    if not cfg.get("train", True) and cfg.get("test", True) and ckpt_path is None:
        raise ConfigError("train=false tests a trained model: set ckpt_path=/path/to/checkpoint.ckpt")
    if ckpt is not None and cfg.get("train", True):
        info(f"resuming from {ckpt_path} ({progress(ckpt)})")
    return out_dir, record, ckpt_path, ckpt


def _loggers_and_callbacks(cfg: DictConfig, record: dict, resumed: dict | None) -> tuple[list, list]:
    """The configured loggers and callbacks (a ``null`` entry is off) plus :class:`ceod.training.run_dir.RunState`.

    ``resumed``: the checkpoint training resumes from — loggers that can (CSV) keep the rows of its epochs.
    """
    loggers = [instantiate_at(cfg, f"logger.{k}") for k, c in (cfg.get("logger") or {}).items() if c is not None]
    for lg in loggers:
        if resumed is not None and hasattr(lg, "resume_after"):
            lg.resume_after(int(resumed.get("epoch", -1)), resumed.get("ceod_run", {}).get("epoch_log"),
                            (resumed.get("ceod_resume") or {}).get("step"))
    callbacks = [instantiate_at(cfg, f"callbacks.{k}") for k, c in (cfg.get("callbacks") or {}).items()
                 if c is not None]
    return loggers, callbacks + [RunState(cfg.seed, record), Preemption()]


def count_parameters(model) -> tuple[int, int]:
    """(trainable, total) parameter counts."""
    params = list(model.parameters())
    return sum(p.numel() for p in params if p.requires_grad), sum(p.numel() for p in params)


def format_results(metrics: dict[str, float], confusion=None, stage: str = "test") -> str:
    """The result table printed at the end of a run."""
    rows = [("AUROC", "auroc"), ("threshold", "threshold"), ("accuracy", "acc"), ("F1", "f1"),
            ("accuracy @ 0.5", "acc@0.5"), ("F1 @ 0.5", "f1@0.5"), ("AOI energy", "aoi_energy"),
            ("pointing game", "pointing_game"), ("outside reliance", "outside_reliance"),
            ("outside flips", "outside_flip"), ("reliance (blur)", "outside_reliance_blur"), ("loss", "loss"), ("OD", "od")]
    lines = [f"{stage} results", "-" * 28]
    for label, key in rows:
        value = metrics.get(f"{stage}/{key}")
        if value is not None:
            lines.append(f"{label:<16}{float(value):>12.4f}")
    if confusion is not None:
        cm = confusion.tolist()
        lines += ["confusion matrix (rows: true, cols: predicted at the threshold chosen on validation)",
                  f"{'':<10}{CLASS_NAMES[0]:>8}{CLASS_NAMES[1]:>8}",
                  *(f"{CLASS_NAMES[i]:<10}{cm[i][0]:>8}{cm[i][1]:>8}" for i in (0, 1))]
    return "\n".join(lines)


def train(cfg: DictConfig) -> dict[str, float]:
    """Fit and test as configured; returns the final metrics (floats)."""
    import lightning as L
    from hydra.utils import instantiate

    out_dir, record, ckpt_path, ckpt = _start(cfg)
    quiet_lightning()
    L.seed_everything(cfg.seed, workers=True)

    datamodule = instantiate_at(cfg, "data")
    module = instantiate(cfg.module)  # network (frozen per finetune), loss, optimizer: conf/module/default.yaml
    if getattr(module.model, "pretrained_normalization", None) is not None and cfg.data.get("mean") is not None:
        raise ConfigError(f"model {cfg.model.get('name', '')} normalises its input with its pretrained mean/std: "
                          "set data.mean=null data.std=null (pixels in [0, 1])")
    trainable, total = count_parameters(module.model)
    info(f"model {cfg.model._target_.rsplit('.', 1)[-1]}: {trainable:,} trainable / {total:,} parameters")
    info(f"loss: {module.loss.extra_repr()}")

    loggers, callbacks = _loggers_and_callbacks(cfg, record, ckpt if cfg.get("train", True) else None)
    trainer = instantiate_at(cfg, "trainer", logger=loggers or False, callbacks=callbacks)
    try:
        if trainer.is_global_zero:
            _save_config(cfg, out_dir / "config.yaml")
            for lg in loggers:
                lg.log_hyperparams(OmegaConf.to_container(cfg, resolve=True))

        results: dict[str, float] = {}
        best = ""
        if cfg.get("train", True):
            trainer.fit(module, datamodule=datamodule, ckpt_path=ckpt_path)
            results = {k: float(v) for k, v in trainer.callback_metrics.items()}
            cb = next((c for c in trainer.checkpoint_callbacks if getattr(c, "monitor", None)), None)
            best = cb.best_model_path if cb is not None else ""
            if cb is not None and cb.best_model_score is not None:
                results["best/" + str(cb.monitor)] = float(cb.best_model_score)
        if cfg.get("test", True):
            test_ckpt = best or (ckpt_path if not cfg.get("train", True) else None)
            trainer.test(module, datamodule=datamodule, ckpt_path=test_ckpt, verbose=False)  # ours: format_results
            results.update({k: float(v) for k, v in trainer.callback_metrics.items()})
            if trainer.is_global_zero:
                echo(format_results(results, module.confusion.get("test")))
                if test_ckpt:
                    info(f"tested checkpoint: {test_ckpt}")
        info(f"outputs in {out_dir}")
    finally:
        if any(type(lg).__name__ == "WandbLogger" for lg in loggers):
            import wandb

            wandb.finish()  # one W&B run per job, also when it fails
    return results


def _save_config(cfg: DictConfig, path: Path) -> None:
    """The resolved config, written atomically (never half-written); a failed write is a StorageError."""
    text = OmegaConf.to_yaml(cfg, resolve=True).encode()
    try:
        write_atomically(path, lambda f: f.write(text))
    except OSError as e:
        raise StorageError("the resolved config", path, e) from e


def train_with_log(cfg: DictConfig) -> dict[str, float]:
    """:func:`train` with its log in ``<run dir>/train.log`` and the folder marked ``FAILED`` if it raises."""
    out_dir = Path(cfg.paths.output_dir)
    stop_log = log_to_file(out_dir / "train.log") if out_dir.is_dir() else (lambda: None)
    try:
        with failure_marker(out_dir, describe):
            return train(cfg)
    except SIGTERMException:  # Lightning stopped after the current batch; Preemption said where
        raise SystemExit(SIGTERM_EXIT) from None
    except Exception as e:
        logging.getLogger("ceod.runlog").error(describe(e))
        raise
    finally:
        stop_log()
