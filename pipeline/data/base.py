"""Image sets, splits, fingerprints and loaders shared by every data source.

A source yields raw uint8 images (CHW, 3 channels) and integer labels; this module carves the
validation split from train (stratified, deterministic), applies the preset's transforms and
builds loaders. Nothing here knows about a particular data set's layout.
"""

from __future__ import annotations

import hashlib
import os
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
import torch
from PIL import Image
from torch.utils.data import DataLoader, Dataset

from pipeline.data.presets import Preset, eval_transform
from pipeline.errors import DataError
from pipeline.images import bad_image_errors, to_rgb8


class ImageSet(Dataset):
    """Raw images: `load(i)` gives a uint8 tensor (3, H, W); `labels[i]` its class index."""

    labels: list[int]

    def __len__(self) -> int:
        return len(self.labels)

    def load(self, i: int) -> torch.Tensor:
        raise NotImplementedError

    def __getitem__(self, i: int) -> tuple[torch.Tensor, int]:
        return self.load(i), self.labels[i]


class TensorImages(ImageSet):
    """Images held in memory as one uint8 tensor (N, 3, H, W)."""

    def __init__(self, images: torch.Tensor, labels: Sequence[int]) -> None:
        if images.dtype != torch.uint8 or images.ndim != 4 or images.shape[1] != 3:
            raise ValueError(
                f"expected uint8 (N, 3, H, W), got {images.dtype} {tuple(images.shape)}"
            )
        if len(images) != len(labels):
            raise ValueError("images and labels differ in length")
        self.images = images
        self.labels = [int(v) for v in labels]

    def load(self, i: int) -> torch.Tensor:
        return self.images[i]


class FileImages(ImageSet):
    """Images decoded from files on access (Pillow, converted to RGB)."""

    def __init__(self, paths: Sequence[Path], labels: Sequence[int]) -> None:
        self.paths = [Path(p) for p in paths]
        self.labels = [int(v) for v in labels]

    def load(self, i: int) -> torch.Tensor:
        return decode_image(self.paths[i])


def decode_image(path: Path) -> torch.Tensor:
    try:
        with Image.open(path) as im:
            arr = to_rgb8(im)
    except bad_image_errors() as exc:
        raise DataError(
            f"cannot decode image {path}: {exc}. Replace or delete the file "
            "(a corrupt or truncated file)"
        ) from None
    return torch.from_numpy(arr.copy()).permute(2, 0, 1).contiguous()


class Transformed(Dataset):
    """A view of an ImageSet through index list and transform; yields (float tensor, label)."""

    def __init__(self, base: ImageSet, indices: Sequence[int], transform: Callable) -> None:
        self.base = base
        self.indices = list(indices)
        self.transform = transform

    def __len__(self) -> int:
        return len(self.indices)

    @property
    def labels(self) -> list[int]:
        return [self.base.labels[i] for i in self.indices]

    def __getitem__(self, i: int) -> tuple[torch.Tensor, int]:
        j = self.indices[i]
        return self.transform(self.base.load(j)), self.base.labels[j]

    def stack(self, n: int | None = None) -> torch.Tensor:
        """The first n images (all by default), transformed, as one float batch."""
        n = len(self) if n is None else min(n, len(self))
        return torch.stack([self[i][0] for i in range(n)])


class SampleExtras(Dataset):
    """A view that yields (image, label, extras) for methods that read more than the image.

    `index`: extras["index"] is the sample's position in `base` (for per-sample state).
    `pair`: extras["pair"] is another sample of the same class, drawn uniformly from the
    class's other members (the sample itself only when it is its class's one member), through
    `base`, so with its own augmentation. The draw uses torch's global RNG, like the
    augmentation: seeded per sample under `SeededSamples`, per worker otherwise. Being a draw
    per sample, it works with any sampler and with each process's shard.
    """

    def __init__(self, base: Dataset, *, index: bool = False, pair: bool = False) -> None:
        self.base = base
        self.index = index
        self.pair = pair
        self.members: dict[int, np.ndarray] = {}
        if pair:
            labels = np.asarray(base.labels)
            self.members = {int(c): np.flatnonzero(labels == c) for c in np.unique(labels)}

    def __len__(self) -> int:
        return len(self.base)

    def partner(self, i: int, label: int) -> int:
        members = self.members[int(label)]
        if len(members) < 2:
            return i
        j = int(members[int(torch.randint(len(members) - 1, ()))])
        return int(members[-1]) if j == i else j  # uniform over the members other than i

    def __getitem__(self, i: int) -> tuple[torch.Tensor, int, dict]:
        image, label = self.base[i]
        extras: dict = {}
        if self.index:
            extras["index"] = i
        if self.pair:
            extras["pair"] = self.base[self.partner(i, label)][0]
        return image, label, extras


@dataclass
class SourceData:
    """What a source reads from disk (or memory): raw train and test sets and class names."""

    train: ImageSet
    test: ImageSet
    classes: list[str]
    fingerprint: str
    info: dict = field(default_factory=dict)


@dataclass
class DataBundle:
    train: Transformed
    val: Transformed
    test: Transformed
    classes: list[str]
    preset: Preset
    fingerprint: str
    info: dict = field(default_factory=dict)

    @property
    def num_classes(self) -> int:
        return len(self.classes)

    def spread_train(self, n: int) -> Transformed:
        """At most n train images spread evenly over the split, through the deterministic
        evaluation transform: the calibration and pruning samples."""
        train = self.train
        picks = np.linspace(0, len(train) - 1, num=min(n, len(train))).round().astype(int)
        indices = [train.indices[i] for i in picks]
        return Transformed(train.base, indices, eval_transform(self.preset))

    def calibration_batch(self, n: int) -> np.ndarray:
        """`spread_train(n)` as one float32 NCHW array (INT8 calibration)."""
        return self.spread_train(n).stack().numpy().astype(np.float32)

    def summary(self) -> dict:
        return {
            "classes": self.classes,
            "num_classes": self.num_classes,
            "sizes": {"train": len(self.train), "val": len(self.val), "test": len(self.test)},
            "preset": self.preset.to_dict(),
            "fingerprint": self.fingerprint,
            **self.info,
        }


def stratified_split(
    labels: Sequence[int], fraction: float, seed: int
) -> tuple[list[int], list[int]]:
    """Deterministic stratified split: (kept, carved) index lists, carved ~ fraction per class."""
    if fraction <= 0:
        return list(range(len(labels))), []
    rng = np.random.default_rng(seed)
    labels_arr = np.asarray(labels)
    kept, carved = [], []
    for c in np.unique(labels_arr):
        idx = np.flatnonzero(labels_arr == c)
        rng.shuffle(idx)
        n = int(round(len(idx) * fraction))
        if len(idx) > 1:
            n = min(max(n, 1), len(idx) - 1)
        else:
            n = 0
        carved.extend(idx[:n].tolist())
        kept.extend(idx[n:].tolist())
    return sorted(kept), sorted(carved)


def cap_per_class(labels: Sequence[int], indices: Sequence[int], cap: int | None) -> list[int]:
    if cap is None:
        return list(indices)
    seen: dict[int, int] = {}
    out = []
    for i in indices:
        c = labels[i]
        if seen.get(c, 0) < cap:
            seen[c] = seen.get(c, 0) + 1
            out.append(i)
    return out


def hash_parts(*parts: object) -> str:
    h = hashlib.sha256()
    for p in parts:
        h.update(repr(p).encode())
        h.update(b"\0")
    return h.hexdigest()[:16]


def available_cpus() -> int:
    # The affinity mask respects container and taskset limits; cpu_count() reports the host.
    try:
        return len(os.sched_getaffinity(0))
    except AttributeError:
        return os.cpu_count() or 1


def resolve_workers(setting: int | str, dataset: Dataset) -> int:
    """'auto': no workers on small machines, where training needs every core; otherwise a few for
    in-memory uint8 sets (crop/flip is cheap, but one process cannot keep up with a GPU) and more
    for files, whose decoding dominates."""
    if isinstance(setting, int):
        return setting
    cpus = available_cpus()
    if cpus <= 2:
        return 0
    base = dataset.base if isinstance(dataset, Transformed) else dataset
    if isinstance(base, TensorImages):
        return min(4, max(1, cpus // 4))
    return min(8, cpus // 2)


def make_loader(
    dataset: Dataset,
    batch_size: int,
    *,
    shuffle: bool,
    workers: int | str = "auto",
    seed: int = 0,
    pin_memory: bool = False,
    persistent_workers: bool | None = None,
    worker_init_fn: Callable[[int], None] | None = None,
    drop_last: bool = False,
) -> DataLoader:
    """`persistent_workers=None` keeps workers alive whenever there are any."""
    n = resolve_workers(workers, dataset)
    g = torch.Generator()
    g.manual_seed(seed)
    return DataLoader(
        dataset,
        batch_size=batch_size,
        shuffle=shuffle,
        num_workers=n,
        generator=g,
        persistent_workers=n > 0 if persistent_workers is None else (n > 0 and persistent_workers),
        pin_memory=pin_memory,
        worker_init_fn=worker_init_fn if n > 0 else None,
        drop_last=drop_last,
    )
