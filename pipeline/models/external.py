"""Networks the pipeline does not define: torchvision, timm, or a factory in the user's own code.

`build_network(source, name, kwargs, num_classes)` builds one (nothing is ever downloaded);
`ExternalClassifier` puts it behind the same protocol as the built-in classifiers, so the
self-teacher, pruning, export and serving treat it like any other:

- `forward(x)` is the user's network, unchanged: what is exported and served.
- `forward_with_features(x)` returns the logits and the stage features a self-teacher reads,
  captured by forward hooks on the stage modules during the same forward pass.
- the stage modules are found by `discover_stages` (timm's `feature_info`; otherwise the last
  module at each spatial resolution of a traced forward) or named by the user (`model.stages`).

Its state dict is the user's network's under `net.`; `user_state_dict` strips that prefix.
"""

from __future__ import annotations

import hashlib
import importlib
import importlib.util
import inspect
import sys
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Any

import torch
from torch import nn

from pipeline.errors import ConfigError

SOURCES = ("builtin", "torchvision", "timm", "python")
MAX_STAGES = 4
"""Stages found automatically: the deepest four resolutions (a feature pyramid's usual levels);
a network with fewer gives fewer. `model.stages` names any others."""

_HUB_KEYS = ("weights", "pretrained", "pretrained_cfg", "pretrained_cfg_overlay", "checkpoint_path")
_POOLS = (nn.AdaptiveAvgPool2d, nn.AdaptiveMaxPool2d)


# --- building ---------------------------------------------------------------------------------


def _refuse_hub(source: str, kwargs: dict[str, Any]) -> None:
    for key in _HUB_KEYS:
        value = kwargs.get(key)
        if value in (None, False):
            continue
        raise ConfigError(
            f"model.kwargs.{key}={value!r} would load weights from a hub; the pipeline never "
            "downloads. Save the weights to a local file (e.g. "
            "`torch.save(model.state_dict(), 'weights.pt')` where you have them) and set "
            "`model.weights: weights.pt`"
        )


def _accepts(factory: Callable[..., Any], name: str) -> bool:
    try:
        params = inspect.signature(factory).parameters.values()
    except (TypeError, ValueError):
        return False
    return any(p.name == name or p.kind is inspect.Parameter.VAR_KEYWORD for p in params)


def torchvision_factory(name: str) -> Callable[..., nn.Module]:
    from torchvision import models

    known = models.list_models(module=models)
    if name not in known:
        near = [m for m in known if name.split("_")[0] in m][:8] or known[:8]
        raise ConfigError(
            f"model.name {name!r} is not a torchvision classification model; e.g. "
            f"{', '.join(near)} (torchvision.models.list_models(module=torchvision.models))"
        )
    return models.get_model_builder(name)


def timm_factory(name: str) -> Callable[..., nn.Module]:
    try:
        import timm
    except ImportError:
        raise ConfigError(
            "model.source: timm needs the timm package, which is not installed: "
            "`pip install 'skd-pipeline[timm]'` (or `pip install timm`)"
        ) from None
    if not timm.is_model(name):
        near = timm.list_models(f"*{name.split('_')[0]}*")[:8]
        raise ConfigError(
            f"model.name {name!r} is not a timm model"
            + (f"; similar: {', '.join(near)}" if near else "")
            + " (timm.list_models('*pattern*') lists them)"
        )

    def build(**kwargs: Any) -> nn.Module:
        return timm.create_model(name, pretrained=False, **kwargs)

    return build


def python_factory(ref: str, base: Path | None = None) -> Callable[..., nn.Module]:
    """`path/to/file.py:factory` (relative to `base`, else the working directory) or
    `package.module:factory`."""
    module_ref, sep, attr = ref.rpartition(":")
    if not sep or not module_ref or not attr:
        raise ConfigError(
            f"model.name {ref!r}: with model.source: python, name the factory as "
            "`path/to/file.py:factory` or `package.module:factory`"
        )
    if module_ref.endswith(".py") or "/" in module_ref or "\\" in module_ref:
        path = Path(module_ref).expanduser()
        if not path.is_absolute() and base is not None and (base / path).is_file():
            path = base / path
        path = path.resolve()
        if not path.is_file():
            raise ConfigError(f"model.name {ref!r}: the file {path} does not exist")
        digest = hashlib.sha256(str(path).encode()).hexdigest()[:12]
        mod_name = f"_pipeline_user_model_{digest}"
        module = sys.modules.get(mod_name)
        if module is None:
            spec = importlib.util.spec_from_file_location(mod_name, path)
            if spec is None or spec.loader is None:
                raise ConfigError(f"model.name {ref!r}: cannot import {path} as Python")
            module = importlib.util.module_from_spec(spec)
            sys.modules[mod_name] = module
            try:
                spec.loader.exec_module(module)
            except Exception as exc:
                del sys.modules[mod_name]
                raise ConfigError(
                    f"model.name {ref!r}: importing {path} failed: {type(exc).__name__}: {exc}"
                ) from None
    else:
        try:
            module = importlib.import_module(module_ref)
        except Exception as exc:
            raise ConfigError(
                f"model.name {ref!r}: cannot import module {module_ref!r} "
                f"({type(exc).__name__}: {exc}); is it installed, or on PYTHONPATH?"
            ) from None
    factory = getattr(module, attr, None)
    if factory is None or not callable(factory):
        found = sorted(n for n, v in vars(module).items() if callable(v) and not n.startswith("_"))
        raise ConfigError(
            f"model.name {ref!r}: {module_ref} has no callable {attr!r}; "
            f"it defines: {', '.join(found[:10]) or 'nothing callable'}"
        )
    return factory


def resolve_factory(source: str, name: str, base: Path | None = None) -> Callable[..., nn.Module]:
    if source == "torchvision":
        return torchvision_factory(name)
    if source == "timm":
        return timm_factory(name)
    if source == "python":
        return python_factory(name, base)
    raise ConfigError(f"model.source {source!r}: allowed: {', '.join(SOURCES[1:])}")


def build_network(
    source: str, name: str, kwargs: dict[str, Any] | None, num_classes: int
) -> nn.Module:
    """The user's network from its factory, with `num_classes` when the factory takes it and
    `kwargs` does not set it. Random weights: nothing is downloaded."""
    kwargs = dict(kwargs or {})
    _refuse_hub(source, kwargs)
    factory = resolve_factory(source, name)
    if "num_classes" not in kwargs and (source == "timm" or _accepts(factory, "num_classes")):
        kwargs["num_classes"] = num_classes
    try:
        net = factory(**kwargs)
    except ConfigError:
        raise
    except Exception as exc:
        raise ConfigError(
            f"model {source}:{name} could not be built with kwargs {kwargs}: "
            f"{type(exc).__name__}: {exc}; fix model.kwargs or the factory"
        ) from None
    if not isinstance(net, nn.Module):
        raise ConfigError(
            f"model {source}:{name} returned a {type(net).__name__}, not a torch.nn.Module; "
            "the factory must return the network"
        )
    return net


# --- tracing a forward ------------------------------------------------------------------------


def _trace(net: nn.Module, x: torch.Tensor) -> tuple[Any, list[tuple[str, nn.Module, Any]]]:
    """The output of `net(x)` and, in completion order, every module's
    (name, module, (positional inputs, output))."""
    done: list[tuple[str, nn.Module, Any]] = []
    hooks = [
        m.register_forward_hook(lambda mod, args, out, n=n: done.append((n, mod, (args, out))))
        for n, m in net.named_modules()
        if n
    ]
    was_training = net.training
    net.eval()
    try:
        with torch.no_grad():
            out = net(x)
    finally:
        for h in hooks:
            h.remove()
        net.train(was_training)
    return out, done


def check_logits(net: nn.Module, input_size: int, num_classes: int | None = None) -> int:
    """The network's number of classes, from a forward pass: its output must be (N, classes)
    logits. A ConfigError otherwise."""
    try:
        out, _ = _trace(net, torch.zeros(2, 3, input_size, input_size))
    except Exception as exc:
        raise ConfigError(
            f"the model fails on a batch of 2 RGB images of {input_size}x{input_size} "
            f"({type(exc).__name__}: {exc}); check data.input_size and the model"
        ) from None
    if not isinstance(out, torch.Tensor) or out.ndim != 2 or out.shape[0] != 2:
        what = (
            f"a tensor of shape {tuple(out.shape)}"
            if isinstance(out, torch.Tensor)
            else f"a {type(out).__name__}"
        )
        raise ConfigError(
            f"the model returns {what} for 2 images; the pipeline needs (N, classes) logits. "
            "Wrap the network so that forward returns the logits only"
        )
    if num_classes is not None and out.shape[1] != num_classes:
        raise ConfigError(
            f"the model returns {out.shape[1]} logits per image but the data has {num_classes} "
            "classes, and no final linear layer could be resized; pass the class count through "
            "model.kwargs"
        )
    return int(out.shape[1])


def find_head(net: nn.Module, input_size: int) -> str | None:
    """The final linear layer: the last `nn.Linear` to run whose output is the logits."""
    out, done = _trace(net, torch.zeros(2, 3, input_size, input_size))
    for name, mod, (_, o) in reversed(done):
        if isinstance(mod, nn.Linear) and isinstance(o, torch.Tensor) and o.shape == out.shape:
            return name
    return None


def replace_head(net: nn.Module, head: str, num_classes: int) -> nn.Linear:
    """A fresh `num_classes`-way linear layer in place of `head`; returns the new layer."""
    old = net.get_submodule(head)
    new = nn.Linear(old.in_features, num_classes, bias=old.bias is not None)
    parent_name, _, attr = head.rpartition(".")
    setattr(net.get_submodule(parent_name) if parent_name else net, attr, new)
    return new


def discover_stages(
    net: nn.Module, input_size: int, max_stages: int = MAX_STAGES, probe_size: int = 224
) -> list[str]:
    """The modules whose outputs a self-teacher reads: timm's `feature_info` where the network
    has it; otherwise, from a traced forward at `max(input_size, probe_size)`, the last module
    to finish at each spatial resolution (square NCHW maps larger than 1x1, modules that run
    once, before the global pooling), the deepest `max_stages` of them."""
    info = getattr(net, "feature_info", None)
    if isinstance(info, list) and info and all(isinstance(i, dict) for i in info):
        names = [i.get("module") for i in info]
        if all(isinstance(n, str) and n for n in names):
            return _deepest(names, max_stages)
    size = max(input_size, probe_size)
    x = torch.zeros(1, 3, size, size)
    try:
        _, done = _trace(net, x)
    except Exception as exc:
        raise ConfigError(
            f"the model fails on a {size}x{size} image while its stages are traced "
            f"({type(exc).__name__}: {exc}); name them with model.stages"
        ) from None
    calls: dict[str, int] = {}
    res: dict[str, tuple[Any, Any]] = {}  # name -> (input resolution, output resolution)
    for name, _, (args, out) in done:
        calls[name] = calls.get(name, 0) + 1
        res[name] = (_resolution(args[0] if args else None), _resolution(out))
    pools = [
        i
        for i, (_, mod, (_, out)) in enumerate(done)
        if isinstance(mod, _POOLS) and _resolution(out) == (1, 1)
    ]
    end = pools[-1] if pools else len(done)  # the global pooling (the last one): maps end there
    last_at: dict[tuple[int, int], tuple[int, str]] = {}
    order: list[tuple[int, int]] = []
    for i, (name, _, (_, out)) in enumerate(done[:end]):
        if calls[name] != 1 or not isinstance(out, torch.Tensor) or out.ndim != 4:
            continue
        h, w = out.shape[-2:]
        if h != w or h <= 1 or out.shape[1] <= 3 or h > size:
            continue  # a channels-last view, a 1x1 map, or the input itself
        if order and h > order[-1][0]:
            continue  # an upsampling branch: stages only get coarser
        if _inside_downsampling(name, (h, w), res):
            continue  # e.g. an expansion conv ahead of a block's strided conv
        if (h, w) not in last_at:
            order.append((h, w))
        last_at[(h, w)] = (i, name)
    names = [last_at[r][1] for r in order]
    if len(names) < 2:
        raise ConfigError(
            "could not find the network's stages automatically (feature maps at fewer than two "
            "resolutions); name the modules whose outputs are the stage features with "
            "model.stages: [name, ...]"
        )
    return _deepest(names, max_stages)


def _resolution(t: Any) -> tuple[int, int] | None:
    return tuple(t.shape[-2:]) if isinstance(t, torch.Tensor) and t.ndim == 4 else None


def _inside_downsampling(name: str, r: tuple[int, int], res: dict[str, tuple[Any, Any]]) -> bool:
    """Whether a module enclosing `name` takes maps at resolution `r` and returns another: then
    `name` is a step inside that block, not the end of a stage."""
    parts = name.split(".")
    for k in range(1, len(parts)):
        outer = res.get(".".join(parts[:k]))
        if outer and outer[0] == r and outer[1] != r:
            return True
    return False


def _deepest(names: Sequence[str], n: int) -> list[str]:
    return list(names)[-n:]


def check_stages(net: nn.Module, stages: Sequence[str]) -> None:
    modules = dict(net.named_modules())
    for s in stages:
        if s not in modules or not s:
            near = [n for n in modules if n and "." not in n][:10]
            raise ConfigError(
                f"model.stages names {s!r}, which is not a module of the network; top-level "
                f"modules: {', '.join(near)}"
            )
    if len(stages) < 2:
        raise ConfigError("model.stages: a self-teacher needs at least two stages")


# --- the adapter ------------------------------------------------------------------------------


class _Capture:
    """A forward hook that stores its module's output in `store[index]` while `store` is armed.

    A plain object, not a closure, so a deep copy of the classifier copies it along with the
    store it writes to."""

    def __init__(self, store: list[Any], index: int) -> None:
        self.store = store
        self.index = index

    def __call__(self, module: nn.Module, args: Any, out: Any) -> None:
        if self.store and self.store[0] is _ARMED:
            self.store[self.index + 1] = out


_ARMED = object()


class ExternalClassifier(nn.Module):
    """A user's network (`net`) with the stage features of `stages` captured in its forward.

    `forward` is `net.forward`; `forward_with_features` arms the hooks for one call."""

    def __init__(self, net: nn.Module, stages: Sequence[str], input_size: int) -> None:
        super().__init__()
        check_stages(net, stages)
        self.net = net
        self.stages = list(stages)
        self._store: list[Any] = []
        for i, name in enumerate(self.stages):
            net.get_submodule(name).register_forward_hook(_Capture(self._store, i))
        self.stage_channels = self._probe_channels(input_size)
        self.head_name = find_head(net, input_size)

    def classifier_head(self) -> nn.Module | None:
        """The final linear layer (None when the logits come from another kind of layer)."""
        return self.net.get_submodule(self.head_name) if self.head_name else None

    def _probe_channels(self, input_size: int) -> list[int]:
        was = self.training
        self.eval()
        try:
            with torch.no_grad():
                _, feats = self.forward_with_features(torch.zeros(1, 3, input_size, input_size))
        finally:
            self.train(was)
        return [int(f.shape[1]) for f in feats]

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.net(x)

    def forward_with_features(self, x: torch.Tensor) -> tuple[torch.Tensor, list[torch.Tensor]]:
        store = self._store
        store[:] = [_ARMED] + [None] * len(self.stages)
        try:
            logits = self.net(x)
            feats = store[1:]
        finally:
            store.clear()
        missing = [s for s, f in zip(self.stages, feats, strict=True) if f is None]
        if missing:
            raise RuntimeError(f"stage modules {missing} did not run in the forward pass")
        bad = [s for s, f in zip(self.stages, feats, strict=True) if getattr(f, "ndim", 0) != 4]
        if bad:
            raise RuntimeError(f"stage modules {bad} do not output (N, C, H, W) feature maps")
        return logits, list(feats)

    def forward_features(self, x: torch.Tensor) -> list[torch.Tensor]:
        return self.forward_with_features(x)[1]

    def drop_feature_taps(self) -> None:
        """Remove the capture hooks: what ships is the user's network alone."""
        for name in self.stages:
            hooks = self.net.get_submodule(name)._forward_hooks
            for key in [k for k, h in hooks.items() if isinstance(h, _Capture)]:
                del hooks[key]


def user_state_dict(model: nn.Module) -> dict[str, torch.Tensor]:
    """The state dict the user's own module would load: `net.` stripped for an adapter."""
    state = model.state_dict()
    if isinstance(model, ExternalClassifier):
        return {k.removeprefix("net."): v for k, v in state.items()}
    return state


def build_classifier(
    source: str,
    name: str,
    kwargs: dict[str, Any] | None,
    num_classes: int,
    input_size: int,
    stages: Sequence[str] | None = None,
) -> tuple[ExternalClassifier, str | None]:
    """The user's network behind the classifier protocol, with `num_classes` outputs, and the
    name of its final linear layer where it was resized to them (a factory that cannot size its
    head, or a checkpoint's head for another class count)."""
    net = build_network(source, name, kwargs, num_classes)
    classes = check_logits(net, input_size)
    replaced = None
    if classes != num_classes:
        head = find_head(net, input_size)
        if head is None:
            check_logits(net, input_size, num_classes)  # raises: no linear head to resize
        replace_head(net, head, num_classes)
        replaced = head
    if stages is None:
        stages = discover_stages(net, input_size)
    return ExternalClassifier(net, stages, input_size), replaced


def preflight(model_cfg, preset) -> None:
    """Before any stage starts: the configured network builds, returns (N, classes) logits,
    has the stages it names, and takes the checkpoint `model.weights` (a ConfigError or an
    ArtefactError otherwise). Built with 2 classes where the data's count is not known yet:
    a head sized for other classes is replaced on load, as it would be in training."""
    from pipeline.models.checkpoint import fit_checkpoint, read_checkpoint

    m = model_cfg
    if not m.external and m.weights is None:
        return
    classes = m.num_classes or 2
    if m.external:
        clf, _ = build_classifier(m.source, m.name, m.kwargs, classes, preset.input_size, m.stages)
        net, head = clf.net, clf.head_name
    else:
        from pipeline.models.registry import create_model

        stem = preset.stem if m.stem == "auto" else m.stem
        net = create_model(m.name, num_classes=classes, stem=stem, width=m.width)
        head = "fc"
    if m.weights is not None:
        fit_checkpoint(net, read_checkpoint(m.weights), head=head)
