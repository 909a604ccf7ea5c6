"""`validate`: the gates, latency measurement and sweep, and the GPU back ends scored."""

from __future__ import annotations

from typing import Annotated, Literal

from pydantic import Field, field_validator

from pipeline.config.base import Strict


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
