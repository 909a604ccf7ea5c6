"""Where a training step's time goes, per ATen operator, for several methods side by side.

    OMP_NUM_THREADS=1 python benchmarks/step_ops.py --threads 1 --width 0.25 --batch 128 \\
        --methods ce ama --steps 3 --json ops.json

Each ATen call of the step (forward, loss, backward, SGD; benchmarks/step_time.py's step,
channels_last, host memory reused) is timed by a `TorchDispatchMode` hook and summed by
operator; convolutions are split into depthwise, 1x1 and larger kernels. Prints ms per step for
each method and the difference to the first: what a self-teacher adds, operator by operator.
The hook's own overhead (a few microseconds a call) is in every figure, so read the parts
against each other; step_time.py gives the steps' wall times.
"""

from __future__ import annotations

import argparse
import collections
import json
import sys
import time
from pathlib import Path

import torch
from torch.utils._python_dispatch import TorchDispatchMode

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))

from benchmarks.step_time import Run  # noqa: E402
from pipeline.training.host_memory import reuse_freed_memory  # noqa: E402


def op_name(func, args) -> str:
    name = str(func).removeprefix("aten.").removesuffix(".default")
    if name.startswith("convolution"):
        weight = args[2] if "backward" in name else args[1]
        if weight.shape[1] == 1 and weight.shape[-1] > 1:
            name += " (depthwise)"
        elif weight.shape[-2:] == (1, 1):
            name += " (1x1)"
        else:
            name += " (kxk)"
    return name


class OpTimes(TorchDispatchMode):
    """Sums each ATen call's wall time by `op_name`."""

    def __init__(self) -> None:
        super().__init__()
        self.seconds: collections.Counter[str] = collections.Counter()

    def __torch_dispatch__(self, func, types, args=(), kwargs=None):
        t0 = time.perf_counter()
        out = func(*args, **(kwargs or {}))
        self.seconds[op_name(func, args)] += time.perf_counter() - t0
        return out


def profile(method_name: str, args: argparse.Namespace) -> dict[str, float]:
    """ms per step by operator, mean over `args.steps` steps after one untimed step."""
    torch.manual_seed(0)
    spec = argparse.Namespace(**{**vars(args), "channels_last": True, "bf16": False})
    run = Run(method_name, "eager", spec, torch.device("cpu"))
    x = torch.randn(args.batch, 3, 32, 32).contiguous(memory_format=torch.channels_last)
    y = torch.randint(0, args.classes, (args.batch,))
    run.step(x, y)  # untimed: first-call allocations
    total: collections.Counter[str] = collections.Counter()
    for _ in range(args.steps):
        with OpTimes() as timer:
            run.step(x, y)  # epoch 200: past every warm-up
        total.update(timer.seconds)
    return {k: 1000 * v / args.steps for k, v in total.most_common()}


def main() -> None:
    p = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    p.add_argument("--model", default="resnet18")
    p.add_argument("--width", type=float, default=0.25)
    p.add_argument("--batch", type=int, default=128)
    p.add_argument("--classes", type=int, default=10)
    p.add_argument("--methods", nargs="+", default=["ce", "ama"], help="the first is the baseline")
    p.add_argument("--steps", type=int, default=3)
    p.add_argument("--top", type=int, default=25, help="operators to print")
    p.add_argument("--threads", type=int, default=None)
    p.add_argument("--json", type=Path, default=None)
    args = p.parse_args()
    if args.threads:
        torch.set_num_threads(args.threads)
    with reuse_freed_memory():
        ms = {m: profile(m, args) for m in args.methods}
    base, last = args.methods[0], args.methods[-1]
    ops = sorted({k for t in ms.values() for k in t}, key=lambda k: -ms[last].get(k, 0.0))
    print(f"ms per step by operator; width {args.width}, batch {args.batch}")
    print(f"{'operator':45s}" + "".join(f"{m:>10s}" for m in args.methods) + f"{'diff':>10s}")
    for k in ops[: args.top]:
        row = "".join(f"{ms[m].get(k, 0.0):10.1f}" for m in args.methods)
        print(f"{k:45s}{row}{ms[last].get(k, 0.0) - ms[base].get(k, 0.0):10.1f}")
    print(f"{'all operators':45s}" + "".join(f"{sum(ms[m].values()):10.1f}" for m in args.methods))
    if args.json:
        meta = {k: getattr(args, k) for k in ("model", "width", "batch", "classes", "steps")}
        meta["threads"] = torch.get_num_threads()
        args.json.write_text(json.dumps({**meta, "ms_per_step": ms}, indent=2))
        print(f"wrote {args.json}")


if __name__ == "__main__":
    main()
