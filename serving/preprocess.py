"""The server's preprocessing, with Pillow and numpy: uint8 HWC RGB images -> the normalised
NCHW float32 batch the model was trained on. Its parameters are the model's own
(`pipeline.preprocessing.Preprocessing`, read from the ONNX metadata or an engine's record)."""

from __future__ import annotations

import numpy as np
from PIL import Image

from pipeline.preprocessing import Preprocessing


def preprocess(images: list[np.ndarray], pre: Preprocessing) -> np.ndarray:
    """uint8 HWC RGB images -> the normalised NCHW batch the model was trained on: resize the
    short side to `resize`, centre-crop `input_size`, scale to [0, 1], (x - mean) / std."""
    size, resize = pre.input_size, pre.resize
    mean = np.asarray(pre.mean, np.float32)[:, None, None]
    std = np.asarray(pre.std, np.float32)[:, None, None]
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
