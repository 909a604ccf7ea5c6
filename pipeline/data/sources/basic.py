"""The embedded digits default and generic image folders (torchvision ImageFolder layout)."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import torch

from pipeline.data.base import SourceData, TensorImages, hash_parts, stratified_split
from pipeline.data.files import FileList
from pipeline.data.sources.common import file_source, locate, scan_class_folder
from pipeline.data.sources.registry import register_source
from pipeline.errors import DataError


def _digits_arrays() -> tuple[np.ndarray, np.ndarray]:
    """scikit-learn's digits as (images float64 [n, 8, 8] in 0..16, labels int [n]).

    Read from the CSV file scikit-learn ships, as its `load_digits` reads it, without importing
    scikit-learn (2-3 s in every process that builds the data: the run and each training
    rank); `load_digits` itself where that file is not found."""
    import gzip
    import importlib.util

    spec = importlib.util.find_spec("sklearn")  # locates the package without importing it
    roots = list(spec.submodule_search_locations or []) if spec is not None else []
    for root in roots:
        path = Path(root) / "datasets" / "data" / "digits.csv.gz"
        if path.is_file():
            with gzip.open(path) as f:
                data = np.loadtxt(f, delimiter=",")
            if data.ndim == 2 and data.shape[1] == 65:
                return data[:, :-1].reshape(-1, 8, 8), data[:, -1].astype(int)
    from sklearn.datasets import load_digits

    bunch = load_digits()
    return bunch.images, bunch.target


@register_source("digits")
def digits(cfg) -> SourceData:
    """scikit-learn's bundled 8x8 digits (1,797 real images), upsampled once to 32x32 RGB."""
    images, target = _digits_arrays()
    img = torch.from_numpy((images * (255.0 / 16.0)).round().astype(np.uint8))
    img = img[:, None].float()
    img = torch.nn.functional.interpolate(img, size=(32, 32), mode="bilinear", align_corners=False)
    img = img.round().clamp(0, 255).to(torch.uint8).expand(-1, 3, -1, -1).contiguous()
    labels = target.tolist()
    train_idx, test_idx = stratified_split(labels, cfg.test_fraction, cfg.split_seed + 1)
    fp = hash_parts("digits", images.tobytes(), labels, cfg.test_fraction, cfg.split_seed)
    return SourceData(
        train=TensorImages(img[train_idx], [labels[i] for i in train_idx]),
        test=TensorImages(img[test_idx], [labels[i] for i in test_idx]),
        classes=[str(c) for c in range(10)],
        fingerprint=fp,
    )


def scan_split(root: Path, classes: list[str] | None) -> tuple[FileList, list[str]]:
    """root/<class>/<images>; the test split must use the train split's classes."""
    if not root.is_dir():
        raise DataError(f"expected a folder {root} with one sub-folder per class (<class>/*.jpg)")
    found = sorted(d.name for d in root.iterdir() if d.is_dir() and not d.name.startswith("."))
    if not found:
        raise DataError(f"{root} has no class folders; expected {root}/<class>/<image files>")
    classes = classes or found
    index = {c: i for i, c in enumerate(classes)}
    paths, labels = [], []
    for name in found:
        if name not in index:
            raise DataError(f"class folder {root / name} is not among the train classes {classes}")
        files = scan_class_folder(root / name)
        paths.extend(files)
        labels.extend([index[name]] * len(files))
    return FileList(paths, labels), classes


@register_source("imagefolder")
def imagefolder(cfg) -> SourceData:
    """root/train/<class>/* and root/test/<class>/* (torchvision ImageFolder layout)."""
    layout = "train/<class>/*.jpg and test/<class>/*.jpg"
    root = locate(cfg, "image folder", "train", (), layout)
    train, classes = scan_split(root / "train", None)
    test, _ = scan_split(root / "test", classes)
    return file_source("imagefolder", root, train, test, classes, cfg)
