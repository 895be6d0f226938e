"""The CE vs CEOD vs baselines study: benchmarks × methods × seeds, resumable, one JSON per run.

    python experiments/study.py run [--benchmarks ...] [--methods ...] [--seeds 0 1 2 3 4] [--workers 2]
    python experiments/study.py report          # tables (Markdown) from the JSON files

Each cell is a real ``ceod.training.pipeline.train`` call on the composed Hydra config — the code path of
``python -m ceod.train`` — with the overrides printed in the tables, so any cell can be re-run by hand:
``python -m ceod.train <benchmark overrides> <method overrides> seed=S``. A finished cell
(``<out>/<benchmark>/<method>/seed<S>.json``) is never run again: kill the study and start it again to
resume. Each JSON records the commit, the overrides, the metrics and the wall time. The model tested is
the last epoch's (on the decoy benchmarks validation carries the shortcut too, so "best on val" would
reward it).
"""

from __future__ import annotations

import argparse
import fcntl
import json
import os
import subprocess
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
OUT = ROOT / "experiments" / "results" / "study"
EPOCHS = 15
BIG = "{n_good:540,n_defect:460,split:[0.4,0.15,0.45],contrast:0.22}"  # 64 px: marks less subtle; test split 450
BENCHMARKS: dict[str, list[str]] = {
    "synthetic_decoy": ["data=synthetic_zipper_decoy", "data.image_size=64", f"data.generator={BIG}"],
    "synthetic_control": ["data=synthetic_zipper_decoy_control", "data.image_size=64", f"data.generator={BIG}"],
    "digits_decoy": ["data=decoy_digits"],
    "digits_control": ["data=decoy_digits_control"],
}
ZOO = ("ring", "bar", "stripes", "beside", "position", "shade")  # ceod.benchmarks.decoys.KINDS (issue 16's zoo)
for _k in ZOO:
    for _c, _name in (("", "decoy"), ("_control", "control")):
        BENCHMARKS[f"digits_{_k}_{_name}"] = ["data=decoy_digits", f"data.variant=decoy_digits_{_k}{_c}"]
        BENCHMARKS[f"synthetic_{_k}_{_name}"] = [*BENCHMARKS["synthetic_decoy"],
                                                  f"data.variant=synthetic_zipper_decoy_{_k}{_c}"]
METHODS: dict[str, list[str]] = {
    "ce": ["loss=ce"],
    "ceod_paper": ["loss=ceod_paper"],
    "ceod": ["loss=ceod"],  # AOI dilated 9×9 until fc46ea3 (the CPU study), 17×17 since (the GPU study, §1b)
    "ceod_k9": ["loss=ceod", "loss.kernel_size=9"],
    "ceod_nodilation": ["loss=ceod", "loss.kernel_size=3", "loss.kernel_value=0.5", "loss.filter_normalize=sum"],
    "rrr": ["loss=rrr"],
    "energy": ["loss=energy"],
    "bg_random": ["loss=bg_random"],
    "swap": ["loss=ce", "loss.outside_swap=swap"],  # counterfactual training images (issue 16)
    "swap_kl": ["loss=ce", "loss.outside_swap=swap", "loss.consistency=1.0"],
    "ceod_swap": ["loss=ceod", "loss.outside_swap=swap"],
    "ceod_swap_kl": ["loss=ceod", "loss.outside_swap=swap", "loss.consistency=1.0"],
    # the composite keeps no ring of the image's own content around its AOI (the default keeps 1 px + 1 px seam)
    "ceod_swap_tight": ["loss=ceod", "loss.outside_swap=swap", "loss.swap_dilation=0", "loss.swap_feather=0"],
    "swap_tight": ["loss=ce", "loss.outside_swap=swap", "loss.swap_dilation=0", "loss.swap_feather=0"],
    # evidence outside the AOI penalised at a finer, earlier layer, for and against the class (issue 16 item 3)
    "ceod_fine_outside": ["loss=ceod", "loss.variant=outside", "loss.heat_sign=abs", "+model.cam_block=6"],
    # model selection without a clean validation set (issue 16 item 4): validate every epoch, test the epoch
    # with the best val AUROC - val outside reliance (instead of the last one)
    **{f"{m}_sel": [*o, "trainer.check_val_every_n_epoch=1", "callbacks.model_checkpoint.monitor=val/auroc_minus_reliance",
                    "callbacks.model_checkpoint.mode=max"] for m, o in (("ce", ["loss=ce"]), ("ceod", ["loss=ceod"]))},
    "ce_valbest": ["loss=ce", "trainer.check_val_every_n_epoch=1", "callbacks.model_checkpoint.monitor=val/auroc"],
}
COMMON = ["logger=none", "trainer.enable_progress_bar=false", "trainer.accelerator=cpu",
          f"trainer.max_epochs={EPOCHS}", f"trainer.check_val_every_n_epoch={EPOCHS}",  # validate the last epoch only
          "callbacks.model_checkpoint.monitor=null", "callbacks.figures=null"]
KEYS = ("test/auroc", "test/aoi_energy", "test/pointing_game", "test/acc", "test/acc@0.5", "val/auroc",
        "test/threshold", "test/outside_reliance", "test/outside_flip", "test/outside_reliance_blur",
        "test/outside_flip_blur", "val/outside_reliance", "val/aoi_energy")


def commit() -> str:
    if os.environ.get("CEOD_COMMIT"):  # a copy of the tree without .git (e.g. a GPU machine)
        return os.environ["CEOD_COMMIT"]
    out = subprocess.run(["git", "rev-parse", "--short", "HEAD"], cwd=ROOT, capture_output=True, text=True)
    dirty = subprocess.run(["git", "status", "--porcelain", "--untracked-files=no", "--", ".",
                            ":(exclude)experiments/results"], cwd=ROOT, capture_output=True, text=True).stdout.strip()
    return out.stdout.strip() + ("-dirty" if dirty else "")


NATIVE = 64  # every benchmark above is generated at 64 px


def upscaled(overrides: list[str], size: int) -> list[str]:
    """A benchmark's overrides, generated at its own 64 px and fed to the network at ``size`` px (same images)."""
    gen = [o for o in overrides if o.startswith("data.generator=")]
    rest = [o for o in overrides if not o.startswith("data.generator=") and not o.startswith("data.image_size=")]
    spec = gen[0].partition("=")[2][1:-1] + "," if gen else ""
    return [*rest, f"data.generator={{{spec}size:{NATIVE}}}", f"data.image_size={size}"]


def run_cell(bench: str, method: str, seed: int, extra: list[str], data_dir: Path, upscale: int | None = None) -> dict:
    """Train + test one cell in this process; returns the record written to its JSON."""
    from hydra import compose, initialize_config_dir
    from hydra.core.global_hydra import GlobalHydra
    from hydra.core.hydra_config import HydraConfig
    from omegaconf import open_dict

    import ceod.training.pipeline  # noqa: F401  (resolvers)
    from ceod.training.pipeline import train

    data = upscaled(BENCHMARKS[bench], upscale) if upscale else BENCHMARKS[bench]
    overrides = [*data, f"seed={seed}", *COMMON, *METHODS[method], *extra]  # a method may change COMMON
    GlobalHydra.instance().clear()
    with initialize_config_dir(config_dir=str(ROOT / "conf"), version_base="1.3"):
        cfg = compose(config_name="train", overrides=overrides, return_hydra_config=True)
    HydraConfig().set_config(cfg)
    t0 = time.time()
    with tempfile.TemporaryDirectory() as tmp, open_dict(cfg):
        cfg.paths.output_dir = tmp
        cfg.paths.data_dir = str(data_dir)
        del cfg["hydra"]
        res = train(cfg)
    return {"benchmark": bench, "method": method, "seed": seed, "commit": commit(), "overrides": overrides,
            "seconds": round(time.time() - t0, 1), **{k: res.get(k) for k in KEYS}}


def claim(path: Path) -> bool:
    """Atomically claim a cell for this worker (a lock file beside its JSON); False if done or taken."""
    if path.exists():
        return False
    path.parent.mkdir(parents=True, exist_ok=True)
    lock = open(path.with_suffix(".lock"), "a")
    try:
        fcntl.flock(lock, fcntl.LOCK_EX | fcntl.LOCK_NB)
    except BlockingIOError:
        return False
    claim.held = getattr(claim, "held", []) + [lock]  # released when the process ends (kill = resumable)
    return not path.exists()


def run(a) -> None:
    import torch

    torch.set_num_threads(a.threads)
    cells = [(b, m, s) for s in a.seeds for b in a.benchmarks for m in a.methods]
    for bench, method, seed in cells:
        path = a.out / bench / method / f"seed{seed}.json"
        if not claim(path):
            continue
        print(f"[study] {bench} {method} seed {seed} …", flush=True)
        rec = run_cell(bench, method, seed, a.set, a.data_dir, a.upscale)
        tmp = path.with_suffix(".json.tmp")
        tmp.write_text(json.dumps(rec, indent=1) + "\n")
        os.replace(tmp, path)
        print(f"[study] {json.dumps({k: rec[k] for k in ('benchmark', 'method', 'seed', 'test/auroc', 'test/aoi_energy', 'seconds')})}", flush=True)


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    sub = p.add_subparsers(dest="cmd", required=True)
    r = sub.add_parser("run")
    r.add_argument("--benchmarks", nargs="+", default=list(BENCHMARKS), choices=list(BENCHMARKS))
    r.add_argument("--methods", nargs="+", default=list(METHODS))
    r.add_argument("--seeds", nargs="+", type=int, default=[0, 1, 2, 3, 4])
    r.add_argument("--workers", type=int, default=1, help="parallel worker processes (each takes free cells)")
    r.add_argument("--threads", type=int, default=1, help="torch threads per worker")
    r.add_argument("--set", nargs="*", default=[], help="extra Hydra overrides for every cell")
    r.add_argument("--upscale", type=int, default=None, metavar="PX",
                   help="generate each benchmark at its own 64 px, feed the network PX px (pretrained networks)")
    r.add_argument("--out", type=Path, default=OUT)
    r.add_argument("--data-dir", type=Path, default=ROOT / "data" / "study")
    rep = sub.add_parser("report")
    rep.add_argument("--out", type=Path, default=OUT)
    a = p.parse_args(argv)
    if a.cmd == "report":
        from study_report import report  # noqa: PLC0415 (sibling script)

        print(report(a.out))
        return 0
    for m in a.methods:  # name=override,override defines an ad-hoc method (screening)
        if ":" in m and "=" not in m.partition(":")[0]:
            name, _, spec = m.partition(":")
            METHODS[name] = spec.split(",")
    a.methods = [m.partition(":")[0] for m in a.methods]
    unknown = [m for m in a.methods if m not in METHODS]
    if unknown:
        print(f"error: unknown method(s) {unknown}; known: {list(METHODS)} or name:override,override", file=sys.stderr)
        return 2
    if a.workers > 1 and not os.environ.get("CEOD_STUDY_WORKER"):
        env = {**os.environ, "CEOD_STUDY_WORKER": "1"}
        args = sys.argv[1:] if argv is None else argv
        procs = [subprocess.Popen([sys.executable, __file__, *args], env=env) for _ in range(a.workers)]
        return max(p.wait() for p in procs)
    run(a)
    return 0


if __name__ == "__main__":
    sys.exit(main())
