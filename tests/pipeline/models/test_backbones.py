"""Backbones: stage features for every model, stem and width; literature parameter counts."""

from __future__ import annotations

import pytest
import torch

from pipeline.distill import create_method
from pipeline.distill.methods.self_kd import SelfKDOptions
from pipeline.models import ModelOutput, SelfDistillModel, count_parameters, create_model

pytestmark = pytest.mark.usefixtures("one_thread")


STAGES = {"resnet18": 4, "resnet34": 4, "resnet50": 4, "wrn16_2": 3}


@pytest.mark.parametrize("width", [0.125, 0.25])
@pytest.mark.parametrize("stem", ["cifar", "imagenet"])
@pytest.mark.parametrize("name", sorted(STAGES))
def test_stage_features_and_wrapper(name: str, stem: str, width: float) -> None:
    torch.manual_seed(0)
    size = 16 if stem == "cifar" else 32
    net = create_model(name, num_classes=5, stem=stem, width=width)
    x = torch.randn(2, 3, size, size)
    feats = net.forward_features(x)
    assert len(feats) == len(net.stage_channels) == STAGES[name]
    assert [f.shape[1] for f in feats] == net.stage_channels
    sides = [f.shape[-1] for f in feats]
    assert all(a == (b + 1) // 2 for b, a in zip(sides, sides[1:], strict=False)), (
        sides
    )  # each stage halves
    assert all(bool((f >= 0).all()) for f in feats)  # read after the final ReLU
    method = create_method("ama", SelfKDOptions(), num_classes=5, epochs=10)
    model = SelfDistillModel(net, method.build_aux(net)).eval()
    with torch.no_grad():
        out = model(x)
        deployed = model.deployable()(x)
    assert isinstance(out, ModelOutput)
    assert out.logits.shape == out.aux_logits.shape == (2, 5)
    assert [r.shape[-2:] for r in out.aux_features] == [f.shape[-2:] for f in out.features]
    assert torch.equal(deployed, out.logits)


@pytest.mark.parametrize(
    ("name", "millions"),
    [("resnet18", 11.22), ("resnet34", 21.33), ("resnet50", 23.71), ("wrn16_2", 0.70)],
)
def test_parameter_counts_at_width_1(name: str, millions: float) -> None:
    net = create_model(name, num_classes=100, stem="cifar", width=1.0)
    assert abs(count_parameters(net) / 1e6 - millions) < 0.01


def test_resnet18_cifar100_is_11_2_million() -> None:
    assert round(count_parameters(create_model("resnet18", num_classes=100)) / 1e6, 1) == 11.2


def test_width_shrinks_the_model() -> None:
    full = count_parameters(create_model("resnet18", num_classes=10, width=1.0))
    quarter = count_parameters(create_model("resnet18", num_classes=10, width=0.25))
    assert quarter < full / 10  # convolutions scale with width squared


def test_ce_has_no_self_teacher() -> None:
    net = create_model("resnet18", num_classes=5, width=0.125)
    assert create_method("ce", num_classes=5, epochs=1).build_aux(net) is None
