"""Data: sources by name, presets, the validation split and loaders."""

from __future__ import annotations

import math

from pipeline.data.base import (
    DataBundle,
    FileImages,
    ImageSet,
    SampleExtras,
    SourceData,
    TensorImages,
    Transformed,
    cap_per_class,
    hash_parts,
    make_loader,
    stratified_split,
)
from pipeline.data.presets import (
    IMAGENET_MEAN,
    IMAGENET_STD,
    PRESETS,
    Preset,
    eval_transform,
    train_transform,
)
from pipeline.data.sources import SOURCES, register_source
from pipeline.errors import DataError


def resolve_preset(cfg, model=None) -> Preset:
    """The data set's preset, with what the model says of its input where it says it
    (`model_preprocessing`), with `data.*` overrides last."""
    base = PRESETS.get(cfg.name, PRESETS["imagefolder"])
    said = model_preprocessing(model) if model is not None else {}
    crop_pct = said.pop("crop_pct", None)
    base = base.with_overrides(**said)
    resize = cfg.resize
    if resize is None and crop_pct:  # the model's centre-crop fraction at the final input size
        resize = int(math.floor((cfg.input_size or base.input_size) / crop_pct))
    return base.with_overrides(
        input_size=cfg.input_size,
        resize=resize,
        train_aug=cfg.train_aug,
        mean=tuple(cfg.mean) if cfg.mean else None,
        std=tuple(cfg.std) if cfg.std else None,
    )


def model_preprocessing(model) -> dict:
    """What a model's library says its input is: timm's pretrained configuration (mean, std,
    input size, and its centre-crop fraction `crop_pct`, which sets the test-time resize for
    whatever input size is used); torchvision's ImageNet mean and standard deviation. Nothing
    for the built-in classifiers and the user's own code."""
    if model.source == "torchvision":
        return {"mean": IMAGENET_MEAN, "std": IMAGENET_STD}
    if model.source != "timm":
        return {}
    try:
        from timm.models import get_pretrained_cfg  # optional: the model.source needs it
    except ImportError:
        return {}
    pc = get_pretrained_cfg(model.name)
    if pc is None:
        return {}
    size = int(pc.input_size[-1])
    return {
        "mean": tuple(float(v) for v in pc.mean),
        "std": tuple(float(v) for v in pc.std),
        "input_size": size,
        "crop_pct": float(pc.crop_pct) if pc.crop_pct else None,
    }


def build_data(cfg, model=None) -> DataBundle:
    """Read the configured source, carve validation from train, attach the preset's transforms
    (the model's preprocessing where its library gives one: `resolve_preset`)."""
    if cfg.name not in SOURCES:
        raise DataError(f"unknown data source {cfg.name!r}; known: {', '.join(sorted(SOURCES))}")
    src: SourceData = SOURCES[cfg.name](cfg)
    preset = resolve_preset(cfg, model)
    train_idx, val_idx = stratified_split(src.train.labels, cfg.val_fraction, cfg.split_seed)
    train_idx = cap_per_class(src.train.labels, train_idx, cfg.max_per_class)
    fp = hash_parts(
        src.fingerprint, preset.to_dict(), cfg.val_fraction, cfg.split_seed, cfg.max_per_class
    )
    return DataBundle(
        train=Transformed(src.train, train_idx, train_transform(preset)),
        val=Transformed(src.train, val_idx, eval_transform(preset)),
        test=Transformed(src.test, range(len(src.test)), eval_transform(preset)),
        classes=src.classes,
        preset=preset,
        fingerprint=fp,
        info=src.info,
    )


__all__ = [
    "PRESETS",
    "SOURCES",
    "DataBundle",
    "FileImages",
    "ImageSet",
    "Preset",
    "SampleExtras",
    "SourceData",
    "TensorImages",
    "Transformed",
    "build_data",
    "eval_transform",
    "make_loader",
    "register_source",
    "resolve_preset",
    "stratified_split",
    "train_transform",
]
