"""Distillation: attention maps, masks, losses and the method registry."""

from pipeline.distill.methods import METHODS, LossOutput, Method, create_method, register_method

__all__ = ["METHODS", "LossOutput", "Method", "create_method", "register_method"]
