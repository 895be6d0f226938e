"""The papers' custom CNN: 8 × (conv3×3 → BN → ReLU), max-pool after blocks 2, 4, 6, GAP, linear.

Channels 16,16,32,32,64,64,128,128 give 294,738 trainable parameters with 3 input channels
(294,450 with 1) — the papers report 294,994 — and 1.3 GFLOPs at 224×224, as reported.
"""

from __future__ import annotations

from torch import Tensor, nn

DEFAULT_CHANNELS = (16, 16, 32, 32, 64, 64, 128, 128)


class CustomCNN(nn.Module):
    """Input B×in_chans×H×W → (logits B×num_classes, features B×128×H/8×W/8)."""

    def __init__(self, in_chans: int = 1, num_classes: int = 2, channels: tuple[int, ...] = DEFAULT_CHANNELS) -> None:
        super().__init__()
        layers: list[nn.Module] = []
        c = in_chans
        for i, out in enumerate(channels):
            layers += [nn.Conv2d(c, out, 3, padding=1), nn.BatchNorm2d(out), nn.ReLU(inplace=True)]
            if i % 2 == 1 and i < len(channels) - 1:
                layers.append(nn.MaxPool2d(2))
            c = out
        self.features = nn.Sequential(*layers)
        self.head = nn.Linear(c, num_classes)

    @property
    def cam_head_weight(self) -> Tensor:
        """The head is GAP → linear, so Grad-CAM has a closed form (see :mod:`ceod.cam`)."""
        return self.head.weight

    def forward(self, x: Tensor) -> tuple[Tensor, Tensor]:
        feats = self.features(x)
        return self.head(feats.mean(dim=(2, 3))), feats
