"""Train images spread over the split, through the evaluation transform: the samples INT8
calibration and channel pruning use."""

from __future__ import annotations

import numpy as np
import torch

from pipeline.data import (
    DataBundle,
    Preset,
    TensorImages,
    Transformed,
    eval_transform,
    train_transform,
)


def _bundle(n: int = 10) -> DataBundle:
    preset = Preset(8, "cifar", "crop_flip", None, (0.5, 0.5, 0.5), (0.25, 0.25, 0.25))
    images = torch.arange(n, dtype=torch.uint8)[:, None, None, None].expand(n, 3, 8, 8).clone()
    base = TensorImages(images, labels=[i % 3 for i in range(n)])
    train = Transformed(base, [9, 7, 5, 3, 1, 0, 2, 4], train_transform(preset))
    test = Transformed(base, [6, 8], eval_transform(preset))
    return DataBundle(train, test, test, ["a", "b", "c"], preset, "fp")


def test_spread_train_picks_evenly_through_the_evaluation_transform() -> None:
    data = _bundle()
    view = data.spread_train(3)
    assert view.indices == [9, 1, 4]  # the first, middle (rounded) and last of the split
    assert view.labels == [0, 1, 1]
    expected = (torch.tensor([9, 1, 4], dtype=torch.float32) / 255 - 0.5) / 0.25
    got = view.stack()
    assert got.shape == (3, 3, 8, 8)
    torch.testing.assert_close(got[:, 0, 0, 0], expected)  # no crop, no flip: deterministic
    assert data.spread_train(100).indices == data.train.indices  # at most the whole split


def test_calibration_batch_is_the_spread_sample_as_float32() -> None:
    data = _bundle()
    batch = data.calibration_batch(4)
    assert batch.dtype == np.float32 and batch.shape == (4, 3, 8, 8)
    np.testing.assert_array_equal(batch, data.spread_train(4).stack().numpy())
