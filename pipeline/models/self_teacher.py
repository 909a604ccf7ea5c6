"""The self-teacher: an FRSKD-style feature pyramid over the classifier's stage features.

METHOD.md section 3. Widths d_i = 2 * C_i; laterals L_i (every stage) and L'_i (stages >= 2, for
the bottom-up path only); a top-down then a bottom-up pass, each node a learnable weighted fusion
followed by a DSConv; refined maps R_i = ReLU(T_i); logits from GAP(R_n).

Three rewrites keep the mathematics of the specification but cut the training step's cost:
- `Up` applies its Conv1 before the nearest upsampling. A 1x1 conv, BN and ReLU commute with
  nearest x2 upsampling (every pixel is repeated four times, so batch mean and biased variance
  are the same), so the result is identical while the conv runs on a quarter of the pixels.
  Only BN's running variance sees a slightly different Bessel factor n/(n-1).
- ReLU(L_i) is L_i (Conv1 ends in a ReLU and ReLU is idempotent), and ReLU(P_i), ReLU(T_i) are
  computed once and shared by every consumer.
- Each fusion is one multiply and in-place multiply-adds, not a stack of weighted copies.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import nn


class Conv1(nn.Sequential):
    """1x1 conv (no bias), BN, ReLU."""

    def __init__(self, cin: int, cout: int) -> None:
        super().__init__(
            nn.Conv2d(cin, cout, 1, bias=False), nn.BatchNorm2d(cout), nn.ReLU(inplace=True)
        )


class DSConv(nn.Sequential):
    """Depthwise 3x3, pointwise 1x1, BN, ReLU, depthwise 3x3, pointwise 1x1, BN (no final ReLU)."""

    def __init__(self, c: int) -> None:
        super().__init__(
            nn.Conv2d(c, c, 3, 1, 1, groups=c, bias=False),
            nn.Conv2d(c, c, 1, bias=False),
            nn.BatchNorm2d(c),
            nn.ReLU(inplace=True),
            nn.Conv2d(c, c, 3, 1, 1, groups=c, bias=False),
            nn.Conv2d(c, c, 1, bias=False),
            nn.BatchNorm2d(c),
        )


class Fusion(nn.Module):
    """Fast normalised fusion: w_j = ReLU(v_j) / (sum_k ReLU(v_k) + 1e-6), v initialised to ones."""

    def __init__(self, n_inputs: int) -> None:
        super().__init__()
        self.weight = nn.Parameter(torch.ones(n_inputs))

    def forward(self, inputs: list[torch.Tensor]) -> torch.Tensor:
        w = F.relu(self.weight)
        w = w / (w.sum() + 1e-6)
        out = inputs[0] * w[0]
        for j in range(1, len(inputs)):
            # In place is safe: neither mul nor addcmul needs its output for backward.
            out = out.addcmul_(inputs[j], w[j])
        return out


def _upsample_to(x: torch.Tensor, size: torch.Size) -> torch.Tensor:
    """Nearest upsampling to the lateral's exact size (x2 for the usual even sizes)."""
    if x.shape[-2:] == size:
        return x
    return F.interpolate(x, size=tuple(size), mode="nearest")


def _downsample_to(x: torch.Tensor, size: torch.Size) -> torch.Tensor:
    """3x3 stride-2 max-pool with 'same' padding: ceil(H/2), like the backbone's stride-2 convs."""
    y = F.max_pool2d(x, 3, 2, 1)
    if y.shape[-2:] != size:  # a backbone with another downsampling rule: match it exactly
        y = F.adaptive_max_pool2d(x, tuple(size))
    return y


class SelfTeacher(nn.Module):
    """`forward(features) -> (logits, refined maps R_1..R_n)`; works for any number of stages >= 2."""

    def __init__(self, stage_channels: list[int], num_classes: int) -> None:
        super().__init__()
        if len(stage_channels) < 2:
            raise ValueError(f"the self-teacher needs at least 2 stages, got {len(stage_channels)}")
        c = list(stage_channels)
        d = [2 * ci for ci in c]
        n = len(c)
        self.widths = d
        self.lateral = nn.ModuleList(Conv1(c[i], d[i]) for i in range(n))
        self.lateral_bu = nn.ModuleList(Conv1(c[i], d[i]) for i in range(1, n))
        # Top-down node i (0-based, i < n-1) reads P_{i+1}; bottom-up node i (i >= 1) reads T_{i-1}.
        self.up = nn.ModuleList(Conv1(d[i + 1], d[i]) for i in range(n - 1))
        self.td_fuse = nn.ModuleList(Fusion(2) for _ in range(n - 1))
        self.td_block = nn.ModuleList(DSConv(d[i]) for i in range(n - 1))
        self.down = nn.ModuleList(Conv1(d[i - 1], d[i]) for i in range(1, n))
        self.bu_fuse = nn.ModuleList(Fusion(3 if i < n - 1 else 2) for i in range(1, n))
        self.bu_block = nn.ModuleList(DSConv(d[i]) for i in range(1, n))
        self.fc = nn.Linear(d[-1], num_classes)

    def forward(self, features: list[torch.Tensor]) -> tuple[torch.Tensor, list[torch.Tensor]]:
        n = len(features)
        if n != len(self.lateral):
            raise ValueError(f"expected {len(self.lateral)} stage features, got {n}")
        lat = [m(f) for m, f in zip(self.lateral, features, strict=True)]
        act = self._top_down(lat)
        refined = [act[0]]  # T_1 = P_1, so R_1 = ReLU(P_1)
        for i in range(1, n):
            down = self.down[i - 1](_downsample_to(refined[-1], lat[i].shape[-2:]))
            inputs = [self.lateral_bu[i - 1](features[i])]
            if i < n - 1:
                inputs.append(act[i])
            inputs.append(down)
            t = self.bu_block[i - 1](self.bu_fuse[i - 1](inputs))
            refined.append(F.relu(t))
        logits = self.fc(refined[-1].mean(dim=(2, 3)))
        return logits, refined

    def _top_down(self, lat: list[torch.Tensor]) -> list[torch.Tensor]:
        """ReLU(P_i) for every level; P_n = L_n is already non-negative."""
        n = len(lat)
        act: list[torch.Tensor] = [lat[-1]] * n
        for i in range(n - 2, -1, -1):
            up = _upsample_to(self.up[i](act[i + 1]), lat[i].shape[-2:])
            p = self.td_block[i](self.td_fuse[i]([lat[i], up]))
            act[i] = F.relu(p)
        return act
