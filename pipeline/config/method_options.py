"""A training method's options as a configuration section (`train.distill`, `slim.distill`).

Each method declares its own options model (`pipeline/distill/methods/`), so the keys allowed
under `distill` are those of the method that reads them: an unknown key lists that method's
keys, and a section of the old layout, where every method's options sat under one `distill`
with the comparators nested (`distill.cskd.temperature`), names the key that replaced it. A
whole `train.distill` as `dump_config` wrote it in that layout (the `config.yaml` of an
earlier run folder, every method's options) is read as the selected method's part.
"""

from __future__ import annotations

from typing import Any

from pydantic import BaseModel, ValidationError
from pydantic_core import PydanticCustomError

from pipeline.distill import METHODS, method_class

# The comparators' sections in the earlier layout; a dump of it holds all four.
EARLIER_SECTIONS = ("ls", "cskd", "pskd", "byot")


def method_options(method: str, raw: Any, where: str, loc: tuple[str, ...] = ()) -> BaseModel:
    """`raw` as the options of `method`: None for its defaults, a mapping of keys, or its own
    options model. `where` is the section's key path for messages (`train.distill`); `loc`
    is put before each error's path when the caller validates outside that section's field."""
    cls = method_class(method)
    if isinstance(raw, dict) and all(isinstance(raw.get(k), dict) for k in EARLIER_SECTIONS):
        raw = earlier_dump_part(method, raw, cls.Options)
    try:
        return cls.parse_options(raw)
    except TypeError as exc:  # another method's options model
        raise ValueError(f"{where}: {exc}") from None
    except ValidationError as err:
        errors = [_explained(e, method, cls.Options, where, set(METHODS)) for e in err.errors()]
        for e in errors:
            e["loc"] = (*loc, *e["loc"])
        raise ValidationError.from_exception_data(err.title, errors) from None


def earlier_dump_part(method: str, dump: dict, options: type[BaseModel]) -> dict:
    """The options of `method` in a `train.distill` dumped in the earlier layout: a
    comparator's own section, else the top-level keys the method takes (frskd and ama: all of
    them; ce: none)."""
    if method in EARLIER_SECTIONS:
        return dump[method]
    return {k: v for k, v in dump.items() if k in options.model_fields}


def _explained(e: dict, method: str, options: type[BaseModel], where: str, methods: set) -> dict:
    """One validation error, an unknown key's message naming what is allowed instead."""
    if e["type"] != "extra_forbidden":
        return {k: e[k] for k in ("type", "loc", "input", "ctx") if k in e}
    key, value = e["loc"][-1], e["input"]
    selector = where.rsplit(".", 1)[0] + ".method"
    if len(e["loc"]) == 1 and key in methods and isinstance(value, dict):
        keys = ", ".join(f"{where}.{k}" for k in value) or f"{where}.<key>"
        message = (
            f"method {key!r} reads its options from {where} itself: write {keys} "
            f"with {selector}={key}"
        )
    elif options.model_fields:
        message = (
            f"unknown key for method {method!r}; allowed here: {', '.join(options.model_fields)}"
        )
    else:
        message = f"unknown key; method {method!r} takes no options"
    return {
        "type": PydanticCustomError("unknown_key", "{message}", {"message": message}),
        "loc": e["loc"],
        "input": value,
    }
