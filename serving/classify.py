"""What the server does with images: decode (any format Pillow reads; 16-bit scaled; pixel
limits checked from the header before decoding), preprocess with the model's own metadata, and
turn logits into top-k labels. No torch, no web framework."""

from __future__ import annotations

import io
import time
from typing import Any

import numpy as np

from pipeline.images import to_rgb8
from serving.predictor import OrtPredictor, TrtPredictor

DEFAULT_MAX_PIXELS = 40_000_000  # per image, before decoding (decompression bombs)


class BadImage(ValueError):
    """An upload that is not a decodable image; the message is for the client (400)."""


class TooLarge(ValueError):
    """A request over a size limit; the message is for the client (413)."""


def softmax(logits: np.ndarray) -> np.ndarray:
    z = logits - logits.max(axis=1, keepdims=True)
    e = np.exp(z)
    return e / e.sum(axis=1, keepdims=True)


def image_size(data: bytes) -> tuple[int, int] | None:
    """(width, height) from the image header alone (nothing decoded); None if unreadable."""
    from PIL import Image

    try:
        with Image.open(io.BytesIO(data)) as im:
            return im.size
    except Exception:  # noqa: BLE001 - any unreadable header: decode_image says why
        return None


def decode_image(data: bytes, name: str, max_pixels: int = DEFAULT_MAX_PIXELS) -> np.ndarray:
    """Bytes of any format Pillow reads -> uint8 HWC RGB; BadImage with the reason otherwise."""
    from PIL import Image, UnidentifiedImageError

    if not data:
        raise BadImage(f"{name}: empty upload; send the image file's bytes")
    try:
        im = Image.open(io.BytesIO(data))
        w, h = im.size  # read from the header, nothing decoded yet
        if w * h > max_pixels:
            raise BadImage(
                f"{name}: {w}x{h} is {w * h:,} pixels, over this server's limit of "
                f"{max_pixels:,}; downscale it before sending"
            )
        return to_rgb8(im)
    except UnidentifiedImageError:
        raise BadImage(
            f"{name}: not an image Pillow can read ({len(data)} bytes); send PNG, JPEG, BMP, "
            "GIF, TIFF or WebP"
        ) from None
    except (OSError, SyntaxError, ValueError, Image.DecompressionBombError) as exc:
        if isinstance(exc, BadImage):
            raise
        raise BadImage(f"{name}: the image is truncated or corrupt ({exc}); re-encode it") from None


class Classifier:
    """Decode, preprocess, one batched inference call (ONNX Runtime or TensorRT), top-k: the
    server's whole job."""

    def __init__(
        self, predictor: OrtPredictor | TrtPredictor, max_pixels: int = DEFAULT_MAX_PIXELS
    ) -> None:
        self.predictor = predictor
        self.max_pixels = max_pixels
        self.classes = predictor.classes
        n_out = predictor.outputs[0].shape[-1]
        self.num_classes = len(self.classes) or (n_out if isinstance(n_out, int) else 0)

    def label(self, i: int) -> str:
        return self.classes[i] if i < len(self.classes) else str(i)

    def work_pixels(self, uploads: list[tuple[str, bytes]], max_request_pixels: int) -> int:
        """Pixels a request will hold in memory once decoded and resized to the model's input,
        from the image headers alone; TooLarge or BadImage before anything is decoded. A thin
        image (1 x 100,000 px, a few hundred bytes) grows by the resize to its short side, so
        the resized size counts too."""
        resize = int(self.predictor.metadata.get("resize") or 0)
        total = 0
        for name, data in uploads:
            size = image_size(data)
            if size is None:
                continue  # decode_image names the problem
            w, h = size
            scale = max(1.0, resize / max(1, min(w, h)))
            pixels = max(w * h, round(w * scale) * round(h * scale))
            if pixels > self.max_pixels:
                what = (
                    f"is {pixels:,} pixels"
                    if pixels == w * h
                    else f"needs {pixels:,} pixels once resized to the model's input"
                )
                raise BadImage(
                    f"{name}: {w}x{h} {what}, over this server's limit of {self.max_pixels:,}; "
                    "crop or downscale it before sending"
                )
            total += pixels
        if total > max_request_pixels:
            raise TooLarge(
                f"the request's images hold {total:,} pixels together, over this server's "
                f"limit of {max_request_pixels:,} per request; send fewer or smaller images"
            )
        return total

    def prepare(self, uploads: list[tuple[str, bytes]]) -> np.ndarray:
        """Decode and preprocess a request's images into one float32 NCHW batch."""
        images = [decode_image(data, name, self.max_pixels) for name, data in uploads]
        return self.predictor.preprocess(images)

    def answer(self, names: list[str], logits: np.ndarray, top_k: int) -> list[dict[str, Any]]:
        """Top-k labels with probabilities, per image."""
        probs = softmax(np.asarray(logits, dtype=np.float64))
        k = min(top_k, probs.shape[1])
        preds = []
        for name, p in zip(names, probs, strict=True):
            order = np.argsort(-p, kind="stable")[:k]
            preds.append(
                {
                    "file": name,
                    "top_k": [
                        {"index": int(i), "label": self.label(int(i)), "probability": float(p[i])}
                        for i in order
                    ],
                }
            )
        return preds

    def predict(self, uploads: list[tuple[str, bytes]], top_k: int) -> dict[str, Any]:
        """The whole job in process, one inference call: decode, preprocess, run, top-k."""
        t0 = time.perf_counter()
        batch = self.prepare(uploads)
        t1 = time.perf_counter()
        logits = self.predictor.run(batch)
        t2 = time.perf_counter()
        return {
            "predictions": self.answer([n for n, _ in uploads], logits, top_k),
            "timing_ms": {"preprocess": (t1 - t0) * 1e3, "inference": (t2 - t1) * 1e3},
        }
