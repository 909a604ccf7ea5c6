"""TensorRT engines from the exported ONNX model: the builder (needs a CUDA GPU). Running an
engine is `serving.predictor.TrtPredictor`'s job; `build_and_benchmark` ties both together for

    python -m pipeline tensorrt runs/digits-resnet18 --precision fp16 --batch 1 32

Uses the TensorRT 10 Python API. The engine gets one optimisation profile over the dynamic batch axis
(min 1, opt and max the largest benchmark batch). Precisions: `fp32`, `fp16` (the builder
may choose FP16 kernels), and `int8` for an ONNX file with explicit symmetric INT8 Q/DQ nodes
(TensorRT 10 no longer calibrates implicitly; onnxruntime's default QDQ export uses uint8
activations with zero points, which TensorRT rejects, so `int8` checks for that first).

Everything imports lazily: on a machine without tensorrt or a GPU, `require_tensorrt` raises a
`GpuUnavailable` (exit 7) whose message says what is missing and how to install it.
"""

from __future__ import annotations

import logging
import time
from pathlib import Path
from typing import Any

import numpy as np

from pipeline.errors import ConfigError, StageError
from serving.predictor import require_tensorrt

log = logging.getLogger(__name__)

PRECISIONS = ("fp32", "fp16", "int8")


def _check_int8_qdq(onnx_path: Path) -> None:
    import onnx
    from onnx import numpy_helper

    model = onnx.load(str(onnx_path), load_external_data=False)
    qnodes = [n for n in model.graph.node if n.op_type in ("QuantizeLinear", "DequantizeLinear")]
    if not qnodes:
        raise ConfigError(
            f"{onnx_path.name} has no Q/DQ nodes: TensorRT 10 builds INT8 engines from explicitly "
            "quantized ONNX only; pass a symmetric INT8 QDQ model"
        )
    inits = {i.name: i for i in model.graph.initializer}
    for n in qnodes:
        if len(n.input) > 2 and n.input[2] in inits:
            zp = numpy_helper.to_array(inits[n.input[2]])
            if zp.dtype != np.int8 or np.any(zp != 0):
                raise ConfigError(
                    f"{onnx_path.name}: node {n.name or n.op_type} has a {zp.dtype} zero point "
                    f"{zp.ravel()[:4]}; TensorRT accepts symmetric INT8 only (int8, zero point 0). "
                    "Quantize with activation_type=QInt8 and ActivationSymmetric=True"
                )


def build_engine(
    onnx_path: str | Path,
    engine_path: str | Path,
    *,
    precision: str = "fp16",
    max_batch: int = 32,
    workspace_gib: float = 2.0,
) -> Path:
    """Parse the ONNX file, build a serialized engine and write it (atomically) to engine_path."""
    trt = require_tensorrt()
    onnx_path, engine_path = Path(onnx_path), Path(engine_path)
    if precision not in PRECISIONS:
        raise ConfigError(f"precision {precision!r}: use one of {', '.join(PRECISIONS)}")
    if precision == "int8":
        _check_int8_qdq(onnx_path)
    logger = trt.Logger(trt.Logger.WARNING)
    builder = trt.Builder(logger)
    network = builder.create_network(0)  # explicit batch is the only mode in TensorRT 10
    parser = trt.OnnxParser(network, logger)
    if not parser.parse_from_file(str(onnx_path)):
        errors = "; ".join(str(parser.get_error(i)) for i in range(parser.num_errors))
        raise StageError(f"TensorRT could not parse {onnx_path}: {errors}")
    config = builder.create_builder_config()
    config.set_memory_pool_limit(trt.MemoryPoolType.WORKSPACE, int(workspace_gib * (1 << 30)))
    if precision == "fp16":
        config.set_flag(trt.BuilderFlag.FP16)
    elif precision == "int8":
        config.set_flag(trt.BuilderFlag.INT8)
        config.set_flag(trt.BuilderFlag.FP16)  # layers left in float may run in FP16
    profile = builder.create_optimization_profile()
    for i in range(network.num_inputs):
        t = network.get_input(i)
        shape = list(t.shape)
        if any(d < 0 for d in shape[1:]):
            raise ConfigError(
                f"input {t.name!r} has dynamic axes beyond the batch ({shape}); export with a "
                "fixed image size"
            )
        lo, hi = [1, *shape[1:]], [max_batch, *shape[1:]]
        profile.set_shape(t.name, lo, hi, hi)
    config.add_optimization_profile(profile)
    t0 = time.perf_counter()
    blob = builder.build_serialized_network(network, config)
    if blob is None:
        raise StageError(f"TensorRT failed to build an engine for {onnx_path} (see its log)")
    tmp = engine_path.with_name(engine_path.name + ".partial")
    tmp.write_bytes(bytes(blob))
    tmp.replace(engine_path)
    log.info(
        "TensorRT %s engine for %s built in %.1f s -> %s",
        precision,
        onnx_path.name,
        time.perf_counter() - t0,
        engine_path,
    )
    return engine_path


def default_engine_path(onnx_path: Path, precision: str) -> Path:
    """`<run>/tensorrt/<model>.<precision>.engine` for a model of a run's export stage (stage
    folders stay as the pipeline made them); beside the ONNX file otherwise."""
    from pipeline.artifacts import MANIFEST, Manifest

    name = onnx_path.with_suffix(f".{precision}.engine").name
    m = Manifest.load(onnx_path.parent) if (onnx_path.parent / MANIFEST).is_file() else None
    if m is not None and m.stage == "export":
        return onnx_path.parent.parent / "tensorrt" / name
    return onnx_path.with_name(name)


def build_and_benchmark(
    onnx_path: Path,
    engine_path: Path | None,
    *,
    precision: str,
    batches: list[int],
    iters: int,
) -> dict[str, Any]:
    """Build an engine, time it per batch size and check it against ONNX Runtime; the result
    is also written beside the engine as JSON."""
    import json

    from serving.bench import benchmark_engine
    from serving.predictor import OrtPredictor

    require_tensorrt()  # fail before anything is written
    engine = engine_path or default_engine_path(onnx_path, precision)
    engine.parent.mkdir(parents=True, exist_ok=True)
    build_engine(onnx_path, engine, precision=precision, max_batch=max(batches))
    ort = OrtPredictor(onnx_path)
    shape = tuple(ort.session.get_inputs()[0].shape[1:])  # fixed C, H, W (checked by the build)
    n = min(16, max(batches))  # within the engine's batch profile
    x = np.random.default_rng(0).standard_normal((n, *shape)).astype(np.float32)
    res = benchmark_engine(
        engine, shape, batches, iters=iters, reference=x, reference_logits=ort.run(x)
    )
    engine.with_suffix(".json").write_text(json.dumps(res, indent=2))
    return res
