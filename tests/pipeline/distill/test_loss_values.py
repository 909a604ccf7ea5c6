"""Every method's loss, value by value, against METHOD.md sections 4-5 (and docs/methods.md for
the comparators) re-derived here in plain torch on fixed float64 tensors.

The expected values never call the library's attention or loss helpers: a wrong constant, a
missing T^2, a swapped region or a mean where the contract says sum shows up as a number that
differs. The methods compute in float32, so values are compared at float32 tolerance.
"""

from __future__ import annotations

import math

import pytest
import torch

from pipeline.distill import create_method
from pipeline.models.wrapper import ModelOutput

pytestmark = pytest.mark.usefixtures("one_thread")

K = 5  # classes
B = 3  # batch


def _method(name: str, *, epochs: int = 200, **options):
    """The one place the tests build a method: `options` are that method's own settings."""
    return create_method(name, options, num_classes=K, epochs=epochs)


def _close(actual: torch.Tensor, expected: torch.Tensor) -> None:
    torch.testing.assert_close(
        actual.detach().double(), expected.detach().double(), rtol=2e-5, atol=1e-6
    )


# fixed inputs ------------------------------------------------------------------------------


def _gen(seed: int) -> torch.Generator:
    return torch.Generator().manual_seed(seed)


def _targets() -> torch.Tensor:
    return torch.tensor([0, 3, 1])


def _logits(seed: int, scale: float = 1.5) -> torch.Tensor:
    return torch.randn(B, K, generator=_gen(seed), dtype=torch.float64) * scale


def _maps(seed: int, shapes: list[tuple[int, int, int]]) -> list[torch.Tensor]:
    """Non-negative stage maps (after a ReLU), with exact zeros like real ones."""
    g = _gen(seed)
    return [torch.randn(B, c, h, w, generator=g, dtype=torch.float64).relu() for c, h, w in shapes]


STUDENT = [(4, 4, 4), (6, 2, 2)]  # C_i, H_i, W_i of two stages
TEACHER = [(8, 4, 4), (12, 2, 2)]  # d_i = 2 C_i


def _self_kd_output() -> ModelOutput:
    return ModelOutput(
        logits=_logits(1),
        features=_maps(2, STUDENT),
        aux_logits=_logits(3, scale=2.0),
        aux_features=_maps(4, TEACHER),
    )


# METHOD.md, re-derived ---------------------------------------------------------------------


def _ce(z: torch.Tensor, y: torch.Tensor, eps: float = 0.0) -> torch.Tensor:
    """Cross-entropy against (1 - eps) one-hot + eps / K, batch mean."""
    logp = z - torch.logsumexp(z, dim=1, keepdim=True)
    q = torch.full_like(z, eps / z.shape[1])
    q[torch.arange(z.shape[0]), y] += 1.0 - eps
    return -(q * logp).sum(1).mean()


def _soft_ce(z: torch.Tensor, q: torch.Tensor) -> torch.Tensor:
    logp = z - torch.logsumexp(z, dim=1, keepdim=True)
    return -(q * logp).sum(1).mean()


def _softmax(z: torch.Tensor) -> torch.Tensor:
    e = torch.exp(z - z.max(dim=1, keepdim=True).values)
    return e / e.sum(1, keepdim=True)


def _kl(teacher: torch.Tensor, student: torch.Tensor, t: float) -> torch.Tensor:
    """KL(softmax(teacher / T) || softmax(student / T)), batch mean, WITHOUT the T^2 factor."""
    p = _softmax(teacher / t)
    q = _softmax(student / t)
    return (p * (p.log() - q.log())).sum(1).mean()


def _att(x: torch.Tensor) -> torch.Tensor:
    """A(X) = (1/C) sum_c X_c^2 over positions: (B, H*W)."""
    return (x * x).sum(1).reshape(x.shape[0], -1) / x.shape[1]


def _n(v: torch.Tensor) -> torch.Tensor:
    return v / v.pow(2).sum(1, keepdim=True).sqrt()


def _l_at(fs: list[torch.Tensor], rs: list[torch.Tensor]) -> torch.Tensor:
    return sum(((_n(_att(f)) - _n(_att(r))) ** 2).mean() for f, r in zip(fs, rs, strict=True))


def _mask(r: torch.Tensor, kind: str, kappa: float = 20.0) -> torch.Tensor:
    a = _att(r)
    lo, hi = a.min(1, keepdim=True).values, a.max(1, keepdim=True).values
    t = (a - lo) / (hi - lo)
    theta = t.mean(1, keepdim=True)
    if kind == "hard":
        return (t >= theta).double()
    return 1.0 / (1.0 + torch.exp(-kappa * (t - theta)))


def _ratio(z_t: torch.Tensor, y: torch.Tensor, kind: str) -> torch.Tensor:
    p = _softmax(z_t)
    if kind == "confidence":
        return 1.0 - p[torch.arange(len(y)), y]
    return -(p * p.log()).sum(1) / math.log(z_t.shape[1])


def _l_mix(
    fs, rs, z_t, y, *, mask: str = "soft", kappa: float = 20.0, ratio="entropy", invert=False
) -> torch.Tensor:
    lam = _ratio(z_t, y, ratio)
    w_fg, w_bg = (lam, 1 - lam) if invert else (1 - lam, lam)
    per_sample = torch.zeros(len(y), dtype=torch.float64)
    for f, r in zip(fs, rs, strict=True):
        s, t = _att(f), _att(r)
        m = _mask(r, mask, kappa)
        fg = ((_n(m * s) - _n(m * t)) ** 2).mean(1)
        bg = ((_n((1 - m) * s) - _n((1 - m) * t)) ** 2).mean(1)
        per_sample = per_sample + w_fg * fg + w_bg * bg
    return per_sample.mean()


def _self_kd_expected(out: ModelOutput, y: torch.Tensor, *, mix: bool, **o) -> dict[str, float]:
    """METHOD.md section 5: L = CE(z_c) + CE(z_t) + alpha T^2 KL + beta L_AT + beta_mix L_mix."""
    t, alpha = o.get("temperature", 4.0), o.get("alpha", 2.0)
    eps = o.get("label_smoothing", 0.0)
    parts = {
        "ce": _ce(out.logits, y, eps),
        "ce_aux": _ce(out.aux_logits, y, eps),
        "kd": alpha * t * t * _kl(out.aux_logits, out.logits, t),
        "at": o.get("beta", 100.0) * _l_at(out.features, out.aux_features),
        "mix": torch.zeros((), dtype=torch.float64),
    }
    if mix:
        kw = {k: o[k] for k in ("mask", "kappa", "ratio") if k in o}
        l_mix = _l_mix(
            out.features,
            out.aux_features,
            out.aux_logits,
            y,
            invert=o.get("ratio_invert", False),
            **kw,
        )
        parts["mix"] = o.get("beta_mix", 100.0) * l_mix
    return parts


def _check(res, expected: dict[str, torch.Tensor]) -> None:
    for k, v in expected.items():
        _close(res.parts[k], v)
    _close(res.total, sum(expected.values()))


# frskd and ama -----------------------------------------------------------------------------


def test_the_fixed_inputs_exercise_every_term() -> None:
    """Guards the fixture: no term of the expected loss is trivially zero, the masks are not
    degenerate and the ratios are strictly inside (0, 1), so a term left out is detected."""
    out, y = _self_kd_output(), _targets()
    parts = _self_kd_expected(out, y, mix=True)
    assert all(v.item() > 1e-3 for v in parts.values()), parts
    for r in out.aux_features:
        m = _mask(r, "soft")
        assert 0.05 < m.mean().item() < 0.95
    lam = _ratio(out.aux_logits, y, "entropy")
    assert ((lam > 0.05) & (lam < 0.95)).all()


AMA_OPTIONS = [
    {},
    {"mask": "hard"},
    {"kappa": 5.0},
    {"ratio": "confidence"},
    {"ratio_invert": True},
    {"mask": "hard", "ratio": "confidence", "ratio_invert": True},
    {"label_smoothing": 0.2},
    {"temperature": 2.0, "alpha": 0.5, "beta": 30.0, "beta_mix": 7.0},
]


@pytest.mark.parametrize("options", AMA_OPTIONS, ids=lambda o: ",".join(o) or "defaults")
def test_ama_loss_matches_method_md(options: dict) -> None:
    out, y = _self_kd_output(), _targets()
    res = _method("ama", **options).loss(out, y, epoch=199)
    _check(res, _self_kd_expected(out, y, mix=True, **options))
    lam = _ratio(out.aux_logits, y, options.get("ratio", "entropy"))
    _close(res.parts["mix_ratio"], lam.mean())


@pytest.mark.parametrize("options", [{}, {"label_smoothing": 0.1}, {"beta": 3.0, "alpha": 1.0}])
def test_frskd_loss_matches_method_md_without_the_mixed_term(options: dict) -> None:
    out, y = _self_kd_output(), _targets()
    res = _method("frskd", **options).loss(out, y, epoch=199)
    _check(res, _self_kd_expected(out, y, mix=False, **options))


@pytest.mark.parametrize("t", [1.0, 2.0, 4.0])
def test_the_kl_term_is_scaled_by_t_squared(t: float) -> None:
    """alpha * T^2 * KL at temperature T: at T = 4 the term is 16 KL_4, at T = 2 it is 4 KL_2."""
    out, y = _self_kd_output(), _targets()
    kd = _method("frskd", temperature=t, alpha=1.0).loss(out, y, epoch=0).parts["kd"]
    kl = _kl(out.aux_logits, out.logits, t)
    _close(kd, t * t * kl)
    assert abs(kd.item() - kl.item()) > 1e-3 or t == 1.0  # the factor is really there


def test_the_classifier_logits_get_the_gradient_of_ce_plus_t_squared_kl() -> None:
    """d total / d z_c is the gradient of CE(z_c) + alpha T^2 KL(p_t(T) || p_c(T)) written out
    by hand (the attention terms do not read z_c), at a high and a low temperature."""
    out, y = _self_kd_output(), _targets()
    for t in (2.0, 8.0):
        z = out.logits.clone().requires_grad_()
        o = ModelOutput(z, out.features, out.aux_logits, out.aux_features)
        res = _method("ama", temperature=t, alpha=1.5).loss(o, y, epoch=199)
        (g,) = torch.autograd.grad(res.total, z)
        zc = out.logits.clone().requires_grad_()
        (g_ref,) = torch.autograd.grad(_ce(zc, y) + 1.5 * t * t * _kl(out.aux_logits, zc, t), zc)
        _close(g, g_ref)


@pytest.mark.parametrize("name", ["frskd", "ama"])
def test_kd_warm_up_weights_the_kl_term_alpha_e_over_w(name: str) -> None:
    out, y = _self_kd_output(), _targets()
    method = _method(name, alpha=2.0, kd_warmup_epochs=4, mix_warmup_epochs=0)
    kl16 = 16.0 * _kl(out.aux_logits, out.logits, 4.0)
    for epoch, weight in ((0, 0.0), (1, 0.5), (3, 1.5), (4, 2.0), (100, 2.0)):
        res = method.loss(out, y, epoch=epoch)
        expected = _self_kd_expected(out, y, mix=name == "ama")
        expected["kd"] = weight * kl16
        _check(res, expected)


@pytest.mark.parametrize(
    ("epochs", "warmup", "first_on"), [(200, None, 5), (40, None, 1), (100, None, 3), (50, 7, 7)]
)
def test_mix_warm_up_leaves_the_mixed_term_out_of_the_total(epochs, warmup, first_on) -> None:
    """L_mix is off in the first `mix_warmup_epochs` (5 of 200 scaled): the total is then
    exactly the frskd loss, and from that epoch on it is the full ama loss."""
    out, y = _self_kd_output(), _targets()
    method = _method("ama", epochs=epochs, mix_warmup_epochs=warmup)
    if first_on > 0:
        _check(method.loss(out, y, epoch=first_on - 1), _self_kd_expected(out, y, mix=False))
    _check(method.loss(out, y, epoch=first_on), _self_kd_expected(out, y, mix=True))


# the comparators and the baseline ----------------------------------------------------------


def test_ce_is_the_classifier_cross_entropy() -> None:
    z, y = _logits(1), _targets()
    res = _method("ce").loss(ModelOutput(z, []), y, epoch=0)
    _check(res, {"ce": _ce(z, y)})


@pytest.mark.parametrize("eps", [0.1, 0.3])
def test_ls_smooths_every_class_including_the_true_one(eps: float) -> None:
    z, y = _logits(1), _targets()
    res = _method("ls", smoothing=eps).loss(ModelOutput(z, []), y, epoch=0)
    # written out: the true class gets 1 - eps + eps / K, every other class eps / K
    logp = torch.log(_softmax(z))
    q = torch.full((B, K), eps / K, dtype=torch.float64)
    for b, c in enumerate(y.tolist()):
        q[b, c] = 1 - eps + eps / K
    _check(res, {"ce": -(q * logp).sum(1).mean()})


@pytest.mark.parametrize(("t", "lam"), [(4.0, 1.0), (2.0, 0.5)])
def test_cskd_is_ce_plus_lambda_t_squared_kl_from_the_partner(t: float, lam: float) -> None:
    z, partner, y = _logits(1), _logits(5), _targets()
    method = _method("cskd", temperature=t, lambda_cls=lam)
    res = method.loss(ModelOutput(z, []), y, epoch=0, pair_logits=partner)
    _check(res, {"ce": _ce(z, y), "cls": lam * t * t * _kl(partner, z, t)})


def test_pskd_targets_mix_one_hot_with_last_epochs_prediction() -> None:
    """Target (1 - a_t) one-hot + a_t p_{t-1}(x), a_t = alpha_T (e + 1) / T in 0-based epoch e
    (one-hot in the first epoch and for a sample never predicted)."""
    n_train, epochs, alpha_t = 7, 10, 0.8
    method = _method("pskd", epochs=epochs, alpha_final=alpha_t)
    method.attach(n_train, torch.device("cpu"))
    seen_index = torch.tensor([4, 0, 6])
    earlier = _logits(6, scale=2.0)
    method.record(ModelOutput(earlier, []), {"index": seen_index}, gather=lambda x: x)
    z, y = _logits(1), _targets()
    index = torch.tensor([0, 2, 6])  # sample 2 was never predicted
    onehot = torch.nn.functional.one_hot(y, K).double()
    past = _softmax(earlier)
    p_prev = torch.stack([past[1], onehot[1], past[2]])
    for epoch in (0, 1, 4, 9):
        a = 0.0 if epoch == 0 else alpha_t * (epoch + 1) / epochs
        q = (1 - a) * onehot + a * p_prev
        res = method.loss(ModelOutput(z, []), y, epoch=epoch, index=index)
        _check(res, {"ce": _soft_ce(z, q)})
        _close(res.parts["pskd_alpha"], torch.tensor(a, dtype=torch.float64))


def _byot_output() -> ModelOutput:
    g = _gen(7)
    d = 6  # the last stage's width, which each head's pooled features match
    last = torch.randn(B, d, 2, 2, generator=g, dtype=torch.float64).relu()
    head_feats = [torch.randn(B, d, generator=g, dtype=torch.float64).relu() for _ in range(2)]
    heads = [_logits(8), _logits(9)]
    return ModelOutput(
        logits=_logits(1),
        features=[torch.zeros(B, 3, 4, 4, dtype=torch.float64), last],
        aux_heads=heads,
        aux_head_features=head_feats,
    )


@pytest.mark.parametrize(
    "options", [{}, {"temperature": 1.0, "alpha": 0.5, "beta": 0.01}], ids=["defaults", "set"]
)
def test_byot_loss_matches_the_published_code(options: dict) -> None:
    """(1 - a)(CE(z_c) + sum_i CE(z_i)) + a sum_i T^2 KL(p_c(T) || p_i(T)) + b sum_i
    sum_batch,channels (f_i - f_c)^2 where either is positive (docs/methods.md)."""
    out, y = _byot_output(), _targets()
    o = {"temperature": 3.0, "alpha": 0.1, "beta": 1e-6, **options}
    res = _method("byot", **options).loss(out, y, epoch=0)
    t, a, b = o["temperature"], o["alpha"], o["beta"]
    f_c = out.features[-1].mean(dim=(2, 3))
    hint = 0.0
    for f in out.aux_head_features:
        for i in range(B):
            for c in range(f.shape[1]):
                if f[i, c] > 0 or f_c[i, c] > 0:
                    hint = hint + (f[i, c] - f_c[i, c]) ** 2
    expected = {
        "ce": (1 - a) * _ce(out.logits, y),
        "ce_heads": (1 - a) * sum(_ce(z, y) for z in out.aux_heads),
        "kd": a * t * t * sum(_kl(out.logits, z, t) for z in out.aux_heads),
        "hint": b * hint,
    }
    _check(res, expected)
    assert expected["hint"].item() > 0
