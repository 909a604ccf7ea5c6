"""One interface over inference back ends, `run(float32 NCHW batch) -> logits`: ONNX Runtime
(`OrtPredictor`, CPU or GPU providers) and TensorRT engines (`TrtPredictor`). Both describe
their tensors the same way (`inputs`, `outputs`), and carry the model's preprocessing and class
names: the ONNX model's own metadata, or for an engine the copy of it in the engine's JSON
record (`serving.engine_record`). `load_predictor` picks the back end from the file.

Nothing here imports torch at import time: a server needs numpy, Pillow and the back end only.
"""

from __future__ import annotations

import logging
import threading
from dataclasses import dataclass
from functools import cached_property
from pathlib import Path
from typing import Any

import numpy as np

import serving.cpu
from pipeline.errors import ArtefactError, ConfigError, GpuUnavailable, StageError
from pipeline.preprocessing import Preprocessing, decode_metadata
from serving.dtypes import TENSORRT_NAMES, from_ort
from serving.engine_record import (
    check_engine_record,
    engine_metadata,
    engine_record_path,
    is_engine,
    read_engine_record,
)
from serving.preprocess import preprocess

log = logging.getLogger("serving.predictor")

# How to get TensorRT where it is missing (the same advice as the README's).
TENSORRT_INSTALL = (
    "pip install -e '.[gpu]' in a fresh environment (pulls tensorrt from NVIDIA's package "
    "index at install time), or run in an NGC container that has it "
    "(nvcr.io/nvidia/tensorrt, nvcr.io/nvidia/tritonserver)"
)


@dataclass(frozen=True)
class TensorInfo:
    """A model tensor as a predictor's `run` takes or returns it."""

    name: str
    dtype: np.dtype
    shape: tuple[int | None, ...]  # None for a dynamic axis (the batch)


def _ort_tensor(t) -> TensorInfo:
    shape = tuple(d if isinstance(d, int) and d >= 0 else None for d in t.shape)
    return TensorInfo(t.name, from_ort(t.type), shape)


def int8_warning(metadata: dict[str, Any], providers: list[str]) -> str | None:
    """Why an INT8 model may score lower here than where it was validated: full 8-bit weights
    on a CPU whose int8 kernels saturate (serving/cpu.py). None when there is no such risk."""
    quant = metadata.get("quantization")
    if not isinstance(quant, dict) or quant.get("weight_bits") != 8:
        return None
    if not providers or providers[0] != "CPUExecutionProvider":
        return None
    saturates, cpu = serving.cpu.int8_saturates()
    if not saturates:
        return None
    return (
        f"INT8 model with full 8-bit weights on an {cpu}: logits can clip and top-1 fall below "
        "what its validation measured; re-export it with export.int8.reduce_range=true (7-bit "
        "weights) for this CPU, or serve the FP32 model"
    )


def import_onnxruntime():
    """onnxruntime, or a ConfigError naming the extra that installs it."""
    try:
        import onnxruntime
    except ImportError as exc:
        raise ConfigError(
            "ONNX Runtime is not installed: pip install -e '.[cpu]' (or '.[gpu]' on a CUDA "
            "machine; never both, the two builds provide the same module)"
        ) from exc
    return onnxruntime


class OrtPredictor:
    """An ONNX Runtime session with the exported model's preprocessing and class names."""

    platform = "onnxruntime_onnx"  # as Triton and the v2 protocol name it

    def __init__(
        self,
        path: str | Path,
        *,
        threads: int | None = None,
        providers: list[str] | None = None,
        spin: bool = True,
    ) -> None:
        """`spin=False` stops the runtime's worker threads from busy-waiting after each call:
        slower for back-to-back calls in one thread, but a server's event loop and decoding
        threads then get the cores between calls."""
        ort = import_onnxruntime()
        self.path = Path(path)
        opts = ort.SessionOptions()
        opts.graph_optimization_level = ort.GraphOptimizationLevel.ORT_ENABLE_ALL
        if threads:
            opts.intra_op_num_threads = threads
            opts.inter_op_num_threads = 1
        if not spin:
            opts.add_session_config_entry("session.intra_op.allow_spinning", "0")
        try:
            self.session = ort.InferenceSession(
                str(self.path), sess_options=opts, providers=providers or ["CPUExecutionProvider"]
            )
        except Exception as exc:
            if not type(exc).__module__.startswith("onnxruntime"):
                raise
            raise ArtefactError(
                f"ONNX Runtime cannot load {self.path}: {str(exc).strip().splitlines()[0]}. The "
                "file is truncated, corrupt or not an ONNX model; re-export it (`--from export`)"
            ) from None
        self.input_name = self.session.get_inputs()[0].name
        raw = self.session.get_modelmeta().custom_metadata_map
        self.metadata: dict[str, Any] = decode_metadata(raw)
        self.warnings = [w for w in [int8_warning(self.metadata, self.providers)] if w]
        for warning in self.warnings:
            log.warning("%s: %s", self.path.name, warning)

    @property
    def input_shape(self) -> list:
        """The model input's shape; a dynamic axis is its name (a str) or None."""
        return list(self.session.get_inputs()[0].shape)

    @property
    def inputs(self) -> list[TensorInfo]:
        return [_ort_tensor(t) for t in self.session.get_inputs()]

    @property
    def outputs(self) -> list[TensorInfo]:
        return [_ort_tensor(t) for t in self.session.get_outputs()]

    @property
    def providers(self) -> list[str]:
        """The execution providers the session runs on (ONNX Runtime falls back silently)."""
        return self.session.get_providers()

    @property
    def classes(self) -> list[str]:
        return list(self.metadata.get("classes", []))

    def run(self, batch: np.ndarray) -> np.ndarray:
        """Logits for a preprocessed float32 NCHW batch."""
        return self.session.run(
            None, {self.input_name: np.ascontiguousarray(batch, dtype=np.float32)}
        )[0]

    @cached_property
    def preprocessing(self) -> Preprocessing:
        """The model's preprocessing, from its metadata (ValueError naming what it lacks)."""
        return Preprocessing.from_metadata(self.metadata, source=str(self.path))

    def preprocess(self, images: list[np.ndarray]) -> np.ndarray:
        """uint8 HWC RGB images -> the normalised NCHW batch the model was trained on."""
        return preprocess(images, self.preprocessing)


def _profile_shapes(path: Path, min_batch: int, opt_batch: int, max_batch: int) -> dict[str, str]:
    """TensorRT EP options for one explicit batch profile (no engine rebuilds mid-measurement),
    when the model's only dynamic axis is the batch; none otherwise."""
    import onnx

    graph = onnx.load(str(path), load_external_data=False).graph
    inits = {i.name for i in graph.initializer}
    shapes = {"min": [], "opt": [], "max": []}
    for v in graph.input:
        if v.name in inits:
            continue
        dims = [
            d.dim_value if d.HasField("dim_value") else -1 for d in v.type.tensor_type.shape.dim
        ]
        if not dims or dims[0] != -1 or any(d < 0 for d in dims[1:]):
            return {}
        rest = "x".join(str(d) for d in dims[1:])
        for key, b in (("min", min_batch), ("opt", opt_batch), ("max", max_batch)):
            shapes[key].append(f"{v.name}:{b}x{rest}")
    return {f"trt_profile_{k}_shapes": ",".join(v) for k, v in shapes.items()}


def ort_gpu_predictor(
    path: str | Path, provider: str, *, opt_batch: int = 32, max_batch: int = 256
) -> OrtPredictor:
    """An ONNX Runtime session whose first execution provider is `provider`
    (`CUDAExecutionProvider` or `TensorrtExecutionProvider`), or GpuUnavailable saying why not.

    ONNX Runtime falls back to the next provider without raising when one cannot start (no
    CUDA device, CUDA/cuDNN or TensorRT libraries missing), so the providers the session
    actually runs on are checked. The TensorRT EP gets one batch profile (1, opt, max) so it
    builds its engine once; nothing is cached on disk."""
    ort = import_onnxruntime()
    available = ort.get_available_providers()
    if provider not in available:
        raise GpuUnavailable(
            f"onnxruntime {ort.__version__} has no {provider} (it has: {', '.join(available)}); "
            "install the gpu extra instead of cpu, pip install -e '.[gpu]' in a fresh "
            "environment (onnxruntime-gpu, on a machine with an NVIDIA GPU and CUDA 12)"
        )
    chain: list = ["CUDAExecutionProvider", "CPUExecutionProvider"]
    if provider == "TensorrtExecutionProvider":
        options = {"trt_fp16_enable": "false", "trt_int8_enable": "false"}
        options |= _profile_shapes(Path(path), 1, min(opt_batch, max_batch), max_batch)
        chain = [(provider, options), *chain]
    pred = OrtPredictor(path, providers=chain)
    if pred.providers[0] != provider:
        need = (
            f"TensorRT's libraries (the TensorRT version this onnxruntime was built for): "
            f"{TENSORRT_INSTALL}"
            if provider == "TensorrtExecutionProvider"
            else "CUDA 12 and cuDNN 9 libraries (import torch first, or install nvidia-*-cu12)"
        )
        raise GpuUnavailable(
            f"ONNX Runtime could not start {provider} and fell back to "
            f"{', '.join(pred.providers)}: no CUDA GPU is visible, or it needs {need}"
        )
    return pred


def require_tensorrt():
    """The tensorrt module and a visible CUDA device (torch holds the engine's GPU buffers), or
    GpuUnavailable naming everything that is missing and how to get it."""
    missing = []
    try:
        import torch
    except ImportError:  # pragma: no cover - torch is a core dependency
        torch = None
        missing.append(
            "torch, which holds the engine's GPU buffers, is not installed: pip install torch "
            "(a CUDA build)"
        )
    if torch is not None and not torch.cuda.is_available():
        if torch.version.cuda is None:
            missing.append(
                f"TensorRT needs a CUDA GPU and this torch ({torch.__version__}) is a CPU-only "
                "build; install a CUDA build of torch on a machine with an NVIDIA GPU"
            )
        else:
            missing.append(
                "TensorRT needs a CUDA GPU and none is visible (torch.cuda.is_available() is "
                "False); run this on a machine with an NVIDIA GPU and driver"
            )
    try:
        import tensorrt as trt
    except ImportError:
        trt = None
        missing.append(f"the tensorrt package is not installed: {TENSORRT_INSTALL}")
    if missing:
        raise GpuUnavailable("; and ".join(missing))
    if int(trt.__version__.split(".")[0]) < 10:
        raise GpuUnavailable(f"TensorRT {trt.__version__} is too old: this code needs 10 or newer")
    return trt


def _gpu_identity(torch) -> dict[str, str]:
    major, minor = torch.cuda.get_device_capability(0)
    return {"gpu": torch.cuda.get_device_name(0), "compute_capability": f"{major}.{minor}"}


class TrtPredictor:
    """A deserialized TensorRT engine with one execution context: `run` takes and returns
    numpy like `OrtPredictor.run` (split into batches the engine's profile admits, one call at
    a time); calling it runs torch CUDA tensors without copies. torch (for CUDA buffers) and
    tensorrt are imported only here. `need_metadata` (a server) refuses an engine whose
    preprocessing is unknown before anything is loaded on the GPU."""

    platform = "tensorrt_plan"  # as Triton and the v2 protocol name it
    warnings: list[str] = []  # an engine was checked against this GPU when it loaded

    def __init__(self, engine_path: str | Path, *, need_metadata: bool = False) -> None:
        trt = require_tensorrt()
        import torch

        self.trt, self.torch = trt, torch
        self.path = Path(engine_path)
        if not self.path.is_file():
            raise ArtefactError(f"{self.path} does not exist; build it first")
        record = read_engine_record(self.path)
        check_engine_record(self.path, trt.__version__, _gpu_identity(torch))
        self.record = record
        self.metadata: dict[str, Any] = engine_metadata(self.path, record)
        missing = Preprocessing.missing(self.metadata)
        if need_metadata and missing:
            raise ArtefactError(
                f"{self.path} comes without the model's preprocessing ({', '.join(missing)} "
                f"missing): its record {engine_record_path(self.path).name} holds no metadata "
                "and names no ONNX file beside it. Rebuild the engine with this version (the "
                "record then carries the metadata), or keep the ONNX file it was built from "
                "beside it"
            )
        self.logger = trt.Logger(trt.Logger.WARNING)
        self.runtime = trt.Runtime(self.logger)
        self.engine = self.runtime.deserialize_cuda_engine(self.path.read_bytes())
        if self.engine is None:
            raise StageError(
                f"{engine_path} is not an engine this TensorRT/GPU can load; rebuild it here "
                "(engines are specific to the TensorRT version and the GPU model)"
            )
        self.context = self.engine.create_execution_context()
        names = [self.engine.get_tensor_name(i) for i in range(self.engine.num_io_tensors)]
        mode = self.engine.get_tensor_mode
        self.input_names = [n for n in names if mode(n) == trt.TensorIOMode.INPUT]
        self.output_names = [n for n in names if mode(n) == trt.TensorIOMode.OUTPUT]
        if len(self.input_names) != 1:
            raise StageError(f"expected one image input, the engine has {self.input_names}")
        first = self.input_names[0]
        batch_axis = int(self.engine.get_tensor_shape(first)[0])
        self.max_batch = (
            batch_axis
            if batch_axis >= 0
            else int(self.engine.get_tensor_profile_shape(first, 0)[2][0])
        )
        self.stream = torch.cuda.Stream()
        self._lock = threading.Lock()

    def _info(self, name: str) -> TensorInfo:
        """`run` takes float32 and returns float32 whatever the engine's own types are."""
        dims = tuple(int(d) for d in self.engine.get_tensor_shape(name))
        return TensorInfo(name, np.dtype(np.float32), tuple(d if d >= 0 else None for d in dims))

    @property
    def inputs(self) -> list[TensorInfo]:
        return [self._info(n) for n in self.input_names]

    @property
    def outputs(self) -> list[TensorInfo]:
        return [self._info(n) for n in self.output_names]

    @property
    def input_shape(self) -> list:
        """The engine input's shape; None for the dynamic batch axis."""
        return list(self.inputs[0].shape)

    @property
    def providers(self) -> list[str]:
        return [f"TensorRT {self.trt.__version__}"]

    @property
    def classes(self) -> list[str]:
        return list(self.metadata.get("classes", []))

    @cached_property
    def preprocessing(self) -> Preprocessing:
        """The model's preprocessing, from the engine's record (ValueError where unknown)."""
        return Preprocessing.from_metadata(self.metadata, source=str(self.path))

    def preprocess(self, images: list[np.ndarray]) -> np.ndarray:
        """uint8 HWC RGB images -> the normalised NCHW batch, from the engine's record."""
        return preprocess(images, self.preprocessing)

    def _dtype(self, name: str):
        """torch's dtype for an engine tensor's (the two name their types alike)."""
        table = {getattr(self.trt, n): getattr(self.torch, n) for n in TENSORRT_NAMES}
        return table[self.engine.get_tensor_dtype(name)]

    def __call__(self, batch):
        """Run a CUDA tensor batch (N, C, H, W); returns the first output as a CUDA tensor."""
        name = self.input_names[0]
        x = batch.to(self._dtype(name)).contiguous()
        if not self.context.set_input_shape(name, tuple(x.shape)):
            lo, _, hi = self.engine.get_tensor_profile_shape(name, 0)
            raise StageError(
                f"input shape {tuple(x.shape)} is outside the engine's optimisation profile "
                f"({tuple(lo)} to {tuple(hi)}); split the batch or rebuild with a larger max batch"
            )
        self.context.set_tensor_address(name, x.data_ptr())
        outs = []
        for o in self.output_names:
            y = self.torch.empty(
                tuple(self.context.get_tensor_shape(o)), dtype=self._dtype(o), device=x.device
            )
            self.context.set_tensor_address(o, y.data_ptr())
            outs.append(y)
        self.stream.wait_stream(self.torch.cuda.current_stream())
        if not self.context.execute_async_v3(self.stream.cuda_stream):
            raise StageError("TensorRT execution failed (see its log)")
        self.torch.cuda.current_stream().wait_stream(self.stream)
        return outs[0]

    def run(self, batch: np.ndarray) -> np.ndarray:
        """Logits for a preprocessed float32 NCHW batch (host memory in and out), in slices of
        at most the profile's max batch; one call at a time (one execution context)."""
        x = np.ascontiguousarray(batch, dtype=np.float32)
        step = max(1, self.max_batch)
        with self._lock:
            parts = [
                self(self.torch.from_numpy(x[s : s + step]).cuda()).float().cpu().numpy()
                for s in range(0, len(x), step)
            ]
        return parts[0] if len(parts) == 1 else np.concatenate(parts)


def load_predictor(
    path: str | Path,
    *,
    threads: int | None = None,
    providers: list[str] | None = None,
    spin: bool = True,
) -> OrtPredictor | TrtPredictor:
    """The back end for a model file: a TensorRT engine (`.engine`, `.plan`) through
    `TrtPredictor` (CUDA GPU, tensorrt; its preprocessing must be known), anything else through
    ONNX Runtime. `threads` and `providers` are ONNX Runtime's and refused for an engine."""
    if is_engine(path):
        if providers:
            raise ConfigError(
                f"providers {providers} are ONNX Runtime's; {Path(path).name} is a TensorRT "
                "engine and runs on TensorRT (leave providers out)"
            )
        return TrtPredictor(path, need_metadata=True)
    return OrtPredictor(path, threads=threads, providers=providers, spin=spin)
