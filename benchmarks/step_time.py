"""Time one training step (forward, backward, SGD) of `ce` against `ama`, side by side.

    PYTHONPATH=. python benchmarks/step_time.py --model resnet18 --width 1 --batch 128 --steps 3 --channels-last

Random 32x32 inputs; both methods are timed in the same process and interleaved step by step,
so drift on a shared machine hits both alike. Prints the median and the fastest step time of
each method and both ratios; on a busy host the fastest step is the steadier figure. Host memory
is handled as the training stage handles it (`train.reuse_host_memory`); `--system-malloc` times
glibc's default behaviour instead.
"""

from __future__ import annotations

import argparse
import os
import statistics
import time

import torch

from pipeline.distill import create_method
from pipeline.models import SelfDistillModel, count_parameters, create_model
from pipeline.training.host_memory import reuse_freed_memory


def build(method_name: str, args: argparse.Namespace, num_classes: int):
    method = create_method(method_name, num_classes=num_classes, epochs=200)
    backbone = create_model(
        args.model,
        num_classes=num_classes,
        stem="cifar",
        width=args.width,
        feature_taps=method.needs_features,
    )
    model = SelfDistillModel(backbone, method.build_aux(backbone))
    if args.channels_last:
        model = model.to(memory_format=torch.channels_last)
    opt = torch.optim.SGD(model.parameters(), lr=0.01, momentum=0.9, weight_decay=5e-4)
    if args.compile:
        model = torch.compile(model)
    return method, model, opt


def step(method, model, opt, x: torch.Tensor, y: torch.Tensor, epoch: int) -> float:
    t0 = time.perf_counter()
    out = model(x)
    loss = method.loss(out, y, epoch).total
    opt.zero_grad(set_to_none=True)
    loss.backward()
    opt.step()
    return time.perf_counter() - t0


def main() -> None:
    p = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    p.add_argument("--model", default="resnet18")
    p.add_argument("--width", type=float, default=1.0)
    p.add_argument("--batch", type=int, default=128)
    p.add_argument("--steps", type=int, default=5, help="timed steps per method, after one warm-up")
    p.add_argument("--classes", type=int, default=100)
    p.add_argument("--channels-last", action="store_true")
    p.add_argument("--methods", default="ce,ama", help="comma-separated; the first is the baseline")
    p.add_argument("--threads", type=int, default=None)
    p.add_argument("--compile", action="store_true", help="torch.compile both models (inductor)")
    p.add_argument(
        "--system-malloc", action="store_true", help="return freed memory to the kernel (glibc)"
    )
    args = p.parse_args()
    with reuse_freed_memory(not args.system_malloc) as reused:
        run(args, reused)


def run(args: argparse.Namespace, reused: bool) -> None:
    if args.threads:
        torch.set_num_threads(args.threads)
    torch.manual_seed(0)
    names = args.methods.split(",")
    runs = {n: build(n, args, args.classes) for n in names}
    x = torch.randn(args.batch, 3, 32, 32)
    if args.channels_last:
        x = x.contiguous(memory_format=torch.channels_last)
    y = torch.randint(0, args.classes, (args.batch,))
    times: dict[str, list[float]] = {n: [] for n in names}
    for i in range(args.steps + 1):
        for n in names:
            # epoch 200 is past any warm-up: the full loss, L_mix included, is timed
            dt = step(*runs[n], x, y, epoch=200)
            if i > 0:
                times[n].append(dt)
    base = statistics.median(times[names[0]])
    base_min = min(times[names[0]])
    print(
        f"model={args.model} width={args.width} batch={args.batch} steps={args.steps} "
        f"channels_last={args.channels_last} threads={torch.get_num_threads()} "
        f"reuse_host_memory={reused} "
        f"load_avg_1min={os.getloadavg()[0]:.1f}"  # other work on the host skews both methods
    )
    for n in names:
        med, fastest = statistics.median(times[n]), min(times[n])
        params = count_parameters(runs[n][1])
        print(
            f"{n:>6}: median {med * 1000:8.1f} ms ({med / base:4.2f}x)  "
            f"fastest {fastest * 1000:8.1f} ms ({fastest / base_min:4.2f}x)  "
            f"{args.batch / med:7.1f} img/s  params {params / 1e6:.2f} M"
        )


if __name__ == "__main__":
    main()
