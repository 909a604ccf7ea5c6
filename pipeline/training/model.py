"""The one builder of the training model: a spec (what the train stage records) -> wrapper.

`model_spec` says what to build; `build_training_model` builds the classifier and the method's
auxiliary branch from it. Training, the prune stage and the benchmarks all build through here,
so a model trained and a model reloaded are the same network.
"""

from __future__ import annotations

from pathlib import Path

from torch import nn

from pipeline.distill import Method, OptionsInput, create_method
from pipeline.models import SelfDistillModel, init_weights
from pipeline.models.external import build_classifier
from pipeline.models.io import apply_widths, build_backbone, load_weights, read_spec
from pipeline.models.spec import ModelSpec


def resolve_stem(model_cfg, preset) -> str:
    return preset.stem if model_cfg.stem == "auto" else model_cfg.stem


def model_spec(cfg, bundle) -> ModelSpec:
    """What the train stage records beside the weights; enough to rebuild the model. A network
    from torchvision, timm or the user's code is built once here: its stages found (or the
    configured ones checked) and its head sized to the data's classes."""
    method = cfg.train.method
    m = cfg.model
    external: dict = {}
    if m.external:
        backbone, replaced = build_classifier(
            m.source, m.name, m.kwargs, bundle.num_classes, bundle.preset.input_size, m.stages
        )
        external = {
            "kwargs": dict(m.kwargs),
            "stages": tuple(backbone.stages),
            "head_replaced": replaced,
        }
    return ModelSpec(
        source=m.source,
        arch=m.name,
        stem=resolve_stem(m, bundle.preset),
        width=m.width,
        num_classes=bundle.num_classes,
        method=method,
        feature_taps=create_method(
            method, cfg.train.distill, num_classes=bundle.num_classes, epochs=cfg.train.epochs
        ).needs_features,
        classes=bundle.classes,
        preset=bundle.preset.to_dict(),
        **external,
    )


def build_training_model(
    spec: ModelSpec, options: OptionsInput = None, epochs: int = 1
) -> tuple[SelfDistillModel, Method]:
    """The training wrapper for `spec` (classifier + the method's auxiliary branch) and its
    method, with `options` (the method's own; None = its defaults, as when only the network is
    needed)."""
    method = create_method(spec.method, options, num_classes=spec.num_classes, epochs=epochs)
    feature_taps = method.needs_features if spec.feature_taps is None else spec.feature_taps
    backbone = build_backbone(spec, feature_taps=feature_taps, shaped=False)
    # the self-teacher is built at the unpruned widths; a pruned spec then resizes both parts
    wrapper = SelfDistillModel(backbone, method.build_aux(backbone))
    return apply_widths(wrapper, spec, prefix="backbone."), method


def fresh_training_model(
    spec: ModelSpec, options: OptionsInput = None, epochs: int = 1
) -> tuple[SelfDistillModel, Method]:
    """`build_training_model` with every layer of the classifier initialised at the widths the
    spec records, as the architecture initialises its own (a network from torchvision, timm or
    the user's code: its factory's initialisation, resized layers sliced from it); the
    auxiliary branch as built. From torch's global
    generator: the same seed gives the same weights."""
    wrapper, method = build_training_model(spec, options, epochs)
    if spec.source == "builtin":  # another network keeps its factory's own initialisation
        init_weights(wrapper.backbone)
    return wrapper, method


def load_deployable(folder: Path) -> nn.Module:
    """The classifier of the training model saved in `folder`, less its auxiliary branch (in
    eval mode): what ships, and the slim stage's unpruned teacher."""
    wrapper, _ = build_training_model(read_spec(folder, "model"))  # the network only
    return load_weights(wrapper, folder, "model").deployable()
