"""The configuration tree: pydantic v2 models, unknown keys forbidden, checked before any heavy work.

`load_config(path, overrides)` is the only entry point; every problem becomes a `ConfigError`
whose message names the field path, the bad value and what is allowed.
"""

from __future__ import annotations

import re
from pathlib import Path
from typing import Annotated, Any, Literal

import yaml
from pydantic import BaseModel, ConfigDict, Field, ValidationError, field_validator, model_validator

from pipeline.errors import ConfigError


def _registered(value: str, names, what: str) -> str:
    """`value` if a registry holds it, else an error listing what is: 'a', 'b', 'c'."""
    if value not in names:
        allowed = ", ".join(repr(n) for n in sorted(names))
        raise ValueError(f"unknown {what} {value!r}; allowed: {allowed}")
    return value


class Strict(BaseModel):
    model_config = ConfigDict(extra="forbid", validate_default=True)


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
        from pipeline.data import SOURCES

        return _registered(v, SOURCES, "data source")

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
        from pipeline.models import list_models

        if v not in list_models():
            raise ValueError(f"unknown model {v!r}; allowed: {', '.join(list_models())}")
        return v


class LabelSmoothingConfig(Strict):
    """`ls`: Szegedy et al., "Rethinking the Inception Architecture for Computer Vision", CVPR
    2016, section 7 (label-smoothing regularisation)."""

    smoothing: float = Field(
        0.1,
        ge=0.0,
        lt=1.0,
        description="epsilon: CE against (1 - epsilon) one-hot + epsilon / K; the paper's 0.1",
    )


class CSKDConfig(Strict):
    """`cskd`: Yun et al., "Regularizing Class-wise Predictions via Self-knowledge
    Distillation", CVPR 2020; the paper's defaults T = 4, lambda_cls = 1."""

    temperature: float = Field(4.0, gt=0.0, description="T of the class-wise KL term")
    lambda_cls: float = Field(
        1.0, ge=0.0, description="weight of T^2 KL(p(x'; T) detached || p(x; T)), x' same class"
    )


class PSKDConfig(Strict):
    """`pskd`: Kim et al., "Self-Knowledge Distillation with Progressive Refinement of
    Targets", ICCV 2021; the paper's default alpha_T = 0.8."""

    alpha_final: float = Field(
        0.8,
        ge=0.0,
        le=1.0,
        description="alpha_T: the weight of last epoch's own prediction in the target at the "
        "last epoch; epoch t (1-based) of T uses alpha_final * t / T",
    )


class BYOTConfig(Strict):
    """`byot`: Zhang et al., "Be Your Own Teacher: Improve the Performance of Convolutional
    Neural Networks via Self Distillation", ICCV 2019; the defaults of its public code."""

    temperature: float = Field(3.0, gt=0.0, description="softens the deepest classifier's target")
    alpha: float = Field(
        0.1,
        ge=0.0,
        le=1.0,
        description="weight of the shallow heads' KD term; every cross-entropy term has 1 - alpha",
    )
    beta: float = Field(
        1e-6,
        ge=0.0,
        description="weight of the feature hint (a sum of squares over the batch, as published)",
    )


class DistillConfig(Strict):
    """METHOD.md section 5 defaults (`frskd`, `ama`); the comparators' settings in their own
    sections (`ls`, `cskd`, `pskd`, `byot`)."""

    temperature: float = Field(4.0, gt=0.0)
    alpha: float = Field(2.0, ge=0.0, description="weight of the KL term (times T^2)")
    beta: float = Field(100.0, ge=0.0, description="weight of attention transfer")
    beta_mix: float = Field(100.0, ge=0.0, description="weight of the mixed-attention term")
    mask: Literal["soft", "hard"] = "soft"
    kappa: float = Field(20.0, gt=0.0, description="soft-mask sharpness")
    ratio: Literal["entropy", "confidence"] = "entropy"
    ratio_invert: bool = False
    mix_warmup_epochs: int | None = Field(
        None, ge=0, description="epochs without L_mix; None scales 5 of 200 with the schedule"
    )
    kd_warmup_epochs: int = Field(
        0,
        ge=0,
        description="frskd/ama: the KL term's weight rises linearly from 0 over these first "
        "epochs, alpha * e / kd_warmup_epochs in 0-based epoch e, then alpha (0 = off, "
        "METHOD.md); it eases the classifier head's sharpness at the start (docs/methods.md); "
        "the slim stage's recovery of a trained network uses alpha throughout",
    )
    label_smoothing: float = Field(
        0.0,
        ge=0.0,
        lt=1.0,
        description="frskd/ama: epsilon of label smoothing on both heads' cross-entropy terms "
        "(0 = hard labels, METHOD.md); the self-teacher's targets combined with `ls`'s",
    )
    ls: LabelSmoothingConfig = Field(
        LabelSmoothingConfig(), description="label smoothing (method `ls`)"
    )
    cskd: CSKDConfig = Field(
        CSKDConfig(), description="class-wise self-knowledge distillation (method `cskd`)"
    )
    pskd: PSKDConfig = Field(
        PSKDConfig(), description="progressive self-knowledge distillation (method `pskd`)"
    )
    byot: BYOTConfig = Field(
        BYOTConfig(), description="shallow classifiers taught by the deepest (method `byot`)"
    )


class TrainConfig(Strict):
    method: str = Field("ce", description="training method (registry: pipeline.distill)")
    epochs: int = Field(200, ge=1)
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
    grad_accum_steps: int = Field(1, ge=1, description="micro-batches per optimizer step")
    grad_clip: float | None = Field(None, gt=0.0, description="max gradient norm; None = off")
    channels_last: bool | Literal["auto"] = Field(
        "auto",
        description="NHWC memory format for model and inputs; auto = on a CPU, or on a GPU with "
        "mixed precision (where it is faster), off otherwise",
    )
    compile: bool = Field(False, description="torch.compile the model")
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
    distill: DistillConfig = DistillConfig()

    @field_validator("mixed_precision", mode="before")
    @classmethod
    def _no_is_a_word(cls, v: Any) -> Any:
        """YAML reads a bare `no` (`--set train.mixed_precision=no`) as false."""
        return "no" if v is False else v

    @field_validator("method")
    @classmethod
    def _known_method(cls, v: str) -> str:
        from pipeline.distill import METHODS

        return _registered(v, METHODS, "method")

    @field_validator("tracker")
    @classmethod
    def _known_tracker(cls, v: str) -> str:
        from accelerate.tracking import LOGGER_TYPE_TO_CLASS  # Accelerate's tracker registry

        return _registered(v, ["none", *LOGGER_TYPE_TO_CLASS], "tracker")

    @field_validator("milestones")
    @classmethod
    def _fractions(cls, v: tuple[float, ...]) -> tuple[float, ...]:
        if any(not 0.0 < m < 1.0 for m in v) or list(v) != sorted(v):
            raise ValueError("milestones are increasing fractions of the schedule, each in (0, 1)")
        return v

    @model_validator(mode="after")
    def _warmup_fits(self) -> TrainConfig:
        if self.warmup_epochs >= self.epochs:
            raise ValueError(
                f"warmup_epochs ({self.warmup_epochs}) must be < epochs ({self.epochs})"
            )
        return self

    @model_validator(mode="after")
    def _batch_splits(self) -> TrainConfig:
        parts = self.processes * self.grad_accum_steps
        if self.batch_size % parts:
            raise ValueError(
                f"batch_size ({self.batch_size}) is the global batch and must divide evenly by "
                f"processes x grad_accum_steps ({self.processes} x {self.grad_accum_steps}); "
                f"use a multiple of {parts}"
            )
        return self


class SlimConfig(Strict):
    """Structured channel pruning of the classifier (the `slim` stage), then recovery by
    fine-tuning with the self-teacher still attached. `ratio: 0` (and no budget) is off."""

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
        8, ge=1, description="every remaining width a multiple of this (vector units, tensor cores)"
    )
    max_ratio: float = Field(
        0.9, gt=0.0, lt=1.0, description="with a budget: the most channels pruning may remove"
    )
    max_layer_ratio: float = Field(0.9, gt=0.0, lt=1.0, description="the most of any one layer")
    step: float = Field(0.05, gt=0.0, lt=1.0, description="with a budget: ratio added per step")
    exclude: list[str] = Field([], description="classifier layers whose outputs are kept whole")
    taylor_batches: int = Field(8, ge=1, description="train batches for Taylor importance")
    # recovery
    method: str = Field(
        "auto", description="recovery: 'auto' = the run's train.method (self-distillation); 'ce'"
    )
    epochs: int = Field(10, ge=0, description="recovery fine-tuning epochs (0 = none)")
    lr: float = Field(0.01, gt=0.0, description="recovery learning rate at lr_reference_batch")
    schedule: Literal["step", "cosine"] = "cosine"
    warmup_epochs: int = Field(0, ge=0)

    @field_validator("method")
    @classmethod
    def _known_method(cls, v: str) -> str:
        from pipeline.distill import METHODS

        return _registered(v, ["auto", *METHODS], "recovery method")

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

    @property
    def enabled(self) -> bool:
        return self.ratio > 0 or self.macs is not None or self.latency_ms is not None


class PruneConfig(Strict):
    parity_samples: int = Field(512, ge=1, description="test images for the logit-equality proof")
    atol: float = Field(0.0, ge=0.0, description="0 demands bit-for-bit equal logits")


class Int8Config(Strict):
    """The INT8 recipe (ONNX Runtime static quantization, QDQ format)."""

    calibration: Literal["minmax", "entropy", "percentile"] = Field(
        "minmax", description="how activation ranges are set from the calibration images"
    )
    percentile: float = Field(99.999, gt=50.0, le=100.0, description="for calibration=percentile")
    per_channel: bool = Field(True, description="one weight scale per output channel")
    reduce_range: Literal["auto"] | bool = Field(
        "auto",
        description="weights in a 7-bit range: ONNX Runtime's int8 kernels on x86 CPUs without "
        "VNNI (AVX2, AVX-512 without VNNI) saturate with full 8-bit weights; auto: 7-bit where "
        "the exporting CPU lacks VNNI. true for models served on such CPUs",
    )
    activations: Literal["asymmetric", "symmetric"] = Field(
        "asymmetric",
        description="uint8 with a zero point, or int8 around 0 (what TensorRT accepts)",
    )
    bias: Literal["int32", "float"] = Field(
        "int32", description="int32 biases (ONNX Runtime) or float ones (TensorRT needs these)"
    )
    exclude_op_types: list[str] = Field([], description="operator types kept in float, e.g. [Gemm]")
    exclude_nodes: list[str] = Field([], description="node names kept in float")


class EngineConfig(Strict):
    """TensorRT engines (`tensorrt_*` formats): one optimisation profile over the batch axis."""

    min_batch: int = Field(1, ge=1)
    opt_batch: int = Field(64, ge=1, description="the batch TensorRT tunes for")
    max_batch: int = Field(64, ge=1)
    workspace_gib: float = Field(2.0, gt=0.0)

    @model_validator(mode="after")
    def _ordered(self) -> EngineConfig:
        if not self.min_batch <= self.opt_batch <= self.max_batch:
            raise ValueError("min_batch <= opt_batch <= max_batch")
        return self


class ExportConfig(Strict):
    opset: int = Field(18, ge=13, le=23)
    atol: float = Field(1e-4, gt=0.0, description="max abs logit difference ONNX vs torch")
    min_top1_agreement: float = Field(0.999, ge=0.0, le=1.0)
    parity_samples: int = Field(512, ge=1)
    formats: list[str] = Field(
        ["onnx_int8"], description="variants made beside the FP32 model (registry: export.variants)"
    )
    calibration_samples: int = Field(
        256, ge=8, description="train images (eval transform) for INT8, never test images"
    )
    int8: Int8Config = Int8Config()
    engine: EngineConfig = EngineConfig()
    require_gpu: bool = Field(
        False, description="fail, not skip, tensorrt_* formats on a machine without GPU/TensorRT"
    )
    model_version: int = Field(
        1, ge=1, description="the ONNX model_version and the model card's version"
    )

    @field_validator("formats")
    @classmethod
    def _known_formats(cls, v: list[str]) -> list[str]:
        from export.variants import VARIANTS

        return [_registered(name, VARIANTS, "export format") for name in v]


class LatencyConfig(Strict):
    warmup: int = Field(20, ge=0)
    iters: int = Field(200, ge=10)
    throughput_batch: int = Field(64, ge=1)
    throughput_iters: int = Field(20, ge=1)
    threads: int | None = Field(None, ge=1, description="intra-op threads; None = all cores")


class SweepConfig(Strict):
    """Latency against batch size and thread count, per artefact, for the report."""

    enabled: bool = True
    batch_sizes: list[Annotated[int, Field(ge=1)]] = Field([1, 8, 32, 64], min_length=1)
    threads: list[Annotated[int, Field(ge=0)]] = Field(
        [1, 0], min_length=1, description="intra-op thread counts; 0 = all cores"
    )
    min_runs: int = Field(200, ge=5, description="timed runs per point (or max_seconds)")
    max_seconds: float = Field(5.0, gt=0.0, description="time per point (or min_runs)")
    warmup: int = Field(5, ge=0)

    @field_validator("batch_sizes", "threads")
    @classmethod
    def _distinct(cls, v: list[int]) -> list[int]:
        if len(set(v)) != len(v):
            raise ValueError("list each value once")
        return v


class GatesConfig(Strict):
    min_top1: float = Field(0.0, ge=0.0, le=1.0)
    max_top1_drop: float = Field(0.01, ge=0.0, le=1.0, description="FP32/FP16 artefacts vs torch")
    max_top1_drop_int8: float = Field(0.02, ge=0.0, le=1.0, description="INT8 artefacts vs torch")


class ValidateConfig(Strict):
    gates: GatesConfig = GatesConfig()
    latency: LatencyConfig = LatencyConfig()
    sweep: SweepConfig = SweepConfig()
    mistakes: int = Field(8, ge=0, description="most confident test mistakes kept for the report")
    gpu_backends: Literal["auto", "off", "require"] = Field(
        "auto",
        description="GPU back ends scored as rows of their own beside the exported artefacts: "
        "torch_cuda (the deployed classifier on CUDA), onnx_cuda and onnx_fp16_cuda (ONNX "
        "Runtime's CUDA execution provider on the FP32 model and, when exported, the FP16 one), "
        "onnx_tensorrt (its TensorRT execution provider on the FP32 model). auto: each one that "
        "is installed and finds a GPU, the others recorded as skipped with the reason; off: "
        "none; require: a back end that cannot run fails the stage (exit 7)",
    )


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

    @property
    def run_path(self) -> Path:
        return self.run_dir / self.name

    def sections(self, names: tuple[str, ...]) -> dict[str, Any]:
        """These top-level sections as plain JSON data (what a stage's key depends on)."""
        dump = self.model_dump(mode="json", by_alias=True)
        return {k: dump[k] for k in names}


def _format_validation_error(err: ValidationError, source: str) -> str:
    lines = [f"invalid configuration in {source}:"]
    for e in err.errors():
        path = ".".join(str(p) for p in e["loc"]) or "(top level)"
        msg = e["msg"].removeprefix("Value error, ")
        if e["type"] == "extra_forbidden":
            allowed = _allowed_keys(e["loc"][:-1])
            msg = f"unknown key; allowed here: {', '.join(allowed)}" if allowed else "unknown key"
        bad = e.get("input")
        shown = "" if isinstance(bad, dict) or e["type"] == "missing" else f" (got {bad!r})"
        lines.append(f"  {path}: {msg}{shown}")
    return "\n".join(lines)


def _allowed_keys(loc: tuple) -> list[str]:
    """The keys of the section at `loc`, by their YAML names."""
    model: Any = PipelineConfig
    for part in loc:
        fields = {(f.alias or n): f for n, f in model.model_fields.items()}
        field = fields.get(str(part))
        if (
            field is None
            or not isinstance(field.annotation, type)
            or not issubclass(field.annotation, BaseModel)
        ):
            return []
        model = field.annotation
    return [f.alias or n for n, f in model.model_fields.items()]


def _apply_override(tree: dict[str, Any], item: str) -> None:
    if "=" not in item:
        raise ConfigError(f"--set {item!r}: expected key.path=value, e.g. --set train.epochs=3")
    key, raw = item.split("=", 1)
    parts = [p for p in key.strip().split(".") if p]
    if not parts:
        raise ConfigError(f"--set {item!r}: empty key path")
    try:
        value = yaml.safe_load(raw)
    except yaml.YAMLError as exc:
        raise ConfigError(f"--set {item!r}: value is not valid YAML ({exc})") from None
    node = tree
    for p in parts[:-1]:
        child = node.setdefault(p, {})
        if not isinstance(child, dict):
            raise ConfigError(f"--set {item!r}: {p!r} is a value, not a section")
        node = child
    node[parts[-1]] = value


def load_config(path: str | Path | None, overrides: list[str] | None = None) -> PipelineConfig:
    """Read a YAML file (or nothing, for all defaults), apply `a.b=v` overrides, validate."""
    tree: dict[str, Any] = {}
    source = "defaults"
    if path is not None:
        p = Path(path)
        source = str(p)
        if not p.is_file():
            raise ConfigError(f"config file {source!r} not found; pass the path to a YAML file")
        try:
            loaded = yaml.safe_load(p.read_text())
        except yaml.YAMLError as exc:
            raise ConfigError(f"{source} is not valid YAML: {exc}") from None
        if loaded is None:  # nothing but whitespace or comments; `{}` asks for all defaults
            raise ConfigError(
                f"{source} is empty; a config names at least the run, e.g. `name: my-run`, and "
                "the sections it changes (`python -m pipeline check pipeline.yaml` shows them "
                "all); write `{}` to take every default"
            )
        if not isinstance(loaded, dict):
            raise ConfigError(
                f"{source}: the top level must be a mapping of sections, got {type(loaded).__name__}"
            )
        tree = loaded
    for item in overrides or []:
        _apply_override(tree, item)
    try:
        return PipelineConfig.model_validate(tree)
    except ValidationError as err:
        raise ConfigError(_format_validation_error(err, source)) from None


def dump_config(cfg: PipelineConfig) -> str:
    return yaml.safe_dump(cfg.model_dump(mode="json", by_alias=True), sort_keys=False)
