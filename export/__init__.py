"""Builders: torch -> ONNX (onnx), FP16/INT8 variants (quantize, variants), TensorRT engines
(tensorrt) and Triton model repositories (triton). Heavy back ends are imported when used."""
