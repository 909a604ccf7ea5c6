"""Data sources by name: the embedded digits and generic image folders."""

from __future__ import annotations

from collections.abc import Callable
from pathlib import Path

import numpy as np
import torch

from pipeline.data.base import FileImages, SourceData, TensorImages, hash_parts, stratified_split
from pipeline.errors import DataError

SOURCES: dict[str, Callable] = {}
IMAGE_EXTENSIONS = {".jpg", ".jpeg", ".png", ".bmp", ".gif", ".tif", ".tiff", ".webp", ".ppm", ".pgm"}


def register_source(name: str) -> Callable:
    def deco(fn: Callable) -> Callable:
        SOURCES[name] = fn
        return fn

    return deco


@register_source("digits")
def digits(cfg) -> SourceData:
    """scikit-learn's bundled 8x8 digits (1,797 real images), upsampled once to 32x32 RGB."""
    from sklearn.datasets import load_digits

    bunch = load_digits()
    img = torch.from_numpy((bunch.images * (255.0 / 16.0)).round().astype(np.uint8))
    img = img[:, None].float()
    img = torch.nn.functional.interpolate(img, size=(32, 32), mode="bilinear", align_corners=False)
    img = img.round().clamp(0, 255).to(torch.uint8).expand(-1, 3, -1, -1).contiguous()
    labels = bunch.target.tolist()
    train_idx, test_idx = stratified_split(labels, cfg.test_fraction, cfg.split_seed + 1)
    fp = hash_parts("digits", bunch.images.tobytes(), labels, cfg.test_fraction, cfg.split_seed)
    return SourceData(
        train=TensorImages(img[train_idx], [labels[i] for i in train_idx]),
        test=TensorImages(img[test_idx], [labels[i] for i in test_idx]),
        classes=[str(c) for c in bunch.target_names.tolist()],
        fingerprint=fp,
    )


def _scan_split(root: Path, classes: list[str] | None) -> tuple[list[Path], list[int], list[str]]:
    if not root.is_dir():
        raise DataError(f"expected a folder {root} with one sub-folder per class (root/<class>/*.jpg)")
    found = sorted(d.name for d in root.iterdir() if d.is_dir() and not d.name.startswith("."))
    if not found:
        raise DataError(f"{root} has no class folders; expected {root}/<class>/<image files>")
    classes = classes or found
    index = {c: i for i, c in enumerate(classes)}
    paths, labels = [], []
    for name in found:
        if name not in index:
            raise DataError(f"class folder {root / name} is not among the train classes {classes}")
        files = sorted(
            p for p in (root / name).rglob("*") if p.is_file() and p.suffix.lower() in IMAGE_EXTENSIONS
        )
        if not files:
            raise DataError(f"class folder {root / name} holds no images ({', '.join(sorted(IMAGE_EXTENSIONS))})")
        paths.extend(files)
        labels.extend([index[name]] * len(files))
    return paths, labels, classes


def files_fingerprint(paths: list[Path], labels: list[int], base: Path) -> str:
    """Relative paths, sizes and modification times: changes when a file is added, removed or edited."""
    entries = []
    for p in paths:
        st = p.stat()
        entries.append((str(p.relative_to(base)), st.st_size, st.st_mtime_ns))
    return hash_parts(entries, labels)


@register_source("imagefolder")
def imagefolder(cfg) -> SourceData:
    """root/train/<class>/* and root/test/<class>/* (torchvision ImageFolder layout)."""
    root = Path(cfg.root)
    tr_paths, tr_labels, classes = _scan_split(root / "train", None)
    te_paths, te_labels, _ = _scan_split(root / "test", classes)
    fp = hash_parts(
        "imagefolder",
        files_fingerprint(tr_paths, tr_labels, root),
        files_fingerprint(te_paths, te_labels, root),
    )
    return SourceData(
        train=FileImages(tr_paths, tr_labels),
        test=FileImages(te_paths, te_labels),
        classes=classes,
        fingerprint=fp,
    )
