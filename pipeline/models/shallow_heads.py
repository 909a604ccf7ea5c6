"""BYOT's shallow classifiers (Zhang et al., "Be Your Own Teacher", ICCV 2019): one per stage
but the last, each a bottleneck that brings the stage's map to the last stage's width and
resolution, global average pooling and a linear layer.

As in the paper's public code: 1x1 conv to a quarter of the last stage's width, a k x k conv of
stride k (k = 2^(n - i), the resolution the classifier loses between stage i and its last
stage), a 1x1 conv to the last stage's width, each followed by BN and ReLU. The pooled vectors
are the features the hint loss pulls toward the classifier's own pooled last-stage features.
The heads read the classifier's stage features and never feed it: the prune stage removes them.
"""

from __future__ import annotations

import torch
from torch import nn

from pipeline.models.wrapper import AuxHeads


def _conv_bn_relu(cin: int, cout: int, kernel: int = 1) -> list[nn.Module]:
    return [
        nn.Conv2d(cin, cout, kernel, stride=kernel, bias=False),
        nn.BatchNorm2d(cout),
        nn.ReLU(inplace=True),
    ]


class ShallowHeads(nn.Module):
    def __init__(self, stage_channels: list[int], num_classes: int) -> None:
        super().__init__()
        if len(stage_channels) < 2:
            raise ValueError("BYOT needs a classifier with at least two stages")
        last = stage_channels[-1]
        mid = max(1, last // 4)
        n = len(stage_channels)
        self.branches = nn.ModuleList(
            nn.Sequential(
                *_conv_bn_relu(c, mid),
                *_conv_bn_relu(mid, mid, kernel=2 ** (n - 1 - i)),
                *_conv_bn_relu(mid, last),
                nn.AdaptiveAvgPool2d(1),
                nn.Flatten(),
            )
            for i, c in enumerate(stage_channels[:-1])
        )
        self.fcs = nn.ModuleList(nn.Linear(last, num_classes) for _ in stage_channels[:-1])

    def tied_to_classifier(self) -> list[nn.Module]:
        """The layers whose output channels are the classifier's last-stage channels, one to
        one (the hint compares them): channel pruning removes them together."""
        return [m for branch in self.branches for m in branch[6:8]]

    def forward(self, feats: list[torch.Tensor]) -> AuxHeads:
        pooled = [branch(f) for branch, f in zip(self.branches, feats[:-1], strict=True)]
        return AuxHeads(
            logits=[fc(p) for fc, p in zip(self.fcs, pooled, strict=True)], features=pooled
        )
