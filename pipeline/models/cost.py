"""What a model costs: parameters, multiply-accumulates and CPU latency, measured the same way for all."""

from __future__ import annotations

import torch
from torch import nn
from torch.utils.flop_counter import FlopCounterMode

from pipeline.timing import latency


def count_parameters(module: nn.Module | None) -> int:
    return 0 if module is None else sum(p.numel() for p in module.parameters())


def count_macs(model: nn.Module, example: torch.Tensor) -> int:
    """Multiply-accumulates of one forward pass at the example's batch size (FLOPs / 2)."""
    with torch.no_grad(), FlopCounterMode(display=False) as counter:
        model(example)
    return counter.get_total_flops() // 2


def torch_latency(
    model: nn.Module, example: torch.Tensor, warmup: int = 10, iters: int = 50
) -> dict[str, float]:
    model.eval()
    with torch.inference_mode():
        return latency(lambda: model(example), warmup=warmup, iters=iters)
