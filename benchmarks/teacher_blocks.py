"""Time the self-teacher's building blocks, eager against compiled, forward and backward.

    OMP_NUM_THREADS=1 python benchmarks/teacher_blocks.py --threads 1 \\
        --width 0.25 --batch 128 --json blocks.json

For the CIFAR ResNet-18 at `--width`, the self-teacher's levels (2 x the stage's channels, at
the stage's resolution) and, at each, the parts the `ama` step's profile puts its time in: batch
norm + ReLU, one `DSConv` block (depthwise 3x3, pointwise 1x1, BN, ReLU, depthwise, pointwise,
BN), and the whole self-teacher on the classifier's stage features. Each is timed as forward +
backward (a fixed upstream gradient), channels_last, eager and `torch.compile(dynamic=False)`
(inductor by default), all interleaved in one process; the first calls (compilation) are not
timed. Medians in ms. A fused kernel for the self-teacher has to beat the eager column.
"""

from __future__ import annotations

import argparse
import json
import statistics
import sys
import time
from collections.abc import Callable
from pathlib import Path

import torch
import torch.nn.functional as F

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))

from benchmarks.step_time import build  # noqa: E402
from pipeline.models.self_teacher import DSConv  # noqa: E402
from pipeline.training.host_memory import reuse_freed_memory  # noqa: E402


def bn_relu(x, weight, bias, mean, var):
    return F.relu(F.batch_norm(x, mean, var, weight, bias, True, 0.1, 1e-5))


def cases(args) -> dict[str, dict[str, Callable[[], None]]]:
    """name -> {mode: one forward + backward}."""
    cl = torch.channels_last
    _, net, _ = build("ama", model="resnet18", width=args.width, classes=10, channels_last=True)
    x = torch.randn(args.batch, 3, 32, 32).contiguous(memory_format=cl)
    with torch.no_grad():
        feats = [f.detach() for f in net(x).features]
    out: dict[str, dict[str, Callable[[], None]]] = {}
    for f, d in zip(feats, net.aux.widths, strict=True):
        n, _, h, w = f.shape
        t = torch.randn(n, d, h, w).contiguous(memory_format=cl).requires_grad_()
        grad = torch.randn_like(t)
        bn = [torch.ones(d, requires_grad=True), torch.zeros(d, requires_grad=True)]
        stats = [torch.zeros(d), torch.ones(d)]
        block = DSConv(d).to(memory_format=cl)
        compiled_bn = torch.compile(bn_relu, backend=args.backend, dynamic=False)
        compiled_block = torch.compile(block, backend=args.backend, dynamic=False)

        def run(fn, *a, g=grad):
            return lambda: fn(*a).backward(g)

        out[f"BN + ReLU, {d} ch at {h}x{w}"] = {
            "eager": run(bn_relu, t, *bn, *stats),
            "compiled": run(compiled_bn, t, *bn, *stats),
        }
        out[f"DSConv, {d} ch at {h}x{w}"] = {
            "eager": run(block, t),
            "compiled": run(compiled_block, t),
        }
    inputs = [f.clone().requires_grad_() for f in feats]
    teacher = net.aux
    compiled_teacher = torch.compile(teacher, backend=args.backend, dynamic=False)

    def whole(m):
        def go():
            logits, refined = m(inputs)
            (logits.sum() + sum(r.mean() for r in refined)).backward()

        return go

    out["self-teacher (all levels)"] = {
        "eager": whole(teacher),
        "compiled": whole(compiled_teacher),
    }
    return out


def main() -> None:
    p = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    p.add_argument("--width", type=float, default=0.25)
    p.add_argument("--batch", type=int, default=128)
    p.add_argument("--repeats", type=int, default=8, help="timed calls of each case and mode")
    p.add_argument("--backend", default="inductor")
    p.add_argument("--threads", type=int, default=None)
    p.add_argument("--json", type=Path, default=None)
    args = p.parse_args()
    if args.threads:
        torch.set_num_threads(args.threads)
    with reuse_freed_memory():
        runs = cases(args)
        t0 = time.perf_counter()
        for modes in runs.values():
            for fn in modes.values():
                fn()
                fn()
        print(f"compile and warm-up: {time.perf_counter() - t0:.1f} s")
        times: dict[tuple[str, str], list[float]] = {}
        for _ in range(args.repeats):
            for name, modes in runs.items():
                for mode, fn in modes.items():
                    t = time.perf_counter()
                    fn()
                    times.setdefault((name, mode), []).append(time.perf_counter() - t)
    rows = []
    print(f"width {args.width:g}, batch {args.batch}, threads {torch.get_num_threads()}")
    print("| part (forward + backward) | eager ms | compiled ms | compiled / eager |")
    print("|---|---|---|---|")
    for name in runs:
        e = 1000 * statistics.median(times[(name, "eager")])
        c = 1000 * statistics.median(times[(name, "compiled")])
        rows.append({"part": name, "eager_ms": e, "compiled_ms": c})
        print(f"| {name} | {e:.1f} | {c:.1f} | {c / e:.2f}x |")
    if args.json:
        meta = {"width": args.width, "batch": args.batch, "threads": torch.get_num_threads()}
        args.json.write_text(json.dumps({**meta, "backend": args.backend, "rows": rows}, indent=2))
        print(f"wrote {args.json}")


if __name__ == "__main__":
    main()
