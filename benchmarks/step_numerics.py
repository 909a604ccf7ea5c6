"""How far one training step's gradients in float32 are from the same step in float64, eager and
compiled, per method: what "the compiled step matches eager" can mean for a method.

One step of each method from the same initialisation on one fixed random batch; per parameter,
the relative error ||g32 - g64|| / ||g64||; the median over parameters and the worst five.

    python benchmarks/step_numerics.py --methods ce frskd ama [--compile] [--width 0.125 --batch 8]

`--compile` adds the step with the model compiled by inductor (a C++ toolchain; 1-15 minutes of
compiling on a 2-core CPU).
"""

from __future__ import annotations

import argparse
import statistics
import sys
from pathlib import Path

import torch

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from pipeline.distill import create_method  # noqa: E402
from pipeline.models import SelfDistillModel, create_model  # noqa: E402


def step_grads(name: str, args, dtype: torch.dtype, compiled: bool = False) -> dict:
    torch.manual_seed(0)
    options = {"mix_warmup_epochs": 1} if name == "ama" else {}
    method = create_method(name, options, num_classes=10, epochs=4)
    net = create_model(
        "resnet18", num_classes=10, stem="cifar", width=args.width, feature_taps=True
    )
    aux = method.build_aux(net)
    model = SelfDistillModel(net, aux).to(dtype)
    forward = torch.compile(model, dynamic=False) if compiled else model
    x, y = torch.randn(args.batch, 3, 32, 32).to(dtype), torch.arange(args.batch) % 10
    method.loss(forward(x), y, epoch=1).total.backward()  # epoch 1: every loss term on
    return {n: p.grad.double() for n, p in model.named_parameters() if p.grad is not None}


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--methods", nargs="+", default=["ce", "frskd", "ama"])
    p.add_argument("--width", type=float, default=0.125)
    p.add_argument("--batch", type=int, default=8)
    p.add_argument("--compile", action="store_true")
    args = p.parse_args(argv)
    print("| method | step | median relative error | worst parameters (error, gradient norm) |")
    print("|---|---|---|---|")
    for name in args.methods:
        ref = step_grads(name, args, torch.float64)
        modes = [("eager f32", False)] + ([("inductor f32", True)] if args.compile else [])
        for label, compiled in modes:
            g = step_grads(name, args, torch.float32, compiled)
            err = {n: ((g[n] - ref[n]).norm() / ref[n].norm().clamp_min(1e-30)).item() for n in ref}
            worst = sorted(err, key=err.get, reverse=True)[:5]
            cells = ", ".join(f"`{n}` {err[n]:.1e} ({ref[n].norm():.1e})" for n in worst)
            print(
                f"| {name} | {label} | {statistics.median(err.values()):.1e} | {cells} |",
                flush=True,
            )
    return 0


if __name__ == "__main__":
    sys.exit(main())
