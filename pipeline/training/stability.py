"""Is the learning rate past SGD's stability limit at the first step? A check before training.

The loss restricted to the classifier's last linear layer (every other weight and every input
held fixed) has a Hessian that is a principal block of the full Hessian, so its largest
eigenvalue, the head's sharpness S, is a lower bound on the whole model's sharpness. On a
quadratic, SGD with momentum beta and learning rate lr converges only where lr * S is below
2 (1 + beta) (heavy ball; 2 (1 + beta) / (1 + 2 beta) with Nesterov). Past that the first steps
overshoot along the head's stiffest direction and the logits blow up.

The stiff direction is the features' common mean: after a ReLU every pooled feature is positive,
so S grows with the channel count and shrinks with the class count (about |mean h|^2 / K at a
uniform prediction). A KL term against a teacher adds alpha times the same curvature at the
student's tempered prediction: a CIFAR ResNet-18 at width 1 on ten classes starts past the
limit at lr 0.1 with `ce` (5.4 against 3.8) and far past it self-distilled (about 13), while
the same network on CIFAR-100 (the literature's setting) starts ten times further inside.
Starting inside is necessary for a smooth start, not sufficient: sharpness also grows over the
first steps, so a run that starts just inside can still spike.

S is computed with the method's own loss (so its distillation terms count) by power iteration
on Hessian-vector products over the last layer's weights, on a fixed spread of training images,
at the initial weights; nothing the run uses is changed (random state, batch-norm statistics).
"""

from __future__ import annotations

from dataclasses import dataclass

import torch
from torch import nn

from pipeline.models.wrapper import ModelOutput, classifier_head


@dataclass(frozen=True)
class HeadStability:
    sharpness: float  # largest Hessian eigenvalue of the loss in the classifier's last layer
    lr: float  # the peak learning rate the run will use (scaled with the batch)
    limit: float  # the largest stable lr * sharpness for this momentum
    images: int  # training images the estimate used

    @property
    def ratio(self) -> float:
        """lr * sharpness over the limit: above 1, the first steps overshoot."""
        return self.lr * self.sharpness / self.limit

    @property
    def stable_lr(self) -> float:
        """The largest learning rate inside the limit at the initial weights."""
        return self.limit / self.sharpness if self.sharpness > 0 else float("inf")

    def to_dict(self) -> dict:
        return {
            "sharpness": self.sharpness,
            "lr": self.lr,
            "limit": self.limit,
            "ratio": self.ratio,
            "stable_lr": self.stable_lr,
            "images": self.images,
        }


def stability_limit(momentum: float, nesterov: bool) -> float:
    """The largest lr * curvature at which SGD with this momentum converges on a quadratic."""
    if nesterov and momentum > 0:
        return 2.0 * (1.0 + momentum) / (1.0 + 2.0 * momentum)
    return 2.0 * (1.0 + momentum)


def _head(model: nn.Module) -> nn.Linear:
    head = classifier_head(getattr(model, "backbone", model))
    if not isinstance(head, nn.Linear):
        raise TypeError(f"{type(model).__name__} has no linear classifier head")
    return head


def head_sharpness(
    model: nn.Module, method, images: torch.Tensor, targets: torch.Tensor, iters: int = 30
) -> float:
    """Largest eigenvalue of the Hessian of `method`'s loss (epoch 0) in the classifier's last
    linear layer, at `model`'s weights on this batch. Train mode (batch statistics, as the
    first step sees them); batch-norm buffers are restored afterwards."""
    head = _head(model)
    buffers = {k: v.detach().clone() for k, v in model.named_buffers()}
    was_training = model.training
    model.train()
    try:
        pooled: list[torch.Tensor] = []
        hook = head.register_forward_hook(lambda m, inp, out: pooled.append(inp[0].detach()))
        try:
            with torch.no_grad():
                out = model(images)
        finally:
            hook.remove()
        h = pooled[-1].float()
        weight, bias = head.weight, head.bias
        params = [p for p in (weight, bias) if p is not None]
        logits = nn.functional.linear(h, weight.float(), None if bias is None else bias.float())
        detached = ModelOutput(
            logits=logits,
            features=[f.detach() for f in out.features],
            aux_logits=None if out.aux_logits is None else out.aux_logits.detach(),
            aux_features=[f.detach() for f in out.aux_features],
            aux_heads=[z.detach() for z in out.aux_heads],
            aux_head_features=[f.detach() for f in out.aux_head_features],
        )
        loss = method.loss(detached, targets, 0, **_inputs(method, out, targets)).total
        grads = torch.autograd.grad(loss, params, create_graph=True)
        gen = torch.Generator(device="cpu").manual_seed(0)
        v = [torch.randn(p.shape, generator=gen).to(p.device) for p in params]
        eig = 0.0
        for _ in range(iters):
            norm = torch.sqrt(sum((x * x).sum() for x in v))
            v = [x / norm for x in v]
            hv = torch.autograd.grad(grads, params, grad_outputs=v, retain_graph=True)
            eig = float(sum((a * b).sum() for a, b in zip(hv, v, strict=True)))
            v = [x.detach() for x in hv]
        return max(eig, 0.0)
    finally:
        with torch.no_grad():
            for k, b in model.named_buffers():
                b.copy_(buffers[k])
        model.train(was_training)


def _inputs(method, out: ModelOutput, targets: torch.Tensor) -> dict:
    """What the methods that read more than the batch need, at the first step: positions for
    per-sample state, and for a partner's prediction the batch's own (the curvature of a KL
    term in the student's logits does not depend on the target distribution)."""
    inputs: dict = {}
    if getattr(method, "needs_index", False):
        inputs["index"] = torch.arange(targets.numel(), device=targets.device)
    if getattr(method, "needs_pair", False):
        inputs["pair_logits"] = out.logits.detach()
    return inputs


def spread_batch(dataset, n: int) -> tuple[torch.Tensor, torch.Tensor]:
    """n training images spread evenly over the dataset (class-sorted layouts give every class),
    through the training transform, without touching the run's random state."""
    n = max(1, min(n, len(dataset)))
    idx = torch.linspace(0, len(dataset) - 1, n).round().long().tolist()
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(0)
        items = [dataset[i] for i in idx]
    return torch.stack([x for x, _ in items]), torch.tensor([int(y) for _, y in items])


def check_head(
    model: nn.Module, method, dataset, t, lr: float, device: torch.device, channels_last: bool
) -> HeadStability:
    """The head-stability estimate for a run about to start from its initial weights."""
    images, targets = spread_batch(dataset, t.batch_size)
    images, targets = images.to(device), targets.to(device)
    if channels_last:
        images = images.contiguous(memory_format=torch.channels_last)
    s = head_sharpness(model, method, images, targets)
    return HeadStability(
        sharpness=s, lr=lr, limit=stability_limit(t.momentum, t.nesterov), images=len(targets)
    )


def head_warning(
    est: HeadStability, reference_lr: float, *, kl_from_start: bool = False
) -> str | None:
    """The warning for a run that starts past the limit (None: it starts inside).
    `kl_from_start`: the method distils its self-teacher's predictions (a KL term) from the
    first step, and a KL warm-up would start the head at `ce`'s sharpness."""
    if est.ratio <= 1.0:
        return None
    factor = est.lr / reference_lr
    warm_up = (
        "; or train.distill.kd_warmup_epochs=3, which leaves the KL term out of the first "
        "epoch and ramps it in, so the head starts at `ce`'s sharpness (it kept the classifier "
        "learning in benchmarks/README.md, 'Early steps')"
        if kl_from_start
        else ""
    )
    return (
        f"the learning rate starts past SGD's stability limit: the classifier head's sharpness "
        f"at the initial weights is {est.sharpness:.1f}, so lr {est.lr:g} x sharpness = "
        f"{est.lr * est.sharpness:.1f}, over the limit {est.limit:.1f} for this momentum; the "
        "first steps will overshoot and blow the logits up (a self-distilled classifier's last "
        "stage can die there and stay near chance for many epochs, while `ce` usually "
        f"recovers). train.lr under {est.stable_lr / factor:.3g} starts inside the limit"
        f"{warm_up}; sharpness also grows as training starts, so watch the first epochs' train "
        "top-1"
    )
