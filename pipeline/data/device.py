"""The training set held on the training device, batched and augmented there (`data.on_device`).

Small images (CIFAR-sized) train faster than a CPU loader can crop, flip and collate them one
by one: on a GPU the loader, not the model, sets the pace. `DeviceBatches` keeps the uint8
training images on the device once and builds each batch with a few tensor operations: gather,
zero-padded random crop, horizontal flip, scale and normalise, the same augmentation as the
CPU path (`presets.train_transform` for `none`, `crop` and `crop_flip`).

Every random draw is made per sample and per epoch from (seed, epoch) alone, before the epoch
starts: the crop offsets and flip of image i in epoch e do not depend on the number of
processes, on the batch it lands in, or on where a resumed run starts. Processes split each
epoch's shuffled order the way Accelerate's even batches do (every process gets the same
number of batches; the last is padded from the start of the order), and the batch a process
ends its epoch with tells Accelerate's gradient accumulation that the epoch is over.
"""

from __future__ import annotations

import math
from collections.abc import Iterator

import torch
from accelerate.data_loader import DataLoaderStateMixin
from accelerate.state import GradientState

from pipeline.data.base import TensorImages, Transformed
from pipeline.data.presets import Preset
from pipeline.errors import ConfigError

SUPPORTED_AUG = ("none", "crop", "crop_flip")


def unsupported_reason(train: Transformed, preset: Preset) -> str | None:
    """Why this training set cannot be held and augmented on the device (None: it can)."""
    if not isinstance(train.base, TensorImages):
        return (
            "the training images are read from files on access, not held in memory; set "
            "data.cache=memory (images of one size) or raise data.cache_max_gib"
        )
    if preset.train_aug not in SUPPORTED_AUG:
        return (
            f"train augmentation {preset.train_aug!r} runs on the CPU only (on the device: "
            f"{', '.join(SUPPORTED_AUG)}); set data.train_aug=crop_flip or data.on_device=false"
        )
    _, _, h, w = train.base.images.shape
    s = preset.input_size
    if (h, w) != (s, s) or (preset.resize or s) != s:
        return (
            f"the images are {w}x{h} and the input is {s}x{s}: resizing runs on the CPU only; "
            "set data.on_device=false, or store the images at the input size"
        )
    return None


def _seed(*parts: int) -> int:
    v = 0
    for p in parts:
        v = (v * 1_000_003 + int(p)) % 2**63
    return v


class DeviceBatches(DataLoaderStateMixin):
    """Batches of (images, labels[, extras]) made on `device` from `train`'s uint8 images.

    `rank` / `world`: this process's share of every epoch. `index` / `pair`: add
    extras["index"] (the sample's position in `train`) and extras["pair"] (another image of
    the same class, augmented on its own), as `SampleExtras` does for the CPU loader.
    """

    def __init__(
        self,
        train: Transformed,
        preset: Preset,
        batch_size: int,
        device: torch.device | str,
        *,
        seed: int,
        rank: int = 0,
        world: int = 1,
        index: bool = False,
        pair: bool = False,
    ) -> None:
        why = unsupported_reason(train, preset)
        if why is not None:
            raise ConfigError(f"data.on_device=true: {why}")
        self.device = torch.device(device)
        idx = torch.as_tensor(train.indices, dtype=torch.long)
        self.images = train.base.images.index_select(0, idx).to(self.device)
        self.labels = torch.as_tensor(train.labels, dtype=torch.long, device=self.device)
        self.n = len(idx)
        self.batch_size = batch_size
        self.seed, self.rank, self.world = seed, rank, world
        self.index, self.pair = index, pair
        self.pad = preset.input_size // 8 if preset.train_aug in ("crop", "crop_flip") else 0
        self.flip = preset.train_aug == "crop_flip"
        shape = (1, 3, 1, 1)
        self.mean = torch.tensor(preset.mean, device=self.device).view(shape) * 255.0
        self.std = torch.tensor(preset.std, device=self.device).view(shape) * 255.0
        self.epoch = 0
        self.skip = 0
        self.gradient_state = GradientState()
        self._drop_last = True  # no `remainder` bookkeeping: that is for evaluation loaders
        if pair:
            self._members()

    def _members(self) -> None:
        """Each sample's class as a run of a class-sorted order, for drawing partners."""
        labels = self.labels_cpu = self.labels.cpu()
        order = torch.sort(labels, stable=True).indices
        counts = torch.bincount(labels)
        starts = torch.cumsum(counts, 0) - counts
        pos = torch.empty_like(order)
        pos[order] = torch.arange(self.n) - starts[labels[order]]
        self.order, self.counts, self.starts, self.pos = order, counts, starts, pos

    # the DataLoader interface the training loop uses ----------------------------------------

    def set_epoch(self, epoch: int) -> None:
        self.epoch = epoch

    def __len__(self) -> int:
        return math.ceil(math.ceil(self.n / self.world) / self.batch_size)

    def skip_first(self, batches: int) -> DeviceBatches:
        """This loader, starting its next epoch at batch `batches` (a resumed epoch)."""
        self.skip = batches
        return self

    def _draws(self) -> dict[str, torch.Tensor]:
        """The epoch's shuffle and every sample's augmentation, from (seed, epoch) alone."""
        g = torch.Generator().manual_seed(_seed(self.seed, self.epoch))
        span = 2 * self.pad + 1
        d = {"perm": torch.randperm(self.n, generator=g)}
        for key in ("", "pair_") if self.pair else ("",):
            d[key + "dy"] = torch.randint(span, (self.n,), generator=g)
            d[key + "dx"] = torch.randint(span, (self.n,), generator=g)
            d[key + "flip"] = torch.rand(self.n, generator=g) < 0.5
        if self.pair:
            d["partner"] = self._partners(g)
        return {k: v.to(self.device) for k, v in d.items()}

    def _partners(self, g: torch.Generator) -> torch.Tensor:
        """Per sample, another member of its class drawn uniformly (itself when alone)."""
        labels = self.labels_cpu
        count = self.counts[labels]
        r = (torch.rand(self.n, generator=g) * (count - 1).clamp(min=0)).long()
        r = r + (r >= self.pos).long()  # skip the sample itself
        partner = self.order[self.starts[labels] + r.clamp(max=count - 1)]
        return torch.where(count > 1, partner, torch.arange(self.n))

    def _augment(self, ids: torch.Tensor, dy, dx, flip) -> torch.Tensor:
        """Images `ids`, cropped at per-row offsets (dy, dx) of the padded image and flipped
        where `flip`, as normalised float."""
        x = self.images.index_select(0, ids)
        if self.pad:
            p = self.pad
            b, _, h, w = x.shape
            x = torch.nn.functional.pad(x, (p, p, p, p))
            rows = (dy.view(b, 1) + torch.arange(h, device=x.device)).view(b, 1, h, 1)
            cols = (dx.view(b, 1) + torch.arange(w, device=x.device)).view(b, 1, 1, w)
            x = x.gather(2, rows.expand(b, 3, h, w + 2 * p)).gather(3, cols.expand(b, 3, h, w))
        if self.flip:
            x = torch.where(flip.view(-1, 1, 1, 1), x.flip(3), x)
        return (x.float() - self.mean) / self.std

    def _shard(self, perm: torch.Tensor) -> torch.Tensor:
        """This process's part of the epoch: strided, padded from the start to equal length."""
        per = math.ceil(self.n / self.world)
        total = per * self.world
        if total > self.n:
            perm = torch.cat([perm, perm[: total - self.n]])
        return perm[self.rank :: self.world]

    def __iter__(self) -> Iterator[tuple]:
        d = self._draws()
        batches = list(torch.split(self._shard(d["perm"]), self.batch_size))[self.skip :]
        self.skip = 0
        self.begin()  # Accelerate's gradient accumulation learns where the epoch ends
        try:
            for k, ids in enumerate(batches):
                self.end_of_dataloader = k == len(batches) - 1
                images = self._augment(ids, d["dy"][ids], d["dx"][ids], d["flip"][ids])
                if not (self.index or self.pair):
                    yield images, self.labels[ids]
                    continue
                extras: dict[str, torch.Tensor] = {}
                if self.index:
                    extras["index"] = ids
                if self.pair:  # the partner gets the anchor's second set of draws
                    extras["pair"] = self._augment(
                        d["partner"][ids], d["pair_dy"][ids], d["pair_dx"][ids], d["pair_flip"][ids]
                    )
                yield images, self.labels[ids], extras
        finally:
            self.end()
