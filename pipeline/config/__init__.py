"""The configuration tree: pydantic v2 models, unknown keys forbidden, checked before any heavy work.

One module per section (`data`, `model`, `train`, `slim` with `prune`, `export`, `validate`),
the whole tree in `root`, and reading and writing it in `load`: `load_config(path, overrides)`
is the only entry point; every problem becomes a `ConfigError` whose message names the field
path, the bad value and what is allowed. `train.distill` (and `slim.distill`) hold the options
of one training method, each method declaring its own (`pipeline/distill/methods/`).
"""

from __future__ import annotations

from pipeline.config.base import Strict
from pipeline.config.data import DataConfig
from pipeline.config.export import EngineConfig, ExportConfig, Int8Config
from pipeline.config.load import dump_config, load_config
from pipeline.config.method_options import method_options
from pipeline.config.model import ModelConfig
from pipeline.config.root import PipelineConfig
from pipeline.config.slim import PruneConfig, SlimConfig
from pipeline.config.train import TrainConfig
from pipeline.config.validate import GatesConfig, LatencyConfig, SweepConfig, ValidateConfig

__all__ = [
    "DataConfig",
    "EngineConfig",
    "ExportConfig",
    "GatesConfig",
    "Int8Config",
    "LatencyConfig",
    "ModelConfig",
    "PipelineConfig",
    "PruneConfig",
    "SlimConfig",
    "Strict",
    "SweepConfig",
    "TrainConfig",
    "ValidateConfig",
    "dump_config",
    "load_config",
    "method_options",
]
