"""Model specs for tests that build a network without a training run: a `ModelSpec` with
numbered class names and the CIFAR preset, the network's settings as given."""

from __future__ import annotations

from typing import Any

from pipeline.data.presets import PRESETS
from pipeline.models.spec import ModelSpec


def model_spec(
    arch: str = "resnet18",
    method: str = "ce",
    *,
    width: float = 0.125,
    num_classes: int = 3,
    stem: str = "cifar",
    **more: Any,
) -> ModelSpec:
    return ModelSpec(
        arch=arch,
        stem=stem,
        width=width,
        num_classes=num_classes,
        method=method,
        classes=[f"class{i}" for i in range(num_classes)],
        **{"preset": PRESETS["cifar10"].to_dict(), **more},
    )
