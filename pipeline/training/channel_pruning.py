"""Structured channel pruning of the classifier through Torch-Pruning's dependency graph.

The graph is traced through the whole training wrapper, so removing a channel from a stage of
the classifier also removes the matching input channels of the self-teacher's laterals: the
self-teacher stays attached and can teach the smaller network during recovery. The classifier's
output layer and every layer of the self-teacher keep their own output widths; so do BYOT's
shallow heads, but for their last layers, whose channels the hint loss matches one to one with
the classifier's last stage: they are tied to it and lose the same channels.

Targets (`slim`): a channel ratio (one step), or a MACs or measured latency budget (pruned in
small steps of the ratio until the budget is met). Importance: weight magnitude (L1/L2),
batch-norm scale or first-order Taylor; ranked per layer or globally; widths rounded to
`round_to`.
"""

from __future__ import annotations

import contextlib
import copy
import logging
import math
import warnings
from collections.abc import Callable, Iterable
from typing import Any

import torch
import torch_pruning as tp
from torch import nn

from pipeline.errors import ConfigError, StageError
from pipeline.models import count_macs, count_parameters
from pipeline.models.wrapper import classifier_head

log = logging.getLogger("pipeline.slim")


def importance(kind: str):
    return {
        "l1": lambda: tp.importance.MagnitudeImportance(p=1),
        "l2": lambda: tp.importance.MagnitudeImportance(p=2),
        "bn_scale": tp.importance.BNScaleImportance,
        "taylor": tp.importance.TaylorImportance,
    }[kind]()


class _Pruner(tp.pruner.MetaPruner):
    """Torch-Pruning's pruner, its `round_to` never rounding a layer down to nothing.

    Torch-Pruning rounds a layer's remaining width down to a multiple of `round_to`; where
    that leaves 0 (16 channels at ratio 0.7 keep 4, rounded to 0 with `round_to` 8) the removal
    is refused and the layer silently stays whole, so a higher ratio could keep more MACs than
    a lower one. Here such a layer keeps `round_to` channels (or all it has, if fewer)."""

    def _round_to(self, n_pruned: int, current_channels: int, round_to: int) -> int:
        kept = current_channels - n_pruned
        kept = max(kept - kept % round_to, min(round_to, current_channels))
        return max(current_channels - kept, 0)


def _ignored(wrapper: nn.Module, exclude: Iterable[str]) -> list:
    """What keeps its output width: the classifier's head, the self-teacher, `slim.exclude`."""
    backbone = wrapper.backbone
    names = dict(backbone.named_modules())
    head = classifier_head(backbone)
    ignored: list = [head] if head is not None else []
    for name in exclude:
        if name not in names or not name:
            near = [n for n in names if n and isinstance(names[n], nn.Conv2d)][:8]
            raise ConfigError(
                f"slim.exclude names {name!r}, which is not a layer of the classifier; "
                f"layer names look like: {', '.join(near)}"
            )
        ignored.append(names[name])
    tied = set(getattr(wrapper.aux, "tied_to_classifier", list)())
    if tied:  # byot: the heads' last layers follow the classifier's last stage, nothing else
        # layers with weights only: the pruner expands a container to all its layers, the tied
        # ones too, and an ignored weightless layer (ReLU, pooling) after the tied ones would
        # keep the whole group, the classifier's last stage included, at its width
        ignored += [
            m
            for m in wrapper.aux.modules()
            if m not in tied and not list(m.children()) and list(m.parameters(recurse=False))
        ]
    elif wrapper.aux is not None:
        ignored.append(wrapper.aux)
        # parameters outside layers (the self-teacher's fusion weights) are not channels
        layers = (nn.Conv2d, nn.BatchNorm2d, nn.Linear)
        ignored += [
            p
            for m in wrapper.aux.modules()
            if not isinstance(m, layers)
            for p in m.parameters(recurse=False)
        ]
    return ignored


@contextlib.contextmanager
def _layer_named(model: nn.Module, what: str):
    """Name the layer that was running when a trace or a pruned forward failed, and the option
    that leaves it out."""
    current: list[str] = []
    hooks = [
        m.register_forward_pre_hook(lambda mod, args, n=n: current.append(n))
        for n, m in model.named_modules()
        if n and not list(m.children())
    ]
    try:
        yield
    except (ConfigError, StageError):
        raise
    except Exception as exc:  # noqa: BLE001 - re-raised with the layer named
        if not current:
            raise StageError(
                f"channel pruning could not {what}: {type(exc).__name__}: {exc}"
            ) from exc
        name = current[-1]
        short = name.removeprefix("backbone.")
        hint = (
            f"leave it out with `slim.exclude: [{short}]`"
            if name.startswith("backbone.")
            else "the self-teacher's layers are never pruned; exclude the classifier layer feeding "
            "it with `slim.exclude`"
        )
        raise StageError(
            f"channel pruning could not {what} at layer {name!r} "
            f"({type(exc).__name__}: {exc}); {hint}"
        ) from exc
    finally:
        for h in hooks:
            h.remove()


def _taylor_gradients(wrapper: nn.Module, batches: list[tuple[torch.Tensor, torch.Tensor]]):
    wrapper.zero_grad(set_to_none=True)
    with torch.enable_grad():
        for x, y in batches:
            out = wrapper(x)  # both heads, so every layer of a pruning group has a gradient
            loss = sum(nn.functional.cross_entropy(z.float(), y) for z in _heads(out))
            loss.backward()


def _heads(out) -> list[torch.Tensor]:
    """Every classifier output of the wrapper: the classifier's, the self-teacher's, and
    shallow heads' (byot), so every layer of a pruning group is traced and has a gradient."""
    heads = [out.logits, *getattr(out, "aux_heads", [])]
    if getattr(out, "aux_logits", None) is not None:
        heads.append(out.aux_logits)
    return heads


def _output(out) -> list[torch.Tensor]:
    """What the graph is traced from: every head of the wrapper's output, and (byot) each
    shallow head's features against the classifier's pooled last stage, which the hint loss
    compares channel by channel, so the trace ties those channels together. A list, not a sum:
    adding the heads' scalars would make the tracer tie every head's output channels to one
    another, and the hint's channels to the (unprunable) heads."""
    outputs = list(_heads(out))
    if getattr(out, "aux_head_features", None):
        pooled = out.features[-1].mean(dim=(2, 3))
        outputs += [f - pooled for f in out.aux_head_features]
    return outputs


def prune_channels(
    wrapper: nn.Module,
    example: torch.Tensor,
    slim,
    *,
    batches: list[tuple[torch.Tensor, torch.Tensor]] | None = None,
    latency_ms: Callable[[nn.Module], float] | None = None,
) -> dict[str, Any]:
    """Prune `wrapper` in place to the target in `slim`; returns what was done, step by step.

    `batches`: train batches for Taylor importance. `latency_ms(classifier)`: the measured
    batch-1 latency of a classifier, for a latency budget.
    """
    wrapper.eval()
    backbone = wrapper.backbone
    one = example[:1]
    before = {"params": count_parameters(backbone), "macs": count_macs(backbone, one)}
    if slim.importance == "taylor" and not batches:
        raise StageError("Taylor importance needs training batches for its gradients")
    budget = slim.macs if slim.macs is not None else slim.latency_ms
    target_ratio = slim.ratio if budget is None else slim.max_ratio
    steps = 1 if budget is None else max(1, math.ceil(target_ratio / slim.step - 1e-9))

    def measure() -> dict[str, float]:
        row = {"params": count_parameters(backbone), "macs": count_macs(backbone, one)}
        if slim.latency_ms is not None and latency_ms is not None:
            row["latency_ms"] = latency_ms(backbone)
        return row

    history = [{"ratio": 0.0, **measure()}]
    if budget is not None and _met(history[-1], slim):
        log.info("the unpruned classifier already meets the budget; nothing pruned")
        return {
            "before": before,
            "after": history[-1],
            "history": history,
            "ratio": 0.0,
            "kept_whole": [],
        }
    ignored = _ignored(wrapper, slim.exclude)
    with _layer_named(wrapper, "trace the network"):
        kept = kept_whole(wrapper, one, ignored)
    modules = dict(wrapper.named_modules())
    ignored += [modules[k["root"]] for k in kept]
    if kept:
        log.warning(
            "slim: %d groups of layers kept whole (%d layers; e.g. around %s): removing their "
            "channels breaks the network (%s); the list is in the stage's pruning.json",
            len(kept),
            sum(len(k["layers"]) for k in kept),
            ", ".join(k["root"].removeprefix("backbone.") for k in kept[:3]),
            kept[0]["why"],
        )
    with (
        warnings.catch_warnings(),
        _layer_named(wrapper, "trace the network"),
        _unmapped_reshapes(),
    ):
        warnings.filterwarnings("ignore", message=".*[Uu]nwrapped parameters.*")
        pruner = _Pruner(
            wrapper,
            one,
            importance=importance(slim.importance),
            global_pruning=slim.allocation == "global",
            pruning_ratio=target_ratio,
            max_pruning_ratio=slim.max_layer_ratio,
            iterative_steps=steps,
            ignored_layers=ignored,
            round_to=slim.round_to,
            output_transform=_output,
        )
    for i in range(1, steps + 1):
        if slim.importance == "taylor":
            _taylor_gradients(wrapper, batches)
        with _layer_named(wrapper, "remove channels"):
            pruner.step()
        wrapper.zero_grad(set_to_none=True)
        with torch.no_grad(), _layer_named(wrapper, "run the pruned network"):
            wrapper(one)
        history.append({"ratio": round(target_ratio * i / steps, 6), **measure()})
        log.info("pruned to ratio %.3f: %s", history[-1]["ratio"], _fmt(history[-1]))
        if budget is not None and _met(history[-1], slim):
            break
    else:
        if budget is not None:
            _unreachable(history, slim)
    return {
        "before": before,
        "after": history[-1],
        "history": history,
        "ratio": history[-1]["ratio"],
        "kept_whole": [
            {
                **k,
                "root": k["root"].removeprefix("backbone."),
                "layers": [n.removeprefix("backbone.") for n in k["layers"]],
            }
            for k in kept
        ],
    }


@contextlib.contextmanager
def _unmapped_reshapes():
    """Torch-Pruning maps channels through a reshape by inferring the channel counts on both
    sides; where it cannot (a channel shuffle's view infers 0 channels) it divides by zero and
    the whole trace fails. Here such a reshape is left unmapped instead: the probe in
    `kept_whole` then finds the groups it breaks and keeps them whole."""
    from torch_pruning.dependency import index_mapping

    original = getattr(index_mapping, "update_reshape_index_mapping", None)
    if original is None:  # another Torch-Pruning layout: nothing to guard
        yield
        return

    def guarded(graph, node) -> None:
        try:
            original(graph, node)
        except ZeroDivisionError:
            log.debug("a reshape Torch-Pruning cannot map is left unmapped: %s", node)

    index_mapping.update_reshape_index_mapping = guarded
    try:
        yield
    finally:
        index_mapping.update_reshape_index_mapping = original


def _groups(wrapper: nn.Module, one: torch.Tensor, ignored: list):
    """Torch-Pruning's dependency graph of `wrapper` and its prunable groups, by root name."""
    with warnings.catch_warnings(), _unmapped_reshapes():
        warnings.filterwarnings("ignore", message=".*[Uu]nwrapped parameters.*")
        pruner = tp.pruner.MetaPruner(
            wrapper,
            one,
            importance=importance("l2"),
            ignored_layers=ignored,
            output_transform=_output,
        )
    names = {m: n for n, m in wrapper.named_modules()}
    groups = {}
    for group in pruner.DG.get_all_groups(
        ignored_layers=pruner.ignored_layers, root_module_types=pruner.root_module_types
    ):
        root = group[0].dep.target.module
        layers = [
            names[d.target.module]
            for d, _ in group
            if pruner.DG.is_out_channel_pruning_fn(d.handler) and d.target.module in names
        ]
        # one channel from each channel group (a grouped convolution's groups stay equal)
        n = pruner.DG.get_out_channels(root)
        g = max(1, pruner._get_channel_groups(group))
        idxs = [k * (n // g) for k in range(g)] if n and n % g == 0 and n > g else [0]
        groups[names[root]] = (pruner.DG, root, group[0].dep.handler, layers, idxs)
    return groups


def _breaks(wrapper: nn.Module, one: torch.Tensor, ignored: list, roots: list[str]) -> str | None:
    """On a copy of `wrapper`: remove a channel (one per channel group) from each group rooted
    at `roots`, and run it.
    None when it still runs and returns what it returned before; else what went wrong."""
    clone = copy.deepcopy(wrapper)
    mapped = _same_objects(wrapper, clone, ignored)
    with torch.no_grad():
        before = wrapper(one)
    try:
        groups = _groups(clone, one, mapped)
        for root in roots:
            dg, module, handler, _, idxs = groups[root]
            dg.get_pruning_group(module, handler, idxs).prune()
        with torch.no_grad():
            after = clone(one)
    except Exception as exc:  # noqa: BLE001 - what breaks is what the probe looks for
        return f"{type(exc).__name__}: {str(exc).splitlines()[0][:160] if str(exc) else ''}"
    if after.logits.shape != before.logits.shape:
        return f"the logits' shape changes from {tuple(before.logits.shape)}"
    if len(after.features) != len(before.features):
        return "the stage features change in number"
    return None


def kept_whole(wrapper: nn.Module, one: torch.Tensor, ignored: list) -> list[dict[str, Any]]:
    """The groups of layers whose channels cannot be removed: removing one breaks the network
    (an operation the dependency graph does not follow: a shape fixed inside a lambda or a
    custom module, a reshape by constants). Probed on copies: every group at once, then, when
    that breaks, each group alone. [{root, layers, why}]; empty for a graph it follows."""
    wrapper.eval()
    unmappable = _unmappable(wrapper, one, ignored)
    if unmappable:  # groups whose channels the graph cannot even map: kept whole, first
        modules = dict(wrapper.named_modules())
        ignored = [*ignored, *(modules[u["root"]] for u in unmappable)]
    clone = copy.deepcopy(wrapper)  # the tracer is given a copy: the model stays untouched
    groups = _groups(clone, one, _same_objects(wrapper, clone, ignored))
    roots = list(groups)
    if not roots or _breaks(wrapper, one, ignored, roots) is None:
        return unmappable
    out = list(unmappable)
    for root in roots:
        why = _breaks(wrapper, one, ignored, [root])
        if why is not None:
            out.append({"root": root, "layers": groups[root][3], "why": why})
    return out


def _unmappable(wrapper: nn.Module, one: torch.Tensor, ignored: list) -> list[dict[str, Any]]:
    """Where Torch-Pruning's tracer builds its graph but fails to map some group's channels
    (a channel shuffle's split, view and concatenation): those groups' roots, found one root at
    a time on a copy, with the error. Empty (and cheap: one trace) where every group maps."""
    clone = copy.deepcopy(wrapper)
    mapped = _same_objects(wrapper, clone, ignored)
    try:
        _groups(clone, one, mapped)
        return []
    except Exception:  # noqa: BLE001 - find which groups, below
        pass
    skip = {m for x in mapped if isinstance(x, nn.Module) for m in x.modules()}
    params = [x for x in mapped if isinstance(x, nn.Parameter)]
    with warnings.catch_warnings(), _unmapped_reshapes():
        warnings.filterwarnings("ignore", message=".*[Uu]nwrapped parameters.*")
        dg = tp.DependencyGraph().build_dependency(
            clone, one, output_transform=_output, ignored_params=params, verbose=False
        )
    names = {m: n for n, m in clone.named_modules()}
    out = []
    for m in list(dg.module2node):
        if m in skip or not isinstance(m, (nn.Conv2d, nn.Linear)) or m not in names:
            continue
        pruner = dg.get_pruner_of_module(m)
        n = pruner.get_out_channels(m) if pruner is not None else None
        if not n:
            continue
        try:
            dg.get_pruning_group(m, pruner.prune_out_channels, list(range(n)))
        except Exception as exc:  # noqa: BLE001 - the group the graph cannot map
            why = f"the dependency graph cannot map its channels ({type(exc).__name__}: {exc})"
            out.append({"root": names[m], "layers": [names[m]], "why": why})
    return out


def _same_objects(wrapper: nn.Module, clone: nn.Module, items: list) -> list:
    """`items` (modules and parameters of `wrapper`) as the same objects of its deep copy
    `clone`, found by name."""
    modules = dict(clone.named_modules())
    params = dict(clone.named_parameters())
    module_names = {m: n for n, m in wrapper.named_modules()}
    param_names = {p: n for n, p in wrapper.named_parameters()}
    return [
        modules[module_names[x]] if isinstance(x, nn.Module) else params[param_names[x]]
        for x in items
    ]


def _met(row: dict, slim) -> bool:
    if slim.macs is not None:
        return row["macs"] <= slim.macs
    return row["latency_ms"] <= slim.latency_ms


def _fmt(row: dict) -> str:
    text = f"{row['params']:,} parameters, {row['macs'] / 1e6:.1f} M MACs"
    if "latency_ms" in row:
        text += f", {row['latency_ms']:.3f} ms"
    return text


def _unreachable(history: list[dict], slim) -> None:
    key, unit, option = (
        ("macs", "MACs", "slim.macs")
        if slim.macs is not None
        else ("latency_ms", "ms", "slim.latency_ms")
    )
    best = min(history, key=lambda r: r[key])
    raise ConfigError(
        f"{option}={getattr(slim, key)} {unit} cannot be "
        f"reached: removing up to {slim.max_ratio:.0%} of the channels (slim.max_ratio, at most "
        f"{slim.max_layer_ratio:.0%} of any layer) gets to {best[key]:.6g} {unit} at best "
        f"(ratio {best['ratio']}); set the budget to at least that, or raise slim.max_ratio"
    )
