"""INT8 recipes side by side on one trained run: each calibration method with asymmetric (uint8)
and symmetric (int8) activations (weight range as `reduce_range: auto` picks for this CPU), the
default recipe with 8-bit and with 7-bit weights, and the TensorRT recipe (symmetric, float
biases, 8-bit weights), against
the FP32 ONNX model, in one process: top-1 on the run's test split, ONNX Runtime latency at
batch 1 (p50 of single calls) and images/s at batch 32, file size.

    python benchmarks/int8_recipes.py runs/c10s-r18w1 --out benchmarks/results/int8-recipes
    python benchmarks/int8_recipes.py RUN --model SLIM_POINT/work --protocol precise --images 10000

Calibration images come from the run's train split (evaluation transform), never from test.
`--model` measures the classifier saved in another folder (a slim sweep point's, a train
stage's) instead of the run's export; `--protocol precise` judges on the images of the
precise protocol's validation split the run did not train on (`--images` of them, spread
evenly), as `methods.py` and `slim_sweep.py` do.
"""

from __future__ import annotations

import argparse
import json
import sys
import tempfile
from pathlib import Path

import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from benchmarks.protocols import FULL_ROOT, SPLIT, judged_arrays, protocol_overrides  # noqa: E402
from export.quantize import quantize_int8, resolve_reduce_range  # noqa: E402
from export.tensorrt import _check_int8_qdq  # noqa: E402
from pipeline.artifacts import find_stage  # noqa: E402
from pipeline.config import Int8Config, load_config  # noqa: E402
from pipeline.errors import ConfigError  # noqa: E402
from pipeline.runner import make_context  # noqa: E402
from pipeline.timing import sweep_point  # noqa: E402
from serving.predictor import OrtPredictor  # noqa: E402

RECIPES = {
    f"{cal}/{act}": Int8Config(calibration=cal, activations=act)
    for cal in ("minmax", "entropy", "percentile")
    for act in ("asymmetric", "symmetric")
} | {
    # Weight range pinned both ways: on x86 without VNNI full 8-bit weights saturate (serving/cpu.py).
    "minmax/asymmetric, 8-bit weights": Int8Config(reduce_range=False),
    "minmax/asymmetric, 7-bit weights": Int8Config(reduce_range=True),
    "tensorrt (minmax/symmetric, float bias)": Int8Config(
        activations="symmetric", bias="float", reduce_range=False
    ),
}


def measure(path: Path, xs: np.ndarray, ys: np.ndarray, seconds: float) -> dict:
    pred = OrtPredictor(path)
    logits = np.concatenate([pred.run(xs[i : i + 256]) for i in range(0, len(xs), 256)])
    one, batch = xs[:1], np.resize(xs, (32, *xs.shape[1:]))
    b1 = sweep_point(lambda: pred.run(one), 1, min_runs=300, max_seconds=seconds, warmup=20)
    b32 = sweep_point(lambda: pred.run(batch), 32, min_runs=100, max_seconds=seconds, warmup=5)
    try:
        _check_int8_qdq(path)
        trt_ok = "yes"
    except ConfigError as exc:
        trt_ok = "no" if "Q/DQ" not in str(exc) else "n/a (float)"
    return {
        "top1": float((logits.argmax(1) == ys).mean()),
        "p50_ms_batch1": b1["p50"],
        "images_per_s_batch32": b32["images_per_s"],
        "bytes": path.stat().st_size,
        "tensorrt_qdq_check": trt_ok,
    }


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawTextHelpFormatter)
    p.add_argument("run", type=Path)
    p.add_argument("--seconds", type=float, default=3.0, help="timing per point, at most")
    p.add_argument("--out", type=Path, default=Path("benchmarks/results/int8-recipes"))
    p.add_argument(
        "--model", type=Path, default=None, help="a folder with a saved model (default: the export)"
    )
    p.add_argument("--protocol", choices=sorted(SPLIT), default="test")
    p.add_argument("--full-root", type=Path, default=FULL_ROOT)
    p.add_argument("--images", type=int, default=0, help="judged images, spread evenly (0: all)")
    args = p.parse_args()
    cfg = load_config(args.run / "config.yaml", protocol_overrides(args.protocol, args.full_root))
    ctx = make_context(cfg)
    xs, ys = judged_arrays(ctx.data, SPLIT[args.protocol], args.images)
    calib = ctx.data.calibration_batch(cfg.export.calibration_samples)
    with tempfile.TemporaryDirectory() as tmp:
        if args.model is not None:
            import torch

            from export.onnx import export_onnx
            from pipeline.training.model import load_deployable

            fp32 = Path(tmp) / "model.onnx"
            export_onnx(
                load_deployable(args.model), torch.from_numpy(xs[:2]), fp32, cfg.export.opset
            )
        else:
            export = find_stage(args.run, "export")
            if export is None:
                raise SystemExit(f"{args.run} has no finished export stage (or pass --model)")
            fp32 = export.path("model.onnx")
        rows = {"fp32": measure(fp32, xs, ys, args.seconds)}
        for name, recipe in RECIPES.items():
            dst = Path(tmp) / f"{name.split(' ')[0].replace('/', '-')}.onnx"
            quantize_int8(fp32, dst, calib, recipe)
            rows[name] = measure(dst, xs, ys, args.seconds)
            print(name, rows[name], flush=True)
    ref = rows["fp32"]
    lines = [
        f"Run `{args.run}` ({cfg.model.name} width {cfg.model.width})"
        + (f", the classifier in `{args.model}`" if args.model else "")
        + f", {len(ys):,} {SPLIT[args.protocol]} images, "
        f"{len(calib)} calibration images from train; ONNX Runtime CPU, same process; "
        f"`reduce_range: auto` here: {resolve_reduce_range('auto')[1]}.",
        "",
        "| recipe | top-1 | vs FP32 | batch-1 p50 ms | speed-up | img/s at 32 | speed-up | size | TensorRT Q/DQ check |",
        "|---|---|---|---|---|---|---|---|---|",
    ]
    for name, r in rows.items():
        lines.append(
            f"| {name} | {100 * r['top1']:.2f}% | {100 * (r['top1'] - ref['top1']):+.2f} | "
            f"{r['p50_ms_batch1']:.3f} | {ref['p50_ms_batch1'] / r['p50_ms_batch1']:.2f}x | "
            f"{r['images_per_s_batch32']:,.0f} | {r['images_per_s_batch32'] / ref['images_per_s_batch32']:.2f}x | "
            f"{r['bytes'] / 1e6:.2f} MB | {r['tensorrt_qdq_check']} |"
        )
    args.out.mkdir(parents=True, exist_ok=True)
    (args.out / "recipes.json").write_text(
        json.dumps({"run": str(args.run), "rows": rows}, indent=2)
    )
    (args.out / "recipes.md").write_text("\n".join(lines) + "\n")
    print("\n".join(lines))


if __name__ == "__main__":
    main()
