"""`data`: where the images come from, how they are split, transformed, cached and loaded."""

from __future__ import annotations

from pathlib import Path
from typing import Any, Literal

from pydantic import Field, field_validator, model_validator

from pipeline.config.base import Strict, registered
from pipeline.data import SOURCES


class DataConfig(Strict):
    name: str = Field("digits", description="data source (registry: pipeline.data.sources)")
    root: Path | None = Field(None, description="data set folder; unused by the embedded digits")
    val_fraction: float = Field(0.1, ge=0.0, lt=1.0, description="carved from train, stratified")
    test_fraction: float = Field(
        0.2, gt=0.0, lt=1.0, description="sources without an official test split only (digits)"
    )
    split_seed: int = Field(0, ge=0)
    max_per_class: int | None = Field(None, ge=1, description="cap train images per class")
    # Preset overrides: None takes the data set's preset.
    input_size: int | None = Field(None, ge=8, le=1024)
    resize: int | None = Field(
        None, ge=8, le=2048, description="test-time resize before centre crop"
    )
    train_aug: Literal["none", "crop", "crop_flip", "rrc_flip"] | None = None
    mean: tuple[float, float, float] | None = None
    std: tuple[float, float, float] | None = None
    num_workers: int | Literal["auto"] = "auto"
    on_bad_image: Literal["fail", "skip"] = Field(
        "fail",
        description="unreadable or corrupt image files: stop with an error, or drop and count them",
    )
    cache: Literal["auto", "memory", "none"] = Field(
        "auto", description="decode image files once into memory; auto = when below cache_max_gib"
    )
    cache_max_gib: float = Field(2.0, gt=0.0, description="decoded-size limit for cache=auto")
    on_device: bool | Literal["auto"] = Field(
        "auto",
        description="hold the training images on the training device and crop/flip batches there "
        "(in-memory images at the input size; crop/flip augmentation); auto = when training on "
        "a GPU, the training set allows it and takes at most a quarter of the GPU's memory",
    )

    @field_validator("name")
    @classmethod
    def _known_source(cls, v: str) -> str:
        return registered(v, SOURCES, "data source")

    @model_validator(mode="after")
    def _root_exists(self) -> DataConfig:
        if self.name != "digits":
            if self.root is None:
                raise ValueError(
                    f"root is required for name={self.name!r}; set data.root to the data set folder"
                )
            if not self.root.exists():
                raise ValueError(
                    f"root {str(self.root)!r} does not exist; point data.root at the data set folder"
                )
        return self

    @field_validator("std")
    @classmethod
    def _positive_std(cls, v: tuple[float, float, float] | None) -> Any:
        if v is not None and min(v) <= 0:
            raise ValueError("every std must be > 0")
        return v

    @field_validator("num_workers")
    @classmethod
    def _workers(cls, v: int | str) -> Any:
        if isinstance(v, int) and v < 0:
            raise ValueError("must be >= 0 or 'auto'")
        return v
