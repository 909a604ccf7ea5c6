"""The one training-model builder: every layer trains under every method, and the spec rebuilds
the same network."""

from __future__ import annotations

import pytest
import torch

from pipeline.distill import METHODS
from pipeline.models import list_models
from pipeline.models.spec import ModelSpec
from pipeline.training.model import build_training_model
from tests.specs import model_spec


def _spec(arch: str, method: str) -> ModelSpec:
    return model_spec(arch, method, width=0.125, num_classes=3)


@pytest.mark.parametrize("method", sorted(METHODS))
@pytest.mark.parametrize("arch", list_models())
def test_every_parameter_gets_a_gradient(arch: str, method: str, one_thread) -> None:
    """DDP refuses parameters that get no gradient: WRN's stage taps did under `ce`."""
    torch.manual_seed(0)
    options = {"mix_warmup_epochs": 0} if method in ("frskd", "ama") else None
    model, m = build_training_model(_spec(arch, method), options)
    model.train()
    x, y = torch.randn(4, 3, 16, 16), torch.tensor([0, 1, 2, 0])
    m.attach(4, torch.device("cpu"))
    inputs = m.extra_inputs(model, {"pair": x.flip(0), "index": torch.arange(4)})
    m.loss(model(x), y, epoch=0, **inputs).total.backward()
    idle = [n for n, p in model.named_parameters() if p.grad is None]
    assert not idle, f"{arch}/{method}: parameters without a gradient: {idle[:5]}"


def test_wrn_taps_only_with_a_self_teacher() -> None:
    plain, _ = build_training_model(_spec("wrn16_2", "ce"))
    taught, _ = build_training_model(_spec("wrn16_2", "ama"))
    assert plain.backbone.taps is None and taught.backbone.taps is not None
    deployed = taught.deployable()
    assert deployed.taps is None
    assert set(deployed.state_dict()) == set(plain.backbone.state_dict())
    taught.eval()
    x = torch.randn(3, 3, 16, 16)
    with torch.inference_mode():
        assert torch.equal(taught(x).logits, deployed(x))
