"""Training batches made on the device (`data.on_device`), checked on the CPU: the same
augmentation as the CPU loader, draws that depend on (seed, epoch, sample) alone, process
shards that cover the epoch, resume, `cskd` partners, and the refusals."""

from __future__ import annotations

import pytest
import torch
import torch.nn.functional as F

from pipeline.data.base import FileImages, TensorImages, Transformed
from pipeline.data.device import DeviceBatches, unsupported_reason
from pipeline.data.presets import Preset
from pipeline.errors import ConfigError

CROP_FLIP = Preset(32, "cifar", "crop_flip", None, (0.5, 0.4, 0.3), (0.2, 0.25, 0.3))


def _train(n: int = 40, classes: int = 4, size: int = 32, seed: int = 0) -> Transformed:
    g = torch.Generator().manual_seed(seed)
    images = torch.randint(0, 256, (n + 3, 3, size, size), dtype=torch.uint8, generator=g)
    labels = [i % classes for i in range(n + 3)]
    return Transformed(TensorImages(images, labels), list(range(3, n + 3)), transform=None)


def _batches(loader: DeviceBatches, epoch: int = 0) -> list[tuple]:
    loader.set_epoch(epoch)
    return list(loader)


def test_a_batch_is_the_padded_crop_and_flip_of_the_cpu_transform():
    train = _train()
    loader = DeviceBatches(train, CROP_FLIP, 8, "cpu", seed=3, index=True)
    loader.set_epoch(2)
    d = loader._draws()
    images, labels, extras = next(iter(loader))
    mean = torch.tensor(CROP_FLIP.mean).view(3, 1, 1)
    std = torch.tensor(CROP_FLIP.std).view(3, 1, 1)
    for row, i in enumerate(extras["index"].tolist()):
        raw = train.base.images[train.indices[i]]
        dy, dx = int(d["dy"][i]), int(d["dx"][i])
        want = F.pad(raw, (4, 4, 4, 4))[:, dy : dy + 32, dx : dx + 32]  # v2.RandomCrop, fill 0
        if d["flip"][i]:
            want = want.flip(2)
        want = (want.float() / 255 - mean) / std
        torch.testing.assert_close(images[row], want, rtol=1e-5, atol=1e-5)
        assert labels[row] == train.labels[i]
    assert {int(v) for v in d["dy"]} <= set(range(9)) and d["flip"].any() and not d["flip"].all()


def test_no_augmentation_is_normalisation_only():
    train = _train()
    plain = Preset(32, "cifar", "none", None, (0.5, 0.5, 0.5), (0.5, 0.5, 0.5))
    images, _, extras = next(iter(DeviceBatches(train, plain, 4, "cpu", seed=0, index=True)))
    raw = train.base.images[[train.indices[i] for i in extras["index"].tolist()]]
    torch.testing.assert_close(images, (raw.float() / 255 - 0.5) / 0.5)


def test_shards_of_any_process_count_cover_the_epoch_with_the_same_draws():
    train = _train(n=37)
    one = _batches(DeviceBatches(train, CROP_FLIP, 5, "cpu", seed=1, index=True), epoch=4)
    by_index = {int(i): img for b in one for img, i in zip(b[0], b[2]["index"], strict=True)}
    assert sorted(by_index) == list(range(37))
    seen = []
    for world in (2, 3):
        lengths = set()
        for rank in range(world):
            loader = DeviceBatches(
                train, CROP_FLIP, 5, "cpu", seed=1, rank=rank, world=world, index=True
            )
            batches = _batches(loader, epoch=4)
            lengths.add((len(batches), len(loader), batches[-1][0].shape[0]))
            for images, _, extras in batches:
                for img, i in zip(images, extras["index"].tolist(), strict=True):
                    torch.testing.assert_close(img, by_index[i])  # same crop and flip
                    seen.append(i)
        assert len(lengths) == 1  # every process: same number of batches, same last size
    assert set(seen) == set(range(37))
    other = _batches(DeviceBatches(train, CROP_FLIP, 5, "cpu", seed=1, index=True), epoch=5)
    assert [int(i) for i in other[0][2]["index"]] != [int(i) for i in one[0][2]["index"]]


def test_a_resumed_epoch_yields_the_rest_of_the_same_batches():
    train = _train()
    full = _batches(DeviceBatches(train, CROP_FLIP, 6, "cpu", seed=2), epoch=1)
    loader = DeviceBatches(train, CROP_FLIP, 6, "cpu", seed=2)
    loader.set_epoch(1)
    rest = list(loader.skip_first(3))
    assert len(rest) == len(full) - 3
    for (a, ya), (b, yb) in zip(full[3:], rest, strict=True):
        assert torch.equal(a, b) and torch.equal(ya, yb)
    assert len(list(loader)) == len(full)  # the skip applies to one epoch only


def test_partners_are_other_members_of_the_class_with_their_own_augmentation():
    train = _train(n=41, classes=4)  # class sizes 11, 10, 10, 10 ... and one class of one below
    loader = DeviceBatches(train, CROP_FLIP, 41, "cpu", seed=0, pair=True, index=True)
    d = loader._draws()
    partner = d["partner"]
    labels = torch.as_tensor(train.labels)
    assert torch.equal(labels[partner], labels) and not (partner == torch.arange(41)).any()
    images, _, extras = next(iter(loader))
    order = extras["index"]
    pairs = extras["pair"]
    flips = d["pair_flip"][order] != d["flip"][partner[order]]
    assert flips.any()  # the partner is not a copy of the partner's own anchor view
    assert pairs.shape == images.shape
    alone = Transformed(
        TensorImages(torch.zeros(3, 3, 32, 32, dtype=torch.uint8), [0, 0, 1]), [0, 1, 2], None
    )
    mates = DeviceBatches(alone, CROP_FLIP, 3, "cpu", seed=0, pair=True)._draws()["partner"]
    assert mates.tolist() == [1, 0, 2]  # the class of one pairs with itself


def test_what_cannot_be_made_on_the_device_says_why_and_what_to_set():
    train = _train()
    assert unsupported_reason(train, CROP_FLIP) is None
    rrc = Preset(32, "cifar", "rrc_flip", 32, (0.5,) * 3, (0.5,) * 3)
    assert "data.train_aug=crop_flip" in unsupported_reason(train, rrc)
    big = Preset(24, "cifar", "crop", None, (0.5,) * 3, (0.5,) * 3)
    assert "32x32 and the input is 24x24" in unsupported_reason(train, big)
    files = Transformed(FileImages(["a.png"], [0]), [0], None)
    assert "data.cache=memory" in unsupported_reason(files, CROP_FLIP)
    with pytest.raises(ConfigError, match="data.on_device=true: .*data.train_aug=crop_flip"):
        DeviceBatches(train, rrc, 4, "cpu", seed=0)


def test_on_device_resolves_auto_to_gpus_only_and_true_refuses_what_it_cannot_do(monkeypatch):
    from types import SimpleNamespace

    from pipeline.training.accel import train_on_device

    ok = SimpleNamespace(train=_train(), preset=CROP_FLIP)  # 40 x 3 x 32 x 32 bytes
    cpu, cuda = torch.device("cpu"), torch.device("cuda")
    gpu = SimpleNamespace(total_memory=4 * 40 * 3 * 32 * 32)  # the images take a quarter of it
    monkeypatch.setattr(torch.cuda, "get_device_properties", lambda d: gpu)
    assert not train_on_device("auto", ok, cpu) and train_on_device("auto", ok, cuda)
    gpu.total_memory -= 1  # more than a quarter: auto leaves the memory to the model
    assert not train_on_device("auto", ok, cuda) and train_on_device(True, ok, cpu)
    assert train_on_device(True, ok, cpu) and not train_on_device(False, ok, cuda)
    rrc = SimpleNamespace(
        train=_train(), preset=Preset(32, "cifar", "rrc_flip", 32, (0.5,) * 3, (0.5,) * 3)
    )
    assert not train_on_device("auto", rrc, cuda)
    with pytest.raises(ConfigError, match="data.on_device=true"):
        train_on_device(True, rrc, cpu)


def test_training_with_batches_on_the_device(
    tiny_overrides, fresh_accelerate_state, one_thread, caplog
):
    """A whole train stage on the CPU with `data.on_device=true`: it trains, says so, and its
    gradient accumulation closes each epoch's last partial window: micro-batches of 64 / 2 = 32,
    5 per epoch (4 x 32 + 2), 2 per step, so 3 optimizer steps an epoch (6 in all; 5 if the
    windows ran on across the epoch boundary)."""
    import json
    import logging

    from pipeline.config import load_config
    from pipeline.runner import run_pipeline
    from pipeline.stages import folder

    cfg = load_config(
        None,
        [
            *tiny_overrides,
            "data.on_device=true",
            "data.input_size=32",  # the stored size: batches on the device are never resized
            "train.grad_accum_steps=2",
            "data.max_per_class=13",
        ],
    )
    with caplog.at_level(logging.INFO, logger="pipeline.train"):
        m = run_pipeline(cfg, only="train")["train"]
    assert m.data["sizes"]["train"] == 130 and m.metrics["epochs"] == 2
    assert "training batches: made on the device" in caplog.text
    index = folder(cfg.run_path, "train") / "checkpoints" / "index.json"
    assert json.loads(index.read_text())["checkpoint"]["step"] == 6
