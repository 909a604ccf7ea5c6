"""The method protocol and its registry: what a training method declares and what the
training loop asks of it.

A method declares its options as a pydantic model, `Options` (a `MethodOptions`: unknown keys
refused, every field with its default, bounds and description); `train.distill` is validated
against the options of `train.method`, and the method reads them as `self.options`.

What a method may ask of the training loop, by class attribute:

- `needs_features`: the classifier's stage features (for a self-teacher).
- `needs_index`: each sample's position in the training set, as `extras["index"]`.
- `needs_pair`: another training image of the same class per sample, drawn uniformly and
  augmented on its own, as `extras["pair"]`.

Under `train.compile` the loop calls `compile(backend=...)` once before training; a method may
compile its loss's tensor arithmetic there (Python-side decisions stay outside the graph).

Per step the loop calls `extra_inputs(forward, extras)` (inside autocast; what it returns goes
to `loss` as keywords), `loss(out, targets, epoch, **inputs)`, and after an optimizer update
with a finite loss `record(out, extras, gather)`. A method with per-sample state keeps it in
`state_dict()` (tensors only), which the checkpoints hold, so a resumed run continues from it.
"""

from __future__ import annotations

from collections.abc import Callable, Mapping
from dataclasses import dataclass, field
from typing import Any, ClassVar

import torch
from pydantic import BaseModel, ConfigDict
from torch import nn

from pipeline.models.wrapper import ModelOutput

METHODS: dict[str, type[Method]] = {}


class MethodOptions(BaseModel):
    """Base of every method's options: unknown keys refused, defaults validated."""

    model_config = ConfigDict(extra="forbid", validate_default=True)

    def for_recovery(self) -> MethodOptions:
        """These options for fine-tuning a trained network (the slim stage's recovery)."""
        return self


@dataclass
class LossOutput:
    total: torch.Tensor
    parts: dict[str, torch.Tensor] = field(default_factory=dict)


Forward = Callable[[torch.Tensor], ModelOutput]
Gather = Callable[[Any], Any]
OptionsInput = MethodOptions | Mapping[str, Any] | None


class Method:
    """Base: a method owns its options, its auxiliary branch and its loss; `epoch` counts from 0."""

    name = "base"
    Options: ClassVar[type[MethodOptions]] = MethodOptions
    needs_features = False  # whether the loss reads the classifier's stage features
    needs_index = False  # whether the loader adds extras["index"] (position in the training set)
    needs_pair = False  # whether the loader adds extras["pair"] (a same-class partner image)

    def __init__(self, options: OptionsInput = None, *, num_classes: int, epochs: int) -> None:
        self.options = self.parse_options(options)
        self.num_classes = num_classes
        self.epochs = epochs

    @classmethod
    def parse_options(cls, options: OptionsInput) -> MethodOptions:
        """This method's options from its own options model, a mapping, or None (defaults)."""
        if options is None:
            return cls.Options()
        if type(options) is cls.Options:
            return options
        if isinstance(options, BaseModel):
            raise TypeError(
                f"method {cls.name!r} takes {cls.Options.__name__} options, "
                f"got {type(options).__name__}"
            )
        return cls.Options.model_validate(options)

    def build_aux(self, backbone: nn.Module) -> nn.Module | None:
        return None

    def attach(self, num_samples: int, device: torch.device) -> None:
        """Called once before training with the training set's size and the training device."""

    def compile(self, **kwargs) -> None:
        """Compile the loss's tensor arithmetic with `torch.compile(**kwargs)` (a compiled
        training step); a method whose loss is one or two kernels keeps it eager."""

    def extra_inputs(self, forward: Forward, extras: dict[str, torch.Tensor]) -> dict[str, Any]:
        """What `loss` reads besides the batch's own outputs (keyword arguments)."""
        return {}

    def loss(self, out: ModelOutput, targets: torch.Tensor, epoch: int, **inputs) -> LossOutput:
        raise NotImplementedError

    def record(self, out: ModelOutput, extras: dict[str, torch.Tensor], gather: Gather) -> None:
        """After an optimizer update: keep per-sample state. `gather` is a collective over every
        training process (identity on one), so every process keeps the same state."""

    def state_dict(self) -> dict[str, torch.Tensor]:
        return {}

    def load_state_dict(self, state: dict[str, torch.Tensor]) -> None:
        if state:
            raise ValueError(f"method {self.name!r} keeps no state, got {sorted(state)}")


def register_method(name: str) -> Callable[[type[Method]], type[Method]]:
    def deco(cls: type[Method]) -> type[Method]:
        if name in METHODS:
            raise ValueError(f"method {name!r} is registered twice")
        cls.name = name
        METHODS[name] = cls
        return cls

    return deco


def method_class(name: str) -> type[Method]:
    if name not in METHODS:
        raise KeyError(f"unknown method {name!r}; known: {', '.join(sorted(METHODS))}")
    return METHODS[name]


def create_method(
    name: str, options: OptionsInput = None, *, num_classes: int, epochs: int
) -> Method:
    """Method `name` with `options`: its options model, a mapping of them, or None (defaults)."""
    return method_class(name)(options, num_classes=num_classes, epochs=epochs)
