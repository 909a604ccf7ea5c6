"""The validate stage's gates: every artefact against min_top1, and its drop against torch."""

from __future__ import annotations

from pipeline.stages.validate import backend_name, check_gates


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
