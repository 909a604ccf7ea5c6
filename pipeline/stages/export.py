"""The export stage: the deployed classifier to ONNX, checked against torch on real test
images, then each variant of `export.formats` (FP16, INT8) built from the FP32 model."""

from __future__ import annotations

import json
import logging
import shutil
from collections.abc import Mapping
from pathlib import Path

from export.model_card import model_card
from export.quantize import quantization_of
from export.variants import VARIANTS
from pipeline.artifacts import Manifest, StageContext, StageResult, find_stage
from pipeline.errors import ExportParityError, GpuUnavailable, PipelineError, StageError
from pipeline.gates import at_least, at_most, show
from serving.predictor import TrtPredictor

log = logging.getLogger("pipeline.export")


def _build_variant(variant, fp32: Path, out_dir: Path, ctx: StageContext, e) -> Path:
    """One export variant; a builder's own failure (onnxruntime's quantizer raises bare
    assertions) becomes a StageError that names the variant."""
    try:
        return variant.build(
            fp32,
            out_dir / variant.filename,
            lambda: ctx.data.calibration_batch(e.calibration_samples),
            e,
        )
    except (PipelineError, OSError):
        raise
    except Exception as exc:  # noqa: BLE001 - re-raised with the variant named
        raise StageError(
            f"building export variant {variant.name!r} from {fp32.name} failed: "
            f"{type(exc).__name__}: {exc}. Drop it from export.formats to export without it"
        ) from exc


def _reuse_timing_cache(ctx: StageContext, out_dir: Path) -> None:
    """The TensorRT timing cache of the previous export of this run, so rebuilt engines reuse
    the tactic timings already measured (the cache lives in the stage's own folder)."""
    previous = find_stage(ctx.run_dir, "export")
    if previous is not None and previous.path("timing.cache").is_file():
        shutil.copyfile(previous.path("timing.cache"), out_dir / "timing.cache")


def parity_of(made: Path, model, images) -> dict:
    """Parity against torch through the artefact's own runtime (ONNX Runtime or TensorRT)."""
    from export.onnx import ort_parity, parity  # torch: loaded by the stage, not the table

    if made.suffix != ".engine":
        return ort_parity(made, model, images)
    return parity(TrtPredictor(made).run, model, images, chunk=64)


def run(cfg, inputs: Mapping[str, Manifest], out_dir: Path, ctx: StageContext) -> StageResult:
    # torch loads here, not with the stage table
    from export.onnx import add_metadata, describe, export_onnx, onnx_metadata, ort_parity
    from pipeline.models.io import build_backbone, load_weights, read_spec

    prune = inputs["prune"]
    spec = read_spec(prune.folder, "classifier")
    model = load_weights(build_backbone(spec), prune.folder, "classifier")
    images = ctx.data.test.stack(cfg.export.parity_samples)
    path = out_dir / "model.onnx"
    export_onnx(model, images[:2], path, cfg.export.opset)
    add_metadata(
        path,
        onnx_metadata(spec, prune.key),
        doc_string=describe(spec),
        model_version=cfg.export.model_version,
    )
    parity = ort_parity(path, model, images)
    e = cfg.export
    diff, agree = parity["max_abs_diff"], parity["top1_agreement"]
    limit = e.atol + e.rtol * parity["max_abs_logit"]
    log.info("onnx parity: max |diff| %s, top-1 agreement %s", show(diff, 3), show(agree))
    if not (at_most(diff, limit) and at_least(agree, e.min_top1_agreement)):  # NaN fails
        raise ExportParityError(
            f"ONNX Runtime logits differ from torch: max |diff| {show(diff, 3)} "
            f"(limit {show(limit, 3)}: export.atol={e.atol} + export.rtol={e.rtol} x the largest "
            f"|logit| {show(parity['max_abs_logit'], 3)}), top-1 agreement {show(agree)} "
            f"(limit export.min_top1_agreement={e.min_top1_agreement}) on {parity['samples']} "
            "test images"
            + ("; non-finite logits: check the trained weights" if not at_most(diff, 1e308) else "")
        )
    (out_dir / "classes.json").write_text(json.dumps(list(spec.classes)))
    metrics = {"onnx": {"parity": parity, "opset": e.opset, "bytes": path.stat().st_size}}
    artefacts = {"onnx": "model.onnx"}
    skipped: dict[str, str] = {}
    _reuse_timing_cache(ctx, out_dir)
    for fmt in e.formats:
        variant = VARIANTS[fmt]
        try:
            made = _build_variant(variant, path, out_dir, ctx, e)
        except GpuUnavailable as exc:
            if e.require_gpu or not variant.gpu:
                raise
            skipped[fmt] = str(exc)
            log.warning("%s skipped: %s", fmt, exc)
            continue
        artefacts[fmt] = made.name
        # Reduced precision is judged on accuracy by the validate gates; this records how far it moved.
        metrics[fmt] = {"parity": parity_of(made, model, images), "bytes": made.stat().st_size}
        if variant.gpu:
            metrics[fmt]["engine"] = json.loads(made.with_suffix(".json").read_text())
        elif quant := quantization_of(made):
            metrics[fmt]["quantization"] = quant
            log.info("%s: %d-bit weights (%s)", fmt, quant["weight_bits"], quant["weight_bits_why"])
        log.info(
            "%s: top-1 agreement with torch %.4f", fmt, metrics[fmt]["parity"]["top1_agreement"]
        )
    if skipped:
        metrics["skipped"] = skipped
    train = inputs["train"]
    training, slim = train.metrics, inputs["slim"].metrics if "slim" in inputs else {}
    if slim.get("slimmed"):  # the card describes the pruned classifier, as recovered
        compared = slim.get("compression")
        training = slim.get("recovery") or (
            {"test_top1": compared["slim"]["fp32"]["top1"]} if compared else {}
        )
    card = model_card(
        spec,
        run=cfg.name,
        version=e.model_version,
        data={**train.data, "name": cfg.data.name},
        training=training,
        parity=parity,
        artefacts=artefacts,
        quantization={k: v["quantization"] for k, v in metrics.items() if "quantization" in v},
    )
    (out_dir / "MODEL_CARD.md").write_text(card)
    return StageResult(metrics=metrics, extra={"artefacts": artefacts})
