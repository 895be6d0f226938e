"""Run by tests/training/test_launch.py: train CEODModule 3 steps on a fixed set, on 1 process or DDP over 2 CPU processes.

``python tests/training/ddp_equivalence.py single|ddp OUT.pt`` saves the network's weights after the steps. The global
batch is 8 images either way (DDP: 4 per process, a DistributedSampler without shuffling), so the two runs
see the same images at each step; rank 0 gets only good images and rank 1 only defective ones, so a loss
normalised per process instead of per global batch would show. The network has no batch norm and its head (ReLU → 1×1 conv → GAP)
is not a plain GAP → linear, so the CEOD heat map comes from the second-order autograd Grad-CAM.
"""

from __future__ import annotations

import functools
import sys

import lightning as L
import torch
from torch import nn
from torch.utils.data import DataLoader, Dataset, DistributedSampler

from ceod.core.losses.ceod import CEODLoss
from ceod.training.module import CEODModule

GLOBAL_BATCH, STEPS = 8, 3


class TinyNet(nn.Module):
    """(B×1×16×16) → (logits B×2, features B×8×16×16); BN-free."""

    def __init__(self) -> None:
        super().__init__()
        torch.manual_seed(0)
        self.body = nn.Sequential(nn.Conv2d(1, 8, 3, padding=1), nn.ReLU(), nn.Conv2d(8, 8, 3, padding=1))
        self.head = nn.Sequential(nn.ReLU(), nn.Conv2d(8, 2, 1), nn.AdaptiveAvgPool2d(1), nn.Flatten())

    def forward(self, x: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        features = self.body(x)
        return self.head(features), features


class FixedSet(Dataset):
    """16 random images with a band-shaped AOI mask, labels alternating good/defect."""

    def __init__(self) -> None:
        g = torch.Generator().manual_seed(1)
        self.images = torch.rand(16, 1, 16, 16, generator=g)
        self.masks = torch.zeros(16, 16, 16)
        self.masks[:, 4:12, :] = 1.0

    def __len__(self) -> int:
        return 16

    def __getitem__(self, i: int) -> dict:
        return {"image": self.images[i], "mask": self.masks[i], "label": torch.tensor(i % 2)}


class FixedData(L.LightningDataModule):
    """Rank r of w reads images r, r + w, … in order: step s of every run covers images 8s … 8s + 7 (mod 16)."""

    def train_dataloader(self) -> DataLoader:
        data, world = FixedSet(), self.trainer.world_size
        sampler = DistributedSampler(data, num_replicas=world, rank=self.trainer.global_rank, shuffle=False)
        return DataLoader(data, batch_size=GLOBAL_BATCH // world, sampler=sampler)


def main(mode: str, out: str) -> None:
    devices = 2 if mode == "ddp" else 1
    module = CEODModule(TinyNet(), CEODLoss(omega=1.0, tau=0.0), functools.partial(torch.optim.SGD, lr=0.5),
                        bn_recalibration=False)
    trainer = L.Trainer(accelerator="cpu", devices=devices, strategy="ddp" if devices > 1 else "auto",
                        max_steps=STEPS, limit_val_batches=0, logger=False, enable_checkpointing=False,
                        enable_progress_bar=False, enable_model_summary=False, deterministic=True,
                        use_distributed_sampler=False)  # Lightning's own would shuffle the training set
    trainer.fit(module, datamodule=FixedData())
    if trainer.is_global_zero:
        torch.save({k: v.detach().clone() for k, v in module.model.state_dict().items()}, out)


if __name__ == "__main__":
    main(sys.argv[1], sys.argv[2])
