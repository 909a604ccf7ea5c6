"""Model registry: `@register_model` on a factory, `create_model(name, ...)` to build one."""

from __future__ import annotations

from collections.abc import Callable

from torch import nn

_MODELS: dict[str, Callable[..., nn.Module]] = {}


def register_model(fn: Callable[..., nn.Module]) -> Callable[..., nn.Module]:
    if fn.__name__ in _MODELS:
        raise ValueError(f"model {fn.__name__!r} registered twice")
    _MODELS[fn.__name__] = fn
    return fn


def list_models() -> list[str]:
    return sorted(_MODELS)


def create_model(
    name: str,
    *,
    num_classes: int,
    stem: str = "cifar",
    width: float = 1.0,
    feature_taps: bool = False,
) -> nn.Module:
    """`feature_taps`: build the extra layers some nets need to expose stage features for a
    self-teacher (WRN's BN-ReLU taps); a no-op where the stage outputs serve as they are."""
    if name not in _MODELS:
        raise KeyError(f"unknown model {name!r}; known: {', '.join(list_models())}")
    return _MODELS[name](num_classes=num_classes, stem=stem, width=width, feature_taps=feature_taps)
