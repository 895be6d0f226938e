"""Models return ``(logits B×C, features B×K×h×w)`` — the features feed Grad-CAM.

A model whose head is "global average pool → linear" exposes that linear weight (C×K) as
``cam_head_weight``, which selects the analytic CAM path; otherwise it is ``None``.

Inputs are the pixels the data gives; a pretrained timm model normalises them itself (buffers
``input_mean``/``input_std``). Pure PyTorch + timm: no Lightning or Hydra import here; messages go
to the ``logging`` module (printed as ``[ceod] …`` in a training run by :mod:`ceod.console`).
"""
