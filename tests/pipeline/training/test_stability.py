"""The head-stability check before the first step: the classifier head's sharpness against
momentum SGD's stability limit, computed with the method's own loss, changing nothing the run
uses, and reported as a warning (logged, in the metrics) when the learning rate is past it."""

from __future__ import annotations

import math

import pytest
import torch
from torch import nn

from pipeline.config import TrainConfig, load_config
from pipeline.runner import run_pipeline
from pipeline.training.model import build_training_model
from pipeline.training.stability import (
    HeadStability,
    check_head,
    head_sharpness,
    head_warning,
    spread_batch,
    stability_limit,
)
from tests.specs import model_spec


def _model(method: str, classes: int = 3, width: float = 0.125, **distill):
    torch.manual_seed(0)
    spec = model_spec("resnet18", method, width=width, num_classes=classes)
    return build_training_model(spec, distill, epochs=10)


def _batch(n: int = 12, classes: int = 3):
    g = torch.Generator().manual_seed(1)
    return torch.randn(n, 3, 16, 16, generator=g), torch.arange(n) % classes


def _exact_top_eigenvalue(model, method, x, y) -> float:
    """The last layer's Hessian built in full (torch.func) and its largest eigenvalue."""
    head = model.backbone.fc
    feats = {}

    def keep(module, inputs, output) -> None:  # a hook that returns nothing keeps the output
        feats["h"] = inputs[0].detach()

    hook = head.register_forward_hook(keep)
    buffers = {k: v.clone() for k, v in model.named_buffers()}
    model.train()
    with torch.no_grad():
        out = model(x)
    hook.remove()
    for k, b in model.named_buffers():
        b.copy_(buffers[k])
    w0, b0 = head.weight.detach(), head.bias.detach()
    n_w = w0.numel()

    def loss(flat):
        w, b = flat[:n_w].view_as(w0), flat[n_w:]
        o = type(out)(
            logits=feats["h"] @ w.T + b,
            features=[f.detach() for f in out.features],
            aux_logits=None if out.aux_logits is None else out.aux_logits.detach(),
            aux_features=[f.detach() for f in out.aux_features],
        )
        extra = {"pair_logits": out.logits.detach()} if method.needs_pair else {}
        return method.loss(o, y, 0, **extra).total

    hess = torch.autograd.functional.hessian(loss, torch.cat([w0.flatten(), b0]))
    return float(torch.linalg.eigvalsh(hess.double())[-1])


@pytest.mark.parametrize("method", ["ce", "ls", "frskd", "ama", "cskd"])
def test_power_iteration_finds_the_largest_eigenvalue_of_the_heads_hessian(method):
    model, m = _model(method)
    x, y = _batch()
    exact = _exact_top_eigenvalue(model, m, x, y)
    assert exact > 0
    assert head_sharpness(model, m, x, y, iters=60) == pytest.approx(exact, rel=1e-3)


def test_a_kl_term_adds_curvature_to_the_head():
    """frskd's loss is ce's plus alpha * T^2 * KL at temperature T, whose curvature in the
    student's logits is alpha times the tempered softmax's covariance: a sharper head."""
    x, y = _batch()
    ce = head_sharpness(*_model("ce"), x, y)
    frskd = head_sharpness(*_model("frskd"), x, y)  # same seed: the same classifier weights
    assert frskd > 1.2 * ce


def test_a_kl_warm_up_starts_with_ces_head():
    """With `kd_warmup_epochs`, the first epoch has no KL term, and nothing else in frskd's
    loss reaches the classifier head: the check, which reads the first step's loss, sees ce's
    sharpness."""
    x, y = _batch()
    ce = head_sharpness(*_model("ce"), x, y)
    frskd = head_sharpness(*_model("frskd"), x, y)
    eased = head_sharpness(*_model("frskd", kd_warmup_epochs=3), x, y)  # the same weights
    assert eased == pytest.approx(ce, rel=1e-3) and frskd > 1.2 * eased


def test_the_check_changes_nothing_the_run_uses():
    model, m = _model("ama")
    x, y = _batch()
    before = {k: v.clone() for k, v in model.state_dict().items()}
    rng = torch.get_rng_state()
    model.eval()
    head_sharpness(model, m, x, y)
    assert not model.training  # mode restored
    after = model.state_dict()
    assert all(torch.equal(before[k], after[k]) for k in before)  # weights and BN statistics
    assert all(p.grad is None for p in model.parameters())
    assert torch.equal(torch.get_rng_state(), rng)


class _Flips(torch.utils.data.Dataset):
    """A dataset whose transform draws from torch's global RNG, sorted by class."""

    def __len__(self):
        return 30

    def __getitem__(self, i):
        x = torch.full((3, 8, 8), float(i))
        return (x.flip(2) if torch.rand(()) < 0.5 else x), i // 10


def test_the_batch_spreads_over_a_class_sorted_set_without_touching_the_rng():
    rng = torch.get_rng_state()
    x, y = spread_batch(_Flips(), 6)
    assert torch.equal(torch.get_rng_state(), rng)
    assert sorted(set(y.tolist())) == [0, 1, 2]  # every class, not the first six images
    x2, _ = spread_batch(_Flips(), 6)
    assert torch.equal(x, x2)  # the same images each time
    assert spread_batch(_Flips(), 100)[0].shape[0] == 30


def test_stability_limits_of_heavy_ball_and_nesterov():
    assert stability_limit(0.9, nesterov=False) == pytest.approx(3.8)
    assert stability_limit(0.9, nesterov=True) == pytest.approx(3.8 / 2.8)
    assert stability_limit(0.0, nesterov=True) == pytest.approx(2.0)  # plain gradient descent


def test_the_warning_comes_past_the_limit_and_names_the_rate_that_starts_inside():
    inside = HeadStability(sharpness=30.0, lr=0.1, limit=3.8, images=128)
    assert inside.ratio < 1 and head_warning(inside, reference_lr=0.1) is None
    # batch 256 at a reference lr of 0.1 per 128: the run's lr is 0.2, train.lr is half of it
    past = HeadStability(sharpness=135.0, lr=0.2, limit=3.8, images=256)
    w = head_warning(past, reference_lr=0.1)
    assert past.ratio == pytest.approx(0.2 * 135 / 3.8)
    assert "sharpness at the initial weights is 135.0" in w and "= 27.0" in w
    assert f"train.lr under {3.8 / 135 / 2:.3g}" in w
    assert math.isclose(past.stable_lr, 3.8 / 135)
    assert "kd_warmup_epochs" not in w  # a method without a KL term from the start
    assert "train.distill.kd_warmup_epochs=3" in head_warning(past, 0.1, kl_from_start=True)


def test_check_head_uses_the_runs_batch_size_and_momentum():
    model, m = _model("ce")
    t = TrainConfig(batch_size=8, momentum=0.5, nesterov=True)
    dataset = torch.utils.data.TensorDataset(torch.randn(20, 3, 16, 16), torch.arange(20) % 3)
    est = check_head(model, m, dataset, t, lr=0.05, device=torch.device("cpu"), channels_last=True)
    assert est.images == 8 and est.lr == 0.05
    assert est.limit == pytest.approx(stability_limit(0.5, True)) and est.sharpness > 0


@pytest.mark.usefixtures("fresh_accelerate_state")
def test_a_run_past_the_limit_says_so_in_its_metrics_and_a_healthy_one_does_not(
    tiny_overrides, caplog
):
    base = [*tiny_overrides, "data.max_per_class=12", "train.epochs=1", "train.batch_size=16"]
    cfg = load_config(None, [*base, "train.lr=0.01"])
    m = run_pipeline(cfg, only="train")["train"].metrics
    assert m["head_stability"]["ratio"] < 1 and m["head_stability"]["warning"] is None
    assert not any("stability limit" in w for w in m["warnings"])

    caplog.set_level("WARNING", logger="pipeline.train")
    cfg = load_config(
        None, [*base, "train.lr=50", "name=steep", "train.on_nan=skip", "train.max_nan_skips=1000"]
    )
    m = run_pipeline(cfg, only="train")["train"].metrics
    rec = m["head_stability"]
    assert rec["ratio"] > 1 and rec["lr"] == pytest.approx(50 * 16 / 128)
    assert rec["warning"] in m["warnings"]
    assert "past SGD's stability limit" in caplog.text
    assert "kd_warmup_epochs" not in rec["warning"]  # ce has no KL term to warm up

    steep = [*base, "train.lr=50", "train.on_nan=skip", "train.max_nan_skips=1000"]
    for name, extra, hint in (
        ("ama", [], True),
        ("ama-warm", ["train.distill.kd_warmup_epochs=2"], False),
    ):
        cfg = load_config(None, [*steep, "train.method=ama", f"name={name}", *extra])
        warning = run_pipeline(cfg, only="train")["train"].metrics["head_stability"]["warning"]
        assert ("train.distill.kd_warmup_epochs=3" in warning) is hint


def test_a_head_that_is_not_linear_is_named():
    class NoHead(nn.Module):
        backbone = nn.Identity()

    with pytest.raises(TypeError, match="no linear classifier head"):
        head_sharpness(NoHead(), None, torch.zeros(1), torch.zeros(1))


@pytest.mark.usefixtures("fresh_accelerate_state")
def test_a_check_that_cannot_run_is_logged_and_training_goes_on(
    tiny_overrides, caplog, monkeypatch
):
    def broken(*args, **kwargs):
        raise RuntimeError("a method this check cannot feed")

    monkeypatch.setattr("pipeline.training.fit.check_head", broken)
    caplog.set_level("WARNING", logger="pipeline.train")
    cfg = load_config(None, [*tiny_overrides, "data.max_per_class=12", "train.epochs=1"])
    m = run_pipeline(cfg, only="train")["train"]
    assert m.complete and "head_stability" not in m.metrics
    assert (
        "head-stability check skipped: RuntimeError: a method this check cannot feed" in caplog.text
    )
