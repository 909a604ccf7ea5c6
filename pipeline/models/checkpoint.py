"""A user's own classifier checkpoint, read without running code from it and fitted to a model.

`read_checkpoint` reads the files people save: safetensors, or anything `torch.save` wrote
(`.pt`, `.pth`, `.th`, `.bin`, `.ckpt`, ...) through `torch.load(weights_only=True)`, which
refuses pickled classes instead of running them. The state dict is found bare or nested under
a common key (`state_dict`, `model`, `model_ema`, ...; two levels at most), and the prefixes
DataParallel/DDP (`module.`) and `torch.compile` (`_orig_mod.`) add are removed.

`fit_checkpoint` loads it into a built model: strictly, except that a classifier head sized for
another number of classes is left as the model built it (fine-tuning on the data's classes).
Whatever does not fit is an `ArtefactError` listing the missing, unexpected and mis-shaped keys.
"""

from __future__ import annotations

import argparse
import contextlib
import hashlib
import logging
import pickle
import re
from collections.abc import Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch
from safetensors.torch import load_file
from torch import nn

from pipeline.errors import ArtefactError, ConfigError

__all__ = ["Checkpoint", "FitReport", "fit_checkpoint", "read_checkpoint"]

log = logging.getLogger("pipeline.models")

_BLOCK = 1 << 20
SAFETENSORS_SUFFIXES = (".safetensors",)
TORCH_SUFFIXES = (".pt", ".pth", ".th", ".bin", ".ckpt")
# Keys a state dict is commonly nested under, in order of preference.
NESTED_KEYS = (
    "state_dict",
    "model_state_dict",
    "model",
    "net",
    "network",
    "module",
    "weights",
    "params",
)
# Exponential-moving-average copies: used only when no other state dict is there.
EMA_KEYS = (
    "state_dict_ema",
    "model_ema",
    "ema_state_dict",
    "model_ema_state_dict",
    "ema_model",
    "ema",
)
# Entries beside a state dict that hold tensors but are never the model's weights.
_NOT_WEIGHTS = frozenset(
    {
        "optimizer",
        "optimizer_state_dict",
        "optimizer_states",
        "optim",
        "scheduler",
        "lr_scheduler",
        "lr_schedulers",
        "scaler",
        "amp",
        "callbacks",
        "loops",
    }
)
_WRAPPER_PREFIXES = ("module.", "_orig_mod.")
# Plain data classes allowed besides tensors: timm's and torchvision's training scripts save
# their command-line arguments (`"args": argparse.Namespace`) beside the weights. Building one
# sets attributes only; no code from the file runs.
_SAFE_CLASSES: tuple[type, ...] = (argparse.Namespace,)
_LIST_CAP = 5
_RESAVE = (
    'save the weights alone: `torch.save(model.state_dict(), "weights.pt")` (or as safetensors: '
    '`safetensors.torch.save_file(model.state_dict(), "weights.safetensors")`)'
)


@dataclass(frozen=True)
class Checkpoint:
    path: Path
    sha256: str  # of the file's bytes
    state: dict[str, torch.Tensor]  # the state dict, wrapper prefixes stripped
    nested_key: (
        str | None
    )  # where it was found nested ("state_dict", "model/state_dict"); None: bare
    stripped_prefixes: tuple[str, ...]  # in the order removed, e.g. ("_orig_mod.", "module.")
    other_entries: tuple[str, ...]  # top-level keys beside the state dict (epoch, optimizer, ...)


@dataclass(frozen=True)
class FitReport:
    head_replaced: str | None  # module name of the classifier head left as built, else None
    head_classes: tuple[int, int] | None  # (checkpoint's classes, model's classes) when replaced
    loaded: int  # number of tensors loaded from the file
    prefix_removed: str | None = None  # a common key prefix (e.g. "model.") removed to fit

    def to_dict(self) -> dict:
        return {
            "head_replaced": self.head_replaced,
            "head_classes": list(self.head_classes) if self.head_classes else None,
            "loaded": self.loaded,
            "prefix_removed": self.prefix_removed,
        }


# --------------------------------------------------------------------------------------------
# reading


def read_checkpoint(path: str | Path) -> Checkpoint:
    """The state dict in `path`; ArtefactError naming the file, the problem and the fix."""
    path = Path(path)
    digest, size = _sha256(path)
    if size == 0:
        raise ArtefactError(f"checkpoint {path} is empty (0 bytes); save or copy it again")
    obj = _load_safetensors(path) if _is_safetensors(path) else _load_torch(path)
    state, nested_key, others = _find_state_dict(obj, path)
    state, stripped = _strip_wrappers(state)
    return Checkpoint(
        path=path,
        sha256=digest,
        state=state,
        nested_key=nested_key,
        stripped_prefixes=stripped,
        other_entries=others,
    )


def _sha256(path: Path) -> tuple[str, int]:
    if not path.exists():
        raise ArtefactError(f"checkpoint {path} does not exist; check the path (model.weights)")
    if path.is_dir():
        inside = sorted(
            p.name
            for p in path.iterdir()
            if p.suffix in SAFETENSORS_SUFFIXES + TORCH_SUFFIXES and p.is_file()
        )
        found = f" (weights files in it: {', '.join(inside[:_LIST_CAP])})" if inside else ""
        raise ArtefactError(
            f"checkpoint {path} is a folder, not a file{found}; point model.weights at the "
            "weights file itself"
        )
    h = hashlib.sha256()
    size = 0
    try:
        with path.open("rb") as f:
            while block := f.read(_BLOCK):
                h.update(block)
                size += len(block)
    except OSError as exc:
        raise ArtefactError(f"cannot read checkpoint {path}: {exc.strerror or exc}") from None
    return h.hexdigest(), size


def _is_safetensors(path: Path) -> bool:
    """By extension, or by content: an 8-byte little-endian header length, then `{`."""
    if path.suffix.lower() in SAFETENSORS_SUFFIXES:
        return True
    try:
        with path.open("rb") as f:
            head = f.read(9)
        size = path.stat().st_size
    except OSError:
        return False
    if len(head) < 9 or head[8:9] != b"{":
        return False
    return 0 < int.from_bytes(head[:8], "little") <= size - 8


def _load_safetensors(path: Path) -> dict[str, torch.Tensor]:
    try:
        return load_file(str(path), device="cpu")
    except Exception as exc:  # SafetensorError, OSError, a header that is not JSON, ...
        raise ArtefactError(
            f"checkpoint {path} is not a readable safetensors file ({_first_line(exc)}); it is "
            "corrupt or truncated: save or copy it again"
        ) from None


def _load_torch(path: Path) -> Any:
    try:
        allow = getattr(torch.serialization, "safe_globals", None)  # torch >= 2.5
        with allow(list(_SAFE_CLASSES)) if allow else contextlib.nullcontext():
            return torch.load(path, map_location="cpu", weights_only=True)
    except pickle.UnpicklingError as exc:
        # Never retried with weights_only=False: what the safe loader refuses is not loaded.
        message = str(exc)
        if _refused_objects(message):
            names = _unsafe_globals(path, message)
            what = f" ({', '.join(names[:_LIST_CAP])}{_more(names)})" if names else ""
            raise ArtefactError(
                f"checkpoint {path} holds pickled Python objects beyond tensors{what}, e.g. a "
                "whole model saved with `torch.save(model)`; it is not loaded, because loading "
                f"them would run code from the file. Fix: {_RESAVE}"
            ) from None
        raise ArtefactError(
            f"checkpoint {path} cannot be read by the safe loader ({_last_error_line(message)}): "
            "it is not a file `torch.save` wrote (a plain pickle?) or it is damaged. Fix: "
            f"{_RESAVE}"
        ) from None
    except Exception as exc:  # RuntimeError (zip), EOFError, KeyError, ... from a damaged file
        raise ArtefactError(
            f"checkpoint {path} cannot be read as a PyTorch or safetensors file "
            f"({type(exc).__name__}: {_first_line(exc)}); it is corrupt or truncated (an "
            "interrupted copy or download?): save or copy it again"
        ) from None


def _refused_objects(message: str) -> bool:
    markers = (
        "Unsupported global",
        "unrecognized function",
        "Can only create new object",
        "Can only build",
    )
    return any(m in message for m in markers)


def _unsafe_globals(path: Path, message: str) -> list[str]:
    """The classes and functions the file would have the unpickler call, for the message: the
    first one met (the refusal names it; for a whole model, its class), then the rest sorted."""
    found = re.search(r"GLOBAL (\S+) was not an allowed global", message)
    first = [found.group(1)] if found else []
    scan = getattr(torch.serialization, "get_unsafe_globals_in_checkpoint", None)
    if scan is None:
        return first
    try:
        allowed = {f"{c.__module__}.{c.__qualname__}" for c in _SAFE_CLASSES}
        rest = sorted(set(scan(path)) - allowed - set(first))  # the scan's order is a set's
    except Exception:  # a legacy (non-zip) file: the refusal names the first one only
        return first
    return first + rest


def _first_line(exc: BaseException) -> str:
    text = str(exc).strip()
    return text.splitlines()[0].split(". ")[0][:200] if text else type(exc).__name__


def _last_error_line(message: str) -> str:
    lines = [ln.strip() for ln in message.splitlines() if ln.strip()]
    for ln in lines:
        if ln.startswith(("Unsupported", "Trying", "Can only")):
            return ln[:200]
    return lines[0][:200] if lines else "refused"


# --------------------------------------------------------------------------------------------
# finding the state dict


def _tensor_entries(m: Mapping) -> dict[str, torch.Tensor]:
    return {k: v for k, v in m.items() if isinstance(k, str) and isinstance(v, torch.Tensor)}


def _is_ema(key: str) -> bool:
    return key in EMA_KEYS or "ema" in re.split(r"[^a-z]+", key.lower())


def _nested_path(m: Mapping, depth: int) -> list[str] | None:
    """Keys leading from `m` to a mapping that holds tensors: the preferred names first, then a
    single other entry, then an EMA copy. Several other candidates: ambiguous (ArtefactError)."""
    found: dict[str, list[str] | _Ambiguous] = {}
    for key, value in m.items():
        if not isinstance(key, str) or key in _NOT_WEIGHTS or not isinstance(value, Mapping):
            continue
        if _tensor_entries(value):
            found[key] = [key]
        elif depth > 1:
            try:
                sub = _nested_path(value, depth - 1)
            except _Ambiguous as amb:  # raised only if this entry is the one chosen
                found[key] = _Ambiguous([f"{key}/{k}" for k in amb.keys])
            else:
                if sub is not None:
                    found[key] = [key, *sub]
    if not found:
        return None
    plain = [k for k in found if not _is_ema(k)]
    chosen = next((k for k in NESTED_KEYS if k in found), None)
    if chosen is None and len(plain) > 1:
        raise _Ambiguous(plain)
    if chosen is None:
        chosen = plain[0] if plain else next((k for k in EMA_KEYS if k in found), next(iter(found)))
    result = found[chosen]
    if isinstance(result, _Ambiguous):
        raise result
    return result


class _Ambiguous(Exception):
    def __init__(self, keys: list[str]) -> None:
        super().__init__(keys)
        self.keys = keys


def _find_state_dict(
    obj: Any, path: Path
) -> tuple[dict[str, torch.Tensor], str | None, tuple[str, ...]]:
    if not isinstance(obj, Mapping):
        raise ArtefactError(
            f"checkpoint {path} is not a state dict: found {_describe(obj)}. {_RESAVE}"
        )
    tensors = _tensor_entries(obj)
    if tensors and len(tensors) == len(obj):
        return dict(tensors), None, ()
    try:
        keys = _nested_path(obj, depth=2)
    except _Ambiguous as amb:
        raise ArtefactError(
            f"checkpoint {path} holds several state dicts ({', '.join(map(repr, amb.keys))}) and "
            f"none under a usual name ({', '.join(NESTED_KEYS[:4])}, ...); save the one to load "
            f"alone. {_RESAVE}"
        ) from None
    if keys is not None:
        inner: Any = obj
        for key in keys:
            inner = inner[key]
        state = _tensor_entries(inner)
        others = tuple(str(k) for k in obj if k != keys[0])
        dropped = [str(k) for k in inner if k not in state]
        if dropped:
            log.info(
                "checkpoint %s: entries beside the tensors under %s are not weights, skipped: %s",
                path,
                "/".join(keys),
                ", ".join(dropped[:_LIST_CAP]) + _more(dropped),
            )
        if _is_ema(keys[-1]) or _is_ema(keys[0]):
            log.info("checkpoint %s: using its EMA weights (%s)", path, "/".join(keys))
        return dict(state), "/".join(keys), others
    if tensors:  # a state dict with a few non-tensor entries beside the weights
        return dict(tensors), None, tuple(str(k) for k in obj if k not in tensors)
    raise ArtefactError(
        f"checkpoint {path} is not a state dict: found {_describe(obj)} and no tensors in it. "
        f"{_RESAVE}"
    )


def _describe(obj: Any) -> str:
    name = type(obj).__name__
    if isinstance(obj, Mapping):
        keys = [repr(k) for k in list(obj)[:_LIST_CAP]]
        return f"a {name} with keys [{', '.join(keys)}{_more(list(obj))}]"
    if isinstance(obj, (list, tuple)):
        return f"a {name} of {len(obj)} items"
    if isinstance(obj, torch.Tensor):
        return f"a single tensor of shape {tuple(obj.shape)}"
    return f"a {name}"


def _strip_wrappers(
    state: dict[str, torch.Tensor],
) -> tuple[dict[str, torch.Tensor], tuple[str, ...]]:
    """Remove `module.` and `_orig_mod.`, repeatedly and in any order, while every key has one."""
    stripped: list[str] = []
    while True:
        for prefix in _WRAPPER_PREFIXES:
            if state and all(k.startswith(prefix) and len(k) > len(prefix) for k in state):
                state = {k[len(prefix) :]: v for k, v in state.items()}
                stripped.append(prefix)
                break
        else:
            return state, tuple(stripped)


def _more(items: list | tuple) -> str:
    return f" (+{len(items) - _LIST_CAP} more)" if len(items) > _LIST_CAP else ""


# --------------------------------------------------------------------------------------------
# fitting


def fit_checkpoint(model: nn.Module, ckpt: Checkpoint, *, head: str | None) -> FitReport:
    """Load `ckpt` into `model`. Keys and shapes must match, except `head` (the model's final
    linear layer): when only its class count differs, the model's head is kept as built and
    reported. Anything else that does not fit: ArtefactError listing what and the likely cause."""
    expected = model.state_dict()
    head_keys = _head_keys(model, expected, head)
    state, prefix = _best_keys(ckpt.state, expected)

    missing = [k for k in expected if k not in state and not _optional(k)]
    unexpected = [k for k in state if k not in expected]
    mismatched = [
        k for k in state if k in expected and tuple(state[k].shape) != tuple(expected[k].shape)
    ]
    skip: set[str] = set()
    head_classes = None
    if not missing and not unexpected and mismatched and head is not None:
        head_classes = _head_class_change(state, expected, head_keys, mismatched)
        if head_classes is not None:
            skip = set(head_keys)
            mismatched = []
    if missing or unexpected or mismatched:
        raise ArtefactError(
            _misfit_message(ckpt, state, expected, missing, unexpected, mismatched, prefix)
        )

    to_load = {k: v for k, v in state.items() if k not in skip}
    result = model.load_state_dict(to_load, strict=not skip)
    if skip:
        left = set(result.missing_keys) - skip
        if left or result.unexpected_keys:  # not reached: the keys were compared above
            raise ArtefactError(
                f"checkpoint {ckpt.path} did not load: missing {sorted(left)}, unexpected "
                f"{list(result.unexpected_keys)}"
            )
        log.info(
            "checkpoint %s: classifier head `%s` kept as built (%d classes in the file, %d now)",
            ckpt.path,
            head,
            *head_classes,
        )
    return FitReport(
        head_replaced=head if skip else None,
        head_classes=head_classes,
        loaded=len(to_load),
        prefix_removed=prefix,
    )


def _head_keys(
    model: nn.Module, expected: Mapping[str, torch.Tensor], head: str | None
) -> tuple[str, ...]:
    if head is None:
        return ()
    if f"{head}.weight" not in expected:
        linears = [n for n, m in model.named_modules() if isinstance(m, nn.Linear)]
        raise ConfigError(
            f"classifier head `{head}` is not a layer with weights in the model; its linear "
            f"layers: {', '.join(linears[-_LIST_CAP:]) or 'none'}"
        )
    return tuple(k for k in (f"{head}.weight", f"{head}.bias") if k in expected)


def _optional(key: str) -> bool:
    """Keys a file may lack: BatchNorm's counter, which files from before PyTorch 0.4.1 (e.g.
    torchvision's first ImageNet weights) do not have; the model keeps its own."""
    return key.endswith(".num_batches_tracked") or key == "num_batches_tracked"


def _best_keys(
    state: dict[str, torch.Tensor], expected: Mapping[str, torch.Tensor]
) -> tuple[dict[str, torch.Tensor], str | None]:
    """`state` as it is, or without one first key component all its keys share (a Lightning
    `model.` wrapper) when only that makes its keys the model's."""
    if _same_keys(state, expected):
        return state, None
    firsts = {k.split(".", 1)[0] for k in state}
    if len(firsts) != 1 or not all("." in k for k in state):
        return state, None
    prefix = f"{firsts.pop()}."
    candidate, _ = _strip_wrappers({k[len(prefix) :]: v for k, v in state.items()})
    if _same_keys(candidate, expected):
        return candidate, prefix
    # neither fits: report against whichever is closer
    if len(candidate.keys() & expected.keys()) > len(state.keys() & expected.keys()):
        return candidate, prefix
    return state, None


def _same_keys(state: Mapping[str, Any], expected: Mapping[str, Any]) -> bool:
    return not (state.keys() - expected.keys()) and all(
        k in state or _optional(k) for k in expected
    )


def _head_class_change(
    state: Mapping[str, torch.Tensor],
    expected: Mapping[str, torch.Tensor],
    head_keys: tuple[str, ...],
    mismatched: list[str],
) -> tuple[int, int] | None:
    """(file's classes, model's classes) when the only shape differences are the head's weight
    (and bias) in their first dimension, with the same input features; else None."""
    weight = head_keys[0]
    if weight not in mismatched or not set(mismatched) <= set(head_keys):
        return None
    w_file, w_model = tuple(state[weight].shape), tuple(expected[weight].shape)
    if len(w_file) != 2 or len(w_model) != 2 or w_file[1] != w_model[1]:
        return None
    if len(head_keys) == 2:
        bias = head_keys[1]
        if tuple(state[bias].shape) != (w_file[0],) or tuple(expected[bias].shape) != (w_model[0],):
            return None
    return w_file[0], w_model[0]


def _misfit_message(
    ckpt: Checkpoint,
    state: Mapping[str, torch.Tensor],
    expected: Mapping[str, torch.Tensor],
    missing: list[str],
    unexpected: list[str],
    mismatched: list[str],
    prefix: str | None,
) -> str:
    where = f"{ckpt.path}" + (f" (under `{ckpt.nested_key}`)" if ckpt.nested_key else "")
    parts = [f"checkpoint {where} does not fit the model"]
    if prefix:
        parts.append(f"(keys compared without their common prefix `{prefix}`)")
    lines = [" ".join(parts) + ":"]
    if missing:
        lines.append(f"  missing keys (in the model, not in the file): {_capped(missing)}")
    if unexpected:
        lines.append(f"  unexpected keys (in the file, not in the model): {_capped(unexpected)}")
    if mismatched:
        shapes = [
            f"{k}: file {tuple(state[k].shape)} vs model {tuple(expected[k].shape)}"
            for k in mismatched
        ]
        lines.append(f"  shape mismatches: {_capped(shapes, sep='; ')}")
    named = sum(1 for k in expected if k in state)
    if not missing and not unexpected:
        lines.append(
            "The layer names are the model's but some sizes differ: the checkpoint was saved "
            "from the same network at another width or stem, or for another number of classes "
            "in a layer that is not the classifier head; set model.width / model.stem to match."
        )
    elif named < len(expected) / 2:
        lines.append(
            f"Only {named} of the model's {len(expected)} tensor names are in the file: the "
            "checkpoint is probably for another architecture. Set model.name (and "
            "model.source) in the config to the network it was saved from."
        )
    else:
        lines.append(
            "The file's layers only partly match the model's (another depth or variant of the "
            "network?). Set model.name (and model.source) in the config to the network the "
            "checkpoint was saved from."
        )
    return "\n".join(lines)


def _capped(items: list[str], sep: str = ", ") -> str:
    return sep.join(items[:_LIST_CAP]) + _more(items)
