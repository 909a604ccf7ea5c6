"""The mathematics of METHOD.md sections 4-5, tested by property on tiny models."""

from __future__ import annotations

import math

import pytest
import torch

from pipeline.distill import SelfKDOptions, create_method
from pipeline.distill.attention import adaptive_mask, attention_map, dynamic_ratio, normalize
from pipeline.distill.losses import (
    attention_maps,
    attention_transfer,
    kd_loss,
    mixed_attention,
    region_loss,
)
from pipeline.models import SelfDistillModel, create_model
from pipeline.models.self_teacher import SelfTeacher

pytestmark = pytest.mark.usefixtures("one_thread")


def _model(method: str = "ama", name: str = "resnet18", epochs: int = 200, **cfg):
    torch.manual_seed(0)
    m = create_method(method, cfg, num_classes=6, epochs=epochs)
    net = create_model(name, num_classes=6, stem="cifar", width=0.125)
    return m, SelfDistillModel(net, m.build_aux(net))


def _batch(n: int = 4, size: int = 16):
    g = torch.Generator().manual_seed(1)
    return torch.randn(n, 3, size, size, generator=g), torch.randint(0, 6, (n,), generator=g)


# attention maps, masks, ratio -------------------------------------------------------------


def test_attention_map_is_the_channel_mean_of_squares() -> None:
    x = torch.randn(3, 5, 4, 6, dtype=torch.float64, requires_grad=True)
    torch.testing.assert_close(attention_map(x), x.pow(2).mean(1).flatten(1))
    assert torch.autograd.gradcheck(lambda t: attention_map(t).double(), (x,), atol=1e-4, rtol=1e-3)
    cl = x.detach().float().contiguous(memory_format=torch.channels_last).requires_grad_()
    attention_map(cl).sum().backward()
    assert cl.grad.is_contiguous(memory_format=torch.channels_last)
    torch.testing.assert_close(cl.grad, 2 * cl.detach() / 5)


@pytest.mark.parametrize("kind", ["soft", "hard"])
def test_masks_follow_the_min_max_normalised_map_and_its_mean(kind: str) -> None:
    """M = sigmoid(kappa (t - theta)) (or [t >= theta]) with t the min-max normalised map and
    theta its mean, per sample (METHOD.md section 4, step 2), computed here by hand."""
    t = torch.rand(8, 64, generator=torch.Generator().manual_seed(0)) ** 3
    m = adaptive_mask(t, kind=kind, kappa=20.0)
    assert m.shape == t.shape
    u = (t - t.min(1, keepdim=True).values) / (
        t.max(1, keepdim=True).values - t.min(1, keepdim=True).values
    )
    theta = u.mean(1, keepdim=True)
    expected = 1 / (1 + torch.exp(-20.0 * (u - theta))) if kind == "soft" else (u >= theta).float()
    torch.testing.assert_close(m, expected)
    assert 0.05 < m.mean().item() < 0.95  # neither region is empty
    # the threshold follows each map: the peak is foreground, the minimum is background
    peak, low = t.argmax(1), t.argmin(1)
    assert bool((m.gather(1, peak[:, None]) > 0.5).all())
    assert bool((m.gather(1, low[:, None]) < 0.5).all())
    if kind == "hard":
        assert set(m.unique().tolist()) <= {0.0, 1.0}


def test_mask_is_scale_invariant_and_detached() -> None:
    t = torch.rand(2, 16, requires_grad=True)
    m = adaptive_mask(t)
    assert not m.requires_grad
    torch.testing.assert_close(adaptive_mask(t * 1000 + 3), m)


@pytest.mark.parametrize("kind", ["entropy", "confidence"])
def test_ratio_lies_in_unit_interval(kind: str) -> None:
    z = torch.randn(64, 10) * torch.logspace(-2, 3, 64)[:, None]  # from uniform to saturated
    y = torch.randint(0, 10, (64,))
    lam = dynamic_ratio(z, y, kind=kind)
    assert lam.shape == (64,)
    assert bool(((lam >= 0) & (lam <= 1)).all()) and bool(torch.isfinite(lam).all())


def test_entropy_ratio_is_one_when_unsure_and_zero_when_confident() -> None:
    lam = dynamic_ratio(torch.tensor([[0.0, 0.0, 0.0, 0.0], [1e4, 0.0, 0.0, 0.0]]))
    torch.testing.assert_close(lam, torch.tensor([1.0, 0.0]))
    conf = dynamic_ratio(
        torch.tensor([[1e4, 0.0], [0.0, 1e4]]), torch.tensor([0, 0]), kind="confidence"
    )
    torch.testing.assert_close(conf, torch.tensor([0.0, 1.0]))


# losses ------------------------------------------------------------------------------------


def test_region_losses_are_zero_when_maps_match_and_positive_when_they_differ() -> None:
    t = torch.rand(4, 49)
    s_same = t * 7.0  # N() removes the scale: same map, different energy
    s_diff = torch.rand(4, 49)
    for mask in (adaptive_mask(t), 1 - adaptive_mask(t), adaptive_mask(t, kind="hard")):
        torch.testing.assert_close(region_loss(s_same, t, mask), torch.zeros(4), atol=1e-6, rtol=0)
        assert bool((region_loss(s_diff, t, mask) > 1e-4).all())
    assert attention_transfer([s_same], [t]).item() < 1e-6
    assert attention_transfer([s_diff], [t]).item() > 1e-4


def test_dynamic_ratio_moves_weight_between_regions() -> None:
    t = torch.rand(2, 64)
    fg = adaptive_mask(t, kind="hard")
    s = t * fg + torch.rand(2, 64) * (1 - fg)  # foreground matches, background differs
    zero, one = torch.zeros(2), torch.ones(2)
    # confident (lambda = 0) weighs the matching foreground only; unsure weighs the background
    assert mixed_attention([s], [t], zero, mask="hard").item() < 1e-6
    assert mixed_attention([s], [t], one, mask="hard").item() > 1e-4
    # ratio_invert swaps the weights
    torch.testing.assert_close(
        mixed_attention([s], [t], zero, mask="hard", invert=True),
        mixed_attention([s], [t], one, mask="hard"),
    )


@pytest.mark.parametrize("value", [0.0, 1.0])
def test_constant_attention_maps_give_no_nan(value: float) -> None:
    f = torch.full((2, 4, 5, 5), value, requires_grad=True)
    r = torch.full((2, 8, 5, 5), value)
    lam = torch.tensor([0.3, 0.9])
    for kind in ("soft", "hard"):
        s_att, t_att = attention_maps([f], [r])
        loss = attention_transfer(s_att, t_att) + mixed_attention(s_att, t_att, lam, mask=kind)
        (g,) = torch.autograd.grad(loss, f)
        assert bool(torch.isfinite(loss)) and bool(torch.isfinite(g).all())
    assert bool(torch.isfinite(normalize(torch.zeros(3, 4))).all())


def test_kd_loss_is_zero_for_equal_logits_and_scales_with_t_squared() -> None:
    # Seeded: float rounding in the KL of equal logits, times T^2, exceeds 1e-6 for about one
    # random draw in 150, so an unseeded draw made this test flaky.
    g = torch.Generator().manual_seed(0)
    z = torch.randn(5, 6, generator=g)
    assert kd_loss(z, z.clone(), 4.0).abs().item() < 1e-6
    other = torch.randn(5, 6, generator=g)
    assert kd_loss(z, other, 4.0).item() > 0


# the methods -------------------------------------------------------------------------------


def test_distillation_sends_no_gradient_into_the_self_teacher() -> None:
    method, model = _model()
    x, y = _batch()
    out = model(x)
    s_att, t_att = attention_maps(out.features, out.aux_features)
    lam = dynamic_ratio(out.aux_logits, y)
    distill = kd_loss(out.logits, out.aux_logits, 4.0) + attention_transfer(s_att, t_att)
    distill = distill + mixed_attention(s_att, t_att, lam)
    distill.backward()
    assert all(p.grad is None or not p.grad.any() for p in model.aux.parameters())
    assert any(p.grad is not None and p.grad.abs().sum() > 0 for p in model.backbone.parameters())


def test_teacher_cross_entropy_reaches_the_classifier() -> None:
    _, model = _model()
    x, y = _batch()
    out = model(x)
    torch.nn.functional.cross_entropy(out.aux_logits, y).backward()
    stage_weights = [p for n, p in model.backbone.named_parameters() if n.startswith("stages.0")]
    assert all(p.grad is not None for p in stage_weights)
    assert sum(p.grad.abs().sum() for p in stage_weights) > 0
    assert model.backbone.fc.weight.grad is None  # the classifier head is not on that path


@pytest.mark.parametrize("method_name", ["frskd", "ama"])
def test_total_is_the_sum_of_its_parts_and_trains_both_networks(method_name: str) -> None:
    method, model = _model(method_name)
    x, y = _batch()
    res = method.loss(model(x), y, epoch=199)
    terms = {k: v for k, v in res.parts.items() if k != "mix_ratio"}
    assert {"ce", "ce_aux", "kd", "at", "mix"} <= set(terms)
    torch.testing.assert_close(res.total.detach(), sum(terms.values()))
    assert all(not v.requires_grad for v in res.parts.values())
    assert (terms["mix"].item() > 0) == (method_name == "ama")
    res.total.backward()
    assert model.aux.fc.weight.grad.abs().sum() > 0
    assert model.backbone.fc.weight.grad.abs().sum() > 0


@pytest.mark.parametrize("name", ["resnet18", "wrn16_2"])
@pytest.mark.parametrize(
    "options", [{}, {"mask": "hard", "ratio": "confidence", "ratio_invert": True}]
)
def test_losses_are_finite_under_bf16_autocast(name: str, options: dict) -> None:
    method, model = _model("ama", name, **options)
    x, y = _batch()
    with torch.autocast("cpu", dtype=torch.bfloat16):
        out = model(x)
        res = method.loss(out, y, epoch=199)
    assert out.aux_features[0].dtype == torch.bfloat16  # autocast really ran the convs in bf16
    assert res.total.dtype == torch.float32
    assert all(bool(torch.isfinite(v)) for v in res.parts.values())
    res.total.backward()
    assert all(bool(torch.isfinite(p.grad).all()) for p in model.parameters() if p.grad is not None)


@pytest.mark.parametrize(
    ("epochs", "warmup", "first_on"), [(200, None, 5), (40, None, 1), (10, None, 0), (200, 3, 3)]
)
def test_mixed_attention_warm_up(epochs: int, warmup: int | None, first_on: int) -> None:
    method, model = _model("ama", epochs=epochs, mix_warmup_epochs=warmup)
    assert method.mix_warmup_epochs == first_on
    x, y = _batch(2)
    out = model(x)
    if first_on > 0:
        off = method.loss(out, y, epoch=first_on - 1)
        assert off.parts["mix"].item() == 0.0
        assert "mix_ratio" not in off.parts
    on = method.loss(out, y, epoch=first_on)
    assert on.parts["mix"].item() > 0.0


def test_default_warm_up_is_5_of_200_scaled() -> None:
    method, _ = _model("ama", epochs=200)
    assert method.mix_warmup_epochs == round(5 / 200 * 200)
    assert (
        create_method("ama", SelfKDOptions(), num_classes=3, epochs=100).mix_warmup_epochs == 3
    )  # 2.5 rounds up


@pytest.mark.parametrize("name", ["frskd", "ama"])
def test_kd_warm_up_ramps_the_kl_weight_linearly_then_holds_alpha(name: str) -> None:
    """alpha * e / W in 0-based epoch e < W (none in the first epoch), then alpha; W = 0 is
    METHOD.md's constant alpha. Only the KL term moves."""
    x, y = _batch()
    plain, model = _model(name, alpha=2.0)
    ramped = create_method(
        name, SelfKDOptions(alpha=2.0, kd_warmup_epochs=3), num_classes=6, epochs=200
    )
    assert [ramped.kd_weight(e) for e in range(6)] == pytest.approx([0, 2 / 3, 4 / 3, 2, 2, 2])
    assert [plain.kd_weight(e) for e in (0, 1, 199)] == [2.0, 2.0, 2.0]
    out = model(x)
    kd = kd_loss(out.logits, out.aux_logits, 4.0)
    for epoch, weight in ((0, 0.0), (2, 4 / 3), (3, 2.0), (50, 2.0)):
        a, b = plain.loss(out, y, epoch=epoch).parts, ramped.loss(out, y, epoch=epoch).parts
        torch.testing.assert_close(b["kd"], weight * kd.detach())
        for k in ("ce", "ce_aux", "at", "mix"):
            torch.testing.assert_close(a[k], b[k])


def test_frskd_never_mixes_and_ama_respects_beta_mix_zero() -> None:
    frskd, model = _model("frskd")
    x, y = _batch(2)
    out = model(x)
    assert frskd.loss(out, y, epoch=10_000).parts["mix"].item() == 0.0
    ama_off = create_method("ama", SelfKDOptions(beta_mix=0.0), num_classes=6, epochs=200)
    assert ama_off.loss(out, y, epoch=10_000).parts["mix"].item() == 0.0


def test_methods_build_the_self_teacher() -> None:
    for name in ("frskd", "ama"):
        method, model = _model(name)
        assert isinstance(model.aux, SelfTeacher)
        assert method.name == name
    assert math.isclose(SelfKDOptions().temperature, 4.0)


@pytest.mark.parametrize("name", ["frskd", "ama"])
def test_label_smoothing_applies_to_both_heads_cross_entropy_only(name: str) -> None:
    """`label_smoothing` turns each head's CE into `ls`'s CE; the distillation terms are the
    same as without it, and 0 is the hard-label loss of METHOD.md."""
    x, y = _batch()
    plain, model = _model(name)
    smoothed = create_method(name, SelfKDOptions(label_smoothing=0.2), num_classes=6, epochs=200)
    out = model(x)
    a, b = plain.loss(out, y, epoch=10).parts, smoothed.loss(out, y, epoch=10).parts
    logits, aux = out.logits.float(), out.aux_logits.float()
    ce = torch.nn.functional.cross_entropy
    torch.testing.assert_close(b["ce"], ce(logits, y, label_smoothing=0.2))
    torch.testing.assert_close(b["ce_aux"], ce(aux, y, label_smoothing=0.2))
    torch.testing.assert_close(a["ce"], ce(logits, y))
    assert not torch.allclose(a["ce"], b["ce"])
    for k in ("kd", "at", "mix"):
        torch.testing.assert_close(a[k], b[k])
