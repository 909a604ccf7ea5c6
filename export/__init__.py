"""Export: torch -> ONNX, then ONNX Runtime and TensorRT back ends."""
