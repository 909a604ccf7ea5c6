"""The model spec: what builds a network, as one typed, frozen record.

A spec travels beside the weights (`<stem>.json` and the safetensors metadata) and is read in
one place, `read_spec`, which validates it: a missing key, an unknown key or a record from an
older version of the pipeline is an `ArtefactError` naming the file and how to rebuild it, not
a `KeyError` far from where the file was written. `save_model` (pipeline.models.io) is the one
writer. A spec is never changed in place: `spec.replace(...)` makes a checked copy.

What each stage records:

- train: source, arch, stem, width, num_classes, method, feature_taps, classes, preset; for a
  network from torchvision, timm or the user's code also its `kwargs`, `stages` and, when its
  factory cannot size the head, `head_replaced`
- slim (a channel-pruned network): the same plus `shapes` (and `params`, for parameters outside
  convolution, normalisation and linear layers) and `stage_channels`, under the recovery method
- prune (the deployable classifier): no `feature_taps`, plus `aux_removed`
"""

from __future__ import annotations

import json
import re
from pathlib import Path
from typing import Any, Literal

from pydantic import BaseModel, ConfigDict, ValidationError

from pipeline.errors import ArtefactError
from pipeline.preprocessing import Preprocessing

SPEC_VERSION = 1
"""The spec's schema version. Raise it when a field changes meaning or a required one is added;
records of an older version are refused with the way to rebuild them."""

_OPTIONAL = (
    "feature_taps",
    "aux_removed",
    "shapes",
    "stage_channels",
    "kwargs",
    "stages",
    "params",
    "head_replaced",
)
"""Keys a record carries only when they apply (written only when set)."""


class _Record(BaseModel):
    model_config = ConfigDict(extra="forbid", frozen=True)


class PresetSpec(_Record):
    """The data preset the model was trained with: its input and preprocessing."""

    input_size: int
    stem: str
    train_aug: str
    resize: int | None  # test-time shorter side before the centre crop; None: the input size
    mean: tuple[float, float, float]
    std: tuple[float, float, float]

    @property
    def preprocessing(self) -> Preprocessing:
        """The evaluation preprocessing the exported model's metadata records."""
        return Preprocessing(self.input_size, self.resize or self.input_size, self.mean, self.std)


class ModelSpec(_Record):
    """What builds the network and what it was trained on; `read_spec` reads one from a file."""

    version: int = SPEC_VERSION
    # where the architecture comes from: the registry, torchvision, timm or a Python factory
    source: Literal["builtin", "torchvision", "timm", "python"] = "builtin"
    arch: str  # the registry's or library's name; `/abs/file.py:factory` or `module:factory`
    kwargs: dict[str, Any] | None = None  # the factory's arguments (not builtin)
    stages: tuple[str, ...] | None = None  # the modules whose outputs are the stage features
    head_replaced: str | None = None  # the final linear layer resized to num_classes on build
    stem: str
    width: float
    num_classes: int
    method: str
    feature_taps: bool | None = None  # the classifier keeps the layers a self-teacher reads
    classes: tuple[str, ...]
    preset: PresetSpec
    shapes: dict[str, tuple[int, ...]] | None = None  # a channel-pruned network's layer sizes
    params: dict[str, tuple[int, ...]] | None = None  # ... and of parameters outside layers
    stage_channels: tuple[int, ...] | None = None  # ... and its stage widths
    aux_removed: bool | None = None  # the deployable classifier: a self-teacher was removed

    def replace(self, **changes: Any) -> ModelSpec:
        """A copy with `changes`, validated like a record read from a file; None drops an
        optional key."""
        return ModelSpec.model_validate({**self.model_dump(), **changes})

    def to_dict(self) -> dict[str, Any]:
        """The JSON record: every field, optional keys only when set."""
        out = self.model_dump(mode="json")
        for key in _OPTIONAL:
            if out[key] is None:
                del out[key]
        return out

    def to_json(self, indent: int | None = None) -> str:
        return json.dumps(self.to_dict(), indent=indent)


def _rebuild_hint(path: Path) -> str:
    """`--from STAGE` for the stage folder (`NN_name`) holding `path`, if there is one."""
    for part in reversed(path.parent.parts):
        if m := re.fullmatch(r"\d{2}_(\w+)", part):
            stage = m.group(1)
            return f"rebuild it with `python -m pipeline run CONFIG --from {stage}`"
    return "rebuild it with `python -m pipeline run CONFIG --from STAGE` (the stage that wrote it)"


def _problems(exc: ValidationError) -> str:
    out = []
    for err in exc.errors():
        where = ".".join(str(p) for p in err["loc"])
        if err["type"] == "missing":
            out.append(f"missing key `{where}`")
        elif err["type"] == "extra_forbidden":
            out.append(f"unknown key `{where}`")
        else:
            out.append(f"`{where}`: {err['msg']} (found {err.get('input')!r})")
    return "; ".join(out)


def parse_spec(record: Any, path: Path) -> ModelSpec:
    """`record` (a spec as read from `path`) checked: its version, then every key."""
    hint = _rebuild_hint(path)
    if not isinstance(record, dict):
        raise ArtefactError(f"model spec {path} is not a JSON object; {hint}")
    version = record.get("version")
    if version is None or (isinstance(version, int) and version < SPEC_VERSION):
        found = "no `version` key" if version is None else f"version {version}"
        raise ArtefactError(
            f"model spec {path} was written by an older version of the pipeline ({found}; "
            f"this version reads spec version {SPEC_VERSION}); {hint}"
        )
    if not isinstance(version, int) or version > SPEC_VERSION:
        raise ArtefactError(
            f"model spec {path} has spec version {version!r}; this version of the pipeline reads "
            f"version {SPEC_VERSION}: upgrade the pipeline, or {hint}"
        )
    try:
        return ModelSpec.model_validate(record)
    except ValidationError as exc:
        raise ArtefactError(f"model spec {path} is not valid: {_problems(exc)}; {hint}") from None


def read_spec(folder: Path, stem_name: str) -> ModelSpec:
    """The spec saved as `<folder>/<stem_name>.json`, validated (an ArtefactError otherwise)."""
    path = Path(folder) / f"{stem_name}.json"
    try:
        record = json.loads(path.read_text())
    except FileNotFoundError:
        raise ArtefactError(f"model spec {path} is missing; {_rebuild_hint(path)}") from None
    except (OSError, ValueError) as exc:
        raise ArtefactError(
            f"cannot read model spec {path}: {exc}; {_rebuild_hint(path)}"
        ) from None
    return parse_spec(record, path)
