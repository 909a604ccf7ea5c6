"""A network's layer widths as data, so a channel-pruned model travels as safetensors plus a spec.

`layer_shapes(model)` records the shape-defining arguments of every convolution, batch norm,
layer norm, group norm and linear layer; `parameter_shapes(model)` the shapes of parameters
that live outside such layers (a ConvNeXt block's layer scale). `apply_shapes` resizes those
layers and parameters of a freshly built model of the same architecture in place: the module
objects stay (a library's subclass of BatchNorm2d with its activation stays that subclass),
their size attributes and tensors change. Each resized tensor starts as the leading slice of
the freshly built one, so a network trained from these shapes (`slim.init: scratch`) starts
from its factory's own initialisation. The weights then load strictly. Nothing here runs code
from the files: the shapes are plain integers.
"""

from __future__ import annotations

from typing import Any

import torch
from torch import nn

_LAYERS = (nn.Conv2d, nn.modules.batchnorm._NormBase, nn.LayerNorm, nn.GroupNorm, nn.Linear)


def _shape_of(m: nn.Module) -> list[int] | None:
    if isinstance(m, nn.Conv2d):
        return [m.in_channels, m.out_channels, m.groups]
    if isinstance(m, nn.modules.batchnorm._NormBase):
        return [m.num_features]
    if isinstance(m, nn.LayerNorm):
        return list(m.normalized_shape)
    if isinstance(m, nn.GroupNorm):
        return [m.num_channels, m.num_groups]
    if isinstance(m, nn.Linear):
        return [m.in_features, m.out_features]
    return None


def layer_shapes(model: nn.Module) -> dict[str, list[int]]:
    """{module name: [in, out, groups]} for convolutions, [features] for batch norms, the
    normalised shape for layer norms, [channels, groups] for group norms, [in, out] for linear
    layers."""
    out: dict[str, list[int]] = {}
    for name, m in model.named_modules():
        shape = _shape_of(m)
        if shape is not None:
            out[name] = shape
    return out


def parameter_shapes(model: nn.Module, prefix: str = "") -> dict[str, list[int]]:
    """{parameter name: shape} for the parameters of modules that `layer_shapes` does not
    describe (learnable scales, positional tables): pruning can resize those too. `prefix` is
    put before each name (the classifier's parameters as the training wrapper names them)."""
    out: dict[str, list[int]] = {}
    for mname, m in model.named_modules():
        if isinstance(m, _LAYERS):
            continue
        for pname, p in m.named_parameters(recurse=False):
            out[prefix + (f"{mname}.{pname}" if mname else pname)] = list(p.shape)
    return out


def _slice(t: torch.Tensor, shape: tuple[int, ...]) -> torch.Tensor:
    """The leading `shape` block of `t` (zeros beyond it where `shape` is larger)."""
    out = torch.zeros(shape, dtype=t.dtype, device=t.device)
    common = tuple(slice(0, min(a, b)) for a, b in zip(t.shape, shape, strict=True))
    out[common] = t[common]
    return out


def _set(m: nn.Module, name: str, shape: tuple[int, ...]) -> None:
    t = getattr(m, name, None)
    if t is None or tuple(t.shape) == tuple(shape):
        return
    new = _slice(t.detach(), tuple(shape))
    if isinstance(t, nn.Parameter):
        setattr(m, name, nn.Parameter(new, requires_grad=t.requires_grad))
    else:
        m._buffers[name] = new


def _resize(m: nn.Module, shape: list[int]) -> None:
    if isinstance(m, nn.Conv2d):
        cin, cout, groups = shape
        m.in_channels, m.out_channels, m.groups = cin, cout, groups
        _set(m, "weight", (cout, cin // groups, *m.kernel_size))
        _set(m, "bias", (cout,))
    elif isinstance(m, nn.modules.batchnorm._NormBase):
        (m.num_features,) = shape
        for name in ("weight", "bias", "running_mean", "running_var"):
            _set(m, name, (shape[0],))
    elif isinstance(m, nn.LayerNorm):
        m.normalized_shape = tuple(shape)
        _set(m, "weight", tuple(shape))
        _set(m, "bias", tuple(shape))
    elif isinstance(m, nn.GroupNorm):
        m.num_channels, m.num_groups = shape
        _set(m, "weight", (shape[0],))
        _set(m, "bias", (shape[0],))
    elif isinstance(m, nn.Linear):
        m.in_features, m.out_features = shape
        _set(m, "weight", (shape[1], shape[0]))
        _set(m, "bias", (shape[1],))
    else:
        raise TypeError(f"cannot resize a {type(m).__name__}")


def _module(model: nn.Module, name: str) -> nn.Module:
    try:
        return model.get_submodule(name)
    except AttributeError:
        raise ValueError(
            f"the model has no layer {name!r} that its width record names; the record "
            "belongs to another architecture"
        ) from None


def apply_shapes(
    model: nn.Module,
    shapes: dict[str, Any],
    prefix: str = "",
    params: dict[str, Any] | None = None,
) -> nn.Module:
    """Resize the recorded layers (and parameters) of `model` in place to their recorded sizes.

    `prefix` selects and strips a part of the names ("backbone." applies a training wrapper's
    record to the bare classifier). A recorded layer the model lacks is an error: the record
    belongs to another architecture.
    """
    for name, shape in shapes.items():
        if not name.startswith(prefix):
            continue
        m = _module(model, name[len(prefix) :])
        if _shape_of(m) != list(shape):
            _resize(m, list(shape))
    for name, shape in (params or {}).items():
        if not name.startswith(prefix):
            continue
        mname, _, pname = name[len(prefix) :].rpartition(".")
        _set(_module(model, mname) if mname else model, pname, tuple(shape))
    return model
