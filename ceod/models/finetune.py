"""Training regimes: which parameters train. Applied before the Trainer (and DDP) wraps the model.

* ``transfer`` — only the classification head trains;
* ``last_n``  — the last ``n`` conv layers, their norm layers and the head train (the papers'
  fine-tuning: ``n = 20``);
* ``full``    — every parameter trains.

Definitions (for any model, timm or :class:`~ceod.models.custom_cnn.CustomCNN`):

* **head** — ``model.head_modules()`` if the model defines it, else ``model.get_classifier()``,
  else ``model.head``, else the last ``nn.Linear``;
* **conv layer** — an ``nn.Conv2d`` module (depthwise, pointwise and squeeze-excitation convs
  included; subclasses too) outside the head, counted in registration order (``named_modules()``),
  which for timm CNNs and the custom CNN is the forward order; EfficientNet-B0 has 81;
* **its norm** — the first normalisation layer (BatchNorm, GroupNorm, LayerNorm, InstanceNorm)
  registered after the conv and before the next conv, with the conv's output channel count.

Everything else freezes (``requires_grad=False``; e.g. layer-scale or embedding parameters that
belong to no conv, norm or head). Frozen batch norms are kept in eval mode — running statistics
do not move — by a forward pre-hook, so this holds even after Lightning calls ``model.train()``.
"""

from __future__ import annotations

import logging

from torch import nn

from ceod.errors import ConfigError

_log = logging.getLogger(__name__)  # printed as "[ceod] …" by ceod.console in a training run

REGIMES = ("transfer", "last_n", "full")
NORMS = (nn.modules.batchnorm._BatchNorm, nn.GroupNorm, nn.LayerNorm, nn.modules.instancenorm._InstanceNorm)
_HOOK = "_ceod_eval_hook"


def head_modules(model: nn.Module) -> list[nn.Module]:
    """The classification head of ``model`` (see the module docstring)."""
    if callable(getattr(model, "head_modules", None)):
        return list(model.head_modules())
    if callable(getattr(model, "get_classifier", None)):
        return [model.get_classifier()]
    if isinstance(getattr(model, "head", None), nn.Module):
        return [model.head]
    linears = [m for m in model.modules() if isinstance(m, nn.Linear)]
    if not linears:
        raise ConfigError(f"cannot find the classification head of {type(model).__name__} (no head, no nn.Linear)")
    return [linears[-1]]


def conv_layers(model: nn.Module) -> list[tuple[str, nn.Conv2d]]:
    """(name, module) of every conv layer outside the head, in registration order."""
    in_head = {id(m) for h in head_modules(model) for m in h.modules()}
    return [(n, m) for n, m in model.named_modules() if isinstance(m, nn.Conv2d) and id(m) not in in_head]


def _channels(norm: nn.Module) -> int | None:
    if isinstance(norm, nn.GroupNorm):
        return norm.num_channels
    if isinstance(norm, nn.LayerNorm):
        return norm.normalized_shape[0] if len(norm.normalized_shape) == 1 else None
    return getattr(norm, "num_features", None)


def conv_norms(model: nn.Module) -> dict[str, tuple[str, nn.Module]]:
    """conv name → (name, module) of its norm layer, for the convs that have one."""
    pairs: dict[str, tuple[str, nn.Module]] = {}
    current: tuple[str, nn.Conv2d] | None = None
    for name, m in model.named_modules():
        if isinstance(m, nn.Conv2d):
            current = (name, m)
        elif current is not None and isinstance(m, NORMS) and _channels(m) == current[1].out_channels:
            pairs[current[0]] = (name, m)
            current = None
    return pairs


def _stay_in_eval(module: nn.Module, args) -> None:
    if module.training:
        module.eval()


def _unlock_norms(model: nn.Module) -> None:
    for m in model.modules():
        handle = m.__dict__.pop(_HOOK, None)
        if handle is not None:
            handle.remove()


def apply_finetune(model: nn.Module, regime: str = "full", n: int | None = 20, verbose: bool = True) -> nn.Module:
    """Freeze ``model`` in place according to ``regime`` (``n`` is used by ``last_n``) and return it."""
    if regime not in REGIMES:
        raise ConfigError(f"finetune.regime must be one of {', '.join(REGIMES)}, got {regime!r}")
    _unlock_norms(model)
    for p in model.parameters():
        p.requires_grad_(True)
    detail = ""
    if regime != "full":
        train_modules = list(head_modules(model))
        if regime == "last_n":
            convs = conv_layers(model)
            if isinstance(n, bool) or not isinstance(n, int) or n < 0:
                raise ConfigError(f"finetune.n must be a whole number ≥ 0, got {n!r}")
            if n > len(convs):
                raise ConfigError(f"finetune.n={n} is larger than the {len(convs)} conv layers of "
                                  f"{_model_name(model)}")
            chosen = convs[len(convs) - n:] if n else []
            norms = conv_norms(model)
            paired = [norms[name][1] for name, _ in chosen if name in norms]
            train_modules += [m for _, m in chosen] + paired
            first = f" from {chosen[0][0]}" if chosen else ""
            detail = f", {len(chosen)} conv layers{first} + {len(paired)} norms + head"
        for p in model.parameters():
            p.requires_grad_(False)
        trainable_ids = set()
        for m in train_modules:
            trainable_ids.update(id(s) for s in m.modules())
            for p in m.parameters():
                p.requires_grad_(True)
        frozen_bn = [m for m in model.modules()
                     if isinstance(m, nn.modules.batchnorm._BatchNorm) and id(m) not in trainable_ids]
        for bn in frozen_bn:
            bn.eval()
            bn.__dict__[_HOOK] = bn.register_forward_pre_hook(_stay_in_eval)
        detail += f"; {len(frozen_bn)} frozen batch norms in eval mode"
    if verbose:
        params = list(model.parameters())
        trainable = sum(p.numel() for p in params if p.requires_grad)
        total = sum(p.numel() for p in params)
        n_part = f" (n={n})" if regime == "last_n" else ""
        _log.info(f"finetune {regime}{n_part}: {trainable:,} / {total:,} parameters trainable{detail}")
    return model


def _model_name(model: nn.Module) -> str:
    name = getattr(model, "name", None)
    return f"{type(model).__name__}({name})" if isinstance(name, str) else type(model).__name__


def frozen_norms(model: nn.Module) -> list[nn.Module]:
    """Batch norms held in eval mode by :func:`apply_finetune`."""
    return [m for m in model.modules() if _HOOK in m.__dict__]
