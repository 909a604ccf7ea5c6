"""One interface over inference back ends, `run(float32 NCHW batch) -> logits`: ONNX Runtime
(`OrtPredictor`, CPU or GPU providers) and TensorRT engines (`TrtPredictor`). Preprocessing
comes from the ONNX model's own metadata.

Nothing here imports torch at import time: a server needs numpy, Pillow and the back end only.
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import numpy as np

from pipeline.errors import ArtefactError, GpuUnavailable, StageError


def import_onnxruntime():
    """onnxruntime, or a ConfigError naming the extra that installs it."""
    try:
        import onnxruntime
    except ImportError as exc:
        from pipeline.errors import ConfigError

        raise ConfigError(
            "ONNX Runtime is not installed: pip install -e '.[cpu]' (or '.[gpu]' on a CUDA "
            "machine; never both, the two builds provide the same module)"
        ) from exc
    return onnxruntime


class OrtPredictor:
    """An ONNX Runtime session with the exported model's preprocessing and class names."""

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
        self.metadata: dict[str, Any] = {k: _maybe_json(v) for k, v in raw.items()}

    @property
    def input_shape(self) -> list:
        """The model input's shape; a dynamic axis is its name (a str) or None."""
        return list(self.session.get_inputs()[0].shape)

    @property
    def classes(self) -> list[str]:
        return list(self.metadata.get("classes", []))

    def run(self, batch: np.ndarray) -> np.ndarray:
        """Logits for a preprocessed float32 NCHW batch."""
        return self.session.run(
            None, {self.input_name: np.ascontiguousarray(batch, dtype=np.float32)}
        )[0]

    def preprocess(self, images: list[np.ndarray]) -> np.ndarray:
        """uint8 HWC RGB images -> the normalised NCHW batch the model was trained on."""
        from PIL import Image

        size, resize = int(self.metadata["input_size"]), int(self.metadata["resize"])
        mean = np.asarray(self.metadata["mean"], np.float32)[:, None, None]
        std = np.asarray(self.metadata["std"], np.float32)[:, None, None]
        out = []
        for img in images:
            im = Image.fromarray(img).convert("RGB")
            w, h = im.size
            scale = resize / min(w, h)
            im = im.resize((max(1, round(w * scale)), max(1, round(h * scale))), Image.BILINEAR)
            w, h = im.size
            left, top = (w - size) // 2, (h - size) // 2
            im = im.crop((left, top, left + size, top + size))
            arr = np.asarray(im, np.float32).transpose(2, 0, 1) / 255.0
            out.append((arr - mean) / std)
        return np.stack(out)


def _maybe_json(v: str) -> Any:
    try:
        return json.loads(v)
    except json.JSONDecodeError:
        return v


def require_tensorrt():
    """The tensorrt module and a visible CUDA device, or GpuUnavailable saying what is missing."""
    try:
        import torch
    except ImportError as exc:  # pragma: no cover - torch is a core dependency
        raise GpuUnavailable("TensorRT benchmarking uses torch for CUDA buffers") from exc
    if not torch.cuda.is_available():
        raise GpuUnavailable(
            "TensorRT needs a CUDA GPU and none is visible (torch.cuda.is_available() is False); "
            "run this on a machine with an NVIDIA GPU and driver"
        )
    try:
        import tensorrt as trt
    except ImportError as exc:
        raise GpuUnavailable(
            "the tensorrt package is not installed: pip install -e '.[gpu]' (TensorRT 10)"
        ) from exc
    if int(trt.__version__.split(".")[0]) < 10:
        raise GpuUnavailable(f"TensorRT {trt.__version__} is too old: this code needs 10 or newer")
    return trt


def _gpu_identity(torch) -> dict[str, str]:
    major, minor = torch.cuda.get_device_capability(0)
    return {"gpu": torch.cuda.get_device_name(0), "compute_capability": f"{major}.{minor}"}


def check_engine_record(engine: Path, tensorrt_version: str, gpu: dict[str, str]) -> None:
    """Refuse an engine built for another TensorRT version or GPU, naming both (its JSON
    record, written by the builder, says what it was built for). An engine without a record
    is left to TensorRT's own check."""
    record_path = engine.with_suffix(".json")
    if not record_path.is_file():
        return
    rec = json.loads(record_path.read_text())
    built = (rec.get("tensorrt"), rec.get("gpu"), rec.get("compute_capability"))
    here = (tensorrt_version, gpu.get("gpu"), gpu.get("compute_capability"))
    if built != here:
        raise ArtefactError(
            f"{engine} was built with TensorRT {built[0]} for {built[1]} (compute capability "
            f"{built[2]}); this machine has TensorRT {here[0]} and {here[1]} ({here[2]}). "
            "Engines run only where they were built: rebuild it here"
        )


class TrtPredictor:
    """A deserialized TensorRT engine with one execution context: `run` takes and returns
    numpy like `OrtPredictor.run`; calling it runs torch CUDA tensors without copies.
    torch (for CUDA buffers) and tensorrt are imported only here."""

    def __init__(self, engine_path: str | Path) -> None:
        import torch

        trt = require_tensorrt()
        self.trt, self.torch = trt, torch
        check_engine_record(Path(engine_path), trt.__version__, _gpu_identity(torch))
        self.logger = trt.Logger(trt.Logger.WARNING)
        self.runtime = trt.Runtime(self.logger)
        self.engine = self.runtime.deserialize_cuda_engine(Path(engine_path).read_bytes())
        if self.engine is None:
            raise StageError(
                f"{engine_path} is not an engine this TensorRT/GPU can load; rebuild it here "
                "(engines are specific to the TensorRT version and the GPU model)"
            )
        self.context = self.engine.create_execution_context()
        names = [self.engine.get_tensor_name(i) for i in range(self.engine.num_io_tensors)]
        mode = self.engine.get_tensor_mode
        self.inputs = [n for n in names if mode(n) == trt.TensorIOMode.INPUT]
        self.outputs = [n for n in names if mode(n) == trt.TensorIOMode.OUTPUT]
        if len(self.inputs) != 1:
            raise StageError(f"expected one image input, the engine has {self.inputs}")
        self.stream = torch.cuda.Stream()

    def _dtype(self, name: str):
        t, trt = self.torch, self.trt
        table = {
            trt.float32: t.float32,
            trt.float16: t.float16,
            trt.bfloat16: t.bfloat16,
            trt.int8: t.int8,
            trt.uint8: t.uint8,
            trt.int32: t.int32,
            trt.int64: t.int64,
            trt.bool: t.bool,
        }
        return table[self.engine.get_tensor_dtype(name)]

    def __call__(self, batch):
        """Run a CUDA tensor batch (N, C, H, W); returns the first output as a CUDA tensor."""
        name = self.inputs[0]
        x = batch.to(self._dtype(name)).contiguous()
        if not self.context.set_input_shape(name, tuple(x.shape)):
            lo, _, hi = self.engine.get_tensor_profile_shape(name, 0)
            raise StageError(
                f"input shape {tuple(x.shape)} is outside the engine's optimisation profile "
                f"({tuple(lo)} to {tuple(hi)}); split the batch or rebuild with a larger max batch"
            )
        self.context.set_tensor_address(name, x.data_ptr())
        outs = []
        for o in self.outputs:
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
        """Logits for a preprocessed float32 NCHW batch (host memory in and out)."""
        x = self.torch.from_numpy(np.ascontiguousarray(batch, dtype=np.float32)).cuda()
        return self(x).float().cpu().numpy()
