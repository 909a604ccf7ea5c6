"""The comparator methods `ls`, `cskd`, `pskd` and `byot`: each paper's loss and gradient rules,
tested by property on tiny models, the loader extras they read, and a tiny training run per
method."""

from __future__ import annotations

import json
import math

import pytest
import torch
import torch.nn.functional as F

from pipeline.config import load_config
from pipeline.data import SampleExtras
from pipeline.distill import create_method
from pipeline.distill.methods.cskd import CSKDOptions
from pipeline.distill.methods.ls import LabelSmoothingOptions
from pipeline.distill.methods.pskd import PSKDOptions
from pipeline.models import SelfDistillModel, create_model

pytestmark = pytest.mark.usefixtures("one_thread")

K = 6


def _model(method: str, epochs: int = 10, **cfg):
    torch.manual_seed(0)
    m = create_method(method, cfg, num_classes=K, epochs=epochs)
    net = create_model("resnet18", num_classes=K, stem="cifar", width=0.125)
    return m, SelfDistillModel(net, m.build_aux(net))


def _batch(n: int = 6, size: int = 16, seed: int = 1):
    g = torch.Generator().manual_seed(seed)
    return torch.randn(n, 3, size, size, generator=g), torch.randint(0, K, (n,), generator=g)


def _logits(n: int = 5, seed: int = 0) -> torch.Tensor:
    return torch.randn(n, K, generator=torch.Generator().manual_seed(seed)) * 3


class _Out:
    """A stand-in for ModelOutput where only logits matter."""

    def __init__(self, logits: torch.Tensor) -> None:
        self.logits = logits


# ls ----------------------------------------------------------------------------------------


@pytest.mark.parametrize("eps", [0.1, 0.3])
def test_ls_is_cross_entropy_against_the_smoothed_target(eps: float) -> None:
    method = create_method("ls", {"smoothing": eps}, num_classes=K, epochs=1)
    z, y = _logits(), torch.tensor([0, 1, 2, 3, 5])
    res = method.loss(_Out(z), y, epoch=0)
    target = (1 - eps) * F.one_hot(y, K).float() + eps / K  # Szegedy et al., section 7
    by_hand = -(target * F.log_softmax(z, -1)).sum(-1).mean()
    torch.testing.assert_close(res.total, by_hand)
    torch.testing.assert_close(res.total, F.cross_entropy(z, y, label_smoothing=eps))
    assert not math.isclose(res.total.item(), F.cross_entropy(z, y).item(), rel_tol=1e-4)


def test_ls_default_is_the_papers_0_1_and_zero_smoothing_is_ce() -> None:
    assert LabelSmoothingOptions().smoothing == 0.1
    z, y = _logits(), torch.tensor([0, 1, 2, 3, 5])
    off = create_method("ls", {"smoothing": 0.0}, num_classes=K, epochs=1)
    ce = create_method("ce", num_classes=K, epochs=1)
    torch.testing.assert_close(off.loss(_Out(z), y, 0).total, ce.loss(_Out(z), y, 0).total)


# cskd --------------------------------------------------------------------------------------


def test_cskd_term_is_lambda_t2_kl_of_partner_over_anchor() -> None:
    method = create_method("cskd", {"lambda_cls": 2.0}, num_classes=K, epochs=1)
    assert (CSKDOptions().temperature, CSKDOptions().lambda_cls) == (4.0, 1.0)
    z, zp, y = _logits(seed=0), _logits(seed=1), torch.tensor([0, 1, 2, 3, 5])
    res = method.loss(_Out(z), y, epoch=0, pair_logits=zp)
    t = 4.0
    q, log_p = F.softmax(zp / t, -1), F.log_softmax(z / t, -1)
    kl = (q * (q.log() - log_p)).sum(-1).mean()
    torch.testing.assert_close(res.parts["cls"], 2.0 * t * t * kl)
    torch.testing.assert_close(res.parts["ce"], F.cross_entropy(z, y))
    torch.testing.assert_close(res.total, res.parts["ce"] + res.parts["cls"])
    same = method.loss(_Out(z), y, epoch=0, pair_logits=z.clone())
    assert same.parts["cls"].abs().item() < 1e-5


def test_cskd_sends_no_gradient_through_the_partner() -> None:
    """Even if the partner's logits carry a graph, the loss trains only the anchor's path."""
    method, model = _model("cskd")
    x, y = _batch()
    xp = x.flip(0).clone().requires_grad_()
    x = x.clone().requires_grad_()
    res = method.loss(model(x), y, epoch=0, pair_logits=model(xp).logits)
    res.total.backward()
    assert xp.grad is None or not xp.grad.any()
    assert x.grad is not None and x.grad.abs().sum() > 0
    # through the loop's hook the partner's forward runs without a graph at all
    inputs = method.extra_inputs(model, {"pair": xp})
    assert not inputs["pair_logits"].requires_grad


def test_cskd_without_partners_says_what_is_missing() -> None:
    method, model = _model("cskd")
    x, y = _batch()
    with pytest.raises(ValueError, match="same-class partner"):
        method.extra_inputs(model, {})
    with pytest.raises(ValueError, match="pair_logits"):
        method.loss(model(x), y, epoch=0)


def test_pairs_are_other_members_of_the_same_class_drawn_uniformly() -> None:
    class Tiny(torch.utils.data.Dataset):
        labels = [0, 0, 0, 1, 1, 2, 0]

        def __len__(self):
            return len(self.labels)

        def __getitem__(self, i):
            return torch.full((1,), float(i)), self.labels[i]

    ds = SampleExtras(Tiny(), pair=True, index=True)
    torch.manual_seed(0)
    counts: dict[int, int] = {}
    for _ in range(600):
        image, label, extras = ds[0]
        j = int(extras["pair"].item())
        assert extras["index"] == 0 and Tiny.labels[j] == label and j != 0
        counts[j] = counts.get(j, 0) + 1
    assert set(counts) == {1, 2, 6} and min(counts.values()) > 150  # about 200 each
    assert int(ds[5][2]["pair"].item()) == 5  # a class of one: its own image
    assert int(ds[4][2]["pair"].item()) == 3
    torch.manual_seed(3)
    a = [int(ds[i][2]["pair"].item()) for i in range(7)]
    torch.manual_seed(3)
    assert a == [int(ds[i][2]["pair"].item()) for i in range(7)]  # seeded: reproducible


# pskd --------------------------------------------------------------------------------------


def _pskd(epochs: int = 10, n: int = 8, **cfg):
    m = create_method("pskd", cfg, num_classes=K, epochs=epochs)
    m.attach(n, torch.device("cpu"))
    return m


def test_pskd_alpha_grows_linearly_to_alpha_t_at_the_last_epoch() -> None:
    assert PSKDOptions().alpha_final == 0.8
    m = _pskd(epochs=10)
    assert m.alpha(0) == 0.0  # no earlier prediction in the first epoch
    assert m.alpha(1) == pytest.approx(0.8 * 2 / 10)
    assert m.alpha(4) == pytest.approx(0.8 * 5 / 10)
    assert m.alpha(9) == pytest.approx(0.8)
    assert _pskd(epochs=4, alpha_final=0.5).alpha(3) == pytest.approx(0.5)


def test_pskd_targets_are_onehot_at_epoch_0_then_mix_last_epochs_prediction() -> None:
    m = _pskd(epochs=10)
    y, idx = torch.tensor([0, 3, 5]), torch.tensor([2, 6, 7])
    z = _logits(3, seed=4).requires_grad_()
    m.record(_Out(z), {"index": idx}, gather=lambda t: t)  # one "previous epoch"
    onehot = F.one_hot(y, K).float()
    torch.testing.assert_close(m.soft_targets(y, idx, epoch=0), onehot)
    soft = m.soft_targets(y, idx, epoch=4)
    a = 0.8 * 5 / 10
    torch.testing.assert_close(soft, (1 - a) * onehot + a * F.softmax(z.detach(), -1))
    assert not soft.requires_grad and not m.probs.requires_grad
    torch.testing.assert_close(soft.sum(-1), torch.ones(3))
    assert bool((soft >= 0).all())
    unseen = m.soft_targets(y, torch.tensor([0, 1, 4]), epoch=4)  # never recorded: one-hot
    torch.testing.assert_close(unseen, onehot)


def test_pskd_gradient_is_softmax_minus_the_detached_target() -> None:
    m = _pskd(epochs=10)
    y, idx = torch.tensor([1, 2, 4, 0]), torch.arange(4)
    m.record(_Out(_logits(4, seed=7)), {"index": idx}, gather=lambda t: t)
    z = _logits(4, seed=8).requires_grad_()
    res = m.loss(_Out(z), y, epoch=9, index=idx)
    (g,) = torch.autograd.grad(res.total, z)
    soft = m.soft_targets(y, idx, epoch=9)
    torch.testing.assert_close(g, (F.softmax(z.detach(), -1) - soft) / 4)
    assert res.parts["pskd_alpha"].item() == pytest.approx(0.8)
    with pytest.raises(ValueError, match="index"):
        m.loss(_Out(z), y, epoch=9)


def test_pskd_store_takes_every_process_rows_and_survives_a_round_trip() -> None:
    m = _pskd(n=8)
    mine, other = _logits(2, seed=1), _logits(2, seed=2)

    def gather(tensors):  # what accelerator.gather returns with a second rank beside us
        index, probs = tensors
        return torch.cat([index, torch.tensor([5, 6])]), torch.cat([probs, F.softmax(other, -1)])

    m.record(_Out(mine), {"index": torch.tensor([0, 1])}, gather)
    assert m.seen.tolist() == [True, True, False, False, False, True, True, False]
    torch.testing.assert_close(m.probs[5:7], F.softmax(other, -1))
    state = m.state_dict()
    fresh = _pskd(n=8)
    fresh.load_state_dict(state)
    assert torch.equal(fresh.probs, m.probs) and torch.equal(fresh.seen, m.seen)
    with pytest.raises(ValueError, match="training set needs"):
        _pskd(n=9).load_state_dict(state)


# all three ---------------------------------------------------------------------------------


def _inputs(method, model, x):
    method.attach(len(x), torch.device("cpu"))
    extras = {"pair": x.flip(0), "index": torch.arange(len(x))}
    return method.extra_inputs(model, extras)


@pytest.mark.parametrize("name", ["ls", "cskd", "pskd", "byot"])
def test_losses_are_finite_under_bf16_autocast(name: str) -> None:
    method, model = _model(name)
    x, y = _batch()
    with torch.autocast("cpu", dtype=torch.bfloat16):
        inputs = _inputs(method, model, x)
        out = model(x)
        if name == "pskd":
            method.record(out, {"index": torch.arange(len(x))}, gather=lambda t: t)
        res = method.loss(out, y, epoch=9, **inputs)
    assert out.logits.dtype == torch.bfloat16  # autocast really ran in bf16
    assert res.total.dtype == torch.float32
    assert all(bool(torch.isfinite(v)) for v in res.parts.values())
    res.total.backward()
    grads = [p.grad for p in model.parameters() if p.grad is not None]
    assert grads and all(bool(torch.isfinite(g).all()) for g in grads)


@pytest.mark.parametrize("name", ["ls", "cskd", "pskd"])
def test_comparators_have_no_self_teacher(name: str) -> None:
    method, model = _model(name)
    assert model.aux is None and not method.needs_features
    assert (method.needs_index, method.needs_pair) == (name == "pskd", name == "cskd")


# byot --------------------------------------------------------------------------------------


@pytest.mark.parametrize("arch", ["resnet18", "wrn16_2"])
def test_byot_has_one_shallow_head_per_stage_but_the_last(arch: str) -> None:
    from pipeline.models.shallow_heads import ShallowHeads

    m = create_method("byot", num_classes=K, epochs=10)
    net = create_model(arch, num_classes=K, stem="cifar", width=0.125, feature_taps=True)
    model = SelfDistillModel(net, m.build_aux(net))
    assert isinstance(model.aux, ShallowHeads) and m.needs_features
    out = model(_batch()[0])
    n = len(net.stage_channels)
    assert [z.shape for z in out.aux_heads] == [(6, K)] * (n - 1)
    assert [f.shape for f in out.aux_head_features] == [(6, net.stage_channels[-1])] * (n - 1)
    assert out.aux_logits is None and out.aux_features == []  # no self-teacher to draw


def test_byot_total_is_the_published_weighted_sum() -> None:
    method, model = _model("byot", alpha=0.3, beta=1e-3, temperature=3.0)
    x, y = _batch()
    out = model(x)
    res = method.loss(out, y, epoch=0)
    ce = F.cross_entropy(out.logits, y)
    heads = sum(F.cross_entropy(z, y) for z in out.aux_heads)
    t = 3.0
    kd = sum(
        F.kl_div(F.log_softmax(z / t, -1), F.softmax(out.logits / t, -1), reduction="batchmean")
        * t
        * t
        for z in out.aux_heads
    )
    teacher = out.features[-1].mean(dim=(2, 3))
    hint = sum(
        ((f - teacher) ** 2 * ((f > 0) | (teacher > 0))).sum() for f in out.aux_head_features
    )
    torch.testing.assert_close(res.total, 0.7 * (ce + heads) + 0.3 * kd + 1e-3 * hint)
    assert float(res.parts["kd"]) > 0 and float(res.parts["hint"]) > 0
    torch.testing.assert_close(res.total.detach(), sum(res.parts.values()))


def test_byot_heads_learn_from_the_classifier_never_the_reverse() -> None:
    """The deployed classifier's last stage and head get exactly the gradient of its own
    cross-entropy; the stages the heads read get more (the heads train them)."""
    method, model = _model("byot", alpha=0.3, beta=1e-2)
    x, y = _batch()
    out = model(x)
    total = method.loss(out, y, epoch=0).total
    own = 0.7 * F.cross_entropy(out.logits, y)
    net = model.backbone
    last = [*net.stages[-1].parameters(), *net.fc.parameters()]
    first = list(net.stages[0].parameters())
    g_total = torch.autograd.grad(total, last + first, retain_graph=True, allow_unused=True)
    g_own = torch.autograd.grad(own, last + first, allow_unused=True)
    for a, b in zip(g_total[: len(last)], g_own[: len(last)], strict=True):
        torch.testing.assert_close(a, b)
    assert any(
        not torch.allclose(a, b)
        for a, b in zip(g_total[len(last) :], g_own[len(last) :], strict=False)
    )


# a tiny training run per method ------------------------------------------------------------


@pytest.mark.usefixtures("fresh_accelerate_state")
@pytest.mark.parametrize("name", ["ls", "cskd", "pskd"])
def test_each_comparator_trains_end_to_end(name: str, tiny_overrides) -> None:
    from safetensors.torch import load_file

    from pipeline.runner import run_pipeline

    cfg = load_config(None, [*tiny_overrides, f"train.method={name}", "data.max_per_class=40"])
    m = run_pipeline(cfg, only="train")["train"]
    assert m.complete and m.metrics["method"] == name
    assert m.metrics["params_aux"] == 0 and 0.0 <= m.metrics["test_top1"] <= 1.0
    rows = [json.loads(x) for x in (m.folder / "metrics.jsonl").read_text().splitlines()]
    assert [r["epoch"] for r in rows] == [1, 2]
    assert all(math.isfinite(r["loss"]) and r["loss"] > 0 for r in rows)
    if name == "cskd":
        assert all(r["cls"] > 0 for r in rows)
        assert all(r["loss"] == pytest.approx(r["ce"] + r["cls"]) for r in rows)
    if name == "pskd":
        assert [r["pskd_alpha"] for r in rows] == pytest.approx([0.0, 0.8])
        last = m.extra["checkpoint"]["name"]
        store = load_file(str(m.folder / "checkpoints" / last / "method_state.safetensors"))
        from pipeline.data import build_data

        assert store["seen"].numel() == len(build_data(cfg.data).train)
        assert bool(store["seen"].all())  # every training sample's index reached the store
        torch.testing.assert_close(store["probs"].sum(-1), torch.ones(len(store["seen"])))


@pytest.mark.usefixtures("fresh_accelerate_state")
def test_byot_trains_slims_and_ships_the_classifier_alone(tiny_overrides) -> None:
    """Through train, slim (channel pruning traced through the shallow heads, recovered with
    byot) and prune: the heads are removed and the classifier's logits are unchanged."""
    from pipeline.runner import run_pipeline

    cfg = load_config(
        None,
        [
            *tiny_overrides,
            "train.method=byot",
            "data.max_per_class=40",
            "slim.ratio=0.25",
            "slim.epochs=1",
            "slim.round_to=2",
            "validate.sweep.enabled=false",
        ],
    )
    m = run_pipeline(cfg, only="train")["train"]
    assert m.metrics["method"] == "byot" and m.metrics["params_aux"] > 0
    rows = [json.loads(x) for x in (m.folder / "metrics.jsonl").read_text().splitlines()]
    assert all(r["kd"] > 0 and r["ce_heads"] > 0 and math.isfinite(r["hint"]) for r in rows)
    slim = run_pipeline(cfg, only="slim")["slim"]
    assert slim.metrics["slimmed"]
    prune = run_pipeline(cfg, only="prune")["prune"]
    assert prune.metrics["parity"]["max_abs_diff"] == 0.0
    assert prune.metrics["params_removed"] > 0
    assert prune.metrics["params_deployed"] == prune.metrics["params_bare_backbone"]
    assert not list(prune.folder.glob("attention_stage*.png"))
