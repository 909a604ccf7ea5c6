"""Distillation: attention maps, masks, losses and the method registry."""

from pipeline.distill.methods import (
    METHODS,
    LossOutput,
    Method,
    MethodOptions,
    OptionsInput,
    create_method,
    method_class,
    register_method,
)
from pipeline.distill.methods.self_kd import SelfKDOptions

__all__ = [
    "METHODS",
    "LossOutput",
    "Method",
    "MethodOptions",
    "OptionsInput",
    "SelfKDOptions",
    "create_method",
    "method_class",
    "register_method",
]
