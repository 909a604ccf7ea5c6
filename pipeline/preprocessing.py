"""What a classifier's input preprocessing is, defined once: resize the shorter side to
`resize`, centre-crop `input_size`, scale to [0, 1], then (x - mean) / std per RGB channel.

Three implementations follow it and read their parameters from here: the training and
evaluation transforms (torchvision, `pipeline.data.presets`), the server (numpy,
`serving.preprocess`, pixel for pixel what torchvision gives; it takes the resized size and
the crop's place from `Preprocessing.resized_shape` and `crop_origin`, torchvision's own
arithmetic) and the Triton graph with its preprocessing built in (ONNX nodes, `export.triton`,
for pixels already at the input size). The parameters travel with an exported model as ONNX
metadata (`to_metadata`, written by `export.onnx`) and are read back from it (`from_metadata`).

No torch and no numpy: a server and every layer imports this. Invalid parameters raise
ValueError, which callers turn into their own error where they know what to advise.
"""

from __future__ import annotations

import json
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from typing import Any


def _is_number(v: object) -> bool:
    return isinstance(v, (int, float)) and not isinstance(v, bool)


@dataclass(frozen=True)
class Preprocessing:
    """The input preprocessing of a model: sizes in pixels, mean and std per RGB channel on
    the [0, 1] scale."""

    input_size: int  # the side of the square centre crop the model takes
    resize: int  # the shorter side is resized to this before the crop
    mean: tuple[float, ...]
    std: tuple[float, ...]

    # The metadata keys, as `to_metadata` writes them.
    KEYS = ("input_size", "resize", "mean", "std")

    def __post_init__(self) -> None:
        object.__setattr__(self, "mean", tuple(self.mean))
        object.__setattr__(self, "std", tuple(self.std))
        problems = [
            f"{k} must be a positive integer, not {getattr(self, k)!r}"
            for k in ("input_size", "resize")
            if not isinstance(getattr(self, k), int)
            or isinstance(getattr(self, k), bool)
            or getattr(self, k) < 1
        ]
        problems += [
            f"{k} must be a non-empty list of numbers, not {list(getattr(self, k))!r}"
            for k in ("mean", "std")
            if not getattr(self, k) or not all(_is_number(v) for v in getattr(self, k))
        ]
        if not problems and len(self.mean) != len(self.std):
            problems.append(f"mean {list(self.mean)} and std {list(self.std)} differ in length")
        if problems:
            raise ValueError("; ".join(problems))

    def resized_shape(self, height: int, width: int) -> tuple[int, int]:
        """(height, width) after the resize, as torchvision's `Resize(resize)` computes it: the
        shorter side becomes `resize` and the longer `int(resize * long / short)`, truncated
        (a square's sides both become `resize`)."""
        short, long = (width, height) if width <= height else (height, width)
        new_long = int(self.resize * long / short)
        return (new_long, self.resize) if width <= height else (self.resize, new_long)

    def crop_origin(self, height: int, width: int) -> tuple[int, int]:
        """(top, left) of the `input_size` centre crop in a resized image of this height and
        width; see `crop_start`. Negative where the image is smaller than the crop."""
        return crop_start(height, self.input_size), crop_start(width, self.input_size)

    def to_metadata(self) -> dict[str, Any]:
        """The model metadata entries, in `KEYS` order (the ONNX writer JSON-encodes them)."""
        return {
            "input_size": self.input_size,
            "resize": self.resize,
            "mean": list(self.mean),
            "std": list(self.std),
        }

    @staticmethod
    def missing(metadata: Mapping[str, Any]) -> list[str]:
        """The preprocessing keys `metadata` lacks."""
        return [k for k in Preprocessing.KEYS if k not in metadata]

    @classmethod
    def from_metadata(
        cls, metadata: Mapping[str, Any], *, source: str = "the model"
    ) -> Preprocessing:
        """The preprocessing in a model's metadata: values as ONNX stores them (JSON strings)
        or already decoded. ValueError naming `source` and what is missing or invalid."""
        missing = cls.missing(metadata)
        if missing:
            raise ValueError(
                f"{source} has no {', '.join(missing)} in its metadata, so its preprocessing "
                "is unknown; re-export the model (`--from export`), which writes it"
            )
        values = {k: _decoded(metadata[k]) for k in cls.KEYS}
        try:
            return cls(
                input_size=_integer(values["input_size"]),
                resize=_integer(values["resize"]),
                mean=_numbers("mean", values["mean"]),
                std=_numbers("std", values["std"]),
            )
        except (TypeError, ValueError) as exc:
            raise ValueError(
                f"{source} holds invalid preprocessing in its metadata ({exc}); re-export the "
                "model (`--from export`)"
            ) from None


def crop_start(length: int, size: int) -> int:
    """Where a centre crop of `size` starts along an axis of `length` pixels, as torchvision's
    `CenterCrop` places it: `int(round((length - size) / 2))` (Python's round, half to even), or
    where the axis is shorter than the crop, `-((size - length) // 2)`: the crop then reaches
    outside the image and torchvision fills those pixels with zeros (before scaling)."""
    if length >= size:
        return int(round((length - size) / 2.0))
    return -((size - length) // 2)


def decode_metadata(raw: Mapping[str, Any]) -> dict[str, Any]:
    """Model metadata as ONNX stores it (JSON-encoded strings) -> its values; a string that is
    not JSON (a description) stays a string."""
    return {k: _decoded(v) for k, v in raw.items()}


def _decoded(v: Any) -> Any:
    if not isinstance(v, str):
        return v
    try:
        return json.loads(v)
    except json.JSONDecodeError:
        return v


def _integer(v: Any) -> Any:
    """An int for an integral float (32.0); anything else is left for validation."""
    return int(v) if isinstance(v, float) and v.is_integer() else v


def _numbers(key: str, v: Any) -> tuple:
    if isinstance(v, (str, bytes)) or not isinstance(v, Sequence):
        raise ValueError(f"{key} must be a non-empty list of numbers, not {v!r}")
    return tuple(float(x) if _is_number(x) else x for x in v)
