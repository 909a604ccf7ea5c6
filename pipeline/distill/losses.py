"""Distillation losses (METHOD.md sections 4-5). Teacher-side inputs are detached here, always.

Losses are computed in float32 (see `attention`), so they stay finite under bf16 autocast.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F

from pipeline.distill.attention import adaptive_mask, attention_map, normalize


def kd_loss(
    student_logits: torch.Tensor, teacher_logits: torch.Tensor, temperature: float
) -> torch.Tensor:
    """T^2 * KL(softmax(z_t/T) || softmax(z_c/T)), batch mean; the teacher side is detached."""
    t = temperature
    log_p_s = F.log_softmax(student_logits.float() / t, dim=-1)
    p_t = F.softmax(teacher_logits.detach().float() / t, dim=-1)
    return F.kl_div(log_p_s, p_t, reduction="batchmean") * (t * t)


def attention_transfer(
    student_feats: list[torch.Tensor], teacher_feats: list[torch.Tensor]
) -> torch.Tensor:
    """L_AT = sum_i mean_{b,j} (N(A(F_i)) - N(A(R_i)))^2, R_i detached. A removes channels."""
    total = student_feats[0].new_zeros((), dtype=torch.float32)
    for f, r in zip(student_feats, teacher_feats, strict=True):
        s = normalize(attention_map(f))
        t = normalize(attention_map(r.detach()))
        total = total + (s - t).pow(2).mean()
    return total


def region_loss(s_att: torch.Tensor, t_att: torch.Tensor, mask: torch.Tensor) -> torch.Tensor:
    """Per sample mean_j (N(M s) - N(M t))^2: normalised inside the region, so a low-energy
    background still carries signal. Shapes (B, H*W) -> (B,)."""
    return (normalize(mask * s_att) - normalize(mask * t_att.detach())).pow(2).mean(dim=-1)


def mixed_attention(
    student_feats: list[torch.Tensor],
    teacher_feats: list[torch.Tensor],
    ratio: torch.Tensor,
    *,
    mask: str = "soft",
    kappa: float = 20.0,
    invert: bool = False,
) -> torch.Tensor:
    """L_mix = mean_b sum_i ((1 - lambda_b) L_fg + lambda_b L_bg); `invert` swaps the two weights."""
    lam = ratio.detach().float()
    w_fg, w_bg = (lam, 1.0 - lam) if invert else (1.0 - lam, lam)
    per_sample = torch.zeros_like(lam)
    for f, r in zip(student_feats, teacher_feats, strict=True):
        s = attention_map(f)
        t = attention_map(r.detach())
        fg = adaptive_mask(t, kind=mask, kappa=kappa)
        per_sample = per_sample + w_fg * region_loss(s, t, fg) + w_bg * region_loss(s, t, 1.0 - fg)
    return per_sample.mean()
