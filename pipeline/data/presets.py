"""Transform presets by data set (METHOD.md section 7), as small callables over uint8 CHW tensors."""

from __future__ import annotations

from dataclasses import asdict, dataclass, replace

import torch
from torchvision.transforms import v2

from pipeline.preprocessing import Preprocessing

CIFAR_MEAN = (0.4914, 0.4822, 0.4465)
CIFAR_STD = (0.2023, 0.1994, 0.2010)
TINY_MEAN = (0.4802, 0.4481, 0.3975)
TINY_STD = (0.2770, 0.2691, 0.2821)
IMAGENET_MEAN = (0.485, 0.456, 0.406)
IMAGENET_STD = (0.229, 0.224, 0.225)


@dataclass(frozen=True)
class Preset:
    input_size: int
    stem: str
    train_aug: str  # none | crop | crop_flip | rrc_flip
    resize: int | None  # test-time resize (shorter side) before the centre crop; None = input size
    mean: tuple[float, float, float]
    std: tuple[float, float, float]

    @property
    def preprocessing(self) -> Preprocessing:
        """The evaluation preprocessing, as the exported model's metadata records it."""
        return Preprocessing(self.input_size, self.resize or self.input_size, self.mean, self.std)

    def to_dict(self) -> dict:
        return asdict(self)

    def with_overrides(self, **kw: object) -> Preset:
        return replace(self, **{k: v for k, v in kw.items() if v is not None})


PRESETS: dict[str, Preset] = {
    # Digits are 8x8 grey strokes: no flip (a flipped 2 is not a 2), light translation only.
    "digits": Preset(32, "cifar", "crop", None, (0.5, 0.5, 0.5), (0.5, 0.5, 0.5)),
    "imagefolder": Preset(32, "cifar", "crop_flip", None, CIFAR_MEAN, CIFAR_STD),
    "cifar10": Preset(32, "cifar", "crop_flip", None, CIFAR_MEAN, CIFAR_STD),
    "cifar100": Preset(32, "cifar", "crop_flip", None, CIFAR_MEAN, CIFAR_STD),
    "tiny_imagenet": Preset(32, "cifar", "rrc_flip", 32, TINY_MEAN, TINY_STD),
    "cub200": Preset(224, "imagenet", "rrc_flip", 256, IMAGENET_MEAN, IMAGENET_STD),
    "mit67": Preset(224, "imagenet", "rrc_flip", 256, IMAGENET_MEAN, IMAGENET_STD),
    "stanford_dogs": Preset(224, "imagenet", "rrc_flip", 256, IMAGENET_MEAN, IMAGENET_STD),
}


def eval_transform(p: Preset) -> v2.Compose:
    """Deterministic: resize (shorter side), centre crop, scale to [0, 1], normalise."""
    pre = p.preprocessing
    return v2.Compose(
        [
            v2.Resize(pre.resize, antialias=True),
            v2.CenterCrop(pre.input_size),
            v2.ToDtype(torch.float32, scale=True),
            v2.Normalize(pre.mean, pre.std),
        ]
    )


def train_transform(p: Preset) -> v2.Compose:
    pre = p.preprocessing
    s = pre.input_size
    if p.train_aug == "rrc_flip":
        geo = [v2.RandomResizedCrop(s, antialias=True), v2.RandomHorizontalFlip()]
    else:
        geo = [v2.Resize(s, antialias=True), v2.CenterCrop(s)]
        if p.train_aug in ("crop", "crop_flip"):
            geo.append(v2.RandomCrop(s, padding=s // 8))
        if p.train_aug == "crop_flip":
            geo.append(v2.RandomHorizontalFlip())
    return v2.Compose(
        [*geo, v2.ToDtype(torch.float32, scale=True), v2.Normalize(pre.mean, pre.std)]
    )
