"""Classifiers (the student): ResNet-18/34/50 with `cifar` or `imagenet` stems, and WRN-16-2.

Each exposes `stage_channels` and `forward_features(x) -> list of stage outputs` (after each
stage's final ReLU), which is what the self-teacher reads; `forward(x)` returns logits only,
so the deployed model is exactly this module.
"""

from __future__ import annotations

import torch
from torch import nn

from pipeline.models.registry import register_model


def _ch(c: int, width: float) -> int:
    return max(1, int(round(c * width)))


class BasicBlock(nn.Module):
    expansion = 1

    def __init__(self, cin: int, planes: int, stride: int = 1) -> None:
        super().__init__()
        cout = planes * self.expansion
        self.conv1 = nn.Conv2d(cin, planes, 3, stride, 1, bias=False)
        self.bn1 = nn.BatchNorm2d(planes)
        self.conv2 = nn.Conv2d(planes, cout, 3, 1, 1, bias=False)
        self.bn2 = nn.BatchNorm2d(cout)
        self.relu = nn.ReLU(inplace=True)
        self.shortcut = _shortcut(cin, cout, stride)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        out = self.relu(self.bn1(self.conv1(x)))
        out = self.bn2(self.conv2(out))
        return self.relu(out + self.shortcut(x))


class Bottleneck(nn.Module):
    expansion = 4

    def __init__(self, cin: int, planes: int, stride: int = 1) -> None:
        super().__init__()
        cout = planes * self.expansion
        self.conv1 = nn.Conv2d(cin, planes, 1, bias=False)
        self.bn1 = nn.BatchNorm2d(planes)
        self.conv2 = nn.Conv2d(planes, planes, 3, stride, 1, bias=False)
        self.bn2 = nn.BatchNorm2d(planes)
        self.conv3 = nn.Conv2d(planes, cout, 1, bias=False)
        self.bn3 = nn.BatchNorm2d(cout)
        self.relu = nn.ReLU(inplace=True)
        self.shortcut = _shortcut(cin, cout, stride)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        out = self.relu(self.bn1(self.conv1(x)))
        out = self.relu(self.bn2(self.conv2(out)))
        out = self.bn3(self.conv3(out))
        return self.relu(out + self.shortcut(x))


def _shortcut(cin: int, cout: int, stride: int) -> nn.Module:
    if stride == 1 and cin == cout:
        return nn.Identity()
    return nn.Sequential(nn.Conv2d(cin, cout, 1, stride, bias=False), nn.BatchNorm2d(cout))


def _stem(kind: str, cout: int) -> nn.Sequential:
    if kind == "cifar":
        return nn.Sequential(
            nn.Conv2d(3, cout, 3, 1, 1, bias=False), nn.BatchNorm2d(cout), nn.ReLU(inplace=True)
        )
    if kind == "imagenet":
        return nn.Sequential(
            nn.Conv2d(3, cout, 7, 2, 3, bias=False),
            nn.BatchNorm2d(cout),
            nn.ReLU(inplace=True),
            nn.MaxPool2d(3, 2, 1),
        )
    raise ValueError(f"unknown stem {kind!r}; allowed: cifar, imagenet")


class ResNet(nn.Module):
    def __init__(
        self, block: type[nn.Module], layers: list[int], num_classes: int, stem: str, width: float
    ) -> None:
        super().__init__()
        planes = [_ch(c, width) for c in (64, 128, 256, 512)]
        self.stem = _stem(stem, planes[0])
        cin = planes[0]
        stages = []
        for i, (p, n) in enumerate(zip(planes, layers, strict=True)):
            blocks = []
            for j in range(n):
                blocks.append(block(cin, p, 2 if (i > 0 and j == 0) else 1))
                cin = p * block.expansion
            stages.append(nn.Sequential(*blocks))
        self.stages = nn.ModuleList(stages)
        self.stage_channels = [p * block.expansion for p in planes]
        self.pool = nn.AdaptiveAvgPool2d(1)
        self.fc = nn.Linear(cin, num_classes)
        _init(self)

    def forward_features(self, x: torch.Tensor) -> list[torch.Tensor]:
        x = self.stem(x)
        feats = []
        for stage in self.stages:
            x = stage(x)
            feats.append(x)
        return feats

    def forward_head(self, last: torch.Tensor) -> torch.Tensor:
        return self.fc(torch.flatten(self.pool(last), 1))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.forward_head(self.forward_features(x)[-1])


class WideBasic(nn.Module):
    """Pre-activation wide block; the stage output is taken after a BN-ReLU (see WideResNet)."""

    def __init__(self, cin: int, cout: int, stride: int) -> None:
        super().__init__()
        self.bn1 = nn.BatchNorm2d(cin)
        self.conv1 = nn.Conv2d(cin, cout, 3, stride, 1, bias=False)
        self.bn2 = nn.BatchNorm2d(cout)
        self.conv2 = nn.Conv2d(cout, cout, 3, 1, 1, bias=False)
        self.relu = nn.ReLU(inplace=False)
        self.shortcut = (
            None if (cin == cout and stride == 1) else nn.Conv2d(cin, cout, 1, stride, bias=False)
        )

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        o = self.relu(self.bn1(x))
        y = self.conv1(o)
        y = self.conv2(self.relu(self.bn2(y)))
        return y + (x if self.shortcut is None else self.shortcut(o))


class WideResNet(nn.Module):
    """Pre-activation WRN. Its residual stages end without an activation, so the stage features
    the self-teacher reads are taken after a BN-ReLU tap (non-negative, like the ResNets').

    The last stage's BN-ReLU is the classifier's own (it feeds the pooled head). The taps of the
    earlier stages exist only with `feature_taps=True`, for methods that read the stage features:
    without a self-teacher nothing would train them (DDP stops on parameters without gradients)
    and the deployed classifier would compute them for nothing. `drop_feature_taps()` removes
    them once the self-teacher is gone; the logits do not change.
    """

    def __init__(
        self,
        depth: int,
        k: int,
        num_classes: int,
        stem: str,
        width: float,
        feature_taps: bool = False,
    ) -> None:
        super().__init__()
        if (depth - 4) % 6:
            raise ValueError("WRN depth must be 6n+4")
        n = (depth - 4) // 6
        widths = [_ch(c, width) for c in (16, 16 * k, 32 * k, 64 * k)]
        if stem == "cifar":
            self.stem = nn.Conv2d(3, widths[0], 3, 1, 1, bias=False)
        else:
            self.stem = nn.Sequential(
                nn.Conv2d(3, widths[0], 7, 2, 3, bias=False), nn.MaxPool2d(3, 2, 1)
            )
        cin = widths[0]
        stages, post = [], []
        for i, w in enumerate(widths[1:]):
            stages.append(
                nn.Sequential(
                    *[
                        WideBasic(cin if j == 0 else w, w, (1 if i == 0 else 2) if j == 0 else 1)
                        for j in range(n)
                    ]
                )
            )
            post.append(nn.Sequential(nn.BatchNorm2d(w), nn.ReLU(inplace=False)))
            cin = w
        self.stages = nn.ModuleList(stages)
        self.final = post[-1]
        self.taps = nn.ModuleList(post[:-1]) if feature_taps else None
        self.stage_channels = widths[1:]
        self.pool = nn.AdaptiveAvgPool2d(1)
        self.fc = nn.Linear(cin, num_classes)
        _init(self)

    def forward_features(self, x: torch.Tensor) -> list[torch.Tensor]:
        """Stage features; without taps the earlier ones pass a parameter-free ReLU only."""
        x = self.stem(x)
        feats = []
        last = len(self.stages) - 1
        for i, stage in enumerate(self.stages):
            x = stage(x)
            if i == last:
                feats.append(self.final(x))
            else:
                feats.append(torch.relu(x) if self.taps is None else self.taps[i](x))
        return feats

    def drop_feature_taps(self) -> None:
        self.taps = None

    def forward_head(self, last: torch.Tensor) -> torch.Tensor:
        return self.fc(torch.flatten(self.pool(last), 1))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        """The classifier alone: no feature taps on the way to the logits."""
        x = self.stem(x)
        for stage in self.stages:
            x = stage(x)
        return self.forward_head(self.final(x))


def _init(model: nn.Module) -> None:
    init_weights(model)


def init_weights(model: nn.Module) -> None:
    """The classifiers' initialisation (convolutions He-normal, fan-out; batch norms 1 and 0),
    from torch's global generator: on a freshly built network, or on one whose layers were
    rebuilt at recorded widths (`slim.init: scratch`)."""
    for m in model.modules():
        if isinstance(m, nn.Conv2d):
            nn.init.kaiming_normal_(m.weight, mode="fan_out", nonlinearity="relu")
        elif isinstance(m, nn.BatchNorm2d):
            nn.init.ones_(m.weight)
            nn.init.zeros_(m.bias)


@register_model
def resnet18(
    num_classes: int, stem: str = "cifar", width: float = 1.0, feature_taps: bool = False
) -> ResNet:
    return ResNet(
        BasicBlock, [2, 2, 2, 2], num_classes, stem, width
    )  # stage outputs end in a ReLU: no taps needed


@register_model
def resnet34(
    num_classes: int, stem: str = "cifar", width: float = 1.0, feature_taps: bool = False
) -> ResNet:
    return ResNet(
        BasicBlock, [3, 4, 6, 3], num_classes, stem, width
    )  # stage outputs end in a ReLU: no taps needed


@register_model
def resnet50(
    num_classes: int, stem: str = "cifar", width: float = 1.0, feature_taps: bool = False
) -> ResNet:
    return ResNet(
        Bottleneck, [3, 4, 6, 3], num_classes, stem, width
    )  # stage outputs end in a ReLU: no taps needed


@register_model
def wrn16_2(
    num_classes: int, stem: str = "cifar", width: float = 1.0, feature_taps: bool = False
) -> WideResNet:
    return WideResNet(16, 2, num_classes, stem, width, feature_taps)
