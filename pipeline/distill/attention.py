"""Spatial attention maps, adaptive masks and the dynamic ratio (METHOD.md section 4, steps 1-4).

Every function here works on float32, whatever the autocast dtype of its inputs: squares, norms
and entropies of bf16 activations lose too much precision, and the maps are small (B x H*W), so
the cast costs nothing. Nothing here has learnable state.
"""

from __future__ import annotations

import math

import torch
import torch.nn.functional as F

# Below this a norm or a range counts as zero: a constant or all-zero map stays finite.
EPS = 1e-12


class _SquareMean(torch.autograd.Function):
    """(1/C) sum_c x_c^2 in float32 in one read of x, and a backward that is one multiply.

    The stage maps are the largest tensors of the step; pow-then-mean reads and writes them
    several times forward and backward, which dominates on a memory-bound CPU.
    """

    @staticmethod
    def forward(ctx, x: torch.Tensor) -> torch.Tensor:
        ctx.save_for_backward(x)
        norm = torch.linalg.vector_norm(x, 2, dim=1, dtype=_acc_dtype(x))
        return norm.square() / x.shape[1]

    @staticmethod
    def backward(ctx, grad: torch.Tensor) -> torch.Tensor:
        (x,) = ctx.saved_tensors
        g = (grad * (2.0 / x.shape[1])).unsqueeze(1).to(x.dtype)
        # empty_like keeps x's memory format; a plain broadcast product comes out NCHW, and a
        # gradient in another layout than its tensor sends later kernels down slow strided paths
        return torch.mul(x, g, out=torch.empty_like(x))


def _acc_dtype(x: torch.Tensor) -> torch.dtype:
    return torch.promote_types(x.dtype, torch.float32)  # at least float32; float64 stays


def attention_map(x: torch.Tensor) -> torch.Tensor:
    """A(X) = (1/C) sum_c X_c^2, flattened over positions: (B, C, H, W) -> (B, H*W), float32."""
    if not x.requires_grad:
        return (
            torch.linalg.vector_norm(x, 2, dim=1, dtype=_acc_dtype(x))
            .square()
            .div(x.shape[1])
            .flatten(1)
        )
    return _SquareMean.apply(x).flatten(1)


def normalize(v: torch.Tensor) -> torch.Tensor:
    """N(v) = v / ||v||_2 over positions; an all-zero vector maps to zero, not NaN."""
    return F.normalize(v.float(), p=2.0, dim=-1, eps=EPS)


def minmax(t: torch.Tensor) -> torch.Tensor:
    """Per-sample min-max normalisation to [0, 1]; a constant map becomes all zeros."""
    lo = t.amin(dim=-1, keepdim=True)
    hi = t.amax(dim=-1, keepdim=True)
    return (t - lo) / (hi - lo).clamp_min(EPS)


def adaptive_mask(
    teacher_att: torch.Tensor, *, kind: str = "soft", kappa: float = 20.0
) -> torch.Tensor:
    """Foreground mask M in [0, 1] from the teacher's attention; the threshold is each sample's mean.

    The background mask is 1 - M. The input is detached: the mask is a target, never trained.
    """
    t = minmax(teacher_att.detach().float())
    theta = t.mean(dim=-1, keepdim=True)
    if kind == "soft":
        return torch.sigmoid(kappa * (t - theta))
    if kind == "hard":
        return (t >= theta).float()
    raise ValueError(f"unknown mask kind {kind!r}; allowed: soft, hard")


def dynamic_ratio(
    teacher_logits: torch.Tensor, targets: torch.Tensor | None = None, *, kind: str = "entropy"
) -> torch.Tensor:
    """lambda_b in [0, 1] per sample, detached: the teacher's normalised entropy, or 1 - p_t[y]."""
    z = teacher_logits.detach().float()
    if kind == "entropy":
        # entr(p) = -p log p with entr(0) = 0: a saturated softmax gives no 0 * -inf = NaN.
        h = torch.special.entr(F.softmax(z, dim=-1)).sum(dim=-1)
        return (
            (h / math.log(z.shape[-1])).clamp(0.0, 1.0) if z.shape[-1] > 1 else torch.zeros_like(h)
        )
    if kind == "confidence":
        if targets is None:
            raise ValueError("ratio 'confidence' needs the targets")
        p_true = F.softmax(z, dim=-1).gather(1, targets.view(-1, 1)).squeeze(1)
        return 1.0 - p_true
    raise ValueError(f"unknown ratio kind {kind!r}; allowed: entropy, confidence")
