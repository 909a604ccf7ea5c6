"""The compression frontier: top-1 against ONNX Runtime batch-1 latency, FP32 and INT8, of the
pipeline's compressed classifiers (a slim sweep's points) against smaller networks trained from
scratch (what a user does without this tool), every latency measured in this one process.

Inputs are finished work of the other benchmarks, read, never trained here:
`--base` the unpruned run the sweep pruned, `--sweep` a `slim_sweep.py` folder (its
`points/*/result.json` and saved models), `--scratch` the `methods.py` run folders of narrower
networks (each `runs/<variant>-s<seed>`, or a `methods.py --out` folder: all its runs).

Per classifier: the judged top-1 its own run recorded (the precise protocol: the 45,000 images
it did not train on), and ONNX FP32 and INT8 (the base run's `export.int8` recipe) top-1 on the
same `--judge-images` images of the judged split, spread evenly over it. Per architecture (one
per width or ratio: seeds and recipes share it): batch-1 p50 latency of FP32 and INT8, measured
in `--rounds` interleaved rounds (every architecture once per round) and reported as the median
over rounds, so the machine's drift reaches every point alike.

    python benchmarks/frontier.py --base RUNS/ls-s0 --sweep RUNS/ls-s0/slim-sweep-precise \
        --scratch OUT/w0125 OUT/w01875 --protocol precise --out benchmarks/results/frontier
"""

from __future__ import annotations

import argparse
import functools
import json
import logging
import statistics
import sys
from pathlib import Path

import numpy as np

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))

from benchmarks.protocols import (  # noqa: E402
    FULL_ROOT,
    METRIC,
    SPLIT,
    SPLIT_KEYS,
    judged_arrays,
    missing_data,
    protocol_overrides,
)

log = logging.getLogger("bench.frontier")


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument(
        "--base", type=Path, required=True, help="the unpruned run (a finished train stage)"
    )
    p.add_argument("--sweep", type=Path, nargs="*", default=[], help="slim_sweep.py --out folders")
    p.add_argument(
        "--scratch", type=Path, nargs="*", default=[], help="methods.py runs or --out folders"
    )
    p.add_argument("--protocol", choices=sorted(SPLIT), default="precise")
    p.add_argument("--full-root", type=Path, default=FULL_ROOT)
    p.add_argument(
        "--judge-images",
        type=int,
        default=10000,
        help="ONNX FP32/INT8 top-1 on this many images of the judged split (0: all)",
    )
    p.add_argument("--rounds", type=int, default=5, help="interleaved latency rounds")
    p.add_argument("--iters", type=int, default=200, help="batch-1 calls per round")
    p.add_argument("--threads", type=int, default=None, help="ONNX Runtime threads (all)")
    p.add_argument("--out", type=Path, required=True)
    return p.parse_args(argv)


# what to measure ------------------------------------------------------------------------------


def _runs(paths: list[Path]) -> list[Path]:
    """Run folders: each path is one, or a methods.py --out folder holding `runs/*`."""
    out = []
    for p in paths:
        out += (
            sorted(x for x in (p / "runs").iterdir() if x.is_dir())
            if (p / "runs").is_dir()
            else [p]
        )
    return out


def classifiers(args) -> list[dict]:
    """Every classifier to measure, with the judged top-1 its run recorded."""
    from pipeline.artifacts import find_stage
    from pipeline.config import load_config

    metric = METRIC[args.protocol]
    found = []
    for kind, runs in (("base", [args.base]), ("smaller", _runs(args.scratch))):
        for run in runs:
            train = find_stage(run, "train")
            if train is None:
                raise SystemExit(f"{run} has no finished train stage")
            cfg = load_config(run / "config.yaml")
            if kind == "base":
                split = {k: getattr(cfg.data, k) for k in SPLIT_KEYS}
            differ = [k for k in SPLIT_KEYS if getattr(cfg.data, k) != split[k]]
            if differ:  # judged on images it may have trained on: refused
                raise SystemExit(
                    f"{run} was trained on another split than {args.base} (data."
                    f"{', data.'.join(differ)} differ): train it with the same protocol"
                )
            method, width = cfg.train.method, cfg.model.width
            found.append(
                {
                    "kind": kind,
                    "group": f"{'base ' if kind == 'base' else ''}{method} w{width:g}",
                    "recipe": method,
                    "width": width,
                    "ratio": None,
                    "seed": cfg.train.seed,
                    "folder": str(train.folder),
                    "judged_top1": train.metrics.get(metric),
                }
            )
    for sweep in args.sweep:
        for result in sorted((sweep / "points").glob("*/result.json")):
            row = json.loads(result.read_text())
            found.append(
                {
                    "kind": "slim",
                    "group": f"slim {row['ratio']:g} {row['recipe']}",
                    "recipe": row["recipe"],
                    "width": None,
                    "ratio": row["ratio"],
                    "seed": row["seed"],
                    "folder": str(result.parent / "work"),
                    "judged_top1": row["judged"]["top1"],
                }
            )
    return found


def onnx_top1(path: Path, xs: np.ndarray, ys: np.ndarray, threads: int | None) -> float:
    from pipeline.evaluation.scoring import predictions
    from serving.predictor import OrtPredictor

    pred, _ = predictions(OrtPredictor(path, threads=threads).run, xs)
    return float((pred == ys).mean())


def export_both(folder: Path, work: Path, cfg, calibration: np.ndarray) -> tuple[dict, Path, Path]:
    import torch

    from export.onnx import export_onnx
    from export.quantize import quantize_int8
    from pipeline.models import count_macs, count_parameters
    from pipeline.training.model import load_deployable

    model = load_deployable(folder)
    example = torch.from_numpy(calibration[:2])
    work.mkdir(parents=True, exist_ok=True)
    fp32, int8 = work / "model.onnx", work / "model.int8.onnx"
    export_onnx(model, example, fp32, cfg.export.opset)
    quantize_int8(fp32, int8, calibration, cfg.export.int8)
    size = {"params": count_parameters(model), "macs": count_macs(model, example[:1])}
    return size, fp32, int8


def measure_latency(paths: dict[str, Path], args) -> dict[str, dict]:
    """Batch-1 p50 (ms) per ONNX file: `rounds` rounds, each file once per round, in turn; the
    median over rounds and every round's value."""
    from pipeline.timing import latency
    from serving.predictor import OrtPredictor

    sessions = {k: OrtPredictor(p, threads=args.threads).run for k, p in paths.items()}
    one = np.zeros((1, 3, args.size, args.size), np.float32)
    per = {k: [] for k in paths}
    for r in range(args.rounds):
        for k, run in sessions.items():
            call = functools.partial(run, one)
            per[k].append(latency(call, warmup=20, iters=args.iters)["p50"])
        log.info("latency round %d/%d done", r + 1, args.rounds)
    return {k: {"p50_ms": statistics.median(v), "rounds": v} for k, v in per.items()}


# the frontier -------------------------------------------------------------------------------


def best_within(points: list[tuple[float, float]], lat: float) -> float | None:
    """The best top-1 among points at most `lat` ms (None: none that fast)."""
    ok = [a for la, a in points if la <= lat * (1 + 1e-9)]
    return max(ok) if ok else None


def compare_fronts(
    pipeline: list[tuple[float, float]], smaller: list[tuple[float, float]]
) -> list[dict]:
    """At every measured latency of either family: each family's best top-1 at that latency or
    faster, and the pipeline's margin."""
    rows = []
    for lat in sorted({la for la, _ in pipeline + smaller}):
        a, b = best_within(pipeline, lat), best_within(smaller, lat)
        rows.append(
            {
                "latency_ms": lat,
                "pipeline": a,
                "smaller": b,
                "margin": None if a is None or b is None else a - b,
            }
        )
    return rows


def _mean(rows: list[dict], key: str) -> float | None:
    vals = [r[key] for r in rows if r.get(key) is not None]
    return statistics.mean(vals) if vals else None


def _points(lines: list[dict], kinds: tuple[str, ...], prec: str, key: str) -> list[tuple]:
    """(latency, top-1) of the groups of `kinds`."""
    return [
        (x[f"p50_{prec}_ms"], x[key]) for x in lines if x["kind"] in kinds and x[key] is not None
    ]


def summarise(rows: list[dict], lat: dict[str, dict]) -> list[dict]:
    """One line per group (architecture and recipe): means over seeds."""
    groups: dict[str, list[dict]] = {}
    for r in rows:
        groups.setdefault(r["group"], []).append(r)
    out = []
    for g, rs in groups.items():
        arch = rs[0]["arch"]
        mean = functools.partial(_mean, rs)

        out.append(
            {
                "group": g,
                "kind": rs[0]["kind"],
                "recipe": rs[0]["recipe"],
                "width": rs[0]["width"],
                "ratio": rs[0]["ratio"],
                "seeds": sorted(r["seed"] for r in rs),
                "params": rs[0]["params"],
                "macs": rs[0]["macs"],
                "judged_top1": mean("judged_top1"),
                "judged_per_seed": {r["seed"]: r["judged_top1"] for r in rs},
                "onnx_fp32_top1": mean("onnx_fp32_top1"),
                "onnx_int8_top1": mean("onnx_int8_top1"),
                "int8_drop": mean("int8_drop"),
                "p50_fp32_ms": lat[f"{arch}/fp32"]["p50_ms"],
                "p50_int8_ms": lat[f"{arch}/int8"]["p50_ms"],
            }
        )
    return sorted(out, key=lambda x: x["p50_fp32_ms"])


def figure(lines: list[dict], out: Path) -> Path:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt
    from matplotlib.ticker import FuncFormatter

    from pipeline.report.figures import pareto

    fig, axes = plt.subplots(1, 2, figsize=(11, 4.4), sharey=True)
    for ax, prec, key in ((axes[0], "FP32", "judged_top1"), (axes[1], "INT8", "onnx_int8_top1")):
        for kind, marker in (("base", "*"), ("smaller", "s"), ("slim", "o")):
            for x in (x for x in lines if x["kind"] == kind and x[key] is not None):
                lat = x[f"p50_{prec.lower()}_ms"]
                ax.scatter(
                    [lat], [100 * x[key]], marker=marker, s=50 if kind != "base" else 120, zorder=3
                )
                ax.annotate(
                    x["group"],
                    (lat, 100 * x[key]),
                    textcoords="offset points",
                    xytext=(4, 3),
                    fontsize=6,
                )
        for kind, style, label in (
            ("smaller", "--", "train a smaller network"),
            ("slim", "-", "pipeline: slim + recovery"),
        ):
            pts = [
                (x[f"p50_{prec.lower()}_ms"], 100 * x[key])
                for x in lines
                if x["kind"] in (kind, "base") and x[key] is not None
            ]
            f = pareto([("", lat, acc) for lat, acc in pts])
            ax.step(
                [p[1] for p in f],
                [p[2] for p in f],
                style,
                where="post",
                color="gray" if kind == "smaller" else "C3",
                label=label,
            )
        ax.set(xscale="log", xlabel=f"ONNX Runtime {prec} batch-1 p50, ms (log)", title=prec)
        ax.xaxis.set_major_formatter(FuncFormatter(lambda v, _: f"{v:.3g}"))
        ax.xaxis.set_minor_formatter(FuncFormatter(lambda v, _: f"{v:.3g}"))
        ax.tick_params(axis="x", which="minor", labelsize=6, labelrotation=45)
        ax.legend(fontsize=7)
    axes[0].set_ylabel("judged top-1 (%)  [INT8: on the judged subset]")
    fig.tight_layout()
    fig.savefig(out, dpi=120)
    plt.close(fig)
    return out


def _signed(v):
    return "—" if v is None else f"{100 * v:+.2f}"


def pct(v):
    return "—" if v is None else f"{100 * v:.2f}"


def main(argv: list[str] | None = None) -> int:
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(name)s: %(message)s")
    logging.getLogger("accelerate").setLevel(logging.WARNING)
    args = parse_args(argv)
    missing = missing_data(args.protocol, args.full_root)
    if missing:
        print(missing)
        return 0
    from pipeline.artifacts import write_json_atomic
    from pipeline.config import load_config
    from pipeline.data import build_data

    args.out.mkdir(parents=True, exist_ok=True)
    cfg = load_config(args.base / "config.yaml", protocol_overrides(args.protocol, args.full_root))
    data = build_data(cfg.data, cfg.model)
    args.size = data.preset.input_size
    calibration = data.calibration_batch(cfg.export.calibration_samples)
    xs, ys = judged_arrays(data, SPLIT[args.protocol], args.judge_images)
    log.info("judging ONNX top-1 on %d images of the %s split", len(xs), SPLIT[args.protocol])

    rows, arch_files = [], {}
    found = classifiers(args)
    for i, c in enumerate(found):
        work = args.out / "onnx" / f"{i:03d}"
        size, fp32, int8 = export_both(Path(c["folder"]), work, cfg, calibration)
        arch = f"{size['params']}-{size['macs']}"
        arch_files.setdefault(f"{arch}/fp32", fp32)
        arch_files.setdefault(f"{arch}/int8", int8)
        top_fp32 = onnx_top1(fp32, xs, ys, args.threads)
        top_int8 = onnx_top1(int8, xs, ys, args.threads)
        rows.append(
            {
                **c,
                **size,
                "arch": arch,
                "onnx_fp32_top1": top_fp32,
                "onnx_int8_top1": top_int8,
                "int8_drop": top_int8 - top_fp32,
            }
        )
        log.info(
            "%s seed %s: judged %s, ONNX FP32 %s, INT8 %s",
            c["group"],
            c["seed"],
            pct(c["judged_top1"]),
            pct(top_fp32),
            pct(top_int8),
        )

    lat = measure_latency(arch_files, args)
    lines = summarise(rows, lat)
    base = next(x for x in lines if x["kind"] == "base")
    fronts = {}
    for prec, key in (("fp32", "judged_top1"), ("int8", "onnx_int8_top1")):
        fronts[prec] = compare_fronts(
            _points(lines, ("slim", "base"), prec, key),
            _points(lines, ("smaller", "base"), prec, key),
        )
    summary = {
        "protocol": args.protocol,
        "judge_images": len(xs),
        "rounds": args.rounds,
        "threads": args.threads,
        "int8_recipe": cfg.export.int8.model_dump()
        if hasattr(cfg.export.int8, "model_dump")
        else str(cfg.export.int8),
        "classifiers": rows,
        "groups": lines,
        "fronts": fronts,
        "base_int8_speedup": base["p50_fp32_ms"] / base["p50_int8_ms"],
        "latency": lat,  # per architecture and precision: the median and every round's p50
    }
    write_json_atomic(args.out / "frontier.json", summary)
    md = [
        f"# Frontier ({args.protocol} protocol): top-1 against ONNX Runtime batch-1 latency",
        "",
        f"Judged top-1: each run's own, on the {SPLIT[args.protocol]} split; ONNX FP32/INT8 top-1 "
        f"on {len(xs):,} images of it (INT8: the base run's `export.int8` recipe). Latency: "
        f"median of {args.rounds} interleaved rounds of {args.iters} batch-1 calls "
        f"({args.threads or 'all'} threads).",
        "",
        "| group | seeds | params | MACs | judged top-1 (mean) | per seed | ONNX FP32 | ONNX INT8 | INT8 - FP32 | p50 FP32 ms | p50 INT8 ms | speed-up FP32 / INT8 vs base FP32 |",
        "|---|---|---|---|---|---|---|---|---|---|---|---|",
    ]
    for x in lines:
        seeds = ", ".join(pct(v) for _, v in sorted(x["judged_per_seed"].items()))
        md.append(
            f"| {x['group']} | {len(x['seeds'])} | {x['params']:,} | {x['macs'] / 1e6:.1f} M | {pct(x['judged_top1'])} | {seeds} "
            f"| {pct(x['onnx_fp32_top1'])} | {pct(x['onnx_int8_top1'])} | {100 * x['int8_drop']:+.2f} "
            f"| {x['p50_fp32_ms']:.3f} | {x['p50_int8_ms']:.3f} "
            f"| {base['p50_fp32_ms'] / x['p50_fp32_ms']:.2f}x / {base['p50_fp32_ms'] / x['p50_int8_ms']:.2f}x |"
        )
    for prec, rows_ in fronts.items():
        md += [
            "",
            f"{prec.upper()}: best top-1 at each measured latency or faster, pipeline (slim points and the base) against smaller networks (and the base):",
            "",
            "| latency ms | pipeline | smaller networks | margin |",
            "|---|---|---|---|",
        ]
        md += [
            f"| {r['latency_ms']:.3f} | {pct(r['pipeline'])} | {pct(r['smaller'])} | {_signed(r['margin'])} |"
            for r in rows_
        ]
    (args.out / "frontier.md").write_text("\n".join(md) + "\n")
    figure(lines, args.out / "frontier.png")
    print("\n".join(md))
    return 0


if __name__ == "__main__":
    sys.exit(main())
