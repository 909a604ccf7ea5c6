"""The source registry: `@register_source("name")` maps a data set name to a reader."""

from __future__ import annotations

from collections.abc import Callable

SOURCES: dict[str, Callable] = {}


def register_source(name: str) -> Callable:
    def deco(fn: Callable) -> Callable:
        SOURCES[name] = fn
        return fn

    return deco
