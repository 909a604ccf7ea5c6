"""The whole configuration: one section per stage concern, and what the stages read across
sections (the slim stage's recovery method and its options)."""

from __future__ import annotations

import re
from pathlib import Path
from typing import Any

from pydantic import BaseModel, ConfigDict, Field, field_validator, model_validator

from pipeline.config.base import Strict
from pipeline.config.data import DataConfig
from pipeline.config.export import ExportConfig
from pipeline.config.method_options import method_options
from pipeline.config.model import ModelConfig
from pipeline.config.slim import PruneConfig, SlimConfig
from pipeline.config.train import TrainConfig
from pipeline.config.validate import ValidateConfig


class PipelineConfig(Strict):
    name: str = "default"
    run_dir: Path = Field(Path("runs"), description="the run folder is <run_dir>/<name>")
    data: DataConfig = DataConfig()
    model: ModelConfig = ModelConfig()
    train: TrainConfig = TrainConfig()
    slim: SlimConfig = SlimConfig()
    prune: PruneConfig = PruneConfig()
    export: ExportConfig = ExportConfig()
    validate_: ValidateConfig = Field(ValidateConfig(), alias="validate")

    model_config = ConfigDict(extra="forbid", validate_default=True, populate_by_name=True)

    @field_validator("name")
    @classmethod
    def _slug(cls, v: str) -> str:
        if not re.fullmatch(r"[A-Za-z0-9][A-Za-z0-9_.-]*", v):
            raise ValueError("use letters, digits, '_', '-', '.' (it names a folder)")
        return v

    @model_validator(mode="after")
    def _recovery_options_fit(self) -> PipelineConfig:
        """slim.distill holds the recovery method's options; `auto` leaves it to train.method,
        so the section is validated here, where both are known."""
        if self.slim.distill is not None:
            options = method_options(
                self.recovery_method(), self.slim.distill, "slim.distill", loc=("slim", "distill")
            )
            self.slim = self.slim.model_copy(update={"distill": options})
        return self

    @model_validator(mode="after")
    def _scratch_schedule_fits(self) -> PipelineConfig:
        """`slim.init: scratch` trains with train.schedule and train.warmup_epochs."""
        s = self.slim
        if s.enabled and s.init == "scratch" and self.train.warmup_epochs >= s.recovery_epochs:
            raise ValueError(
                f"slim.init: scratch warms up for train.warmup_epochs ({self.train.warmup_epochs}"
                f"), which must be < its epochs ({s.recovery_epochs}, slim.scratch_epochs or "
                "slim.epochs): raise slim.scratch_epochs"
            )
        return self

    @model_validator(mode="after")
    def _nothing_to_train(self) -> PipelineConfig:
        if self.train.epochs == 0 and self.model.weights is None:
            raise ValueError(
                "train.epochs: 0 trains nothing and deploys the model as loaded, which needs "
                "model.weights (a local checkpoint); set it, or train.epochs >= 1"
            )
        return self

    @property
    def run_path(self) -> Path:
        return self.run_dir / self.name

    def sections(self, names: tuple[str, ...]) -> dict[str, Any]:
        """These sections as plain JSON data (what a stage's key depends on): a top-level
        section by its name (`slim`), or a part of one by its dotted path (`export.int8`)."""
        dump = self.model_dump(mode="json", by_alias=True)
        out = {}
        for name in names:
            value: Any = dump
            for part in name.split("."):
                value = value[part]
            out[name] = value
        return out

    def recovery_method(self) -> str:
        """The slim stage's fine-tuning method: slim.method, where `auto` is train.method."""
        return self.train.method if self.slim.method == "auto" else self.slim.method

    def recovery_options(self) -> BaseModel:
        """The recovery method's options: slim.distill where set; else train.distill where the
        recovery method is train.method, as fine-tuning a trained network takes them (for
        `frskd`/`ama`: no KL warm-up), or as they are with `slim.init: scratch` (a network at
        its initial weights, as training had); else the recovery method's defaults."""
        if self.slim.distill is not None:
            return self.slim.distill
        method = self.recovery_method()
        if method == self.train.method:
            if self.slim.init == "scratch":
                return self.train.distill
            return self.train.distill.for_recovery()
        return method_options(method, None, "slim.distill")

    def final_options(self) -> BaseModel:
        """The options of the method that made the training model the slim stage passes on
        (what the prune stage draws): the recovery options when slimming, else train.distill."""
        return self.recovery_options() if self.slim.enabled else self.train.distill
