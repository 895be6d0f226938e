"""§1d: the loader cost of data.augment on the 64 px shipped benchmarks (one thread, no workers, 3 epochs each).

    OMP_NUM_THREADS=1 python experiments/results/study_augment/loader_cost.py   # needs data/zoo (the study made it)
"""
import time

import torch
from hydra import compose, initialize_config_dir
from hydra.utils import instantiate
import ceod.training.pipeline  # noqa: F401  (resolvers)
from ceod import CONF_DIR
torch.set_num_threads(1)
BIG = "{n_good:540,n_defect:460,split:[0.4,0.15,0.45],contrast:0.22}"
B = {"digits_decoy": ["data=decoy_digits"],
     "synthetic_decoy": ["data=synthetic_zipper_decoy", "data.image_size=64", f"data.generator={BIG}"]}
with initialize_config_dir(config_dir=str(CONF_DIR), version_base="1.3"):
    for name, over in B.items():
        for aug in (False, True, False, True):
            cfg = compose(config_name="train", overrides=[*over, f"data.augment={aug}", "data.manifest_out=null",
                                                          f"paths.data_dir={CONF_DIR.parent / 'data' / 'zoo'}"])
            dm = instantiate(cfg.data); dm.prepare_data(); dm.setup()
            dl = dm.train_dataloader()
            t = time.perf_counter(); n = 0
            for _ in range(3):
                for b in dl: n += len(b["image"])
            dt = (time.perf_counter() - t) / 3
            print(f"{name} augment={aug}: {dt*1000:.0f} ms per training epoch of loading ({n//3} images)", flush=True)
