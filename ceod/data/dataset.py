"""The Dataset every DataModule serves: (image, AOI mask, label) samples, cached or read on access."""

from __future__ import annotations

from typing import Callable, Sequence

import torch
from torch.utils.data import Dataset, get_worker_info

from ceod.data.samples import Sample, load_mask, read_array, resize_image, to_image_tensor
from ceod.data.transforms import apply_joint
from ceod.errors import ConfigError


class SegmentedImageDataset(Dataset):
    """Items: {"image": C×H×W float, "mask": H×W float 0/1, "label": long, "index": long, "annotated": bool}.

    ``cache``: per sample (image C×H×W float16 in [0,1], mask H×W bool) already resized; without
    it, files are read and resized on access. ``transform``: joint augmentation (train only).
    A sample without a mask file (``Sample.mask is None``) gets an all-zero mask and ``annotated`` False: every
    loss then adds no mask term for it. ``perturb(i, mask)`` (H×W → H×W, e.g. :class:`ceod.data.masks.MaskNoise`)
    changes the i-th sample's mask before augmentation — once, here, for a cached set; on access otherwise.
    """

    def __init__(self, samples: list[Sample], image_size: int | Sequence[int], channels: int,
                 mean: Sequence[float] | None = None, std: Sequence[float] | None = None,
                 transform=None, cache: list[tuple[torch.Tensor, torch.Tensor]] | None = None,
                 mask_threshold: float = 0.5, perturb: Callable[[int, torch.Tensor], torch.Tensor] | None = None) -> None:
        self.samples = samples
        self.size = size2(image_size)
        self.channels = channels
        self.mean = torch.tensor(mean, dtype=torch.float32).view(-1, 1, 1) if mean is not None else None
        self.std = torch.tensor(std, dtype=torch.float32).view(-1, 1, 1) if std is not None else None
        self.transform = transform
        self.mask_threshold = mask_threshold
        self.perturb = perturb
        if cache is not None:  # unannotated samples (masks dropped after validation) hold zeros
            cache = [(img, m if s.mask is not None else torch.zeros_like(m)) for s, (img, m) in zip(samples, cache)]
            if perturb is not None:
                cache = [(img, perturb(i, m) if s.mask is not None else m)
                         for i, (s, (img, m)) in enumerate(zip(samples, cache))]
        self.cache = cache

    def __len__(self) -> int:
        return len(self.samples)

    def raw(self, i: int) -> tuple[torch.Tensor, torch.Tensor]:
        """(image C×H×W float in [0,1], mask H×W float 0/1) at ``image_size``, before augmentation."""
        if self.cache is not None:
            img, mask = self.cache[i]
            return img.float(), mask.float()
        s = self.samples[i]
        img = resize_image(to_image_tensor(read_array(s.image), self.channels, s.image), self.size)
        if s.mask is None:
            return img, torch.zeros(self.size)
        mask = load_mask(s.mask, self.mask_threshold, self.size)
        return img, self.perturb(i, mask) if self.perturb is not None else mask

    def __getitem__(self, i: int) -> dict:
        img, mask = self.raw(i)
        if self.transform is not None:
            if get_worker_info() is None and torch.get_num_threads() > 1:
                # in the main process (num_workers=0): per-sample ops are tiny, and intra-op threads
                # only add synchronisation (10-30× slower on a busy CPU); workers run 1 thread anyway
                threads = torch.get_num_threads()
                torch.set_num_threads(1)
                try:
                    img, mask = apply_joint(self.transform, img, mask)
                finally:
                    torch.set_num_threads(threads)
            else:
                img, mask = apply_joint(self.transform, img, mask)
        if self.mean is not None:
            img = (img - self.mean) / self.std
        s = self.samples[i]
        return {"image": img, "mask": mask, "label": torch.tensor(s.label), "index": torch.tensor(i),
                "annotated": torch.tensor(s.mask is not None)}


def size2(size) -> tuple[int, int]:
    if isinstance(size, int):
        return (size, size)
    size = tuple(int(v) for v in size)
    if len(size) != 2:
        raise ConfigError(f"data.image_size must be an int or [height, width], got {list(size)}")
    return size  # type: ignore[return-value]
