"""The self-teacher against a literal transcription of METHOD.md section 3, its size, its shapes."""

from __future__ import annotations

import copy

import pytest
import torch
import torch.nn.functional as F

from pipeline.models import count_parameters, create_model
from pipeline.models.self_teacher import SelfTeacher

pytestmark = pytest.mark.usefixtures("one_thread")


def _conv1(m, x: torch.Tensor) -> torch.Tensor:
    return F.relu(m.bn(m.conv(x)))


def _fused(fusion, inputs: list[torch.Tensor]) -> torch.Tensor:
    w = F.relu(fusion.weight)
    w = w / (w.sum() + 1e-6)
    return sum(wj * x for wj, x in zip(w, inputs, strict=True))


def reference_forward(t: SelfTeacher, feats: list[torch.Tensor]):
    """METHOD.md section 3 as written: upsample then Conv1, weighted ReLUs, no shortcuts taken."""
    n, d = len(feats), t.widths
    lat = [_conv1(t.lateral[0], feats[0])]
    lat2: list = [None]
    for i in range(1, n):
        both = _conv1(t.lateral[i], feats[i])
        lat.append(both[:, : d[i]])
        lat2.append(both[:, d[i] :])
    p = [None] * n
    p[-1] = lat[-1]
    for i in range(n - 2, -1, -1):
        up = F.interpolate(F.relu(p[i + 1]), size=lat[i].shape[-2:], mode="nearest")
        up = _conv1(t.up[i], up)
        p[i] = t.td_block[i](_fused(t.td_fuse[i], [F.relu(lat[i]), up]))
    tt = [p[0]]
    for i in range(1, n):
        down = _conv1(t.down[i - 1], F.max_pool2d(F.relu(tt[-1]), 3, 2, 1))
        ins = [F.relu(lat2[i])] + ([F.relu(p[i])] if i < n - 1 else []) + [down]
        tt.append(t.bu_block[i - 1](_fused(t.bu_fuse[i - 1], ins)))
    refined = [F.relu(x) for x in tt]
    return t.fc(refined[-1].mean(dim=(2, 3))), refined


def _features(name: str, width: float, size: int, stem: str = "cifar") -> tuple:
    torch.manual_seed(0)
    net = create_model(name, num_classes=7, stem=stem, width=width)
    feats = [
        f.detach().requires_grad_() for f in net.forward_features(torch.randn(2, 3, size, size))
    ]
    return net, feats


@pytest.mark.parametrize(
    ("name", "size", "stem", "channels_last"),
    [
        ("resnet18", 16, "cifar", False),
        ("resnet18", 16, "cifar", True),
        ("wrn16_2", 16, "cifar", True),
        ("resnet18", 72, "imagenet", False),  # stages 18, 9, 5, 3: not exact x2
    ],
)
def test_matches_the_specification(name: str, size: int, stem: str, channels_last: bool) -> None:
    net, feats = _features(name, 0.125, size, stem)
    teacher = SelfTeacher(net.stage_channels, 7)
    with torch.no_grad():  # move the fusion weights away from their init so each one matters
        for p in teacher.parameters():
            if p.dim() == 1 and p.numel() <= 3:
                p.uniform_(-0.3, 2.0)
    ref = copy.deepcopy(teacher)
    if channels_last:
        teacher = teacher.to(memory_format=torch.channels_last)
        fast_in = [
            f.detach().contiguous(memory_format=torch.channels_last).requires_grad_() for f in feats
        ]
    else:
        fast_in = [f.detach().clone().requires_grad_() for f in feats]
    z, r = teacher(fast_in)
    z_ref, r_ref = reference_forward(ref, feats)
    torch.testing.assert_close(z, z_ref, rtol=1e-4, atol=1e-4)
    for a, b in zip(r, r_ref, strict=True):
        torch.testing.assert_close(a, b, rtol=1e-4, atol=1e-4)
    g = torch.randn_like(z)
    (z * g).sum().add(sum((x * x).mean() for x in r)).backward()
    (z_ref * g).sum().add(sum((x * x).mean() for x in r_ref)).backward()
    for (name_p, p), p_ref in zip(teacher.named_parameters(), ref.parameters(), strict=True):
        torch.testing.assert_close(p.grad, p_ref.grad, rtol=1e-3, atol=1e-4, msg=name_p)
    for a, b in zip(fast_in, feats, strict=True):
        torch.testing.assert_close(a.grad, b.grad, rtol=1e-3, atol=1e-4)
    torch.testing.assert_close(teacher.lateral[1].bn.running_mean, ref.lateral[1].bn.running_mean)


@pytest.mark.parametrize("size", [40, 56])
def test_odd_spatial_sizes(size: int) -> None:
    net, feats = _features("resnet18", 0.125, size, "imagenet")  # stage sizes like 7, 4, 2, 1
    z, refined = SelfTeacher(net.stage_channels, 7)(feats)
    assert z.shape == (2, 7)
    assert [r.shape[-2:] for r in refined] == [f.shape[-2:] for f in feats]
    assert [r.shape[1] for r in refined] == [2 * c for c in net.stage_channels]
    assert all(bool((r >= 0).all()) for r in refined)


def test_parameter_ratio_resnet18_cifar100() -> None:
    net = create_model("resnet18", num_classes=100, stem="cifar", width=1.0)
    teacher = SelfTeacher(net.stage_channels, 100)
    assert abs(count_parameters(teacher) / 1e6 - 6.4) < 0.05
    assert abs(count_parameters(teacher) / count_parameters(net) - 0.57) < 0.01


def test_parameter_ratio_wrn16_2() -> None:
    net = create_model("wrn16_2", num_classes=100, stem="cifar", width=1.0)
    teacher = SelfTeacher(net.stage_channels, 100)
    assert abs(count_parameters(teacher) / count_parameters(net) - 0.59) < 0.01


def test_fusion_weights_start_equal_and_learn() -> None:
    net, feats = _features("wrn16_2", 0.25, 16)
    teacher = SelfTeacher(net.stage_channels, 7)
    fusions = [*teacher.td_fuse, *teacher.bu_fuse]
    assert all(torch.equal(f.weight, torch.ones_like(f.weight)) for f in fusions)
    z, _ = teacher(feats)
    F.cross_entropy(z, torch.tensor([0, 1])).backward()
    assert all(f.weight.grad is not None and f.weight.grad.abs().sum() > 0 for f in fusions)
