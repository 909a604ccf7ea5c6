"""MODEL_CARD.md for an exported classifier, in the usual sections (model details, intended use,
training data, evaluation data, metrics, limitations, preprocessing, class names), from what the
pipeline recorded: the model spec, the training stage's metrics and the export parity."""

from __future__ import annotations

from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:
    from pipeline.models.spec import ModelSpec


def _pct(x: float | None) -> str:
    return "n/a" if x is None else f"{100 * x:.2f}%"


def _int8_note(quantization: dict[str, dict[str, Any]]) -> str:
    """Where each INT8 model can run at the accuracy measured (see serving/cpu.py)."""
    lines = []
    for name, q in quantization.items():
        if q.get("weight_bits") == 7:
            lines.append(
                f"- `{name}` keeps its weights in a 7-bit range ({q.get('weight_bits_why')}), "
                "so ONNX Runtime's int8 kernels do not saturate on any CPU."
            )
        else:
            lines.append(
                f"- `{name}` uses full 8-bit weights ({q.get('weight_bits_why')}): on x86 CPUs "
                "without VNNI (AVX2, AVX-512 without VNNI) ONNX Runtime's int8 kernels can "
                "saturate and lose accuracy the gates did not see; for such CPUs export with "
                "`export.int8.reduce_range=true`."
            )
    return "\n".join(lines) + ("\n" if lines else "")


def model_card(
    spec: ModelSpec,
    *,
    run: str,
    version: int,
    data: dict[str, Any],
    training: dict[str, Any],
    parity: dict[str, Any],
    artefacts: dict[str, str],
    quantization: dict[str, dict[str, Any]] | None = None,
) -> str:
    p = spec.preset
    sizes = data.get("sizes", {})
    split = " / ".join(f"{n:,} {k}" for k, n in sizes.items())
    files = "\n".join(f"  - `{rel}` ({name})" for name, rel in artefacts.items())
    classes = list(spec.classes)
    shown = ", ".join(f"`{c}`" for c in classes[:200]) + (" ..." if len(classes) > 200 else "")
    return f"""# Model card: {run} (version {version})

## Model details

- Architecture: {spec.arch} at width {spec.width}, {spec.stem} stem, {spec.num_classes} classes.
- Training method: `{spec.method}`{" (self-distillation; the self-teacher was removed before export and the classifier shown to give the same logits)" if spec.aux_removed else ""}.
- Files:
{files}

## Intended use

Image classification into the classes below, for images like the training data (same kind,
framing and resolution). It is not meant for inputs outside those classes: it always answers
one of them.

## Training data

`{data.get("name", "?")}`: {split} images ({spec.num_classes} classes); validation carved
from train, stratified. Data fingerprint `{data.get("fingerprint", "?")}`.

## Evaluation data

The data set's test split ({sizes.get("test", 0):,} images), never used for training or model
selection.

## Metrics

- Test top-1 of the classifier (torch FP32): {_pct(training.get("test_top1"))}; last-epoch train
  top-1 {_pct(training.get("train_top1"))}, validation top-1 {_pct(training.get("val_top1"))}.
- ONNX against torch on {parity["samples"]:,} test images: max |logit difference|
  {parity["max_abs_diff"]:.3g}, top-1 agreement {_pct(parity["top1_agreement"])}.
- Accuracy and latency of every artefact (FP32, FP16, INT8) against the gates: the run's
  `report.md` / `report.html`.

## Limitations

- Trained on {sizes.get("train", 0):,} images; accuracy on other sources, lighting, sensors or
  resolutions is not measured here.
- Reduced-precision variants (INT8, FP16) can disagree with FP32 on individual images; their
  top-1 is gated but per-class effects are not.
- Confidence is a softmax probability, not calibrated.
{_int8_note(quantization or {})}
## Preprocessing

RGB, resized so the short side is {p.resize or p.input_size} px, centre crop
{p.input_size}x{p.input_size}, scaled to [0, 1], normalised with mean {list(p.mean)} and std
{list(p.std)}, NCHW float32. The same values are in the ONNX file's metadata.

## Class names

{shown}
"""
