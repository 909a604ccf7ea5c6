"""Lists of image files become image sets: the bad-file policy, the in-memory cache, threaded decoding.

Sources only find files and labels; this module decides how they are held. Small images
(CIFAR-like 32x32, Tiny-ImageNet 64x64) are decoded once into one uint8 tensor so that training
never waits on JPEG decoding; large ones stay on disk and are decoded by the loader's workers.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch
from PIL import Image

from pipeline.data.base import FileImages, ImageSet, TensorImages, available_cpus, hash_parts
from pipeline.data.content import content_hashes
from pipeline.errors import DataError
from pipeline.images import bad_image_errors, to_rgb8

IMAGE_EXTENSIONS = {
    ".jpg",
    ".jpeg",
    ".png",
    ".bmp",
    ".gif",
    ".tif",
    ".tiff",
    ".webp",
    ".ppm",
    ".pgm",
}
SKIPPED_EXAMPLES = 5  # the manifest lists the first few skipped files, not thousands
SIZE_SAMPLE = 32  # headers read to estimate the decoded size for cache=auto


@dataclass
class FileList:
    """One split as found on disk: image paths and their class indices."""

    paths: list[Path]
    labels: list[int]


def list_images(folder: Path) -> list[Path]:
    return sorted(
        p
        for p in folder.rglob("*")
        if p.is_file() and p.suffix.lower() in IMAGE_EXTENSIONS and not p.name.startswith(".")
    )


def decode_threads() -> int:
    # Pillow releases the GIL while decoding, so threads scale with cores without process start-up.
    return max(1, min(8, available_cpus()))


def _open_rgb(path: Path, draft: bool) -> np.ndarray:
    with Image.open(path) as im:
        if draft:
            # JPEG DCT scaling: reads the whole stream (so truncation is caught) at 1/8 the cost.
            im.draft("RGB", (max(1, im.width // 8), max(1, im.height // 8)))
        return to_rgb8(im)


def _try(path: Path, draft: bool) -> np.ndarray | str:
    """The decoded HWC array, or the reason it could not be decoded."""
    try:
        return _open_rgb(path, draft)
    except bad_image_errors() as exc:
        return f"{type(exc).__name__}: {exc}"


def _try_full(path: Path) -> np.ndarray | str:
    return _try(path, draft=False)


def _try_verify(path: Path) -> np.ndarray | str:
    return _try(path, draft=True)


def estimate_decoded_bytes(paths: Sequence[Path]) -> tuple[int, bool]:
    """(estimated bytes of all images decoded as uint8 RGB, whether the sampled sizes agree)."""
    if not paths:
        return 0, True
    picks = sorted(set(np.linspace(0, len(paths) - 1, min(SIZE_SAMPLE, len(paths))).astype(int)))
    sizes = []
    for i in picks:
        try:
            with Image.open(paths[i]) as im:
                sizes.append(im.size)
        except bad_image_errors():
            continue  # bad files are dealt with by the decode pass, under on_bad_image
    if not sizes:
        return 0, False
    mean_pixels = float(np.mean([w * h for w, h in sizes]))
    return int(mean_pixels * 3 * len(paths)), len(set(sizes)) == 1


def choose_cache(cfg, paths: Sequence[Path]) -> str:
    if cfg.cache != "auto":
        return cfg.cache
    estimate, uniform = estimate_decoded_bytes(paths)
    return "memory" if uniform and estimate <= cfg.cache_max_gib * 2**30 else "none"


class _SizeMismatch(Exception):
    def __init__(self, first: tuple[Path, tuple], other: tuple[Path, tuple]) -> None:
        super().__init__()
        self.first, self.other = first, other


def _decode_all(paths: Sequence[Path], fn: Callable, stack: bool):
    """Decode in a thread pool, in order. Returns (CHW stack or None, kept indices, failures)."""
    out: np.ndarray | None = None
    kept: list[int] = []
    bad: list[tuple[Path, str]] = []
    pool = ThreadPoolExecutor(max_workers=decode_threads())
    try:
        for i, res in enumerate(pool.map(fn, paths)):
            if isinstance(res, str):
                bad.append((paths[i], res))
                continue
            if stack:
                chw = res.transpose(2, 0, 1)
                if out is None:
                    out = np.empty((len(paths), *chw.shape), dtype=np.uint8)
                    first = (paths[i], res.shape[:2])
                elif chw.shape != out.shape[1:]:
                    raise _SizeMismatch(first, (paths[i], res.shape[:2]))
                out[len(kept)] = chw  # written in place: peak memory stays one copy of the set
            kept.append(i)
    finally:
        pool.shutdown(wait=True, cancel_futures=True)
    if stack and out is None:
        out = np.empty((0, 3, 1, 1), dtype=np.uint8)
    return (out[: len(kept)] if stack else None), kept, bad


def _one_split(fl: FileList, mode: str, cfg) -> tuple[ImageSet, list[tuple[Path, str]]]:
    if mode == "memory":
        stack, kept, bad = _decode_all(fl.paths, _try_full, stack=True)
        labels = [fl.labels[i] for i in kept]
        return TensorImages(torch.from_numpy(stack), labels), bad
    if cfg.on_bad_image == "skip":
        _, kept, bad = _decode_all(fl.paths, _try_verify, stack=False)
    else:
        # fail without a cache: a bad file raises a DataError naming it when the loader reaches it.
        kept, bad = list(range(len(fl.paths))), []
    return FileImages([fl.paths[i] for i in kept], [fl.labels[i] for i in kept]), bad


def _fail_on_bad(bad: list[tuple[Path, str]]) -> None:
    path, reason = bad[0]
    more = f" ({len(bad)} unreadable files in all)" if len(bad) > 1 else ""
    raise DataError(
        f"cannot decode image {path}: {reason}{more}. Replace or delete the file, "
        "or set data.on_bad_image=skip to drop unreadable images and count them in the manifest"
    )


def build_image_sets(
    splits: dict[str, FileList], cfg, root: Path
) -> tuple[dict[str, ImageSet], dict]:
    """Hold each split as configured (cache, on_bad_image); info records the cache and skipped files."""
    mode = choose_cache(cfg, [p for fl in splits.values() for p in fl.paths])
    try:
        sets, bad = _build(splits, mode, cfg)
    except _SizeMismatch as err:
        if cfg.cache == "memory":
            (p1, s1), (p2, s2) = err.first, err.other
            raise DataError(
                f"data.cache=memory needs images of one size, but {p1} is {s1[1]}x{s1[0]} and "
                f"{p2} is {s2[1]}x{s2[0]} (width x height). Set data.cache=none or auto"
            ) from None
        mode = "none"  # the size sample missed a differing image: keep files on disk instead
        sets, bad = _build(splits, mode, cfg)
    if bad and cfg.on_bad_image == "fail":
        _fail_on_bad(bad)
    info = {
        "cache": mode,
        "skipped_images": len(bad),
        "skipped_examples": [f"{_rel(p, root)} ({why})" for p, why in bad[:SKIPPED_EXAMPLES]],
    }
    return sets, info


def _build(splits: dict[str, FileList], mode: str, cfg) -> tuple[dict[str, ImageSet], list]:
    sets, bad = {}, []
    for name, fl in splits.items():
        sets[name], split_bad = _one_split(fl, mode, cfg)
        bad.extend(split_bad)
    return sets, bad


def _rel(path: Path, root: Path) -> str:
    try:
        return str(path.relative_to(root))
    except ValueError:
        return str(path)


def files_fingerprint(fl: FileList, base: Path) -> str:
    """Relative paths, contents and labels: changes when any file does, and is the same for
    two copies of the data (modification times are only the hash cache's check)."""
    digests = content_hashes(fl.paths)
    # listed but absent: skipped under on_bad_image
    entries = [(_rel(p, base), d or "missing") for p, d in zip(fl.paths, digests, strict=True)]
    return hash_parts(entries, fl.labels)
