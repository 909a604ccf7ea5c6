"""The self-teacher: an FRSKD-style feature pyramid over the classifier's stage features.

METHOD.md section 3. Widths d_i = 2 * C_i; laterals L_i (every stage) and L'_i (stages >= 2, for
the bottom-up path only); a top-down then a bottom-up pass, each node a learnable weighted fusion
followed by a DSConv; refined maps R_i = ReLU(T_i); logits from GAP(R_n).

On a CPU the step is bound by memory traffic over the large high-resolution maps, not by FLOPs,
so the forward is written to touch them as few times as possible. Each rewrite is exact:
- L_i and L'_i read the same F_i: they run as one conv with 2 d_i outputs and one BN (BN is per
  channel, so its statistics are unchanged), and F_i's gradient is computed once.
- A fusion weight w >= 0 multiplying ReLU(BN(x)) is folded into the BN's affine parameters:
  w ReLU(g x^ + b) = ReLU(w g x^ + w b). Only ReLU(P_i), which two nodes share, is multiplied.
- `Up` applies its Conv1 before an exact nearest x2 upsampling (a 1x1 conv, BN and ReLU commute
  with it: every pixel is repeated four times, so the batch mean and biased variance are the
  same; only BN's running variance sees a Bessel factor n/(n-1) over a quarter of the pixels),
  and the upsampling is a broadcast add, never a materialised map. Odd sizes (not exactly x2)
  upsample to the lateral's size first, as written.
- ReLU(L_i) is L_i (ReLU is idempotent); ReLU(P_i) and ReLU(T_i) are computed once, in place.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import nn


class Conv1(nn.Module):
    """1x1 conv (no bias), BN, ReLU; `scale` (>= 0, per channel) multiplies the output for free."""

    def __init__(self, cin: int, cout: int) -> None:
        super().__init__()
        self.conv = nn.Conv2d(cin, cout, 1, bias=False)
        self.bn = nn.BatchNorm2d(cout)

    def forward(self, x: torch.Tensor, scale: torch.Tensor | None = None) -> torch.Tensor:
        y = self.conv(x)
        bn = self.bn
        if scale is None:
            return F.relu(bn(y), inplace=True)
        # nn.BatchNorm2d's own bookkeeping, with the affine parameters scaled
        momentum = 0.0 if bn.momentum is None else bn.momentum
        if bn.training and bn.track_running_stats and bn.num_batches_tracked is not None:
            bn.num_batches_tracked.add_(1)
            if bn.momentum is None:  # cumulative moving average
                momentum = 1.0 / float(bn.num_batches_tracked)
        y = F.batch_norm(
            y,
            bn.running_mean,
            bn.running_var,
            bn.weight * scale,
            bn.bias * scale,
            bn.training or bn.running_mean is None,
            momentum,
            bn.eps,
        )
        return F.relu(y, inplace=True)


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
    """Fast normalised fusion weights: w_j = ReLU(v_j) / (sum_k ReLU(v_k) + 1e-6), v = 1 at init."""

    def __init__(self, n_inputs: int) -> None:
        super().__init__()
        self.weight = nn.Parameter(torch.ones(n_inputs))

    def forward(self) -> torch.Tensor:
        w = F.relu(self.weight)
        return w / (w.sum() + 1e-6)


class _AddUpsampled(torch.autograd.Function):
    """a + nearest x2 upsampling of u, as a broadcast: the upsampled map is never materialised.

    The gradient for u sums each 2x2 block of the incoming gradient. Autograd's own backward for
    the broadcast reduces over two strided axes of a 6-d view, which runs about 25x slower on a
    CPU than a 2x2 sum-pool (`avg_pool2d` with divisor 1) over the same memory.
    """

    @staticmethod
    def forward(ctx, a: torch.Tensor, u: torch.Tensor) -> torch.Tensor:
        hu, wu = u.shape[-2:]
        a6 = a.unflatten(3, (wu, 2)).unflatten(2, (hu, 2))
        return (a6 + u[:, :, :, None, :, None]).flatten(4, 5).flatten(2, 3)

    @staticmethod
    def backward(ctx, grad: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor | None]:
        grad_u = F.avg_pool2d(grad, 2, divisor_override=1) if ctx.needs_input_grad[1] else None
        return grad, grad_u


def _add_upsampled(a: torch.Tensor, u: torch.Tensor) -> torch.Tensor:
    """a + nearest x2 upsampling of u; `a` is exactly twice u's height and width."""
    return _AddUpsampled.apply(a, u)


def _maxpool_to(x: torch.Tensor, size: torch.Size) -> torch.Tensor:
    """3x3 stride-2 max-pool with 'same' padding: ceil(H/2), like the backbone's stride-2 convs."""
    y = F.max_pool2d(x, 3, 2, 1)
    if y.shape[-2:] != size:  # a backbone with another downsampling rule: match it exactly
        y = F.adaptive_max_pool2d(x, tuple(size))
    return y


class SelfTeacher(nn.Module):
    """`forward(features) -> (logits, refined maps R_1..R_n)`; any number of stages >= 2.

    `lateral[0]` is L_1; `lateral[i]` (i >= 1) holds [L_{i+1} | L'_{i+1}] as 2 d channels.
    """

    def __init__(self, stage_channels: list[int], num_classes: int) -> None:
        super().__init__()
        c = list(stage_channels)
        n = len(c)
        if n < 2:
            raise ValueError(f"the self-teacher needs at least 2 stages, got {n}")
        d = [2 * ci for ci in c]
        self.widths = d
        self.lateral = nn.ModuleList(Conv1(c[i], d[i] * (1 if i == 0 else 2)) for i in range(n))
        # Top-down node i (0-based, i < n-1) reads P_{i+1}; bottom-up node i (i >= 1) reads T_{i-1}.
        self.up = nn.ModuleList(Conv1(d[i + 1], d[i]) for i in range(n - 1))
        self.td_fuse = nn.ModuleList(Fusion(2) for _ in range(n - 1))
        self.td_block = nn.ModuleList(DSConv(d[i]) for i in range(n - 1))
        self.down = nn.ModuleList(Conv1(d[i - 1], d[i]) for i in range(1, n))
        self.bu_fuse = nn.ModuleList(Fusion(3 if i < n - 1 else 2) for i in range(1, n))
        self.bu_block = nn.ModuleList(DSConv(d[i]) for i in range(1, n))
        self.fc = nn.Linear(d[-1], num_classes)

    def forward(self, features: list[torch.Tensor]) -> tuple[torch.Tensor, list[torch.Tensor]]:
        n = len(self.lateral)
        if len(features) != n:
            raise ValueError(f"expected {n} stage features, got {len(features)}")
        td_w = [f() for f in self.td_fuse]
        bu_w = [f() for f in self.bu_fuse]
        lat, lat_bu = self._laterals(features, td_w, bu_w)
        act = self._top_down(lat, td_w)
        refined = [act[0]]  # T_1 = P_1, so R_1 = ReLU(P_1)
        for i in range(1, n):
            w = bu_w[i - 1]
            x = lat_bu[i] + self.down[i - 1](_maxpool_to(refined[-1], lat_bu[i].shape[-2:]), w[-1])
            if i < n - 1:
                x = x.addcmul_(act[i], w[1])  # in place: add's backward does not need its output
            refined.append(F.relu(self.bu_block[i - 1](x), inplace=True))
        logits = self.fc(refined[-1].mean(dim=(2, 3)))
        return logits, refined

    def _laterals(
        self, features: list[torch.Tensor], td_w: list[torch.Tensor], bu_w: list[torch.Tensor]
    ) -> tuple[list[torch.Tensor | None], list[torch.Tensor | None]]:
        """w * L_i for the top-down nodes (L_n unweighted: it is P_n) and w * L'_i, fused."""
        n = len(features)
        lat: list[torch.Tensor | None] = [
            self.lateral[0](features[0], td_w[0][0].expand(self.widths[0]))
        ]
        lat_bu: list[torch.Tensor | None] = [None]
        for i in range(1, n):
            d = self.widths[i]
            w_td = td_w[i][0] if i < n - 1 else td_w[0].new_ones(())
            scale = torch.cat([w_td.expand(d), bu_w[i - 1][0].expand(d)])
            # split, not slicing: slicing's backward writes each half's gradient into a zero-filled
            # full-size tensor (in NCHW whatever the layout) and then adds the two
            l_td, l_bu = self.lateral[i](features[i], scale).split(d, dim=1)
            lat.append(l_td)
            lat_bu.append(l_bu)
        return lat, lat_bu

    def _top_down(self, lat: list[torch.Tensor], td_w: list[torch.Tensor]) -> list[torch.Tensor]:
        """ReLU(P_i) for every level; P_n = L_n is already non-negative."""
        n = len(lat)
        act: list[torch.Tensor] = [lat[-1]] * n
        for i in range(n - 2, -1, -1):
            scale = td_w[i][1].expand(self.widths[i])
            (h, w), (hs, ws) = lat[i].shape[-2:], act[i + 1].shape[-2:]
            if (h, w) == (2 * hs, 2 * ws):
                x = _add_upsampled(lat[i], self.up[i](act[i + 1], scale))
            else:  # odd sizes: upsample to the lateral's exact size first, as specified
                x = lat[i] + self.up[i](
                    F.interpolate(act[i + 1], size=(h, w), mode="nearest"), scale
                )
            act[i] = F.relu(self.td_block[i](x), inplace=True)
        return act
