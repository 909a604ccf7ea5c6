"""One interface over inference back ends; preprocessing comes from the model's own metadata.

Nothing here imports torch: a server needs numpy, Pillow and the back end only.
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import numpy as np


class OrtPredictor:
    """An ONNX Runtime session with the exported model's preprocessing and class names."""

    def __init__(
        self, path: str | Path, *, threads: int | None = None, providers: list[str] | None = None
    ) -> None:
        import onnxruntime as ort

        self.path = Path(path)
        opts = ort.SessionOptions()
        opts.graph_optimization_level = ort.GraphOptimizationLevel.ORT_ENABLE_ALL
        if threads:
            opts.intra_op_num_threads = threads
            opts.inter_op_num_threads = 1
        self.session = ort.InferenceSession(
            str(self.path), sess_options=opts, providers=providers or ["CPUExecutionProvider"]
        )
        self.input_name = self.session.get_inputs()[0].name
        raw = self.session.get_modelmeta().custom_metadata_map
        self.metadata: dict[str, Any] = {k: _maybe_json(v) for k, v in raw.items()}

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
