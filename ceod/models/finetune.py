"""Training regimes: which parameters train (transfer | last_n | full). Applied before the Trainer wraps the model."""

from __future__ import annotations

from torch import nn


def apply_finetune(model: nn.Module, regime: str = "full", n: int = 20) -> nn.Module:
    """Freeze ``model`` in place according to ``regime`` and return it (stub: only ``full``)."""
    if regime != "full":
        raise NotImplementedError(regime)
    return model
