"""Training methods by name. Each builds its auxiliary branch (or none), its loss, and declares
its own options; one module per method, registered with `@register_method(name)`.

`ce` is the baseline: classifier cross-entropy alone, no self-teacher. `frskd` and `ama` share
one code path and one options model (METHOD.md section 5; `self_kd.py`); `frskd` is `ama` with
beta_mix = 0. The comparators `ls` (label smoothing), `cskd` (class-wise self-knowledge
distillation), `pskd` (progressive self-knowledge distillation) and `byot` (shallow
classifiers taught by the deepest, "Be Your Own Teacher") register beside them and share the
same training loop; docs/methods.md gives each one's source and what was implemented.

Adding a method is one module in this package: an options model (a `MethodOptions`) and a
`Method` subclass naming it as `Options`, registered with `@register_method("name")`. Every
module here is imported below, so it registers itself; `train.method: name` then selects it
and `train.distill` takes its options (see `base.py` for what a method may ask of the loop).
"""

from __future__ import annotations

import importlib
import pkgutil

from pipeline.distill.methods.base import (
    METHODS,
    LossOutput,
    Method,
    MethodOptions,
    OptionsInput,
    create_method,
    method_class,
    register_method,
)

for _module in pkgutil.iter_modules(__path__):
    if _module.name != "base":
        importlib.import_module(f"{__name__}.{_module.name}")

__all__ = [
    "METHODS",
    "LossOutput",
    "Method",
    "MethodOptions",
    "OptionsInput",
    "create_method",
    "method_class",
    "register_method",
]
