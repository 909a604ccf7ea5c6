"""The server's preprocessing, with numpy: uint8 HWC RGB images -> the normalised NCHW float32
batch the model was trained on. Its parameters are the model's own
(`pipeline.preprocessing.Preprocessing`, read from the ONNX metadata or an engine's record).

The pixels are those of the evaluation transform (`pipeline.data.presets.eval_transform`,
torchvision over uint8 tensors), not an approximation of them:

- the resized size and the crop's place are `Preprocessing.resized_shape` and `crop_origin`,
  torchvision's own arithmetic (the long side truncated, the crop offset rounded; zeros where
  the crop reaches outside a resized image smaller than it);
- the resize is torch's antialiased bilinear kernel on uint8 images (Pillow's algorithm, which
  torch's uint8 CPU kernel was ported from, but with torch's weights): per output pixel the
  triangle filter stretched by the downscale factor and normalised, weights rounded to int16
  at the precision torch picks, a horizontal pass then a vertical one, each rounding to uint8.
  Pillow's own `resize` rounds its weights at another precision and lands one level off on a
  few pixels in a hundred;
- scaling and normalisation are the same float32 operations in the same order:
  `x * float32(1 / 255)`, then `(x - mean) / std`.

Only the output pixels inside the crop are computed, from the input rows and columns they
read, with float64 matrix products over bands of outputs (exact: every value is an integer
far below 2**53).

torchvision's uint8 kernel runs on CPUs with AVX2 or AVX-512 and on ARM64; elsewhere it
resizes in float32 and rounds, which can differ from this by one level on some pixels.
"""

from __future__ import annotations

import numpy as np

from pipeline.preprocessing import Preprocessing

# Outputs per matrix product: a band of this many outputs reads about `_BAND + 2` times the
# inputs it needs, small enough to stay cheap, large enough for few products per image.
_BAND = 16


def preprocess(images: list[np.ndarray], pre: Preprocessing) -> np.ndarray:
    """uint8 HWC RGB images -> the normalised NCHW batch the model was trained on: resize the
    short side to `resize`, centre-crop `input_size`, scale to [0, 1], (x - mean) / std."""
    size = pre.input_size
    pixels = np.empty((len(images), size, size, 3), np.uint8)
    for i, img in enumerate(images):
        pixels[i] = resize_and_crop(_rgb(img), pre)
    mean = np.asarray(pre.mean, np.float32)[:, None, None]
    std = np.asarray(pre.std, np.float32)[:, None, None]
    x = pixels.transpose(0, 3, 1, 2).astype(np.float32) * np.float32(1.0 / 255)
    return np.ascontiguousarray((x - mean) / std, dtype=np.float32)


def resize_and_crop(img: np.ndarray, pre: Preprocessing) -> np.ndarray:
    """A uint8 HWC image resized (shorter side to `pre.resize`) and centre-cropped to
    `pre.input_size`, pixel for pixel as torchvision's `Resize(antialias=True)` then
    `CenterCrop` produce them from the same uint8 image."""
    size = pre.input_size
    h, w = img.shape[:2]
    oh, ow = pre.resized_shape(h, w)
    top, left = pre.crop_origin(oh, ow)
    rows = (max(top, 0), min(top + size, oh))  # the crop's rows inside the resized image
    cols = (max(left, 0), min(left + size, ow))
    out = np.zeros((size, size, img.shape[2]), np.uint8)
    out[rows[0] - top : rows[1] - top, cols[0] - left : cols[1] - left] = _resized_window(
        img, (oh, ow), rows, cols
    )
    return out


def _rgb(img: np.ndarray) -> np.ndarray:
    """The image as uint8 HWC RGB; grey (HW or HW1) repeated, a fourth (alpha) channel dropped,
    as Pillow's convert("RGB") does."""
    a = np.asarray(img)
    if a.dtype != np.uint8:
        raise ValueError(f"images must be uint8 arrays, not {a.dtype}")
    if a.ndim == 2:
        a = a[:, :, None]
    if a.ndim != 3 or a.shape[2] not in (1, 3, 4):
        raise ValueError(f"images must be HxW, HxWx1, HxWx3 or HxWx4 arrays, not {a.shape}")
    if a.shape[2] == 1:
        return np.repeat(a, 3, axis=2)
    return a[:, :, :3]


def _resized_window(
    img: np.ndarray, shape: tuple[int, int], rows: tuple[int, int], cols: tuple[int, int]
) -> np.ndarray:
    """Rows rows[0]:rows[1] and columns cols[0]:cols[1] of `img` resized to `shape`: torch's
    order, horizontal pass then vertical, each skipped where that side keeps its length."""
    h, w, c = img.shape
    oh, ow = shape
    across = _Taps(w, ow) if ow != w else None
    down = _Taps(h, oh) if oh != h else None
    # Only the input rows and columns that the wanted outputs read, as (row, channel, column).
    r0, r1 = down.reads(*rows) if down else rows
    c0, c1 = across.reads(*cols) if across else cols
    x = np.empty((r1 - r0, c, c1 - c0))
    x[...] = img[r0:r1, c0:c1].transpose(0, 2, 1)
    x = x.reshape(-1, c1 - c0)
    if across:
        x = across.apply(x, *cols, offset=c0, axis=1)
    n = x.shape[1]
    x = x.reshape(r1 - r0, c * n)
    if down:
        x = down.apply(x, *rows, offset=r0, axis=0)
    return x.reshape(-1, c, n).transpose(0, 2, 1).astype(np.uint8)


class _Taps:
    """torch's antialiased bilinear weights for resizing one axis from `n_in` to `n_out`
    pixels, rounded to integers as its uint8 kernel rounds them."""

    def __init__(self, n_in: int, n_out: int) -> None:
        scale = n_in / n_out
        support = scale if scale >= 1.0 else 1.0  # the triangle's half-width, in input pixels
        inv = 1.0 / scale if scale >= 1.0 else 1.0
        centre = scale * (np.arange(n_out) + 0.5)
        # int64 casts truncate toward zero, as the C++ casts do.
        first = np.maximum((centre - support + 0.5).astype(np.int64), 0)
        count = np.minimum((centre + support + 0.5).astype(np.int64), n_in) - first
        k = np.arange(int(np.ceil(support)) * 2 + 1)
        dist = np.abs((((first[:, None] + k).astype(np.float64) - centre[:, None]) + 0.5) * inv)
        wt = np.where((dist < 1.0) & (k < count[:, None]), 1.0 - dist, 0.0)
        total = np.cumsum(wt, axis=1)[:, -1:]  # summed left to right, as torch sums them
        wt = np.divide(wt, total, out=wt, where=total != 0)
        self.precision = self._precision(float(wt.max()))
        self.weights = np.floor(0.5 + wt * float(1 << self.precision))
        self.first, self.count = first, count

    @staticmethod
    def _precision(w_max: float) -> int:
        """The most fractional bits (below 22) at which the largest weight fits an int16."""
        bits = 0
        while bits < 22 and int(0.5 + w_max * (1 << (bits + 1))) < (1 << 15):
            bits += 1
        return bits

    def reads(self, lo: int, hi: int) -> tuple[int, int]:
        """The input pixels outputs lo:hi read, as a half-open range."""
        return int(self.first[lo]), int((self.first[lo:hi] + self.count[lo:hi]).max())

    def apply(self, x: np.ndarray, lo: int, hi: int, *, offset: int, axis: int) -> np.ndarray:
        """Outputs lo:hi along `axis` (0 or 1) of the 2-D float64 `x`, which holds uint8 values
        and starts at input pixel `offset` along that axis; rounded and clipped to 0..255 as
        torch's kernel does: (sum of weight * pixel + 2**(precision - 1)) >> precision."""
        other = x.shape[1 - axis]
        out = np.empty((hi - lo, other) if axis == 0 else (other, hi - lo))
        for s in range(lo, hi, _BAND):
            e = min(s + _BAND, hi)
            a, b = self.reads(s, e)
            band = np.zeros((e - s, b - a))
            o, k = np.nonzero(np.arange(self.weights.shape[1]) < self.count[s:e, None])
            band[o, self.first[s + o] - a + k] = self.weights[s + o, k]
            if axis == 0:
                out[s - lo : e - lo] = band @ x[a - offset : b - offset]
            else:
                out[:, s - lo : e - lo] = x[:, a - offset : b - offset] @ band.T
        out += float(1 << (self.precision - 1))
        out *= 2.0**-self.precision  # a power of two: exact
        np.floor(out, out=out)
        return np.clip(out, 0, 255, out=out)
