"""BN running statistics recomputed over the training set: the train/eval gap closes; frozen BN untouched."""

from __future__ import annotations

import torch
from torch import nn

from ceod.core.batchnorm import recompute_batchnorm_stats, trainable_batchnorms


def _net():
    torch.manual_seed(0)
    return nn.Sequential(nn.Conv2d(1, 4, 3, padding=1), nn.BatchNorm2d(4), nn.ReLU(), nn.Conv2d(4, 4, 3, padding=1),
                         nn.BatchNorm2d(4), nn.AdaptiveAvgPool2d(1), nn.Flatten(), nn.Linear(4, 2))


def test_stale_running_stats_give_a_gap_that_recomputing_closes():
    net = _net()
    x = torch.randn(64, 1, 8, 8) * 3 + 2
    net.train()
    with torch.no_grad():
        batch_stats = net(x)  # what training saw
    for m in trainable_batchnorms(net):  # stale statistics, as after a fast optimizer on few images
        m.running_mean.fill_(-5.0), m.running_var.fill_(0.01)
    net.eval()
    with torch.no_grad():
        gap = (net(x) - batch_stats).abs().max().item()
    assert gap > 1.0  # the gap the issue measured: eval-mode predictions disagree with training
    seen = recompute_batchnorm_stats(net, [x[:32], x[32:]])
    assert seen == 64 and not net.training
    with torch.no_grad():
        assert (net(x) - batch_stats).abs().max().item() < 0.05 * gap


def test_frozen_batchnorm_and_modes_are_kept_and_no_batches_change_nothing():
    net = _net()
    frozen = net[1]
    frozen.weight.requires_grad_(False), frozen.bias.requires_grad_(False)
    frozen.running_mean.fill_(0.25)
    net.train()
    net[4].eval()  # a mode the caller set must survive
    before = net[4].running_mean.clone()
    assert recompute_batchnorm_stats(net, []) == 0
    assert torch.equal(net[4].running_mean, before)
    recompute_batchnorm_stats(net, [torch.randn(8, 1, 8, 8)])
    assert torch.all(frozen.running_mean == 0.25) and frozen.momentum == 0.1 and net[4].momentum == 0.1
    assert net.training and not net[4].training
    assert not torch.equal(net[4].running_mean, before)
