"""`model`: the classifier's architecture, width and stem."""

from __future__ import annotations

from typing import Literal

from pydantic import Field, field_validator

from pipeline.config.base import Strict
from pipeline.models import list_models


class ModelConfig(Strict):
    name: str = "resnet18"
    width: float = Field(1.0, gt=0.0, le=8.0, description="channel width multiplier")
    stem: Literal["auto", "cifar", "imagenet"] = "auto"
    num_classes: int | None = Field(
        None, ge=2, description="optional assertion: must equal the data's class count"
    )

    @field_validator("name")
    @classmethod
    def _known_model(cls, v: str) -> str:
        if v not in list_models():
            raise ValueError(f"unknown model {v!r}; allowed: {', '.join(list_models())}")
        return v
