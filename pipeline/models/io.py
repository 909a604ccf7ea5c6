"""Saving and loading models as safetensors plus a JSON spec: loading never executes code.

`save_model` is the one writer of a model and its spec (`pipeline.models.spec.ModelSpec`);
`read_spec` (defined with the spec) the one reader.
"""

from __future__ import annotations

from pathlib import Path

from safetensors import SafetensorError
from safetensors.torch import load_file, save_file
from torch import nn

from pipeline.errors import ArtefactError
from pipeline.models.channels import apply_shapes
from pipeline.models.external import build_classifier
from pipeline.models.registry import create_model
from pipeline.models.spec import ModelSpec, read_spec

__all__ = ["apply_widths", "build_backbone", "load_weights", "read_spec", "save_model"]


def save_model(model: nn.Module, spec: ModelSpec, folder: Path, stem_name: str) -> list[Path]:
    """`<stem_name>.safetensors` (the spec in its metadata too) and `<stem_name>.json`."""
    weights = folder / f"{stem_name}.safetensors"
    state = {k: v.detach().cpu().contiguous() for k, v in model.state_dict().items()}
    save_file(state, str(weights), metadata={"spec": spec.to_json()})
    spec_path = folder / f"{stem_name}.json"
    spec_path.write_text(spec.to_json(indent=2))
    return [weights, spec_path]


def build_backbone(
    spec: ModelSpec, *, feature_taps: bool = False, shaped: bool = True
) -> nn.Module:
    """The classifier a spec describes; `feature_taps` adds the layers a self-teacher reads.

    A channel-pruned classifier's spec carries its layer widths (`shapes`, `stage_channels`):
    they are applied unless `shaped` is False (the training wrapper applies them itself, after
    its auxiliary branch is built at the unpruned widths).
    """
    if spec.source == "builtin":
        model = create_model(
            spec.arch,
            num_classes=spec.num_classes,
            stem=spec.stem,
            width=spec.width,
            feature_taps=feature_taps,
        )
    else:  # the user's network: its factory, its head sized as recorded, its stages
        model, _ = build_classifier(
            spec.source,
            spec.arch,
            spec.kwargs,
            spec.num_classes,
            spec.preset.input_size,
            spec.stages,
        )
    if shaped:
        apply_widths(model, spec)
    return model


def apply_widths(model: nn.Module, spec: ModelSpec, prefix: str = "") -> nn.Module:
    """The layer widths a pruned model's spec records, applied to `model` (a no-op otherwise)."""
    if spec.shapes:
        apply_shapes(model, spec.shapes, params=spec.params)
        target = model.get_submodule(prefix.rstrip(".")) if prefix else model
        target.stage_channels = list(spec.stage_channels or ())
    return model


def load_weights(model: nn.Module, folder: Path, stem_name: str) -> nn.Module:
    """Weights from safetensors into `model` (strict); a corrupt file is an ArtefactError."""
    path = folder / f"{stem_name}.safetensors"
    try:
        state = load_file(str(path))
    except (SafetensorError, OSError) as exc:
        raise ArtefactError(
            f"cannot read weights {path}: {exc}; rebuild the stage that wrote it (`--from`)"
        ) from None
    model.load_state_dict(state, strict=True)
    return model.eval()
