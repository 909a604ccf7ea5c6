"""`export`: the ONNX model, its variants (INT8 recipe, TensorRT engines) and their parity checks."""

from __future__ import annotations

from typing import Literal

from pydantic import Field, field_validator, model_validator

from export.variants import VARIANTS
from pipeline.config.base import Strict, registered


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
    rtol: float = Field(
        1e-5,
        ge=0.0,
        description="added to atol, times the largest |logit|: a deep network's float32 sums "
        "reordered by another runtime differ in proportion to the logits' size",
    )
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
        return [registered(name, VARIANTS, "export format") for name in v]
