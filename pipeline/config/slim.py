"""`slim` (channel pruning and its recovery fine-tuning) and `prune` (dropping the self-teacher)."""

from __future__ import annotations

from typing import Any, Literal

from pydantic import BaseModel, Field, SerializeAsAny, field_validator, model_validator

from pipeline.config.base import Strict, registered
from pipeline.distill import METHODS


class SlimConfig(Strict):
    """Structured channel pruning of the classifier (the `slim` stage), then recovery by
    fine-tuning with the self-teacher still attached. `ratio: 0` (and no budget) is off.

    Recovery recipes: `method` picks what recovery trains with (its own loss and, for
    `frskd`/`ama`, its self-teacher); `teacher: unpruned` adds the frozen unpruned classifier
    as a teacher beside it (a KL term on temperature-softened logits, `teacher_kd`), so `ce`
    with it is plain knowledge distillation and `ama` with it learns from both teachers (the
    default `auto` does so wherever recovery trains: it helped every method measured);
    `init: scratch` keeps only the pruned architecture (its widths, as the trained weights
    chose them) and trains it from freshly initialised weights, the control for whether the
    pruned weights matter."""

    ratio: float = Field(
        0.0, ge=0.0, lt=1.0, description="fraction of channels removed; 0 with no budget = off"
    )
    macs: float | None = Field(
        None, gt=0, description="budget: the classifier's MACs per image (pruned until met)"
    )
    latency_ms: float | None = Field(
        None, gt=0, description="budget: ONNX Runtime batch-1 latency on this machine, in ms"
    )
    importance: Literal["l1", "l2", "bn_scale", "taylor"] = Field(
        "l2", description="channel ranking: weight magnitude, batch-norm scale, first-order Taylor"
    )
    allocation: Literal["layer", "global"] = Field(
        "layer", description="the same ratio in every layer, or one ranking over all layers"
    )
    round_to: int | None = Field(
        8,
        ge=1,
        description="every remaining width a multiple of this (vector units, tensor cores), and "
        "at least this many channels (or all of a narrower layer)",
    )
    max_ratio: float = Field(
        0.9, gt=0.0, lt=1.0, description="with a budget: the most channels pruning may remove"
    )
    max_layer_ratio: float = Field(0.9, gt=0.0, lt=1.0, description="the most of any one layer")
    step: float = Field(0.05, gt=0.0, lt=1.0, description="with a budget: ratio added per step")
    exclude: list[str] = Field([], description="classifier layers whose outputs are kept whole")
    taylor_batches: int = Field(8, ge=1, description="train batches for Taylor importance")
    compare: bool = Field(
        True,
        description="measure the unpruned and the pruned classifier side by side (ONNX FP32 and "
        "INT8 on the test split) for the report's compression table; false skips it (two ONNX "
        "exports and INT8 calibrations: minutes for a large network)",
    )
    # recovery
    method: str = Field(
        "auto", description="recovery: 'auto' = the run's train.method (self-distillation); 'ce'"
    )
    epochs: int = Field(10, ge=0, description="recovery fine-tuning epochs (0 = none)")
    lr: float = Field(0.01, gt=0.0, description="recovery learning rate at lr_reference_batch")
    schedule: Literal["step", "cosine"] = "cosine"
    warmup_epochs: int = Field(0, ge=0)
    distill: dict[str, Any] | SerializeAsAny[BaseModel] | None = Field(
        None,
        description="recovery: the options of the recovery method (as train.distill takes "
        "them for train.method); None = train.distill where the recovery method is "
        "train.method, else that method's defaults",
    )
    teacher: Literal["auto", "none", "unpruned"] = Field(
        "auto",
        description="recovery: 'unpruned' also distils from the frozen unpruned classifier "
        "(teacher_weight * T^2 * KL(softmax(z_teacher/T) || softmax(z_student/T))), beside "
        "what slim.method trains; 'auto' = 'unpruned' whenever there is a recovery to teach "
        "(slim on, recovery epochs > 0), else 'none' (benchmarks/README.md: it helped every "
        "recovery method measured)",
    )
    teacher_temperature: float = Field(
        4.0,
        gt=0.0,
        description="where the unpruned classifier teaches: the softening temperature T",
    )
    teacher_weight: float = Field(
        1.0,
        gt=0.0,
        description="where the unpruned classifier teaches: its KL term's weight (times T^2)",
    )
    init: Literal["pruned", "scratch"] = Field(
        "pruned",
        description="what recovery starts from: the pruned weights, or 'scratch': the pruned "
        "architecture freshly initialised (train.seed) and trained from scratch (the control)",
    )
    scratch_epochs: int | None = Field(
        None, ge=1, description="with init 'scratch': its epochs; None = slim.epochs"
    )
    scratch_lr: float | None = Field(
        None,
        gt=0.0,
        description="with init 'scratch': its learning rate at lr_reference_batch; None = "
        "train.lr (schedule and warm-up: train.schedule, train.warmup_epochs)",
    )

    @field_validator("method")
    @classmethod
    def _known_method(cls, v: str) -> str:
        return registered(v, ["auto", *METHODS], "recovery method")

    @field_validator("distill", mode="before")
    @classmethod
    def _a_section(cls, v: Any) -> Any:
        """Checked against the recovery method's options by `PipelineConfig`, which knows
        train.method (what `auto` recovers with)."""
        if v is not None and not isinstance(v, dict | BaseModel):
            raise ValueError("a section of the recovery method's options, e.g. {alpha: 1.0}")
        return v

    @field_validator("exclude")
    @classmethod
    def _names(cls, v: list[str]) -> list[str]:
        return [n.removeprefix("backbone.") for n in v]

    @model_validator(mode="after")
    def _one_target(self) -> SlimConfig:
        targets = [k for k in ("macs", "latency_ms") if getattr(self, k) is not None]
        if self.ratio > 0:
            targets.insert(0, "ratio")
        if len(targets) > 1:
            raise ValueError(
                f"set one pruning target, not {' and '.join(targets)}: a channel ratio, a MACs "
                "budget or a latency budget"
            )
        if self.epochs and self.warmup_epochs >= self.epochs:
            raise ValueError(
                f"warmup_epochs ({self.warmup_epochs}) must be < epochs ({self.epochs})"
            )
        return self

    @model_validator(mode="after")
    def _recipe_fits(self) -> SlimConfig:
        """The recovery recipe's keys where they mean something."""
        # by value, not by presence: a resolved config (`config.yaml`, a launch's) holds every key
        fields = type(self).model_fields
        if not self.enabled and (self.teacher == "unpruned" or self.init != "pruned"):
            what = "teacher: unpruned" if self.teacher == "unpruned" else "init: scratch"
            raise ValueError(
                f"slim.{what} needs slimming on, but slim is off (slim.ratio 0 and no "
                "budget): set slim.ratio (or slim.macs / slim.latency_ms), or remove "
                f"slim.{what.split(':')[0]}"
            )
        for k in ("teacher_temperature", "teacher_weight"):
            if self.distils_from == "none" and getattr(self, k) != fields[k].default:
                why = (
                    "slim.teacher is 'none'"
                    if self.teacher == "none"
                    else "there is no recovery for slim.teacher 'auto' to teach (slim off "
                    "or 0 recovery epochs)"
                )
                raise ValueError(
                    f"slim.{k} is {getattr(self, k)} but {why}, so nothing reads it: set "
                    "slim.teacher: unpruned with a recovery, or remove it"
                )
        for k in ("scratch_epochs", "scratch_lr"):
            if self.init != "scratch" and getattr(self, k) is not None:
                raise ValueError(
                    f"slim.{k} is set but slim.init is 'pruned' (recovery fine-tunes the "
                    "pruned weights with slim.epochs and slim.lr): set slim.init: scratch, "
                    "or remove it"
                )
        if self.enabled and self.recovery_epochs == 0:
            if self.init == "scratch":
                raise ValueError(
                    "slim.init: scratch with 0 epochs would ship an untrained network: set "
                    "slim.scratch_epochs (or slim.epochs) to 1 or more"
                )
            if self.teacher == "unpruned":
                raise ValueError(
                    "slim.teacher: unpruned with slim.epochs 0: there is no recovery to "
                    "distil into; set slim.epochs to 1 or more, or slim.teacher: none"
                )
        return self

    @property
    def distils_from(self) -> Literal["none", "unpruned"]:
        """`teacher` with `auto` resolved: the unpruned classifier teaches whenever recovery
        trains."""
        if self.teacher != "auto":
            return self.teacher
        return "unpruned" if self.enabled and self.recovery_epochs > 0 else "none"

    @property
    def recovery_epochs(self) -> int:
        """The epochs recovery trains: slim.epochs, or slim.scratch_epochs from scratch."""
        if self.init == "scratch" and self.scratch_epochs is not None:
            return self.scratch_epochs
        return self.epochs

    @property
    def enabled(self) -> bool:
        return self.ratio > 0 or self.macs is not None or self.latency_ms is not None


class PruneConfig(Strict):
    parity_samples: int = Field(512, ge=1, description="test images for the logit-equality proof")
    atol: float = Field(0.0, ge=0.0, description="0 demands bit-for-bit equal logits")
