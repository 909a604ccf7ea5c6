"""The export stage: TensorRT formats are skipped with their reason where no GPU or TensorRT
is, unless export.require_gpu asks for them; so are validation's GPU back ends; the report
says why."""

from __future__ import annotations

import pytest
import torch

from pipeline.config import load_config
from pipeline.errors import GpuUnavailable
from pipeline.runner import run_pipeline


@pytest.mark.skipif(torch.cuda.is_available(), reason="on a GPU machine the engines are built")
def test_tensorrt_formats_are_skipped_with_the_reason_on_a_cpu(tiny_overrides) -> None:
    sets = [
        *tiny_overrides,
        "train.epochs=1",
        "export.formats=[onnx_int8, tensorrt_fp16, tensorrt_int8]",
    ]
    manifests = run_pipeline(load_config(None, sets))
    export = manifests["export"]
    assert set(export.extra["artefacts"]) == {"onnx", "onnx_int8"}
    skipped = export.metrics["skipped"]
    assert set(skipped) == {"tensorrt_fp16", "tensorrt_int8"}
    assert all("CUDA GPU" in why or "tensorrt" in why for why in skipped.values())
    assert set(manifests["validate"].metrics["artefacts"]) == {"torch", "onnx", "onnx_int8"}
    # the GPU back ends of validation: not errors on a CPU, rows skipped with the reason
    gpu_skipped = manifests["validate"].metrics["skipped"]
    assert {"torch_cuda", "onnx_cuda", "onnx_tensorrt"} <= set(gpu_skipped)
    assert all(why for why in gpu_skipped.values())
    cfg = load_config(None, sets)
    report = (cfg.run_path / "report.md").read_text()
    assert "skipped because" in report
    assert "GPU back ends not measured" in report and "| onnx_tensorrt |" in report
    with pytest.raises(GpuUnavailable):
        run_pipeline(load_config(None, [*sets, "export.require_gpu=true"]), from_stage="export")
