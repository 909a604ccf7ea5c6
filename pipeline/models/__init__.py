"""Classifiers, the self-teacher, the training wrapper and what a model costs."""

from pipeline.models import backbones as _backbones  # noqa: F401  (registers the factories)
from pipeline.models.backbones import init_weights
from pipeline.models.cost import count_macs, count_parameters, torch_latency
from pipeline.models.registry import create_model, list_models, register_model
from pipeline.models.wrapper import ModelOutput, SelfDistillModel, classifier_only

__all__ = [
    "ModelOutput",
    "SelfDistillModel",
    "classifier_only",
    "count_macs",
    "count_parameters",
    "create_model",
    "init_weights",
    "list_models",
    "register_model",
    "torch_latency",
]
