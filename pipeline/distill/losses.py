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


def attention_maps(
    student_feats: list[torch.Tensor], teacher_feats: list[torch.Tensor]
) -> tuple[list[torch.Tensor], list[torch.Tensor]]:
    """A(F_i) and A(R_i) (detached) per stage: computed once, shared by L_AT and L_mix."""
    s = [attention_map(f) for f in student_feats]
    t = [attention_map(r.detach()) for r in teacher_feats]
    return s, t


def attention_transfer(s_atts: list[torch.Tensor], t_atts: list[torch.Tensor]) -> torch.Tensor:
    """L_AT = sum_i mean_{b,j} (N(A(F_i)) - N(A(R_i)))^2 over attention maps, teacher detached.

    No channel adapter is needed: A removes channels.
    """
    total = s_atts[0].new_zeros(())
    for s, t in zip(s_atts, t_atts, strict=True):
        total = total + (normalize(s) - normalize(t.detach())).pow(2).mean()
    return total


def region_loss(s_att: torch.Tensor, t_att: torch.Tensor, mask: torch.Tensor) -> torch.Tensor:
    """Per sample mean_j (N(M s) - N(M t))^2: normalised inside the region, so a low-energy
    background still carries signal. Shapes (B, H*W) -> (B,)."""
    return (normalize(mask * s_att) - normalize(mask * t_att.detach())).pow(2).mean(dim=-1)


def mixed_attention(
    s_atts: list[torch.Tensor],
    t_atts: list[torch.Tensor],
    ratio: torch.Tensor,
    *,
    mask: str = "soft",
    kappa: float = 20.0,
    invert: bool = False,
) -> torch.Tensor:
    """L_mix = mean_b sum_i ((1 - lambda_b) L_fg + lambda_b L_bg) over attention maps (B, H*W).

    `invert` swaps the two weights. The masks come from the detached teacher maps.
    """
    lam = ratio.detach().float()
    w_fg, w_bg = (lam, 1.0 - lam) if invert else (1.0 - lam, lam)
    per_sample = torch.zeros_like(lam)
    for s, t in zip(s_atts, t_atts, strict=True):
        t = t.detach()
        fg = adaptive_mask(t, kind=mask, kappa=kappa)
        per_sample = per_sample + w_fg * region_loss(s, t, fg) + w_bg * region_loss(s, t, 1.0 - fg)
    return per_sample.mean()
