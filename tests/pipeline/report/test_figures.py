"""Attention figures are written as valid PNGs with one row per image."""

from __future__ import annotations

from pathlib import Path

import pytest
import torch
from PIL import Image

from pipeline.distill import create_method
from pipeline.distill.methods.self_kd import SelfKDOptions
from pipeline.models import SelfDistillModel, create_model
from pipeline.report.figures import attention_panels, save_attention_figure

MEAN, STD = (0.5, 0.5, 0.5), (0.25, 0.25, 0.25)


def _model() -> SelfDistillModel:
    torch.manual_seed(0)
    net = create_model("wrn16_2", num_classes=3, stem="cifar", width=0.25)
    return SelfDistillModel(
        net, create_method("ama", SelfKDOptions(), num_classes=3, epochs=1).build_aux(net)
    )


@pytest.mark.parametrize("raw", [None, "uint8"])
def test_writes_a_png(tmp_path: Path, raw: str | None) -> None:
    model = _model().train()
    raw_images = torch.randint(0, 256, (2, 3, 16, 16), dtype=torch.uint8)
    images = (raw_images.float() / 255 - 0.5) / 0.25
    out = save_attention_figure(
        model, images, raw_images if raw else None, tmp_path / "fig" / "attention.png", MEAN, STD
    )
    assert out.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    with Image.open(out) as im:
        im.verify()
    with Image.open(out) as im:
        assert im.size[1] > im.size[0] / 4 * 1.5  # two rows of four panels
    assert model.training  # the mode is restored


def test_panels_are_in_unit_range_at_image_size() -> None:
    panels = attention_panels(_model(), torch.randn(3, 3, 16, 16), stage=0)
    for p in panels.values():
        assert p.shape == (3, 16, 16)
        assert float(p.min()) >= 0.0 and float(p.max()) <= 1.0
