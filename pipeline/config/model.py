"""`model`: the classifier: a built-in architecture, or the user's own (torchvision, timm, a
factory in their code), from random weights or their checkpoint."""

from __future__ import annotations

from pathlib import Path
from typing import Any, Literal

from pydantic import Field, model_validator

from pipeline.config.base import Strict
from pipeline.models import list_models

_NO_HUB = ("weights", "pretrained", "pretrained_cfg", "pretrained_cfg_overlay", "checkpoint_path")


class ModelConfig(Strict):
    source: Literal["builtin", "torchvision", "timm", "python"] = Field(
        "builtin",
        description="builtin: the pipeline's own classifiers; torchvision / timm: any "
        "classification model of that library by name; python: `path/file.py:factory` or "
        "`package.module:factory`",
    )
    name: str = "resnet18"
    kwargs: dict[str, Any] = Field(
        default_factory=dict,
        description="passed to the factory (torchvision, timm, python); num_classes is added "
        "when the factory takes it and this does not set it",
    )
    weights: Path | None = Field(
        None,
        description="a local checkpoint to start from: safetensors or a torch file holding a "
        "state dict (bare or nested, `module.`/`_orig_mod.` prefixes stripped); never a hub",
    )
    stages: list[str] | None = Field(
        None,
        description="module names whose outputs are the stage features a self-teacher reads; "
        "None finds them (the last map at each resolution, the deepest four)",
    )
    width: float = Field(1.0, gt=0.0, le=8.0, description="channel width multiplier (builtin)")
    stem: Literal["auto", "cifar", "imagenet"] = Field("auto", description="builtin only")
    num_classes: int | None = Field(
        None, ge=2, description="optional assertion: must equal the data's class count"
    )

    @model_validator(mode="after")
    def _coherent(self) -> ModelConfig:
        if self.source == "builtin":
            if self.name not in list_models():
                raise ValueError(
                    f"model.name: unknown model {self.name!r}; allowed: {', '.join(list_models())} "
                    "(or set model.source: torchvision, timm or python for other networks)"
                )
            if self.kwargs:
                raise ValueError(
                    "model.kwargs is for torchvision, timm and python models; the built-in ones "
                    "take model.width and model.stem"
                )
        else:
            set_here = [
                f"model.{k}={v}"
                for k, v, default in (("width", self.width, 1.0), ("stem", self.stem, "auto"))
                if v != default
            ]
            if set_here:
                raise ValueError(
                    f"{' and '.join(set_here)} shape the built-in classifiers only; for a "
                    f"{self.source} model remove them from the config (or --set model.width=1 "
                    "--set model.stem=auto) and pass the model's own arguments in model.kwargs"
                )
            for key in _NO_HUB:
                if self.kwargs.get(key) not in (None, False):
                    raise ValueError(
                        f"model.kwargs.{key}={self.kwargs[key]!r} would fetch weights from a "
                        "hub, and the pipeline never downloads: save the weights to a local "
                        "file and set model.weights to it"
                    )
        if self.stages is not None and len(self.stages) < 2:
            raise ValueError("model.stages: a self-teacher reads at least two stages")
        if self.weights is not None:
            path = self.weights.expanduser()
            if not path.is_file():
                raise ValueError(
                    f"model.weights {str(self.weights)!r} is not a file; point it at a local "
                    "checkpoint (.safetensors, .pt, .pth, .bin, .ckpt)"
                )
            self.weights = path.resolve()
        if self.source == "python":
            self.name = _absolute_factory(self.name)
        return self

    @property
    def external(self) -> bool:
        return self.source != "builtin"


def _absolute_factory(ref: str) -> str:
    """`file.py:factory` with the file made absolute (every process and later stage finds the
    same file); `package.module:factory` as it is."""
    module_ref, sep, attr = ref.rpartition(":")
    if not sep or not module_ref or not attr:
        raise ValueError(
            f"model.name {ref!r}: with model.source: python, name the factory as "
            "`path/to/file.py:factory` or `package.module:factory`"
        )
    if module_ref.endswith(".py") or "/" in module_ref or "\\" in module_ref:
        path = Path(module_ref).expanduser()
        if not path.is_file():
            raise ValueError(f"model.name {ref!r}: the file {str(path)!r} does not exist")
        return f"{path.resolve()}:{attr}"
    return ref
