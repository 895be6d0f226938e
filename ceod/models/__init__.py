"""Models return ``(logits B×C, features B×K×h×w)`` — the features feed Grad-CAM.

A model whose head is "global average pool → linear" exposes that linear weight (C×K) as
``cam_head_weight``, which selects the analytic CAM path; otherwise it is ``None``.
"""
