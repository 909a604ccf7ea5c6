"""Decoding an image file's bytes to 8-bit RGB, the same way for training data and the server.

numpy and Pillow only (the server imports this without torch). Two things Pillow does not do
for us: 16-bit grayscale (`I;16`, `I`) is scaled to 8 bits instead of clipped (a plain
`convert("RGB")` squashes most of the range to white), and a decompression bomb (an image whose
header claims more pixels than `Image.MAX_IMAGE_PIXELS`, or twice that) is reported as a bad
image like any other rather than as its own exception type.
"""

from __future__ import annotations

import numpy as np
from PIL import Image, UnidentifiedImageError

_WIDE_MODES = ("I;16", "I;16B", "I;16L", "I;16N", "I", "F")


def bad_image_errors() -> tuple[type[BaseException], ...]:
    """What decoding a bad file raises: corrupt, truncated, unknown format or a bomb."""
    return (
        OSError,
        UnidentifiedImageError,
        ValueError,
        SyntaxError,
        Image.DecompressionBombError,
    )


def to_rgb8(im) -> np.ndarray:
    """A Pillow image as a uint8 HWC RGB array; 16-bit and 32-bit grey scaled to 0..255."""
    if im.mode in _WIDE_MODES:
        grey = np.asarray(im, dtype=np.float64)
        if im.mode.startswith("I;16") or grey.max(initial=0) > 255:
            grey = grey / 257.0  # 65535 -> 255
        grey = np.clip(np.rint(grey), 0, 255).astype(np.uint8)
        return np.repeat(grey[:, :, None], 3, axis=2)
    return np.asarray(im.convert("RGB"), dtype=np.uint8)
