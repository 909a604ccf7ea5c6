"""CIFAR-10 and CIFAR-100 from the official python pickles, read directly.

torchvision's CIFAR classes insist on the official checksums, which rejects any subset or
re-packed copy; reading the pickles ourselves accepts every well-formed copy and never downloads.
"""

from __future__ import annotations

import hashlib
import pickle
from pathlib import Path

import numpy as np
import torch

from pipeline.data.base import SourceData, TensorImages, hash_parts
from pipeline.data.sources.common import locate, require_file
from pipeline.data.sources.registry import register_source
from pipeline.errors import DataError

# The pickles hold numpy arrays and builtins only; refusing every other global keeps a tampered
# file from running code on load.
_ALLOWED_GLOBALS = {
    ("numpy.core.multiarray", "_reconstruct"),
    ("numpy._core.multiarray", "_reconstruct"),
    ("numpy.core.multiarray", "scalar"),
    ("numpy._core.multiarray", "scalar"),
    ("numpy", "ndarray"),
    ("numpy", "dtype"),
    ("_codecs", "encode"),  # bytes pickled by python 3 at protocol 2
    ("copy_reg", "_reconstructor"),  # python 2 pickles (the official files) name copyreg so
    ("copyreg", "_reconstructor"),
}


class _SafeUnpickler(pickle.Unpickler):
    def find_class(self, module: str, name: str) -> object:
        if (module, name) in _ALLOWED_GLOBALS:
            return super().find_class(module, name)
        raise pickle.UnpicklingError(f"unexpected object {module}.{name} in a CIFAR pickle")


def load_pickle(path: Path, what: str) -> dict:
    require_file(path, what)
    try:
        with path.open("rb") as f:
            obj = _SafeUnpickler(f, encoding="bytes").load()
    except (pickle.UnpicklingError, EOFError, ValueError, TypeError, AttributeError) as exc:
        raise DataError(
            f"{path} is not a readable CIFAR pickle ({exc}); re-extract the official archive"
        ) from None
    if not isinstance(obj, dict):
        raise DataError(
            f"{path}: expected a pickled dict (the official CIFAR format), got {type(obj).__name__}"
        )
    return {k.decode() if isinstance(k, bytes) else k: v for k, v in obj.items()}


def _field(d: dict, key: str, path: Path) -> object:
    if key not in d:
        raise DataError(
            f"{path}: key {key!r} missing; found keys {sorted(d)}. Expected the official CIFAR pickle"
        )
    return d[key]


def read_batch(path: Path, label_key: str, num_classes: int) -> tuple[torch.Tensor, list[int]]:
    """One pickle -> uint8 (N, 3, 32, 32) images and labels, checked against the official format."""
    d = load_pickle(path, "a CIFAR data pickle")
    data = np.asarray(_field(d, "data", path))
    labels = [int(v) for v in _field(d, label_key, path)]
    if data.dtype != np.uint8 or data.ndim != 2 or data.shape[1] != 3072:
        raise DataError(
            f"{path}: 'data' must be uint8 of shape (N, 3072) (3x32x32 images, row-major), "
            f"got {data.dtype} {data.shape}"
        )
    if len(labels) != len(data):
        raise DataError(f"{path}: {len(data)} images but {len(labels)} entries in {label_key!r}")
    bad = [v for v in labels if not 0 <= v < num_classes]
    if bad:
        raise DataError(f"{path}: label {bad[0]} outside 0..{num_classes - 1} in {label_key!r}")
    return torch.from_numpy(data.reshape(-1, 3, 32, 32).copy()), labels


def read_names(path: Path, key: str) -> list[str]:
    d = load_pickle(path, "the CIFAR meta pickle")
    names = _field(d, key, path)
    return [n.decode() if isinstance(n, bytes) else str(n) for n in names]


def _source(
    name: str,
    folder: Path,
    train_files: list[str],
    test_file: str,
    label_key: str,
    classes: list[str],
) -> SourceData:
    parts = [read_batch(folder / f, label_key, len(classes)) for f in train_files]
    train_x = torch.cat([x for x, _ in parts]) if len(parts) > 1 else parts[0][0]
    train_y = [v for _, ys in parts for v in ys]
    test_x, test_y = read_batch(folder / test_file, label_key, len(classes))
    # Content hash of the bytes themselves: the arrays are small and already in memory.
    fp = hash_parts(name, _digest(train_x), train_y, _digest(test_x), test_y, classes)
    return SourceData(
        train=TensorImages(train_x, train_y),
        test=TensorImages(test_x, test_y),
        classes=classes,
        fingerprint=fp,
        info={"cache": "memory", "skipped_images": 0, "skipped_examples": []},
    )


def _digest(x: torch.Tensor) -> str:
    return hashlib.sha256(x.numpy().tobytes()).hexdigest()


@register_source("cifar100")
def cifar100(cfg) -> SourceData:
    layout = "cifar-100-python/{train,test,meta} (the official python pickles)"
    folder = locate(cfg, "CIFAR-100", "meta", ("cifar-100-python",), layout)
    classes = read_names(folder / "meta", "fine_label_names")
    return _source("cifar100", folder, ["train"], "test", "fine_labels", classes)


@register_source("cifar10")
def cifar10(cfg) -> SourceData:
    layout = "cifar-10-batches-py/{data_batch_1..5,test_batch,batches.meta} (the official python pickles)"
    folder = locate(cfg, "CIFAR-10", "batches.meta", ("cifar-10-batches-py",), layout)
    classes = read_names(folder / "batches.meta", "label_names")
    batches = [f"data_batch_{i}" for i in range(1, 6)]
    return _source("cifar10", folder, batches, "test_batch", "labels", classes)
