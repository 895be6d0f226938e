"""The papers' custom CNN: 8 × (conv3×3 → BN → ReLU), max-pool after blocks 2, 4, 6, GAP, linear.

Channels 16,16,32,32,64,64,128,128 give 294,738 trainable parameters with 3 input channels
(294,450 with 1) — the papers report 294,994 — and 1.3 GFLOPs at 224×224, as reported.
"""

from __future__ import annotations

from torch import Tensor, nn

DEFAULT_CHANNELS = (16, 16, 32, 32, 64, 64, 128, 128)


class CustomCNN(nn.Module):
    """Input B×in_chans×H×W → (logits B×num_classes, features of the CAM layer).

    ``cam_block`` (1…len(channels), default the last) picks whose activations are returned as the CAM
    layer: B×128×H/8×W/8 for the last block; an earlier block gives a finer map with a smaller receptive
    field (block 6: B×64×H/4×W/4 — a cell there cannot see a cue far outside the AOI), at the cost of the
    autograd (second-order) Grad-CAM path, since only the last block feeds the GAP → linear head directly.
    """

    def __init__(self, in_chans: int = 1, num_classes: int = 2, channels: tuple[int, ...] = DEFAULT_CHANNELS,
                 cam_block: int | None = None) -> None:
        super().__init__()
        from ceod.errors import ConfigError

        if cam_block is not None and not 1 <= cam_block <= len(channels):
            raise ConfigError(f"model.cam_block must lie in 1…{len(channels)}, got {cam_block}")
        layers: list[nn.Module] = []
        c = in_chans
        for i, out in enumerate(channels):
            layers += [nn.Conv2d(c, out, 3, padding=1), nn.BatchNorm2d(out), nn.ReLU(inplace=True)]
            if i % 2 == 1 and i < len(channels) - 1:
                layers.append(nn.MaxPool2d(2))
            c = out
        self.features = nn.Sequential(*layers)
        self.head = nn.Linear(c, num_classes)
        relus = [i for i, m in enumerate(layers) if isinstance(m, nn.ReLU)]
        self.cam_block = cam_block or len(channels)
        self._cam_index = relus[self.cam_block - 1]

    @property
    def cam_head_weight(self) -> Tensor | None:
        """The last block feeds GAP → linear, so its Grad-CAM has a closed form (see :mod:`ceod.core.cam`);
        None for an earlier CAM block (autograd path)."""
        return self.head.weight if self._cam_index == len(self.features) - 1 else None

    def forward(self, x: Tensor) -> tuple[Tensor, Tensor]:
        if self.cam_head_weight is not None:  # the last block: the CAM layer is the whole feature stack
            feats = self.features(x)
            return self.head(feats.mean(dim=(2, 3))), feats
        cam = None
        for i, layer in enumerate(self.features):
            x = layer(x)
            if i == self._cam_index:
                cam = x
        return self.head(x.mean(dim=(2, 3))), cam
