"""Training methods by name. Each builds its auxiliary branch (or none) and its loss.

`ce` is the baseline: classifier cross-entropy alone, no self-teacher. Further methods register
beside it with `@register_method` and share the same training loop.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass, field

import torch
import torch.nn.functional as F
from torch import nn

from pipeline.models.wrapper import ModelOutput

METHODS: dict[str, type[Method]] = {}


@dataclass
class LossOutput:
    total: torch.Tensor
    parts: dict[str, torch.Tensor] = field(default_factory=dict)


class Method:
    """Base: a method owns its auxiliary branch and its loss; `epoch` counts from 0."""

    name = "base"

    def __init__(self, distill_cfg, *, num_classes: int, epochs: int) -> None:
        self.cfg = distill_cfg
        self.num_classes = num_classes
        self.epochs = epochs

    def build_aux(self, backbone: nn.Module) -> nn.Module | None:
        return None

    def loss(self, out: ModelOutput, targets: torch.Tensor, epoch: int) -> LossOutput:
        raise NotImplementedError


def register_method(name: str) -> Callable[[type[Method]], type[Method]]:
    def deco(cls: type[Method]) -> type[Method]:
        cls.name = name
        METHODS[name] = cls
        return cls

    return deco


@register_method("ce")
class CrossEntropy(Method):
    def loss(self, out: ModelOutput, targets: torch.Tensor, epoch: int) -> LossOutput:
        ce = F.cross_entropy(out.logits.float(), targets)
        return LossOutput(ce, {"ce": ce.detach()})


def create_method(name: str, distill_cfg, *, num_classes: int, epochs: int) -> Method:
    if name not in METHODS:
        raise KeyError(f"unknown method {name!r}; known: {', '.join(sorted(METHODS))}")
    return METHODS[name](distill_cfg, num_classes=num_classes, epochs=epochs)
