"""A network's layer widths as data, so a channel-pruned model travels as safetensors plus a spec.

`layer_shapes(model)` records the shape-defining arguments of every convolution, batch norm and
linear layer; `apply_shapes(model, shapes)` rebuilds those layers at the recorded sizes on a
freshly built model of the same architecture. The weights then load strictly. Nothing here runs
code from the files: the shapes are plain integers.
"""

from __future__ import annotations

from typing import Any

from torch import nn


def layer_shapes(model: nn.Module) -> dict[str, list[int]]:
    """{module name: [in, out, groups]} for convolutions, [features] for batch norms, [in, out]
    for linear layers."""
    out: dict[str, list[int]] = {}
    for name, m in model.named_modules():
        if isinstance(m, nn.Conv2d):
            out[name] = [m.in_channels, m.out_channels, m.groups]
        elif isinstance(m, nn.BatchNorm2d):
            out[name] = [m.num_features]
        elif isinstance(m, nn.Linear):
            out[name] = [m.in_features, m.out_features]
    return out


def _resized(m: nn.Module, shape: list[int]) -> nn.Module:
    if isinstance(m, nn.Conv2d):
        cin, cout, groups = shape
        return nn.Conv2d(
            cin,
            cout,
            m.kernel_size,
            m.stride,
            m.padding,
            m.dilation,
            groups,
            bias=m.bias is not None,
            padding_mode=m.padding_mode,
        )
    if isinstance(m, nn.BatchNorm2d):
        return nn.BatchNorm2d(
            shape[0],
            eps=m.eps,
            momentum=m.momentum,
            affine=m.affine,
            track_running_stats=m.track_running_stats,
        )
    if isinstance(m, nn.Linear):
        return nn.Linear(shape[0], shape[1], bias=m.bias is not None)
    raise TypeError(f"cannot resize a {type(m).__name__}")


def apply_shapes(model: nn.Module, shapes: dict[str, Any], prefix: str = "") -> nn.Module:
    """Rebuild the recorded layers of `model` (in place) at their recorded sizes.

    `prefix` selects and strips a part of the names ("backbone." applies a training wrapper's
    record to the bare classifier). A recorded layer the model lacks is an error: the record
    belongs to another architecture.
    """
    for name, shape in shapes.items():
        if not name.startswith(prefix):
            continue
        name = name[len(prefix) :]
        try:
            current = model.get_submodule(name)
        except AttributeError:
            raise ValueError(
                f"the model has no layer {name!r} that its width record names; the record "
                "belongs to another architecture"
            ) from None
        if layer_shapes(current).get("", None) == list(shape):
            continue
        parent_name, _, attr = name.rpartition(".")
        parent = model.get_submodule(parent_name) if parent_name else model
        setattr(parent, attr, _resized(current, list(shape)))
    return model
