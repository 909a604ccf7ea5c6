"""Data sources by name; importing this package registers every built-in reader."""

from pipeline.data.sources import basic, cifar, finegrained, folders  # noqa: F401  (registers)
from pipeline.data.sources.registry import SOURCES, register_source

__all__ = ["SOURCES", "register_source"]
