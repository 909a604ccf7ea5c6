"""Classifiers, the self-teacher and the training wrapper."""

from pipeline.models import backbones as _backbones  # noqa: F401  (registers the factories)
from pipeline.models.registry import create_model, list_models, register_model
from pipeline.models.wrapper import ModelOutput, SelfDistillModel, count_parameters

__all__ = [
    "ModelOutput",
    "SelfDistillModel",
    "count_parameters",
    "create_model",
    "list_models",
    "register_model",
]
