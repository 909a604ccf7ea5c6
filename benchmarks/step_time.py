"""Time training steps (forward, loss, backward, SGD) of several methods, eager and compiled,
side by side in one process.

    OMP_NUM_THREADS=1 PYTHONPATH=. python benchmarks/step_time.py --threads 1 \\
        --methods ce frskd ama --widths 0.25 1 --modes eager compiled --channels-last \\
        --json step_time.json

Random 32x32 inputs. For each width every (method, mode) pair is built once and all of them are
timed interleaved step by step, so drift on a shared machine hits them alike. "compiled" is the
whole step as `train.compile` runs it: `torch.compile(model, dynamic=False)` (forward and
backward, through AOT autograd) and the method's loss (`Method.compile`), the optimizer eager.
"cudagraphs" (CUDA only) is the same with `train.compile_mode: reduce-overhead`: the compiled
forward and backward replayed as CUDA graphs, each step marked as a new iteration. A compiled
mode's first step (graph capture and code generation) is reported once as `compile_s`
(`compile_s_cudagraphs`), with the graph-break count from dynamo's counters, and is not timed;
nor is the second "cudagraphs" step, which records the graphs. Prints the median and the
fastest step of each pair and the ratios to the first method in the same mode: of the medians,
of the fastest steps, and "paired", the median over rounds of each step's ratio to the first
method's step in the same round (drift on a busy host moves both, so this is the steadiest).
`--json OUT` writes, per width and method, `eager_ms` and `compiled_ms` (and `cudagraphs_ms`;
medians), `ratio_eager` and `ratio_compiled` (to the first method; `_fastest` and `_paired`
variants), every timed step (`eager_steps_ms`, ...), compile time, graph breaks and each
compiled mode's speed-up over eager. Host memory is handled as the training stage handles it
(`train.reuse_host_memory`); `--system-malloc` times glibc's default behaviour instead.
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import time
from pathlib import Path

import torch

from pipeline.distill import create_method
from pipeline.models import SelfDistillModel, count_parameters, create_model
from pipeline.training.host_memory import reuse_freed_memory

MODES = ("eager", "compiled", "cudagraphs")
# torch.compile's mode per timed mode (`train.compile_mode`); "cudagraphs" needs a CUDA device
COMPILE_MODES = {"compiled": None, "cudagraphs": "reduce-overhead"}


def build(method_name: str, *, model: str, width: float, classes: int, channels_last: bool):
    method = create_method(method_name, num_classes=classes, epochs=200)
    backbone = create_model(
        model,
        num_classes=classes,
        stem="cifar",
        width=width,
        feature_taps=method.needs_features,
    )
    net = SelfDistillModel(backbone, method.build_aux(backbone))
    if channels_last:
        net = net.to(memory_format=torch.channels_last)
    opt = torch.optim.SGD(net.parameters(), lr=0.01, momentum=0.9, weight_decay=5e-4)
    return method, net, opt


def _sync(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.synchronize(device)


class Run:
    """One (method, mode): its model, optimizer and the step it times."""

    def __init__(self, method_name: str, mode: str, args, device: torch.device) -> None:
        self.method, self.model, self.opt = build(
            method_name,
            model=args.model,
            width=args.width,
            classes=args.classes,
            channels_last=args.channels_last,
        )
        self.model.to(device)
        self.forward = self.model
        self.device = device
        self.amp = args.bf16
        self.cuda_graphs = mode == "cudagraphs"
        if mode in COMPILE_MODES:
            kwargs = {"backend": args.backend, "mode": COMPILE_MODES[mode]}
            self.forward = torch.compile(self.model, dynamic=False, **kwargs)
            self.method.compile(**kwargs)
        self.times: list[float] = []
        self.compile_s: float | None = None
        self.graph_breaks: int | None = None

    def step(self, x: torch.Tensor, y: torch.Tensor) -> float:
        _sync(self.device)
        t0 = time.perf_counter()
        if self.cuda_graphs:  # as the train stage does: a new iteration of the CUDA graphs
            torch.compiler.cudagraph_mark_step_begin()
        with torch.autocast(self.device.type, dtype=torch.bfloat16, enabled=self.amp):
            # epoch 200 is past any warm-up: the full loss, L_mix included, is timed
            loss = self.method.loss(self.forward(x), y, 200).total
        self.opt.zero_grad(set_to_none=True)
        loss.backward()
        self.opt.step()
        _sync(self.device)
        return time.perf_counter() - t0


def _graph_breaks() -> int:
    from torch._dynamo.utils import counters

    return sum(counters["graph_break"].values())


def compare(args: argparse.Namespace, device: torch.device | None = None) -> dict:
    """Every (method, mode) at `args.width`, interleaved step by step; the figures as a dict."""
    device = device or torch.device("cpu")
    if "cudagraphs" in args.modes and device.type != "cuda":
        raise SystemExit(
            "mode 'cudagraphs' (torch.compile mode reduce-overhead) replays CUDA graphs and needs "
            "a CUDA device: on a CPU time --modes eager compiled"
        )
    torch.manual_seed(0)
    runs: dict[tuple[str, str], Run] = {}
    for name in args.methods:
        for mode in args.modes:
            runs[(name, mode)] = Run(name, mode, args, device)
    x = torch.randn(args.batch, 3, 32, 32, device=device)
    if args.channels_last:
        x = x.contiguous(memory_format=torch.channels_last)
    y = torch.randint(0, args.classes, (args.batch,), device=device)
    for run in runs.values():  # the first step of each: compiles where compiled, not timed
        before = _graph_breaks()
        run.compile_s = run.step(x, y)
        run.graph_breaks = _graph_breaks() - before
        if run.cuda_graphs:
            run.step(x, y)  # the CUDA graphs are recorded on the second call, replayed after
    for _ in range(args.steps):
        for run in runs.values():
            run.times.append(run.step(x, y))
    base = args.methods[0]
    out: dict = {"width": args.width, "methods": {}}
    for name in args.methods:
        row: dict = {"params_m": count_parameters(runs[(name, args.modes[0])].model) / 1e6}
        for mode in args.modes:
            run = runs[(name, mode)]
            med, base_med = (
                statistics.median(run.times),
                statistics.median(runs[(base, mode)].times),
            )
            fastest, base_fastest = min(run.times), min(runs[(base, mode)].times)
            row[f"{mode}_ms"] = 1000 * med
            row[f"{mode}_fastest_ms"] = 1000 * fastest
            row[f"ratio_{mode}"] = med / base_med
            row[f"ratio_{mode}_fastest"] = fastest / base_fastest
            # each round's step against the baseline's step of the same round: drift on a busy
            # host moves both, so the median of these ratios is the steadiest figure
            base_times = runs[(base, mode)].times
            paired = [t / b for t, b in zip(run.times, base_times, strict=True)]
            row[f"ratio_{mode}_paired"] = statistics.median(paired)
            row[f"{mode}_steps_ms"] = [round(1000 * t, 2) for t in run.times]
            if mode in COMPILE_MODES:
                # one compile time per mode when both compiled modes run
                suffix = "" if mode == "compiled" else f"_{mode}"
                row["compile_s" + suffix] = run.compile_s
                row["graph_breaks" + suffix] = run.graph_breaks
        for mode in COMPILE_MODES:
            if "eager" in args.modes and mode in args.modes:
                speedup = "compiled_speedup" if mode == "compiled" else f"{mode}_speedup"
                row[speedup] = row["eager_ms"] / row[f"{mode}_ms"]
        out["methods"][name] = row
    return out


def main() -> None:
    p = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    p.add_argument("--model", default="resnet18")
    p.add_argument("--widths", type=float, nargs="+", default=[1.0])
    p.add_argument("--width", type=float, help="one width (same as --widths W)")
    p.add_argument("--batch", type=int, default=128)
    p.add_argument("--steps", type=int, default=5, help="timed steps per pair, after the first")
    p.add_argument("--classes", type=int, default=100)
    p.add_argument("--channels-last", action="store_true")
    p.add_argument("--methods", nargs="+", default=["ce", "ama"], help="the first is the baseline")
    p.add_argument("--modes", nargs="+", choices=MODES, default=["eager"])
    p.add_argument("--compile", action="store_true", help="same as --modes eager compiled")
    p.add_argument("--backend", default="inductor", help="torch.compile backend")
    p.add_argument("--threads", type=int, default=None)
    p.add_argument("--json", type=Path, default=None, help="write the figures here")
    p.add_argument(
        "--bf16",
        action="store_true",
        help="bf16 autocast (as train.mixed_precision=bf16); on a CPU it pays where the cores "
        "have bf16 matrix units (AMX, AVX512-BF16)",
    )
    p.add_argument(
        "--system-malloc", action="store_true", help="return freed memory to the kernel (glibc)"
    )
    args = p.parse_args()
    args.methods = [m for item in args.methods for m in item.split(",") if m]
    if args.width is not None:
        args.widths = [args.width]
    if args.compile:
        args.modes = ["eager", "compiled"]
    if args.threads:
        torch.set_num_threads(args.threads)
    with reuse_freed_memory(not args.system_malloc) as reused:
        results = []
        for width in args.widths:
            args.width = width
            res = compare(args)
            results.append(res)
            print(
                f"model={args.model} width={width} batch={args.batch} steps={args.steps} "
                f"channels_last={args.channels_last} bf16={args.bf16} threads={torch.get_num_threads()} "
                f"reuse_host_memory={reused} "
                f"load_avg_1min={os.getloadavg()[0]:.1f}"  # other work on the host skews all
            )
            _print(res, args)
    if args.json:
        meta = {
            k: getattr(args, k)
            for k in (
                "model",
                "batch",
                "steps",
                "channels_last",
                "bf16",
                "methods",
                "modes",
                "backend",
            )
        }
        meta["threads"] = torch.get_num_threads()
        args.json.write_text(json.dumps({**meta, "widths": results}, indent=2))
        print(f"wrote {args.json}")


def _print(res: dict, args: argparse.Namespace) -> None:
    for name, row in res["methods"].items():
        cells = []
        for mode in args.modes:
            cells.append(
                f"{mode} {row[f'{mode}_ms']:8.1f} ms ({row[f'ratio_{mode}']:4.2f}x, "
                f"fastest {row[f'ratio_{mode}_fastest']:4.2f}x, "
                f"paired {row[f'ratio_{mode}_paired']:4.2f}x)"
            )
        extra = ""
        for key in ("compile_s", "compile_s_cudagraphs"):
            if key in row:
                breaks = row[key.replace("compile_s", "graph_breaks")]
                extra += f"  {key} {row[key]:.1f} s, graph breaks {breaks}"
        print(f"{name:>6}: " + "  ".join(cells) + extra)


if __name__ == "__main__":
    main()
