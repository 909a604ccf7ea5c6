"""The server's preprocessing gives the pixels of the evaluation transform (torchvision over the
same decoded uint8 image), for images at any size: down- and upscaled, odd margins, padded."""

from __future__ import annotations

import numpy as np
import pytest
import torch
from torchvision.transforms import v2

from pipeline.preprocessing import Preprocessing
from serving import preprocess as served
from tests.conftest import load_benchmark

IMAGENET = ((0.485, 0.456, 0.406), (0.229, 0.224, 0.225))


def _native_uint8_resize() -> bool:
    """Whether torchvision resizes uint8 images with torch's uint8 kernel on this CPU (AVX2,
    AVX-512, ARM64), the kernel the server follows; elsewhere it resizes in float32 and rounds,
    one level off on some pixels."""
    try:
        from torchvision.transforms.v2.functional._geometry import (
            _do_native_uint8_resize_on_cpu,
        )
    except ImportError:
        return True
    return _do_native_uint8_resize_on_cpu(v2.InterpolationMode.BILINEAR)


# The largest pixel difference allowed: none where torchvision runs the same kernel.
LEVELS = 0 if _native_uint8_resize() else 1


@pytest.fixture(scope="module")
def parity():
    return load_benchmark("preprocess_parity")


@pytest.fixture(scope="module")
def odd_folder(parity, tmp_path_factory):
    return parity.odd_folder(tmp_path_factory.mktemp("odd"))


@pytest.mark.parametrize(("input_size", "resize"), [(64, 72), (32, None)])
def test_served_probabilities_equal_validates_on_odd_sized_images(
    parity, odd_folder, tmp_path, one_thread, input_size, resize
):
    """96 files (16 sizes; RGB, grey, RGBA and palette PNGs, RGB and grey JPEGs), decoded the
    way training and the server decode them, through the evaluation transform and through the
    server's preprocessing, then one ONNX model that reads every pixel."""
    pre = Preprocessing(input_size, resize or input_size, *IMAGENET)
    model = parity.linear_onnx(tmp_path / "linear.onnx", input_size)
    result = parity.compare(odd_folder, model, pre, {"server": parity.server})["server"]
    assert result["max_pixel_diff"] <= LEVELS / 255 / min(pre.std) + 1e-6, result
    assert result["max_prob_diff"] < 1e-3, result
    assert result["top1_agreement"] == 1.0, result


def _torchvision(img: np.ndarray, pre: Preprocessing) -> np.ndarray:
    t = v2.Compose([v2.Resize(pre.resize, antialias=True), v2.CenterCrop(pre.input_size)])
    return t(torch.from_numpy(img).permute(2, 0, 1)).permute(1, 2, 0).numpy()


def test_resize_and_crop_is_torchvisions_pixel_for_pixel(one_thread):
    """Random sizes, 1 to 300 pixels a side, up and down each axis, smooth and noisy content,
    and crops larger than the resized image (torchvision pads with zeros)."""
    rng = np.random.default_rng(0)
    sides = [tuple(int(v) for v in s) for s in rng.integers(1, 300, (60, 2))]
    sides += [(1, 1), (1, 300), (300, 1), (2, 700), (131, 97), (225, 224)]
    configs = [(64, 72), (32, 32), (16, 200), (48, 40)]
    worst = 0
    for i, (h, w) in enumerate(sides):
        if i % 2:
            img = rng.integers(0, 256, (h, w, 3), dtype=np.uint8)
        else:
            steps = rng.integers(-9, 10, (h, w, 3)).cumsum(axis=0).cumsum(axis=1)
            img = np.clip(128 + steps, 0, 255).astype(np.uint8)
        for size, resize in configs:
            pre = Preprocessing(size, resize, *IMAGENET)
            got, ref = served.resize_and_crop(img, pre), _torchvision(img, pre)
            assert got.shape == ref.shape == (size, size, 3), (h, w, size, resize)
            worst = max(worst, int(np.abs(got.astype(int) - ref).max()))
    assert worst <= LEVELS


def test_batch_is_the_eval_transforms_in_float32():
    """Scaling and normalisation in torchvision's order: the same float32 values."""
    from pipeline.data.presets import Preset, eval_transform

    rng = np.random.default_rng(1)
    images = [rng.integers(0, 256, s, dtype=np.uint8) for s in [(97, 131, 3), (40, 40, 3)]]
    pre = Preprocessing(32, 36, *IMAGENET)
    batch = served.preprocess(images, pre)
    t = eval_transform(Preset(32, "cifar", "none", 36, *IMAGENET))
    ref = torch.stack([t(torch.from_numpy(a).permute(2, 0, 1)) for a in images]).numpy()
    assert batch.dtype == np.float32 and batch.flags["C_CONTIGUOUS"]
    assert np.abs(batch - ref).max() <= LEVELS / 255 / min(pre.std) + 1e-6


def test_grey_and_alpha_arrays_are_taken_as_rgb():
    rng = np.random.default_rng(2)
    grey = rng.integers(0, 256, (50, 70), dtype=np.uint8)
    rgba = rng.integers(0, 256, (50, 70, 4), dtype=np.uint8)
    pre = Preprocessing(32, 36, *IMAGENET)
    batch = served.preprocess([grey, grey[:, :, None], rgba], pre)
    np.testing.assert_array_equal(batch[0], served.preprocess([np.dstack([grey] * 3)], pre)[0])
    np.testing.assert_array_equal(batch[1], batch[0])
    np.testing.assert_array_equal(batch[2], served.preprocess([rgba[:, :, :3]], pre)[0])
    with pytest.raises(ValueError, match="uint8"):
        served.preprocess([grey.astype(np.float32)], pre)
