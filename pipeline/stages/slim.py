"""The slim stage: structured channel pruning of the classifier, recovered by self-distillation.

1. The trained model is rebuilt with the recovery method's auxiliary branch (the run's own
   self-teacher, trained weights and all, when the methods agree) and pruned through
   Torch-Pruning's dependency graph (`pipeline.training.channel_pruning`); the self-teacher's
   laterals lose the input channels the classifier lost. The pruned network is kept in
   `pruned/` (safetensors plus a spec with every layer width: loading runs no code).
2. Recovery fine-tunes it through the training code (`fit` with a start model), so it
   checkpoints and resumes like training: `slim.method` `auto` keeps the run's method (the
   self-teacher's knowledge is the recovery signal), `ce` is the control.
3. The compression table: the unpruned and the slim classifier, each exported to ONNX FP32 and
   INT8 (the default INT8 recipe) and measured side by side here: parameters, MACs, ONNX
   size, top-1 on the test split, ONNX Runtime batch-1 latency and throughput.

With `slim.ratio: 0` and no budget the trained model passes through unchanged (same bytes).
"""

from __future__ import annotations

import json
import logging
import os
import shutil
import tempfile
from collections.abc import Mapping
from pathlib import Path
from typing import Any

import numpy as np

from pipeline.artifacts import Manifest, StageContext, StageResult, write_json_atomic
from pipeline.errors import StageError

log = logging.getLogger("pipeline.slim")

MODEL_FILES = ("model.safetensors", "model.json")


def _link_or_copy(src: Path, dst: Path) -> None:
    dst.unlink(missing_ok=True)
    try:
        os.link(src, dst)
    except OSError:
        shutil.copyfile(src, dst)


def recovery_method(cfg) -> str:
    return cfg.recovery_method()


def train_batches(ctx: StageContext, n_batches: int, batch: int = 64):
    """Labelled train images with the deterministic evaluation transform, spread over the split."""
    import torch

    from pipeline.data import Transformed, eval_transform

    train = ctx.data.train
    n = min(len(train), n_batches * batch)
    picks = np.linspace(0, len(train) - 1, num=n).round().astype(int)
    idx = [train.indices[i] for i in picks]
    xs = Transformed(train.base, idx, eval_transform(ctx.data.preset)).stack()
    ys = torch.as_tensor([train.labels[i] for i in picks])
    return [(xs[s : s + batch], ys[s : s + batch]) for s in range(0, n, batch)]


def start_model(cfg, train_dir: Path):
    """The trained model as the recovery method's training wrapper: trained tensors where the
    two agree, a fresh auxiliary branch where the run trained none (reported)."""
    from safetensors.torch import load_file

    from pipeline.distill import create_method
    from pipeline.models.io import read_spec
    from pipeline.training.model import build_training_model

    method = recovery_method(cfg)
    spec = read_spec(train_dir, "model")
    options = cfg.recovery_options()
    needs = create_method(method, options, num_classes=spec.num_classes, epochs=1)
    spec = spec.replace(method=method, feature_taps=needs.needs_features)
    wrapper, _ = build_training_model(spec, options)
    trained = load_file(str(train_dir / "model.safetensors"))
    own = wrapper.state_dict()
    fresh = sorted(k for k in own if k not in trained)
    if any(k.startswith("backbone.") and not k.startswith("backbone.taps.") for k in fresh):
        raise StageError(f"the trained model in {train_dir} lacks classifier tensors: {fresh[:5]}")
    wrapper.load_state_dict({k: v for k, v in trained.items() if k in own}, strict=False)
    if fresh:
        log.warning(
            "recovery method %r: %d tensors start fresh (the run trained %r without them)",
            method, len(fresh), read_spec(train_dir, "model").method,
        )  # fmt: skip
    return wrapper.eval(), spec, len(fresh)


def _ort_latency_fn(cfg, work: Path, size: int):
    """Batch-1 ONNX Runtime latency (p50, ms) of a classifier at `size` pixels, measured as
    validation does."""
    from export.onnx import export_onnx
    from pipeline.timing import latency
    from serving.predictor import OrtPredictor

    lat = cfg.validate_.latency

    def measure(classifier) -> float:
        import copy

        import torch

        model = copy.deepcopy(classifier).eval()
        if hasattr(model, "drop_feature_taps"):
            model.drop_feature_taps()
        path = work / "latency-probe.onnx"
        example = torch.zeros(2, 3, size, size)
        export_onnx(model, example, path, cfg.export.opset)
        run = OrtPredictor(path, threads=lat.threads).run
        one = np.zeros((1, 3, size, size), np.float32)
        return latency(lambda: run(one), warmup=lat.warmup, iters=lat.iters)["p50"]

    return measure


def prune(cfg, ctx: StageContext, train_dir: Path, pruned_dir: Path) -> dict[str, Any]:
    """Prune the trained model into `pruned_dir` (reused when already there: resume)."""
    from pipeline.models.channels import layer_shapes
    from pipeline.models.io import save_model
    from pipeline.training.channel_pruning import prune_channels

    record_path = pruned_dir / "pruning.json"
    if record_path.is_file() and all((pruned_dir / f).is_file() for f in MODEL_FILES):
        log.info("reusing the pruned network in %s", pruned_dir)
        return json.loads(record_path.read_text())
    s = cfg.slim
    wrapper, spec, fresh = start_model(cfg, train_dir)
    batches = train_batches(ctx, s.taylor_batches if s.importance == "taylor" else 1)
    example = batches[0][0][:2]
    with tempfile.TemporaryDirectory(dir=pruned_dir.parent) as tmp:
        probe = _ort_latency_fn(cfg, Path(tmp), int(example.shape[-1]))
        record = prune_channels(
            wrapper, example, s, batches=batches,
            latency_ms=probe if s.latency_ms is not None else None,
        )  # fmt: skip
    import torch

    with torch.no_grad():  # the stage widths as they now are (the attribute is the built ones)
        widths = [int(f.shape[1]) for f in wrapper.backbone.forward_features(example)]
    wrapper.backbone.stage_channels = widths
    record["fresh_tensors"] = fresh
    record["stage_channels"] = widths
    pruned_spec = spec.replace(shapes=layer_shapes(wrapper), stage_channels=widths)
    pruned_dir.mkdir(parents=True, exist_ok=True)
    save_model(wrapper, pruned_spec, pruned_dir, "model")
    write_json_atomic(record_path, record)
    return record


def recovery_config(cfg):
    """The train settings of the fine-tuning: the slim stage's schedule, method and its
    options (`PipelineConfig.recovery_options`)."""
    s = cfg.slim
    distill = cfg.recovery_options()
    train = cfg.train.model_copy(
        update={
            "method": recovery_method(cfg), "epochs": s.epochs, "lr": s.lr,
            "schedule": s.schedule, "warmup_epochs": s.warmup_epochs, "distill": distill,
        }
    )  # fmt: skip
    return cfg.model_copy(update={"train": train})


def recover(cfg, ctx: StageContext, pruned_dir: Path, out_dir: Path) -> dict[str, Any]:
    """Fine-tune the pruned network in `out_dir` (checkpoints and resume as in training)."""
    from pipeline.training import accel
    from pipeline.training.fit import fit
    from pipeline.training.launch import run_launched

    if cfg.slim.epochs == 0:
        for f in MODEL_FILES:
            _link_or_copy(pruned_dir / f, out_dir / f)
        return {}
    rcfg = recovery_config(cfg)
    if rcfg.train.processes > 1 and accel.world_size() == 1:
        return run_launched(rcfg, out_dir, start=pruned_dir)
    return fit(rcfg, ctx.data, out_dir, start=pruned_dir)


def deployable(folder: Path):
    from pipeline.models.io import load_weights, read_spec
    from pipeline.training.model import build_training_model

    spec = read_spec(folder, "model")
    wrapper, _ = build_training_model(spec)  # the network only: no options needed
    return load_weights(wrapper, folder, "model").deployable()


def measure(cfg, ctx: StageContext, model, work: Path) -> dict[str, Any]:
    """One classifier, as ONNX FP32 and INT8 (default recipe), measured like validation does."""
    from export.onnx import export_onnx
    from export.quantize import quantize_int8
    from pipeline.config import ExportConfig
    from pipeline.models import count_macs, count_parameters
    from pipeline.stages.export import calibration_batch
    from pipeline.stages.validate import score, test_arrays
    from serving.predictor import OrtPredictor

    work.mkdir(parents=True, exist_ok=True)
    xs, ys = test_arrays(ctx)
    import torch

    example = torch.from_numpy(xs[:2])
    fp32, int8 = work / "model.onnx", work / "model.int8.onnx"
    export_onnx(model, example, fp32, cfg.export.opset)
    quantize_int8(
        fp32, int8, calibration_batch(ctx, cfg.export.calibration_samples), ExportConfig().int8
    )
    row: dict[str, Any] = {
        "params": count_parameters(model),
        "macs": count_macs(model, example[:1]),
    }
    threads = cfg.validate_.latency.threads
    for name, path in (("fp32", fp32), ("int8", int8)):
        scored, _, _ = score(OrtPredictor(path, threads=threads).run, xs, ys, cfg)
        row[name] = {
            "onnx_bytes": path.stat().st_size, "top1": scored["top1"],
            "latency_ms": scored["latency_ms"], "throughput": scored["throughput"],
        }  # fmt: skip
    return row


def compression_table(unpruned: dict, slim: dict) -> dict[str, Any]:
    """Both classifiers and the ratios: speed-ups over the unpruned FP32 model."""

    def p50(row, prec):
        return row[prec]["latency_ms"]["p50"]

    ref = p50(unpruned, "fp32")
    speedups = {
        f"{who}_{prec}": ref / p50(row, prec)
        for who, row in (("unpruned", unpruned), ("slim", slim))
        for prec in ("fp32", "int8")
    }
    return {
        "unpruned": unpruned,
        "slim": slim,
        "speedup_batch1": speedups,
        "params_ratio": slim["params"] / unpruned["params"],
        "macs_ratio": slim["macs"] / unpruned["macs"],
        "top1_change_fp32": slim["fp32"]["top1"] - unpruned["fp32"]["top1"],
        "top1_change_int8": slim["int8"]["top1"] - unpruned["fp32"]["top1"],
    }


def run(cfg, inputs: Mapping[str, Manifest], out_dir: Path, ctx: StageContext) -> StageResult:
    train_dir = inputs["train"].folder
    if not cfg.slim.enabled:
        for f in MODEL_FILES:
            _link_or_copy(train_dir / f, out_dir / f)
        log.info("slim is off (slim.ratio 0, no budget): the trained model passes through")
        return StageResult(metrics={"slimmed": False})
    record = prune(cfg, ctx, train_dir, out_dir / "pruned")
    recovery = recover(cfg, ctx, out_dir / "pruned", out_dir)
    with tempfile.TemporaryDirectory(dir=out_dir) as tmp:  # measured; not artefacts
        table = compression_table(
            measure(cfg, ctx, deployable(train_dir), Path(tmp) / "unpruned"),
            measure(cfg, ctx, deployable(out_dir), Path(tmp) / "slim"),
        )
    log.info(
        "slim: %.2fx fewer MACs, FP32 %.2fx and INT8 %.2fx faster at batch 1, top-1 %+.4f (FP32)",
        1 / table["macs_ratio"], table["speedup_batch1"]["slim_fp32"],
        table["speedup_batch1"]["slim_int8"], table["top1_change_fp32"],
    )  # fmt: skip
    metrics = {
        "slimmed": True,
        "recovery_method": recovery_method(cfg),
        "pruning": record,
        "recovery": recovery,
        "compression": table,
    }
    return StageResult(metrics=metrics)
