"""Slim's recovery starts from the trained self-teacher: pruning the classifier keeps every
self-teacher weight (its laterals lose exactly the input columns of the pruned stage channels),
and pruning channels that carry nothing changes neither network's logits."""

from __future__ import annotations

import pytest
import torch
from torch import nn

from pipeline.config import SlimConfig, load_config
from pipeline.models.io import save_model
from pipeline.training.channel_pruning import prune_channels
from pipeline.training.model import build_training_model
from pipeline.training.slimming import start_model
from tests.specs import model_spec

pytestmark = pytest.mark.usefixtures("one_thread")

SPEC = model_spec("resnet18", "ama", width=0.125, num_classes=10, feature_taps=True)


def _trained_like(seed: int = 0) -> nn.Module:
    """An ama training wrapper whose every tensor is random (no two BN scales alike), standing
    in for trained weights: a tensor reset to its initial value would show."""
    torch.manual_seed(seed)
    wrapper, _ = build_training_model(SPEC)
    with torch.no_grad():
        for m in wrapper.modules():
            if isinstance(m, nn.BatchNorm2d):
                m.weight.uniform_(0.5, 1.5)
                m.bias.uniform_(-0.2, 0.2)
                m.running_mean.uniform_(-0.1, 0.1)
                m.running_var.uniform_(0.5, 1.5)
        for f in (*wrapper.aux.td_fuse, *wrapper.aux.bu_fuse):
            f.weight.uniform_(0.5, 1.5)
    return wrapper.eval()


def _batch() -> torch.Tensor:
    return torch.randn(4, 3, 32, 32, generator=torch.Generator().manual_seed(3))


def _stage_outputs(wrapper) -> list[nn.BatchNorm2d]:
    """The BN at the end of each stage's last block: its channels are the stage's channels."""
    return [stage[-1].bn2 for stage in wrapper.backbone.stages]


def _kept(before: torch.Tensor, after: torch.Tensor) -> list[int]:
    """Which of `before`'s entries survived, in order (every entry is distinct)."""
    values = before.tolist()
    assert len(set(values)) == len(values)
    return [values.index(v) for v in after.tolist()]


def test_recovery_starts_from_the_trained_self_teacher_and_pruning_keeps_it(tmp_path) -> None:
    """`start_model` loads the run's self-teacher, trained weights and all; after pruning every
    self-teacher tensor is the trained one, but for the laterals, which lose exactly the input
    columns of the stage channels the classifier lost."""
    trained = _trained_like()
    save_model(trained, SPEC, tmp_path, "model")
    trained_aux = {k: v.clone() for k, v in trained.aux.state_dict().items()}
    cfg = load_config(None, ["train.method=ama", "model.width=0.125"])
    wrapper, _, fresh = start_model(cfg, tmp_path)
    assert fresh == 0
    started = wrapper.aux.state_dict()
    assert started.keys() == trained_aux.keys()
    assert all(torch.equal(started[k], v) for k, v in trained_aux.items())

    stage_bn = [bn.weight.detach().clone() for bn in _stage_outputs(wrapper)]
    prune_channels(wrapper, _batch(), SlimConfig(ratio=0.5, round_to=None))
    now = _stage_outputs(wrapper)
    kept = [_kept(b, bn.weight.detach()) for b, bn in zip(stage_bn, now, strict=True)]
    assert [len(k) for k in kept] == [4, 8, 16, 32]  # half of 8, 16, 32, 64

    after = wrapper.aux.state_dict()
    assert after.keys() == trained_aux.keys()
    laterals = {f"lateral.{i}.conv.weight": k for i, k in enumerate(kept)}
    for key, value in trained_aux.items():
        if key in laterals:
            torch.testing.assert_close(after[key], value[:, laterals[key]], rtol=0, atol=0)
        else:
            torch.testing.assert_close(after[key], value, rtol=0, atol=0, msg=key)


@pytest.mark.parametrize("importance", ["l1", "bn_scale"])
def test_pruning_channels_that_carry_nothing_keeps_both_networks_logits(importance: str) -> None:
    """Zero every even channel of the classifier (each BN's scale and shift, and the conv
    filters feeding it) so those channels are 0 everywhere, prune half of every layer, and
    both the classifier's and the self-teacher's logits are what they were: the pruner removed
    exactly the dead channels, and the laterals' matching input columns with them."""
    wrapper = _trained_like(1)
    with torch.no_grad():
        for m in wrapper.backbone.modules():
            if isinstance(m, nn.BatchNorm2d):
                m.weight[::2] = 0.0
                m.bias[::2] = 0.0
            elif isinstance(m, nn.Conv2d):
                m.weight[::2] = 0.0
    x = _batch()
    with torch.no_grad():
        before = wrapper(x)
        assert all((f[:, ::2] == 0).all() and (f[:, 1::2] != 0).any() for f in before.features)
    aux_before = {k: v.clone() for k, v in wrapper.aux.state_dict().items()}
    prune_channels(wrapper, x, SlimConfig(ratio=0.5, round_to=None, importance=importance))
    with torch.no_grad():
        after = wrapper(x)
    assert [f.shape[1] for f in after.features] == [4, 8, 16, 32]
    # nothing alive went: no channel left is all zero
    assert all(bool((bn.weight != 0).all()) for bn in _stage_outputs(wrapper))
    torch.testing.assert_close(after.logits, before.logits, rtol=1e-5, atol=1e-5)
    torch.testing.assert_close(after.aux_logits, before.aux_logits, rtol=1e-5, atol=1e-5)
    for r_after, r_before in zip(after.aux_features, before.aux_features, strict=True):
        torch.testing.assert_close(r_after, r_before, rtol=1e-5, atol=1e-5)
    for i, lat in enumerate(wrapper.aux.lateral):
        key = f"lateral.{i}.conv.weight"
        torch.testing.assert_close(lat.conv.weight, aux_before[key][:, 1::2], rtol=0, atol=0)
