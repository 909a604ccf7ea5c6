"""`data check`: what the configured data looks like and whether loading can keep up with training.

The loader's images/s (train transforms included) is set beside the images/s of a few real
forward+backward+SGD steps of the configured model on batches of the same shape; a ratio well
above 1 means data loading will not limit training.
"""

from __future__ import annotations

import statistics
import time
from collections import Counter

import numpy as np
import torch
from PIL import Image

from pipeline.data import DataBundle, FileImages, build_data, make_loader, resolve_preset
from pipeline.data.base import ImageSet, resolve_workers
from pipeline.models import create_model
from pipeline.models.external import build_classifier


def run_data_check(
    cfg, *, loader_batches: int = 5, train_steps: int = 3, size_sample: int = 200
) -> dict:
    """Build the configured data and measure it; `cfg` is a PipelineConfig. Returns plain JSON data."""
    start = time.perf_counter()
    bundle = build_data(cfg.data, cfg.model)
    build_s = time.perf_counter() - start
    loader = measure_loader(bundle, cfg, loader_batches)
    step = measure_train_step(cfg, bundle.num_classes, train_steps)
    return {
        "data": cfg.data.name,
        "root": str(cfg.data.root) if cfg.data.root else None,
        "num_classes": bundle.num_classes,
        "sizes": {"train": len(bundle.train), "val": len(bundle.val), "test": len(bundle.test)},
        "per_class": {
            split: per_class_counts(getattr(bundle, split).labels, bundle.classes)
            for split in ("train", "val", "test")
        },
        "image_size": image_size_stats([bundle.train.base, bundle.test.base], size_sample),
        "preset": bundle.preset.to_dict(),
        "cache": bundle.info.get("cache", "memory"),
        "skipped_images": bundle.info.get("skipped_images", 0),
        "build_s": round(build_s, 3),
        "loader": loader,
        "train_step": step,
        "loader_to_step_ratio": round(loader["images_per_s"] / step["images_per_s"], 2),
    }


def per_class_counts(labels: list[int], classes: list[str]) -> dict[str, int]:
    counts = Counter(labels)
    return {name: counts.get(i, 0) for i, name in enumerate(classes)}


def _raw_size(ds: ImageSet, i: int) -> tuple[int, int]:
    """(height, width) of the stored image; file headers only, no decoding."""
    if isinstance(ds, FileImages):
        with Image.open(ds.paths[i]) as im:
            return im.height, im.width
    shape = ds.load(i).shape
    return int(shape[-2]), int(shape[-1])


def image_size_stats(sets: list[ImageSet], sample: int) -> dict:
    """Min/median/max height and width over up to `sample` images spread evenly across the sets."""
    total = sum(len(s) for s in sets)
    sizes = []
    for ds in sets:
        k = min(len(ds), max(1, round(sample * len(ds) / max(total, 1))))
        for i in (
            sorted(set(np.linspace(0, len(ds) - 1, k).astype(int).tolist())) if len(ds) else []
        ):
            sizes.append(_raw_size(ds, i))
    if not sizes:
        return {"sampled": 0}
    hs, ws = [h for h, _ in sizes], [w for _, w in sizes]
    return {
        "sampled": len(sizes),
        "height": {"min": min(hs), "median": statistics.median(hs), "max": max(hs)},
        "width": {"min": min(ws), "median": statistics.median(ws), "max": max(ws)},
    }


def measure_loader(bundle: DataBundle, cfg, batches: int) -> dict:
    """Images/s of the train loader as training would build it; the first batch (worker start-up)
    is timed apart so that it does not hide the steady rate."""
    bs = cfg.train.batch_size
    workers = resolve_workers(cfg.data.num_workers, bundle.train)
    loader = make_loader(
        bundle.train, bs, shuffle=True, workers=cfg.data.num_workers, seed=cfg.train.seed
    )
    it = iter(loader)
    start = time.perf_counter()
    first = next(it)
    first_s = time.perf_counter() - start
    n, start = 0, time.perf_counter()
    for _ in range(batches):
        try:
            x, _ = next(it)
        except StopIteration:
            break
        n += len(x)
    elapsed = time.perf_counter() - start
    if n == 0:  # a set smaller than two batches: the first batch is all there is
        n, elapsed = len(first[0]), first_s
    del it, loader  # stops persistent workers before the model is timed
    return {
        "batch_size": bs,
        "workers": workers,
        "images": n,
        "first_batch_s": round(first_s, 3),
        "images_per_s": round(n / max(elapsed, 1e-9), 1),
    }


def _device(setting: str) -> torch.device:
    if setting == "cuda" or (setting == "auto" and torch.cuda.is_available()):
        return torch.device("cuda")
    return torch.device("cpu")


def _sync(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.synchronize()


def measure_train_step(cfg, num_classes: int, steps: int) -> dict:
    """Images/s of forward + backward + SGD step for the configured model on random batches."""
    preset = resolve_preset(cfg.data, cfg.model)
    stem = preset.stem if cfg.model.stem == "auto" else cfg.model.stem
    device = _device(cfg.train.device)
    if cfg.model.external:
        m = cfg.model
        model, _ = build_classifier(
            m.source, m.name, m.kwargs, num_classes, preset.input_size, m.stages
        )
    else:
        model = create_model(
            cfg.model.name, num_classes=num_classes, stem=stem, width=cfg.model.width
        )
    model = model.to(device).train()
    opt = torch.optim.SGD(model.parameters(), lr=1e-3, momentum=cfg.train.momentum)
    bs, s = cfg.train.batch_size, preset.input_size
    x = torch.randn(bs, 3, s, s, device=device)
    y = torch.randint(0, num_classes, (bs,), device=device)

    def step() -> None:
        opt.zero_grad(set_to_none=True)
        out = model(x)
        logits = out.logits if hasattr(out, "logits") else out
        torch.nn.functional.cross_entropy(logits, y).backward()
        opt.step()

    for _ in range(2):  # warm-up: the first steps pay for kernel selection and allocation
        step()
    _sync(device)
    start = time.perf_counter()
    for _ in range(steps):
        step()
    _sync(device)
    elapsed = time.perf_counter() - start
    return {
        "model": cfg.model.name,
        "width": cfg.model.width,
        "stem": stem,
        "device": str(device),
        "batch_shape": [bs, 3, s, s],
        "steps": steps,
        "images_per_s": round(bs * steps / max(elapsed, 1e-9), 1),
    }


def format_data_check(result: dict) -> str:
    """A short human report of run_data_check's result."""
    sz, ld, st = result["sizes"], result["loader"], result["train_step"]
    lines = [
        f"data: {result['data']}  root: {result['root']}  classes: {result['num_classes']}",
        f"split sizes: train {sz['train']}  val {sz['val']}  test {sz['test']}",
        f"cache: {result['cache']}  skipped images: {result['skipped_images']}  "
        f"build: {result['build_s']:.2f} s",
    ]
    im = result["image_size"]
    if im.get("sampled"):
        h, w = im["height"], im["width"]
        lines.append(
            f"image size over {im['sampled']} images: height {h['min']}/{h['median']}/{h['max']}  "
            f"width {w['min']}/{w['median']}/{w['max']} (min/median/max)"
        )
    lines.append("per class (train / val / test):")
    pc = result["per_class"]
    for name in pc["train"]:
        lines.append(
            f"  {name:<30} {pc['train'][name]:>7} {pc['val'][name]:>7} {pc['test'][name]:>7}"
        )
    lines += [
        f"loader:     {ld['images_per_s']:>10.1f} images/s  (batch {ld['batch_size']}, "
        f"{ld['workers']} workers, first batch {ld['first_batch_s']:.2f} s)",
        f"train step: {st['images_per_s']:>10.1f} images/s  ({st['model']} width {st['width']}, "
        f"stem {st['stem']}, {st['device']}, batch {tuple(st['batch_shape'])})",
        f"loader / step: {result['loader_to_step_ratio']:.1f}x"
        + ("  (loading may limit training)" if result["loader_to_step_ratio"] < 1.5 else ""),
    ]
    return "\n".join(lines)
