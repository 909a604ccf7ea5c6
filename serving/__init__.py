"""Serving: one predictor interface over ONNX Runtime (and TensorRT), and benchmarks. No torch import."""
