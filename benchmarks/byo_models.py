"""Other people's networks through the whole pipeline: one table per model.

Each model (torchvision, timm, a user file) is trained briefly with `ama` on real CIFAR-10
images, slimmed at a channel ratio with a short recovery, pruned of its self-teacher, exported
and validated, every one with the pipeline itself (`run_pipeline`), each in its own run folder
under `--out` (a finished run is reused: the benchmark resumes). The table gives, per model:
parameters and MACs before and after slim, what slim kept whole and why, ONNX parity, INT8
top-1 agreement with torch, and ONNX Runtime's batch-1 speed-up over torch FP32 (medians of
the validate stage's repeated measurements, in the same run).

    python benchmarks/byo_models.py [--data ../shared/datasets/cifar10-small] [--per-class 50]
        [--models torchvision:resnet18 timm:efficientnet_b0 ...] [--json OUT]

Skips cleanly (exit 0, a message) where the data set is absent.
"""

from __future__ import annotations

import argparse
import json
import logging
import sys
import time
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))

from pipeline.config import load_config  # noqa: E402
from pipeline.errors import PipelineError  # noqa: E402
from pipeline.runner import run_pipeline  # noqa: E402

MODELS = [
    "torchvision:resnet18",
    "torchvision:mobilenet_v3_small",
    "torchvision:efficientnet_b0",
    "torchvision:regnet_y_400mf",
    "torchvision:convnext_tiny",
    "timm:resnet18",
    "timm:mobilenetv3_small_100",
    "timm:efficientnet_b0",
    f"python:{REPO / 'tests' / 'fixtures' / 'user_cifar_resnet.py'}:resnet20",
]


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--data", type=Path, default=REPO.parent / "shared/datasets/cifar10-small")
    p.add_argument("--out", type=Path, default=REPO / "runs" / "byo-models")
    p.add_argument("--models", nargs="+", default=MODELS, help="source:name")
    p.add_argument("--per-class", type=int, default=50, help="train images per class")
    p.add_argument("--epochs", type=int, default=2)
    p.add_argument("--ratio", type=float, default=0.5)
    p.add_argument("--recovery-epochs", type=int, default=1)
    p.add_argument("--set", dest="overrides", action="append", default=[])
    p.add_argument("--json", type=Path, default=None, help="write the rows as JSON here")
    return p.parse_args(argv)


def overrides(args, source: str, name: str) -> list[str]:
    slug = name.rpartition(":")[2] if source == "python" else name
    return [
        f"run_dir={args.out}",
        f"name={source}-{slug}",
        "data.name=imagefolder",
        f"data.root={args.data}",
        f"data.max_per_class={args.per_class}",
        "data.input_size=32",
        "data.resize=32",
        f"model.source={source}",
        f"model.name={name}",
        "train.method=ama",
        f"train.epochs={args.epochs}",
        "train.batch_size=64",
        "train.lr=0.05",
        "train.schedule=cosine",
        f"slim.ratio={args.ratio}",
        f"slim.epochs={args.recovery_epochs}",
        "slim.compare=false",
        "validate.gates.min_top1=0.0",
        "validate.gates.max_top1_drop=1.0",
        "validate.gates.max_top1_drop_int8=1.0",
        *args.overrides,
    ]


def row(spec: str, m: dict, wall_s: float) -> dict:
    pr = m["slim"].metrics.get("pruning") or {}
    art = m["validate"].metrics["artefacts"]
    torch_ms = art["torch"]["latency_ms"]["p50"]
    ex = m["export"].metrics
    return {
        "model": spec.replace(str(REPO) + "/", ""),
        "params_before": pr.get("before", {}).get("params"),
        "params_after": pr.get("after", {}).get("params"),
        "macs_before": pr.get("before", {}).get("macs"),
        "macs_after": pr.get("after", {}).get("macs"),
        "kept_whole": [
            {"root": k["root"], "layers": len(k["layers"]), "why": k["why"]}
            for k in pr.get("kept_whole", [])
        ],
        "prune_parity": m["prune"].metrics["parity"]["max_abs_diff"],
        "onnx_parity": ex["onnx"]["parity"]["max_abs_diff"],
        "int8_agreement": ex.get("onnx_int8", {}).get("parity", {}).get("top1_agreement"),
        "top1": {k: v["top1"] for k, v in art.items()},
        "p50_ms": {k: v["latency_ms"]["p50"] for k, v in art.items()},
        "speedup_onnx": torch_ms / art["onnx"]["latency_ms"]["p50"],
        "speedup_onnx_int8": torch_ms / art["onnx_int8"]["latency_ms"]["p50"]
        if "onnx_int8" in art
        else None,
        "wall_s": wall_s,
    }


def markdown(rows: list[dict]) -> str:
    head = (
        "| model | params before -> after | MACs before -> after | kept whole | prune parity "
        "| ONNX parity | test top-1 FP32 / INT8 | INT8 agreement "
        "| ORT FP32 / INT8 speed-up vs torch FP32 (batch 1) |\n"
        "|---|---|---|---|---|---|---|---|---|\n"
    )
    lines = []
    for r in rows:
        kept = (
            "; ".join(f"{k['layers']} layers at `{k['root']}`" for k in r["kept_whole"]) or "none"
        )
        lines.append(
            f"| {r['model']} | {r['params_before']:,} -> {r['params_after']:,} "
            f"| {r['macs_before'] / 1e6:.1f} M -> {r['macs_after'] / 1e6:.1f} M "
            f"({r['macs_before'] / r['macs_after']:.2f}x) | {kept} | {r['prune_parity']:.1e} "
            f"| {r['onnx_parity']:.1e} "
            f"| {100 * r['top1']['onnx']:.1f}% / {100 * r['top1'].get('onnx_int8', float('nan')):.1f}% "
            f"| {r['int8_agreement']:.3f} "
            f"| {r['speedup_onnx']:.2f}x / {r['speedup_onnx_int8']:.2f}x |"
        )
    return head + "\n".join(lines) + "\n"


def main(argv: list[str] | None = None) -> int:
    args = parse_args(argv)
    if not (args.data / "train").is_dir():
        print(f"skipped: no data set at {args.data} (an ImageFolder with train/ and test/)")
        return 0
    logging.basicConfig(level=logging.WARNING, format="%(levelname)s %(name)s: %(message)s")
    rows, failed = [], []
    for spec in args.models:
        source, _, name = spec.partition(":")
        cfg = load_config(None, overrides(args, source, name))
        t0 = time.perf_counter()
        try:
            manifests = run_pipeline(cfg)
        except PipelineError as exc:  # recorded, and the other models still run
            failed.append({"model": spec, "error": f"{type(exc).__name__}: {exc}"})
            print(f"{spec}: {failed[-1]['error']}", flush=True)
            continue
        rows.append(row(spec, manifests, time.perf_counter() - t0))
        print(markdown(rows[-1:]).splitlines()[-1], flush=True)
    print()
    print(markdown(rows))
    for f in failed:
        print(f"failed: {f['model']}: {f['error']}")
    if args.json:
        args.json.parent.mkdir(parents=True, exist_ok=True)
        args.json.write_text(json.dumps({"rows": rows, "failed": failed}, indent=2))
    return 1 if failed else 0


if __name__ == "__main__":
    raise SystemExit(main())
