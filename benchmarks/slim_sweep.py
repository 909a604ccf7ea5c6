"""Compression sweep: prune one trained run at several channel ratios, recover each with several
methods (and seeds), and judge every point on the same test images.

Each point is the pipeline's own slim stage (pruning, recovery by fine-tuning, the side-by-side
ONNX Runtime FP32/INT8 measurement of the unpruned and the slim classifier), run in its own
folder under `--out`; a finished point is reused, so an interrupted sweep resumes. Writes
`sweep.json`, `sweep.md` and `sweep.png` (top-1 against batch-1 latency, FP32 and INT8 points,
the frontier drawn).

    python benchmarks/slim_sweep.py runs/c10s-r18w05-ama --ratios 0.3 0.5 0.7 \
        --methods ce ama --seeds 0 [--set slim.epochs=5 ...]
"""

from __future__ import annotations

import argparse
import json
import logging
import shutil
import statistics
import sys
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))

from pipeline.artifacts import StageContext, find_stage, write_json_atomic  # noqa: E402
from pipeline.config import load_config  # noqa: E402
from pipeline.errors import PipelineError  # noqa: E402


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("run", type=Path, help="a run folder with a finished train stage")
    p.add_argument("--ratios", type=float, nargs="+", default=[0.3, 0.5, 0.7])
    p.add_argument("--methods", nargs="+", default=["ce", "auto"], help="recovery methods")
    p.add_argument("--seeds", type=int, nargs="+", default=[0], help="recovery seeds")
    p.add_argument(
        "--set", dest="overrides", action="append", default=[], help="override for every point"
    )
    p.add_argument("--out", type=Path, default=None, help="default: RUN/slim-sweep")
    return p.parse_args(argv)


def point_name(ratio: float, method: str, seed: int) -> str:
    return f"r{ratio:g}-{method}-s{seed}"


def run_point(args, train, ctx_data, ratio: float, method: str, seed: int, out: Path) -> dict:
    """One point through the slim stage, in `out/points/<name>`; reused when finished."""
    from pipeline.stages import slim
    from pipeline.training.slimming import recovery_method

    if method == "auto":
        method = load_config(args.run / "config.yaml").train.method
    folder = out / "points" / point_name(ratio, method, seed)
    result = folder / "result.json"
    if result.is_file():
        return json.loads(result.read_text())
    sets = [*args.overrides, f"slim.ratio={ratio}", f"slim.method={method}", f"train.seed={seed}"]
    cfg = load_config(args.run / "config.yaml", sets)
    work = folder / "work"
    work.mkdir(parents=True, exist_ok=True)  # a partial point resumes from its checkpoints
    ctx = StageContext(cfg=cfg, run_dir=args.run, load_data=lambda: ctx_data)
    metrics = slim.run(cfg, {"train": train}, work, ctx).metrics
    row = {"ratio": ratio, "method": recovery_method(cfg), "seed": seed, **metrics}
    write_json_atomic(result, row)
    shutil.rmtree(work / "checkpoints", ignore_errors=True)
    return row


def table(rows: list[dict]) -> tuple[list[dict], str]:
    """One line per point and one for the unpruned model (its measurements averaged over the
    points, each point's speed-ups taken against its own unpruned measurement)."""
    lines = []
    ref = [r["compression"]["unpruned"] for r in rows]
    unpruned = {
        "point": "unpruned",
        "params": ref[0]["params"],
        "macs": ref[0]["macs"],
        "top1_fp32": ref[0]["fp32"]["top1"],
        "top1_int8": ref[0]["int8"]["top1"],
        "p50_fp32_ms": statistics.median(u["fp32"]["latency_ms"]["p50"] for u in ref),
        "p50_int8_ms": statistics.median(u["int8"]["latency_ms"]["p50"] for u in ref),
        "speedup_fp32": 1.0,
        "speedup_int8": statistics.median(
            r["compression"]["speedup_batch1"]["unpruned_int8"] for r in rows
        ),
    }
    lines.append(unpruned)
    for r in rows:
        c = r["compression"]
        lines.append(
            {
                "point": point_name(r["ratio"], r["method"], r["seed"]),
                "ratio": r["ratio"],
                "method": r["method"],
                "seed": r["seed"],
                "params": c["slim"]["params"],
                "macs": c["slim"]["macs"],
                "top1_fp32": c["slim"]["fp32"]["top1"],
                "top1_int8": c["slim"]["int8"]["top1"],
                "top1_change_fp32": c["top1_change_fp32"],
                "top1_change_int8": c["top1_change_int8"],
                "p50_fp32_ms": c["slim"]["fp32"]["latency_ms"]["p50"],
                "p50_int8_ms": c["slim"]["int8"]["latency_ms"]["p50"],
                "speedup_fp32": c["speedup_batch1"]["slim_fp32"],
                "speedup_int8": c["speedup_batch1"]["slim_int8"],
                "throughput_fp32": c["slim"]["fp32"]["throughput"]["images_per_s"],
                "throughput_int8": c["slim"]["int8"]["throughput"]["images_per_s"],
                "recovery_s": (r.get("recovery") or {}).get("train_s"),
            }
        )
    head = (
        "| point | parameters | MACs | top-1 FP32 | top-1 INT8 | p50 FP32 ms | p50 INT8 ms "
        "| speed-up FP32 | speed-up INT8 |"
    )
    md = [head, "|" + "---|" * 9]
    for x in lines:
        md.append(
            f"| {x['point']} | {x['params']:,} | {x['macs'] / 1e6:.1f} M | {100 * x['top1_fp32']:.2f} "
            f"| {100 * x['top1_int8']:.2f} | {x['p50_fp32_ms']:.3f} | {x['p50_int8_ms']:.3f} "
            f"| {x['speedup_fp32']:.2f}x | {x['speedup_int8']:.2f}x |"
        )
    return lines, "\n".join(md)


def paired(rows: list[dict], a: str, b: str) -> dict | None:
    """Recovery method `a` against `b` at each ratio with both, paired by seed."""
    out = {}
    for ratio in sorted({r["ratio"] for r in rows}):
        by = {
            (r["method"], r["seed"]): r["compression"]["slim"]["fp32"]["top1"]
            for r in rows
            if r["ratio"] == ratio
        }
        seeds = sorted(s for (m, s) in by if m == a and (b, s) in by)
        if not seeds:
            continue
        gains = [by[(a, s)] - by[(b, s)] for s in seeds]
        out[str(ratio)] = {
            "seeds": seeds,
            "gains": gains,
            "mean": statistics.mean(gains),
            "std": statistics.stdev(gains) if len(gains) > 1 else None,
        }
    return out or None


BASELINES = ("ce", "ls")  # recovery controls: plain fine-tuning, and label smoothing


def comparisons(rows: list[dict], methods: list[str]) -> dict[tuple[str, str], dict]:
    """Each recovery method against each control that was run (`ce`, `ls`), paired by seed."""
    out = {}
    for b in (m for m in BASELINES if m in methods):
        for a in methods:
            if a == b or (a, b) == ("ce", "ls"):  # ls is measured against ce, not the reverse
                continue
            g = paired(rows, a, b)
            if g:
                out[(a, b)] = g
    return out


def by_ratio(lines: list[dict]) -> list[dict]:
    """Per ratio (one architecture), latency as the median over every point's measurement and
    the speed-ups from medians against the unpruned median: single measurements on a busy
    machine move by 20% and more, medians over several do not; top-1 as the mean per method."""
    ref = lines[0]
    out = []
    for ratio in sorted({x["ratio"] for x in lines[1:]}):
        pts = [x for x in lines[1:] if x["ratio"] == ratio]
        fp32 = statistics.median(x["p50_fp32_ms"] for x in pts)
        int8 = statistics.median(x["p50_int8_ms"] for x in pts)
        row = {
            "ratio": ratio,
            "params": pts[0]["params"],
            "macs": pts[0]["macs"],
            "measurements": len(pts),
            "p50_fp32_ms": fp32,
            "p50_int8_ms": int8,
            "speedup_fp32": ref["p50_fp32_ms"] / fp32,
            "speedup_int8": ref["p50_fp32_ms"] / int8,
            "top1": {},
        }
        for m in sorted({x["method"] for x in pts}):
            mine = [x for x in pts if x["method"] == m]
            row["top1"][m] = {
                "fp32": statistics.mean(x["top1_fp32"] for x in mine),
                "int8": statistics.mean(x["top1_int8"] for x in mine),
                "seeds": len(mine),
            }
        out.append(row)
    return out


def best_point(groups: list[dict], ref_top1: float, max_loss: float = 0.01) -> dict | None:
    """The fastest architecture (median latency) whose best recovery method (mean top-1 over
    its seeds) loses at most `max_loss` against the unpruned FP32 model."""
    ok = []
    for g in groups:
        method, top1 = max(g["top1"].items(), key=lambda kv: kv[1]["fp32"])
        if top1["fp32"] - ref_top1 >= -max_loss:
            ok.append({**g, "method": method, "top1_fp32": top1["fp32"], "top1_int8": top1["int8"]})
    return max(ok, key=lambda g: g["speedup_fp32"]) if ok else None


def figure(lines: list[dict], out: Path) -> Path | None:
    from pipeline.report.figures import accuracy_latency_figure

    points = [
        ("unpruned FP32", lines[0]["p50_fp32_ms"], lines[0]["top1_fp32"]),
        ("unpruned INT8", lines[0]["p50_int8_ms"], lines[0]["top1_int8"]),
    ]
    for x in lines[1:]:
        points.append((f"{x['point']} FP32", x["p50_fp32_ms"], x["top1_fp32"]))
        points.append((f"{x['point']} INT8", x["p50_int8_ms"], x["top1_int8"]))
    return accuracy_latency_figure(points, out, title="slim sweep: top-1 against latency")


def main(argv: list[str] | None = None) -> int:
    logging.basicConfig(
        level=logging.INFO, format="%(asctime)s %(levelname)-7s %(name)s: %(message)s"
    )
    logging.getLogger("accelerate").setLevel(logging.WARNING)
    args = parse_args(argv)
    out = args.out or args.run / "slim-sweep"
    train = find_stage(args.run, "train")
    if train is None:
        print(f"{args.run} has no finished train stage; run the pipeline first", file=sys.stderr)
        return 4
    from pipeline.data import build_data

    cfg = load_config(args.run / "config.yaml", args.overrides)
    data = build_data(cfg.data)
    rows = []
    try:
        for ratio in args.ratios:
            for method in args.methods:
                for seed in args.seeds:
                    rows.append(run_point(args, train, data, ratio, method, seed, out))
                    print(f"done {point_name(ratio, method, seed)}", flush=True)
    except PipelineError as exc:
        print(f"{type(exc).__name__}: {exc}", file=sys.stderr)
        return exc.exit_code
    lines, md = table(rows)
    groups = by_ratio(lines)
    methods = sorted({r["method"] for r in rows}, key=lambda m: (m == "ce", m == "ls"))
    gains = comparisons(rows, methods)
    ref = lines[0]
    best = best_point(groups, ref["top1_fp32"])
    summary = {
        "run": str(args.run),
        "points": lines,
        "by_ratio": groups,
        "paired_gains": {f"{a} - {b}": g for (a, b), g in gains.items()},
        "best_within_1pt": best,
    }
    write_json_atomic(out / "sweep.json", summary)
    text = [f"# Compression sweep of `{args.run}`", "", "Every point as measured:", "", md, ""]
    text += [
        "Per ratio: latency as the median over the points' measurements, speed-ups against "
        f"the unpruned median ({ref['p50_fp32_ms']:.3f} ms FP32), top-1 as the mean over seeds:",
        "",
        "| ratio | parameters | MACs | p50 FP32 ms | p50 INT8 ms | speed-up FP32 | speed-up INT8 "
        "| " + " | ".join(f"top-1 {m} FP32 / INT8" for m in methods) + " |",
        "|" + "---|" * (7 + len(methods)),
    ]
    for g in groups:
        cells = [
            f"{100 * g['top1'][m]['fp32']:.2f} / {100 * g['top1'][m]['int8']:.2f} (n={g['top1'][m]['seeds']})"
            if m in g["top1"]
            else ""
            for m in methods
        ]
        text.append(
            f"| {g['ratio']:g} | {g['params']:,} | {g['macs'] / 1e6:.1f} M | {g['p50_fp32_ms']:.3f} "
            f"| {g['p50_int8_ms']:.3f} | {g['speedup_fp32']:.2f}x | {g['speedup_int8']:.2f}x | "
            + " | ".join(cells)
            + " |"
        )
    text.append("")
    if best:
        text.append(
            f"Fastest ratio within 1 point of the unpruned FP32 top-1 "
            f"({100 * ref['top1_fp32']:.2f}): {best['ratio']:g} recovered by `{best['method']}`, "
            f"{best['speedup_fp32']:.2f}x faster in FP32 and {best['speedup_int8']:.2f}x in INT8 "
            f"(top-1 {100 * (best['top1_fp32'] - ref['top1_fp32']):+.2f} FP32, "
            f"{100 * (best['top1_int8'] - ref['top1_fp32']):+.2f} INT8)."
        )
    for (a, b), gain in gains.items():
        for ratio, g in gain.items():
            spread = f" +- {100 * g['std']:.2f}" if g["std"] is not None else ""
            text.append(
                f"Ratio {ratio}: `{a}` minus `{b}` recovery, paired by seed "
                f"{g['seeds']}: {', '.join(f'{100 * x:+.2f}' for x in g['gains'])} "
                f"(mean {100 * g['mean']:+.2f}{spread} points)."
            )
    (out / "sweep.md").write_text("\n".join(text) + "\n")
    figure(lines, out / "sweep.png")
    print("\n".join(text))
    return 0


if __name__ == "__main__":
    sys.exit(main())
