"""`train`: the method, its options (`train.distill`), the schedule and the training run."""

from __future__ import annotations

from typing import Any, Literal

from accelerate.tracking import LOGGER_TYPE_TO_CLASS  # Accelerate's tracker registry
from pydantic import (
    BaseModel,
    Field,
    SerializeAsAny,
    ValidationInfo,
    field_validator,
    model_validator,
)

from pipeline.config.base import Strict, registered
from pipeline.config.method_options import method_options
from pipeline.distill import METHODS, MethodOptions

# torch.compile modes that replay the compiled graphs as CUDA graphs on a CUDA device, each with
# the mode that compiles the same way without them (on a CPU, or with another back end)
CUDA_GRAPH_MODES = {"reduce-overhead": "default", "max-autotune": "max-autotune-no-cudagraphs"}


class TrainConfig(Strict):
    method: str = Field("ce", description="training method (registry: pipeline.distill)")
    epochs: int = Field(
        200, ge=0, description="0: train nothing; the model as loaded (model.weights) goes on"
    )
    teacher_warmup_epochs: int | None = Field(
        None,
        ge=0,
        description="epochs training the self-teacher alone on the frozen classifier before "
        "distillation; None = 1 where a trained classifier meets an untrained self-teacher "
        "(model.weights, or recovery after a run without one), else 0",
    )
    batch_size: int = Field(128, ge=1, description="global batch")
    lr: float = Field(0.1, gt=0.0, description="learning rate at lr_reference_batch")
    lr_reference_batch: int = Field(128, ge=1)
    lr_scaling: Literal["linear", "sqrt", "none"] = "linear"
    momentum: float = Field(0.9, ge=0.0, lt=1.0)
    nesterov: bool = False
    weight_decay: float = Field(5e-4, ge=0.0)
    schedule: Literal["step", "cosine"] = "step"
    milestones: tuple[float, ...] = Field((0.5, 0.75), description="fractions of the schedule")
    gamma: float = Field(0.1, gt=0.0, le=1.0)
    warmup_epochs: int = Field(0, ge=0)
    seed: int = Field(0, ge=0)
    device: Literal["auto", "cpu", "cuda"] = "auto"
    mixed_precision: Literal["no", "bf16", "fp16"] = "no"
    processes: int = Field(
        1,
        ge=1,
        description="training processes started by `python -m pipeline run` (DDP; gloo on CPU)",
    )
    nodes: int = Field(
        1,
        ge=1,
        description="machines of a multi-node run: the same `python -m pipeline run` on each "
        "starts train.processes ranks there under torch's launcher (c10d rendezvous)",
    )
    node_rank: int = Field(0, ge=0, description="this machine's number, 0 to nodes - 1")
    master_addr: str | None = Field(
        None,
        description="address of node 0, where the rendezvous is held (required with nodes > 1)",
    )
    master_port: int = Field(29500, ge=1, le=65535, description="rendezvous port on node 0")
    max_restarts: int = Field(
        0,
        ge=0,
        description="with nodes > 1: restarts of every rank after one fails (each resumes from "
        "the last checkpoint); 0 = the run stops and the same command resumes it",
    )
    grad_accum_steps: int = Field(1, ge=1, description="micro-batches per optimizer step")
    grad_clip: float | None = Field(None, gt=0.0, description="max gradient norm; None = off")
    channels_last: bool | Literal["auto"] = Field(
        "auto",
        description="NHWC memory format for model and inputs; auto = on a CPU, or on a GPU with "
        "mixed precision (where it is faster), off otherwise",
    )
    compile: bool | Literal["auto"] = Field(
        "auto",
        description="torch.compile the training step: the model's forward and backward and the "
        "method's loss (the optimizer runs eagerly); auto = on a GPU for methods without a "
        "self-teacher (on a CPU the compiled ama step measured slower than eager and compiling "
        "costs more than a short run saves; a compiled self-teacher step is not yet measured on "
        "a GPU: benchmarks/README.md); under compile the training loader drops a ragged last batch, so "
        "every step has one shape and nothing recompiles",
    )
    compile_mode: Literal[
        "default", "reduce-overhead", "max-autotune", "max-autotune-no-cudagraphs"
    ] = Field(
        "default",
        description="torch.compile's mode for a compiled step: reduce-overhead replays the "
        "step's forward and backward as CUDA graphs (one launch per graph instead of one per "
        "kernel: the lever for a self-teacher's many small kernels on a GPU; more GPU memory), "
        "max-autotune adds kernel autotuning (minutes of compile) to CUDA graphs, "
        "max-autotune-no-cudagraphs autotunes without them. On a CPU, CUDA graphs do not "
        "exist and the step compiles without them. CUDA graphs need grad_accum_steps = 1",
    )
    reuse_host_memory: bool = Field(
        True,
        description="CPU training on Linux/glibc: keep freed large blocks for the next step "
        "instead of returning them to the kernel (no page faults on big activations); "
        "released when training ends",
    )
    deterministic: bool = Field(False, description="deterministic kernels and seeded data workers")
    val_every_epochs: int | None = Field(
        1,
        ge=1,
        description="validate every N epochs, and always after the last; None = after the last "
        "only (for a large validation split that only the final figure needs)",
    )
    checkpoint_every_epochs: int | None = Field(1, ge=1, description="None = no epoch checkpoints")
    checkpoint_every_steps: int | None = Field(
        None, ge=1, description="optimizer steps; None = off"
    )
    keep_checkpoints: int = Field(2, ge=1)
    on_nan: Literal["stop", "skip"] = "stop"
    max_nan_skips: int = Field(
        10, ge=0, description="with on_nan=skip: stop after more skipped steps"
    )
    tracker: str = Field(
        "none",
        description="experiment tracker through Accelerate (tensorboard, wandb, mlflow, ...); "
        "logs go under the train stage's folder where the tracker keeps files locally",
    )
    distill: SerializeAsAny[BaseModel] = Field(
        None,
        description="the options of train.method, each method's own (its `Options` in "
        "pipeline/distill/methods/); unset keys take the method's defaults",
    )

    @field_validator("mixed_precision", mode="before")
    @classmethod
    def _no_is_a_word(cls, v: Any) -> Any:
        """YAML reads a bare `no` (`--set train.mixed_precision=no`) as false."""
        return "no" if v is False else v

    @field_validator("method")
    @classmethod
    def _known_method(cls, v: str) -> str:
        return registered(v, METHODS, "method")

    @field_validator("distill", mode="before")
    @classmethod
    def _options_of_the_method(cls, v: Any, info: ValidationInfo) -> Any:
        if "method" not in info.data:  # the unknown method is the error reported
            return MethodOptions()
        return method_options(info.data["method"], v, "train.distill")

    @field_validator("tracker")
    @classmethod
    def _known_tracker(cls, v: str) -> str:
        return registered(v, ["none", *LOGGER_TYPE_TO_CLASS], "tracker")

    @field_validator("milestones")
    @classmethod
    def _fractions(cls, v: tuple[float, ...]) -> tuple[float, ...]:
        if any(not 0.0 < m < 1.0 for m in v) or list(v) != sorted(v):
            raise ValueError("milestones are increasing fractions of the schedule, each in (0, 1)")
        return v

    @model_validator(mode="after")
    def _warmup_fits(self) -> TrainConfig:
        if self.epochs and self.warmup_epochs >= self.epochs:
            raise ValueError(
                f"warmup_epochs ({self.warmup_epochs}) must be < epochs ({self.epochs})"
            )
        return self

    @model_validator(mode="after")
    def _batch_splits(self) -> TrainConfig:
        parts = self.nodes * self.processes * self.grad_accum_steps
        if self.batch_size % parts:
            nodes = "nodes x " if self.nodes > 1 else ""
            n = f"{self.nodes} x " if self.nodes > 1 else ""
            raise ValueError(
                f"batch_size ({self.batch_size}) is the global batch and must divide evenly by "
                f"{nodes}processes x grad_accum_steps ({n}{self.processes} x "
                f"{self.grad_accum_steps}); use a multiple of {parts}"
            )
        return self

    @model_validator(mode="after")
    def _compile_mode_applies(self) -> TrainConfig:
        if self.compile_mode == "default":
            return self
        if self.compile is False:
            raise ValueError(
                f"compile_mode={self.compile_mode!r} has no effect with compile=false: set "
                "train.compile to true (or auto) to compile the step, or drop compile_mode"
            )
        if self.compile_mode in CUDA_GRAPH_MODES and self.grad_accum_steps > 1:
            raise ValueError(
                f"compile_mode={self.compile_mode!r} replays the step as CUDA graphs, whose "
                "backward writes each gradient into memory the next replay reuses, so gradients "
                f"accumulated over grad_accum_steps={self.grad_accum_steps} micro-batches would be "
                "overwritten: use grad_accum_steps=1 (a larger batch_size), or "
                "compile_mode='default' / 'max-autotune-no-cudagraphs'"
            )
        return self

    @model_validator(mode="after")
    def _nodes_meet(self) -> TrainConfig:
        if self.node_rank >= self.nodes:
            raise ValueError(
                f"node_rank ({self.node_rank}) must be below nodes ({self.nodes}): the machines "
                f"are numbered 0 to {self.nodes - 1}"
            )
        if self.nodes > 1 and not self.master_addr:
            raise ValueError(
                f"nodes={self.nodes} needs master_addr: the address of node 0 that every node "
                "reaches (e.g. --set train.master_addr=10.0.0.1), where the rendezvous is held"
            )
        return self
