"""Training entry point: ``python -m ceod.train [+experiment=NAME] [key=value ...]``.

Flat on purpose (torchvision references style): build data, model, loss, trainer from the Hydra
config; fit; test the best checkpoint; print the result table. Outputs go to the Hydra run dir
(``outputs/<task_name>/<run id>/``): checkpoints/, csv/metrics.csv, tensorboard/, config.yaml.
"""

from __future__ import annotations

import os
import sys
import time
from pathlib import Path

import hydra
from hydra.errors import HydraException, InstantiationException, MissingConfigException, OverrideParseException
from omegaconf import DictConfig, OmegaConf
from omegaconf.errors import MissingMandatoryValue, OmegaConfBaseException

from ceod.errors import CeodError, ConfigError
from ceod.log import info


def run_id() -> str:
    """Name of this run's (or sweep's) folder, fixed once per launch and shared by its jobs.

    CEOD_RUN_ID if set (inherited by sweep jobs and DDP workers), else the SLURM job id (with array
    task) on a cluster — stable across requeues — else a timestamp.
    """
    value = os.environ.get("CEOD_RUN_ID")
    if not value:
        job = os.environ.get("SLURM_ARRAY_JOB_ID") or os.environ.get("SLURM_JOB_ID")
        if job:
            task = os.environ.get("SLURM_ARRAY_TASK_ID")
            value = f"slurm-{job}" + (f"_{task}" if task and os.environ.get("SLURM_ARRAY_JOB_ID") else "")
        else:
            value = time.strftime("%Y-%m-%d_%H-%M-%S")
        os.environ["CEOD_RUN_ID"] = value
    return value


def generator_tag(overrides) -> str:
    """'' for the preset synthetic dataset, else '_<hash>' of the generator overrides (its own cache folder)."""
    if not overrides:
        return ""
    import hashlib
    import json

    items = OmegaConf.to_container(overrides, resolve=True) if isinstance(overrides, DictConfig) else overrides
    return "_" + hashlib.sha1(json.dumps(items, sort_keys=True).encode()).hexdigest()[:8]


OmegaConf.register_new_resolver("run_id", run_id, replace=True)
OmegaConf.register_new_resolver("generator_tag", generator_tag, replace=True)


def _unwrap(e: BaseException) -> BaseException:
    """The user-facing cause behind Hydra's InstantiationException wrappers."""
    while isinstance(e, InstantiationException) and e.__cause__ is not None:
        e = e.__cause__
    return e


def count_parameters(model) -> tuple[int, int]:
    """(trainable, total) parameter counts."""
    params = list(model.parameters())
    return sum(p.numel() for p in params if p.requires_grad), sum(p.numel() for p in params)


def format_results(metrics: dict[str, float], confusion=None, stage: str = "test") -> str:
    """The result table printed at the end of a run."""
    rows = [("accuracy", "acc"), ("AUROC", "auroc"), ("F1", "f1"), ("AOI energy", "aoi_energy"),
            ("pointing game", "pointing_game"), ("loss", "loss"), ("OD", "od")]
    lines = [f"{stage} results", "-" * 28]
    for label, key in rows:
        value = metrics.get(f"{stage}/{key}")
        if value is not None:
            lines.append(f"{label:<16}{float(value):>12.4f}")
    if confusion is not None:
        cm = confusion.tolist()
        lines += ["confusion matrix (rows: true, cols: predicted)",
                  f"{'':<10}{'good':>8}{'defect':>8}",
                  f"{'good':<10}{cm[0][0]:>8}{cm[0][1]:>8}",
                  f"{'defect':<10}{cm[1][0]:>8}{cm[1][1]:>8}"]
    return "\n".join(lines)


def train(cfg: DictConfig) -> dict[str, float]:
    """Fit and test as configured; returns the final metrics (floats)."""
    import lightning as L
    from hydra.utils import instantiate

    L.seed_everything(cfg.seed, workers=True)
    out_dir = Path(cfg.paths.output_dir)
    out_dir.mkdir(parents=True, exist_ok=True)

    datamodule = instantiate(cfg.data)
    module = instantiate(cfg.module)  # network (frozen per finetune), loss, optimizer: conf/module/default.yaml
    if getattr(module.model, "pretrained_normalization", None) is not None and cfg.data.get("mean") is not None:
        raise ConfigError(f"model {cfg.model.get('name', '')} normalises its input with its pretrained mean/std: "
                          "set data.mean=null data.std=null (pixels in [0, 1])")
    trainable, total = count_parameters(module.model)
    info(f"model {cfg.model._target_.rsplit('.', 1)[-1]}: {trainable:,} trainable / {total:,} parameters")
    info(f"loss: {module.loss.extra_repr()}")

    ckpt_path = cfg.get("ckpt_path")
    last = out_dir / "checkpoints" / "last.ckpt"
    if ckpt_path is None and cfg.get("train", True) and last.is_file():
        ckpt_path = str(last)  # a requeued job (same SLURM job id → same run dir) resumes
        info(f"resuming from {last}")
    if ckpt_path is not None and ckpt_path not in ("last", "best", "hpc") and not Path(ckpt_path).is_file():
        raise ConfigError(f"checkpoint not found: {ckpt_path} (ckpt_path)")
    if not cfg.get("train", True) and cfg.get("test", True) and ckpt_path is None:
        raise ConfigError("train=false tests a trained model: set ckpt_path=/path/to/checkpoint.ckpt")

    loggers = [instantiate(c) for c in (cfg.get("logger") or {}).values()]
    callbacks = [instantiate(c) for c in (cfg.get("callbacks") or {}).values() if c is not None]  # group.key=null: off
    trainer = instantiate(cfg.trainer, logger=loggers or False, callbacks=callbacks)
    try:
        if trainer.is_global_zero:
            OmegaConf.save(cfg, out_dir / "config.yaml", resolve=True)
            for lg in loggers:
                lg.log_hyperparams(OmegaConf.to_container(cfg, resolve=True))

        results: dict[str, float] = {}
        best = ""
        if cfg.get("train", True):
            trainer.fit(module, datamodule=datamodule, ckpt_path=ckpt_path)
            results = {k: float(v) for k, v in trainer.callback_metrics.items()}
            cb = trainer.checkpoint_callback
            best = cb.best_model_path if cb is not None else ""
            if cb is not None and cb.best_model_score is not None:
                results["best/" + str(cb.monitor)] = float(cb.best_model_score)
        if cfg.get("test", True):
            test_ckpt = best or (ckpt_path if not cfg.get("train", True) else None)
            trainer.test(module, datamodule=datamodule, ckpt_path=test_ckpt)
            results.update({k: float(v) for k, v in trainer.callback_metrics.items()})
            if trainer.is_global_zero:
                print(format_results(results, module.confusion.get("test")))
                if test_ckpt:
                    info(f"tested checkpoint: {test_ckpt}")
        info(f"outputs in {out_dir}")
    finally:
        if any(type(lg).__name__ == "WandbLogger" for lg in loggers):
            import wandb

            wandb.finish()  # one W&B run per job, also when it fails
    return results


def one_line(e: BaseException) -> str | None:
    """A one-line message for a user error (bad config key/value, path, file), None for a bug."""
    target = None
    if isinstance(e, InstantiationException):
        first = str(e).strip().splitlines()[0] if str(e).strip() else ""
        target = first.split("'")[1] if first.count("'") >= 2 else None
    e = _unwrap(e)
    if isinstance(e, CeodError):
        return str(e)
    if target is not None and isinstance(e, (TypeError, ValueError)):
        return f"bad arguments for {target}: {str(e).strip().splitlines()[0]}"
    if type(e).__name__ == "MisconfigurationException":
        return f"trainer: {str(e).strip().splitlines()[0]}"
    if isinstance(e, MissingMandatoryValue):
        return f"missing value for {e.full_key} (set {e.full_key}=...)"
    if isinstance(e, OverrideParseException):
        detail = "; ".join(ln.strip() for ln in str(e).splitlines() if ln.strip() and "hydra.cc" not in ln)
        return f"cannot parse override {e.override!r}: {detail}"
    if isinstance(e, MissingConfigException):
        lines = [ln.strip() for ln in str(e).splitlines() if ln.strip()]
        options = f" (available: {', '.join(e.options)})" if getattr(e, "options", None) else ""
        return lines[0] + options
    if isinstance(e, (HydraException, OmegaConfBaseException)):
        first = str(e).strip().splitlines()[0] if str(e).strip() else type(e).__name__
        cause = e.__cause__
        if cause is not None and str(cause).strip():
            first += f" {str(cause).strip().splitlines()[0]}"
        hint = next((ln.strip() for ln in str(e).splitlines() if ln.startswith("To append")), "")
        return first + (f" ({hint[0].lower() + hint[1:]})" if hint else "")
    return None


def report_user_errors(fn):
    """Run ``fn()``; a user error (see :func:`one_line`) prints one ``error:`` line and exits 2."""
    try:
        return fn()
    except Exception as e:
        message = one_line(e)
        if message is None:
            raise
        print(f"error: {message}", file=sys.stderr)
        sys.exit(2)


@hydra.main(version_base="1.3", config_path="../conf", config_name="train")
def main(cfg: DictConfig) -> float | None:
    """Hydra task: train and test; user errors exit 2 with one line (so one sweep job fails alone)."""
    results = report_user_errors(lambda: train(cfg))
    return results.get("best/val/auroc", results.get("val/auroc"))  # the value a sweeper optimises


def cli() -> None:
    """``python -m ceod.train``: Hydra's CLI, with config errors reported on one line (exit 2).

    Set HYDRA_FULL_ERROR=1 for Hydra's own full report and stack traces.
    """
    if os.environ.get("HYDRA_FULL_ERROR"):
        main()
        return
    os.environ["HYDRA_FULL_ERROR"] = "1"  # make Hydra raise instead of printing a multi-line report
    report_user_errors(main)


if __name__ == "__main__":
    cli()
