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
    row = {"ratio": ratio, "method": slim.recovery_method(cfg), "seed": seed, **metrics}
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
        lines.append({
            "point": point_name(r["ratio"], r["method"], r["seed"]),
            "ratio": r["ratio"], "method": r["method"], "seed": r["seed"],
            "params": c["slim"]["params"], "macs": c["slim"]["macs"],
            "top1_fp32": c["slim"]["fp32"]["top1"], "top1_int8": c["slim"]["int8"]["top1"],
            "top1_change_fp32": c["top1_change_fp32"], "top1_change_int8": c["top1_change_int8"],
            "p50_fp32_ms": c["slim"]["fp32"]["latency_ms"]["p50"],
            "p50_int8_ms": c["slim"]["int8"]["latency_ms"]["p50"],
            "speedup_fp32": c["speedup_batch1"]["slim_fp32"],
            "speedup_int8": c["speedup_batch1"]["slim_int8"],
            "throughput_fp32": c["slim"]["fp32"]["throughput"]["images_per_s"],
            "throughput_int8": c["slim"]["int8"]["throughput"]["images_per_s"],
            "recovery_s": (r.get("recovery") or {}).get("train_s"),
        })  # fmt: skip
    head = ("| point | parameters | MACs | top-1 FP32 | top-1 INT8 | p50 FP32 ms | p50 INT8 ms "
            "| speed-up FP32 | speed-up INT8 |")  # fmt: skip
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


def best_point(lines: list[dict], max_loss: float = 0.01) -> dict | None:
    """The fastest FP32 point losing at most `max_loss` top-1 against the unpruned FP32 model."""
    ok = [x for x in lines[1:] if x["top1_change_fp32"] >= -max_loss]
    return max(ok, key=lambda x: x["speedup_fp32"]) if ok else None


def figure(lines: list[dict], out: Path) -> Path | None:
    from pipeline.report.figures import accuracy_latency_figure

    points = [("unpruned FP32", lines[0]["p50_fp32_ms"], lines[0]["top1_fp32"]),
              ("unpruned INT8", lines[0]["p50_int8_ms"], lines[0]["top1_int8"])]  # fmt: skip
    for x in lines[1:]:
        points.append((f"{x['point']} FP32", x["p50_fp32_ms"], x["top1_fp32"]))
        points.append((f"{x['point']} INT8", x["p50_int8_ms"], x["top1_int8"]))
    return accuracy_latency_figure(points, out, title="slim sweep: top-1 against latency")


def main(argv: list[str] | None = None) -> int:
    logging.basicConfig(
        level=logging.INFO, format="%(asctime)s %(levelname)-7s %(name)s: %(message)s"
    )
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
    methods = sorted({r["method"] for r in rows}, key=lambda m: m == "ce")  # the control last
    gain = paired(rows, methods[0], methods[-1]) if len(methods) == 2 else None
    best = best_point(lines)
    summary = {"run": str(args.run), "points": lines, "paired_gain": gain, "best_within_1pt": best}
    write_json_atomic(out / "sweep.json", summary)
    text = [f"# Compression sweep of `{args.run}`", "", md, ""]
    if best:
        text.append(
            f"Best point within 1 point of the unpruned FP32 top-1: `{best['point']}`, "
            f"{best['speedup_fp32']:.2f}x faster in FP32 and {best['speedup_int8']:.2f}x in INT8 "
            f"(top-1 change {100 * best['top1_change_fp32']:+.2f} FP32, "
            f"{100 * best['top1_change_int8']:+.2f} INT8)."
        )
    if gain:
        for ratio, g in gain.items():
            spread = f" +- {100 * g['std']:.2f}" if g["std"] is not None else ""
            text.append(
                f"Ratio {ratio}: `{methods[0]}` minus `{methods[-1]}` recovery, paired by seed "
                f"{g['seeds']}: {', '.join(f'{100 * x:+.2f}' for x in g['gains'])} "
                f"(mean {100 * g['mean']:+.2f}{spread} points)."
            )
    (out / "sweep.md").write_text("\n".join(text) + "\n")
    figure(lines, out / "sweep.png")
    print("\n".join(text))
    return 0


if __name__ == "__main__":
    sys.exit(main())
