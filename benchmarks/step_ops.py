"""Where a training step's time goes, per ATen operator, for several methods side by side.

    OMP_NUM_THREADS=1 python benchmarks/step_ops.py --threads 1 --width 0.25 --batch 128 \\
        --methods ce ama --steps 3 --json ops.json

Each ATen call of the step (forward, loss, backward, SGD; benchmarks/step_time.py's step,
channels_last, host memory reused) is timed by a `TorchDispatchMode` hook and summed by
operator; convolutions are split into depthwise, 1x1 and larger kernels. Prints ms per step for
each method and the difference to the first: what a self-teacher adds, operator by operator.
The hook's own overhead (a few microseconds a call) is in every figure, so read the parts
against each other; step_time.py gives the steps' wall times.

`--conv-parts` then times, for every convolution the last method's step runs and the first's
does not (a self-teacher's), its three parts apart: forward, input gradient and weight gradient,
as ATen runs them, and for a 1x1 convolution the same three as matrix products over the
channels_last (NHWC) view; the totals say what choosing the faster of the two per part could
save. Each matrix product is checked against ATen's result before it is timed.
"""

from __future__ import annotations

import argparse
import collections
import json
import sys
import time
from collections.abc import Callable
from pathlib import Path

import torch
from torch.utils._python_dispatch import TorchDispatchMode

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))

from benchmarks.step_time import Run  # noqa: E402
from pipeline.timing import latency  # noqa: E402
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


def _step_run(method_name: str, args: argparse.Namespace) -> tuple[Run, torch.Tensor, torch.Tensor]:
    """step_time.py's eager CPU step for `method_name` (channels_last, seeded) and one batch."""
    torch.manual_seed(0)
    spec = argparse.Namespace(**{**vars(args), "channels_last": True, "bf16": False})
    run = Run(method_name, "eager", spec, torch.device("cpu"))
    x = torch.randn(args.batch, 3, 32, 32).contiguous(memory_format=torch.channels_last)
    return run, x, torch.randint(0, args.classes, (args.batch,))


def profile(method_name: str, args: argparse.Namespace) -> dict[str, float]:
    """ms per step by operator, mean over `args.steps` steps after one untimed step."""
    run, x, y = _step_run(method_name, args)
    run.step(x, y)  # untimed: first-call allocations
    total: collections.Counter[str] = collections.Counter()
    for _ in range(args.steps):
        with OpTimes() as timer:
            run.step(x, y)  # epoch 200: past every warm-up
        total.update(timer.seconds)
    return {k: 1000 * v / args.steps for k, v in total.most_common()}


class ConvCalls(TorchDispatchMode):
    """Counts each distinct `aten.convolution` call: input shape and layout, weight shape,
    stride, padding, dilation and groups."""

    def __init__(self) -> None:
        super().__init__()
        self.calls: collections.Counter[tuple] = collections.Counter()

    def __torch_dispatch__(self, func, types, args=(), kwargs=None):
        if func is torch.ops.aten.convolution.default:
            x, w, _, stride, padding, dilation, transposed, _, groups = args
            if not transposed:
                cl = x.dim() == 4 and x.is_contiguous(memory_format=torch.channels_last)
                key = (tuple(x.shape), cl, tuple(w.shape), tuple(stride), tuple(padding))
                self.calls[(*key, tuple(dilation), groups)] += 1
        return func(*args, **(kwargs or {}))


def conv_calls(method_name: str, args: argparse.Namespace) -> collections.Counter[tuple]:
    """The convolutions one training step of `method_name` runs, with their counts."""
    run, x, y = _step_run(method_name, args)
    with ConvCalls() as calls:
        run.step(x, y)
    return calls.calls


def _median_ms(fn: Callable[[], object], reps: int) -> float:
    return latency(fn, warmup=2, iters=reps)["p50"]


def _max_rel_err(a: torch.Tensor, b: torch.Tensor) -> float:
    return float((a - b).abs().max() / b.abs().max().clamp_min(1e-30))


def conv_parts(call: tuple, reps: int) -> dict:
    """One convolution's forward, input gradient and weight gradient as ATen runs them (ms,
    median of `reps`), and for a plain 1x1 one the same as matrix products on the NHWC view."""
    x_shape, channels_last, w_shape, stride, padding, dilation, groups = call
    fmt = torch.channels_last if channels_last else torch.contiguous_format
    x = torch.randn(x_shape).contiguous(memory_format=fmt)
    w = torch.randn(w_shape)
    conv_args = (stride, padding, dilation, False, [0, 0], groups)
    y = torch.ops.aten.convolution(x, w, None, *conv_args)
    g = torch.randn(y.shape).contiguous(memory_format=fmt)

    def backward(mask):
        return torch.ops.aten.convolution_backward(g, x, w, None, *conv_args, mask)

    row = {
        "input": list(x_shape),
        "channels_last": channels_last,
        "weight": list(w_shape),
        "stride": list(stride),
        "groups": groups,
        "aten_ms": [
            _median_ms(lambda: torch.ops.aten.convolution(x, w, None, *conv_args), reps),
            _median_ms(lambda: backward([True, False, False]), reps),
            _median_ms(lambda: backward([False, True, False]), reps),
        ],
    }
    plain = list(stride) == [1, 1] and list(padding) == [0, 0] and list(dilation) == [1, 1]
    if channels_last and groups == 1 and tuple(w_shape[2:]) == (1, 1) and plain:
        cout, cin = w_shape[:2]
        x2 = x.permute(0, 2, 3, 1).reshape(-1, cin)  # views: channels_last is NHWC in memory
        g2 = g.permute(0, 2, 3, 1).reshape(-1, cout)
        w2 = w.view(cout, cin)
        parts = [lambda: x2 @ w2.t(), lambda: g2 @ w2, lambda: g2.t() @ x2]
        gx = backward([True, False, False])[0]
        gw = backward([False, True, False])[1]
        row["mm_max_rel_err"] = max(
            _max_rel_err(parts[0]().view(y.shape[0], *y.shape[2:], cout), y.permute(0, 2, 3, 1)),
            _max_rel_err(parts[1]().view(x.shape[0], *x.shape[2:], cin), gx.permute(0, 2, 3, 1)),
            _max_rel_err(parts[2]().view(w_shape), gw),
        )
        row["mm_ms"] = [_median_ms(fn, reps) for fn in parts]
    return row


def conv_parts_table(args: argparse.Namespace) -> dict:
    """Every convolution the last method adds to the first's step, each part timed."""
    added = conv_calls(args.methods[-1], args) - conv_calls(args.methods[0], args)
    rows = []
    for call, count in sorted(added.items(), key=lambda kv: (-kv[0][0][-1], kv[0][2])):
        rows.append({**conv_parts(call, args.reps), "count": count})
    totals = {"aten_ms": 0.0, "mm_ms": 0.0, "best_ms": 0.0}
    for r in rows:
        aten = sum(r["aten_ms"]) * r["count"]
        totals["aten_ms"] += aten
        if "mm_ms" in r:
            totals["mm_ms"] += sum(r["mm_ms"]) * r["count"]
            totals["best_ms"] += sum(map(min, r["aten_ms"], r["mm_ms"])) * r["count"]
        else:  # no matrix-product form: ATen's own in both totals
            totals["mm_ms"] += aten
            totals["best_ms"] += aten
    return {"rows": rows, "totals": totals}


def _print_conv_parts(table: dict) -> None:
    print("\nconvolutions the last method adds, ms (forward / input grad / weight grad)")
    print(f"{'input (N, C, H, W)':22s}{'weight':18s}{'x':>3s}  {'ATen':24s}{'matrix products':24s}")
    for r in table["rows"]:
        mm = " / ".join(f"{v:.2f}" for v in r["mm_ms"]) if "mm_ms" in r else "-"
        aten = " / ".join(f"{v:.2f}" for v in r["aten_ms"])
        print(
            f"{str(tuple(r['input'])):22s}{str(tuple(r['weight'])):18s}{r['count']:3d}  {aten:24s}{mm}"
        )
    t = table["totals"]
    print(
        f"all of them, per step: ATen {t['aten_ms']:.1f} ms, 1x1 as matrix products "
        f"{t['mm_ms']:.1f} ms, the faster per part {t['best_ms']:.1f} ms"
    )


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
    p.add_argument(
        "--conv-parts",
        action="store_true",
        help="also time each added convolution's forward and gradients apart (see above)",
    )
    p.add_argument("--reps", type=int, default=15, help="--conv-parts: timings per part")
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
    parts = None
    if args.conv_parts:
        with reuse_freed_memory():
            parts = conv_parts_table(args)
        _print_conv_parts(parts)
    if args.json:
        meta = {k: getattr(args, k) for k in ("model", "width", "batch", "classes", "steps")}
        meta["threads"] = torch.get_num_threads()
        out = {**meta, "ms_per_step": ms, **({"conv_parts": parts} if parts else {})}
        args.json.write_text(json.dumps(out, indent=2))
        print(f"wrote {args.json}")


if __name__ == "__main__":
    main()
