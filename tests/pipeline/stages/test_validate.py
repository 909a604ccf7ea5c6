"""The validate stage's gates: every artefact against min_top1, and its drop against torch;
GPU back ends as rows of their own, skipped with the reason where they cannot run."""

from __future__ import annotations

import pytest

from pipeline.evaluation import backend_name, check_gates


def _art(top1: float) -> dict:
    return {"top1": top1}


def test_gates_use_the_int8_limit_for_int8_artefacts(tiny_cfg) -> None:
    cfg = tiny_cfg.model_copy(deep=True)
    cfg.validate_.gates.min_top1 = 0.5
    gates = check_gates(cfg, {"torch": _art(0.90), "onnx": _art(0.885), "onnx_int8": _art(0.885)})
    by = {g["gate"]: g for g in gates}
    assert by["onnx.top1_drop <= max_top1_drop"]["passed"] is False  # 0.015 > 0.01
    assert by["onnx_int8.top1_drop <= max_top1_drop_int8"]["passed"] is True  # 0.015 <= 0.02
    assert all(by[f"{n}.top1 >= min_top1"]["passed"] for n in ("torch", "onnx", "onnx_int8"))


def test_backend_names_come_from_the_variant_registry() -> None:
    assert backend_name("onnx") == "onnxruntime CPU fp32"
    assert backend_name("onnx_int8") == "onnxruntime CPU int8 (QDQ)"
    assert backend_name("something_new") == "something_new"


def test_gpu_rows_are_gated_like_the_others(tiny_cfg) -> None:
    arts = {"torch": _art(0.90), "onnx_cuda": _art(0.90), "onnx_fp16_cuda": _art(0.885)}
    by = {g["gate"]: g for g in check_gates(tiny_cfg, arts)}
    assert by["onnx_cuda.top1_drop <= max_top1_drop"]["passed"] is True
    assert by["onnx_fp16_cuda.top1_drop <= max_top1_drop"]["passed"] is False  # fp16: 0.01


def _export(tmp_path, tiny_model, fp16: bool = True):
    from export.quantize import convert_fp16
    from pipeline.artifacts import Manifest, hash_files

    folder = tmp_path / "04_export"
    folder.mkdir()
    (folder / "model.onnx").write_bytes(tiny_model.read_bytes())
    artefacts = {"onnx": "model.onnx"}
    if fp16:
        convert_fp16(folder / "model.onnx", folder / "model.fp16.onnx")
        artefacts["onnx_fp16"] = "model.fp16.onnx"
    m = Manifest(stage="export", key="k", status="complete")
    m.extra, m.files = {"artefacts": artefacts}, hash_files(folder)
    m.write(folder)
    return Manifest.load(folder)


def test_gpu_backends_missing_here_are_skipped_with_the_reason(tmp_path, tiny_model, tiny_cfg):
    import torch

    from pipeline.errors import GpuUnavailable
    from pipeline.evaluation import GPU_BACKENDS, gpu_candidates
    from serving.predictor import import_onnxruntime

    if torch.cuda.is_available() or "CUDAExecutionProvider" in (
        import_onnxruntime().get_available_providers()
    ):
        pytest.skip("a GPU back end is installed here; this is the CPU machine's path")
    export = _export(tmp_path, tiny_model)
    weights = tmp_path / "classifier.safetensors"
    found, skipped = gpu_candidates(tiny_cfg, export, torch.nn.Identity(), weights)
    assert found == {} and list(skipped) == list(GPU_BACKENDS)
    assert "torch" in skipped["torch_cuda"] and "CUDA" in skipped["torch_cuda"]
    assert "has no CUDAExecutionProvider" in skipped["onnx_fp16_cuda"]
    assert "has no TensorrtExecutionProvider" in skipped["onnx_tensorrt"]
    assert all("pip install" in why or "GPU" in why for why in skipped.values())
    (tmp_path / "b").mkdir()
    without_fp16 = _export(tmp_path / "b", tiny_model, fp16=False)
    assert "onnx_fp16_cuda" not in gpu_candidates(tiny_cfg, without_fp16, None, weights)[1]
    off = tiny_cfg.model_copy(deep=True)
    off.validate_.gpu_backends = "off"
    assert gpu_candidates(off, export, None, weights) == ({}, {})
    required = tiny_cfg.model_copy(deep=True)
    required.validate_.gpu_backends = "require"
    with pytest.raises(GpuUnavailable, match="gpu_backends is 'require' and torch_cuda"):
        gpu_candidates(required, export, None, weights)


def test_the_report_lists_skipped_gpu_backends_with_the_reason() -> None:
    from pipeline.report.content import _artefacts
    from pipeline.report.document import Document, to_markdown

    row = {
        "backend": "torch eager fp32",
        "device": "cpu",
        "top1": 0.9,
        "latency_ms": {"p50": 1.0, "p90": 1.1, "p99": 1.2},
        "throughput": {"images_per_s": 100.0, "batch": 8},
        "bytes": 1000,
    }
    r = {
        "artefacts": {"torch": row},
        "gates": [],
        "threads": 2,
        "test_samples": 10,
        "skipped": {"onnx_cuda": "onnxruntime 1.32.0 has no CUDAExecutionProvider"},
    }
    md = to_markdown(Document("run", [], [_artefacts(r, {})]))
    assert "GPU back ends not measured" in md and "skipped because" in md
    assert "| onnx_cuda | onnxruntime 1.32.0 has no CUDAExecutionProvider |" in md
    assert "GPU" not in md.split("Latency is")[0]  # no GPU row: no GPU named
    gpu_row = row | {"backend": "onnxruntime CUDA EP fp32", "device": "cuda"}
    r |= {
        "artefacts": {"torch": row, "onnx_cuda": gpu_row},
        "skipped": {},
        "environment": {"device": "NVIDIA H100 80GB HBM3"},
    }
    md = to_markdown(Document("run", [], [_artefacts(r, {})]))
    assert "GPU NVIDIA H100 80GB HBM3 for the GPU rows" in md and "not measured" not in md


@pytest.mark.gpu
def test_gpu_backends_agree_with_the_cpu_rows(tmp_path, tiny_model, tiny_cfg) -> None:
    import numpy as np
    import torch

    from pipeline.evaluation import gpu_candidates
    from serving.predictor import OrtPredictor
    from tests.tiny_onnx import SIZE

    export = _export(tmp_path, tiny_model)
    model = torch.nn.Sequential(
        torch.nn.AdaptiveAvgPool2d(1), torch.nn.Flatten(), torch.nn.Linear(3, 4)
    ).eval()
    found, skipped = gpu_candidates(tiny_cfg, export, model, tmp_path / "w")
    assert "torch_cuda" in found and found["torch_cuda"].gpu
    x = np.random.default_rng(0).standard_normal((200, 3, SIZE, SIZE)).astype(np.float32)
    with torch.inference_mode():
        ref_torch = model(torch.from_numpy(x)).numpy()
    np.testing.assert_allclose(found["torch_cuda"].make(1)(x), ref_torch, atol=1e-4)
    ref = OrtPredictor(tiny_model).run(x)
    for name in ("onnx_cuda", "onnx_fp16_cuda", "onnx_tensorrt"):
        if name in found:
            got = found[name].make(1)(x)
            np.testing.assert_allclose(got, ref, atol=1e-2 if "fp16" in name else 1e-3)
        else:
            assert skipped[name], name  # not installed: the reason is recorded
