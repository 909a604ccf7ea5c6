"""One preprocessing definition: through a model's metadata and back, and from the data preset."""

from __future__ import annotations

import json

import pytest

from pipeline.data.presets import PRESETS, eval_transform
from pipeline.preprocessing import Preprocessing, decode_metadata

PRE = Preprocessing(32, 36, (0.4914, 0.4822, 0.4465), (0.2023, 0.1994, 0.201))


def test_round_trip_through_onnx_metadata():
    meta = PRE.to_metadata()
    assert list(meta) == list(Preprocessing.KEYS)
    stored = {k: json.dumps(v) for k, v in meta.items()}  # as export.onnx.add_metadata stores it
    assert Preprocessing.from_metadata(stored) == PRE
    assert Preprocessing.from_metadata(decode_metadata(stored)) == PRE  # as predictors hold it


def test_missing_keys_are_named():
    with pytest.raises(ValueError, match=r"model\.onnx has no resize, std in its metadata"):
        Preprocessing.from_metadata({"input_size": "32", "mean": "[0.5]"}, source="model.onnx")
    assert Preprocessing.missing({"input_size": 32, "std": [1]}) == ["resize", "mean"]


@pytest.mark.parametrize(
    ("key", "value"), [("input_size", "0"), ("resize", '"big"'), ("mean", '"x"'), ("std", "[]")]
)
def test_invalid_values_are_named(key, value):
    stored = {k: json.dumps(v) for k, v in PRE.to_metadata().items()} | {key: value}
    with pytest.raises(ValueError, match=f"m.onnx holds invalid preprocessing.*{key}"):
        Preprocessing.from_metadata(stored, source="m.onnx")


def test_the_preset_exposes_its_preprocessing_and_the_eval_transform_reads_it():
    digits = PRESETS["digits"]
    assert digits.preprocessing == Preprocessing(32, 32, (0.5,) * 3, (0.5,) * 3)  # resize None
    cub = PRESETS["cub200"].preprocessing
    assert (cub.input_size, cub.resize) == (224, 256)
    resize, crop, _, norm = eval_transform(PRESETS["cub200"]).transforms
    assert resize.size == [256] and crop.size == (224, 224)
    assert tuple(norm.mean) == cub.mean and tuple(norm.std) == cub.std


def test_export_metadata_keeps_its_keys_and_values():
    from export.onnx import onnx_metadata
    from tests.specs import model_spec

    preset = PRESETS["tiny_imagenet"].to_dict() | {"resize": None}
    spec = model_spec(num_classes=2, preset=preset).replace(classes=["a", "b"])
    assert onnx_metadata(spec, "key") == {
        "classes": ["a", "b"],
        "input_size": 32,
        "resize": 32,
        "mean": list(preset["mean"]),
        "std": list(preset["std"]),
        "layout": "NCHW, RGB, float32, (x/255 - mean)/std",
        "arch": "resnet18",
        "source_key": "key",
    }


# Image sides (height, width) around the edge cases of the size and crop arithmetic: square,
# a long side whose scaled length has a fraction of one half or more (rounding would add one),
# crop margins of x.5 (round half to even), axes shorter than the crop.
SIDES = [(h, w) for h in (1, 20, 32, 33, 35, 64, 97, 131, 144) for w in (8, 33, 64, 70, 86, 101)]


@pytest.mark.parametrize(("input_size", "resize"), [(32, 32), (64, 72), (64, 48), (16, 200)])
def test_resized_shape_and_crop_origin_are_torchvisions(input_size, resize):
    """The sizes the server computes are those torchvision's Resize and CenterCrop produce."""
    import torch
    from torchvision.transforms import v2

    pre = Preprocessing(input_size, resize, (0.5,) * 3, (0.5,) * 3)
    for h, w in SIDES:
        empty = torch.empty(0, h, w, dtype=torch.uint8)  # no pixels: torchvision only resizes
        assert tuple(v2.Resize(resize)(empty).shape[1:]) == pre.resized_shape(h, w), (h, w)
        # Which pixel the crop starts at: a numbered image, 0 where torchvision pads.
        numbered = torch.arange(1, h * w + 1, dtype=torch.float64).reshape(1, h, w)
        crop = v2.CenterCrop(input_size)(numbered)[0]
        top, left = pre.crop_origin(h, w)
        r, c = max(top, 0) - top, max(left, 0) - left  # the crop's first pixel from the image
        assert crop[:r].abs().sum() == 0 and crop[:, :c].abs().sum() == 0, (h, w)
        assert crop[r, c] == max(top, 0) * w + max(left, 0) + 1, (h, w)
