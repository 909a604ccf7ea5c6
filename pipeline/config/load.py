"""Reading a configuration: `load_config(path, overrides)` is the only entry point; every
problem becomes a `ConfigError` whose message names the field path, the bad value and what is
allowed. `dump_config` writes the resolved tree back as YAML (every key, defaults filled in).
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import yaml
from pydantic import BaseModel, ValidationError

from pipeline.config.root import PipelineConfig
from pipeline.errors import ConfigError


def _format_validation_error(err: ValidationError, source: str) -> str:
    lines = [f"invalid configuration in {source}:"]
    for e in err.errors():
        path = ".".join(str(p) for p in e["loc"]) or "(top level)"
        msg = e["msg"].removeprefix("Value error, ")
        if e["type"] == "extra_forbidden":
            allowed = _allowed_keys(e["loc"][:-1])
            msg = f"unknown key; allowed here: {', '.join(allowed)}" if allowed else "unknown key"
        bad = e.get("input")
        shown = "" if isinstance(bad, dict) or e["type"] == "missing" else f" (got {bad!r})"
        lines.append(f"  {path}: {msg}{shown}")
    return "\n".join(lines)


def _allowed_keys(loc: tuple) -> list[str]:
    """The keys of the section at `loc`, by their YAML names."""
    model: Any = PipelineConfig
    for part in loc:
        fields = {(f.alias or n): f for n, f in model.model_fields.items()}
        field = fields.get(str(part))
        if (
            field is None
            or not isinstance(field.annotation, type)
            or not issubclass(field.annotation, BaseModel)
        ):
            return []
        model = field.annotation
    return [f.alias or n for n, f in model.model_fields.items()]


def _apply_override(tree: dict[str, Any], item: str) -> None:
    if "=" not in item:
        raise ConfigError(f"--set {item!r}: expected key.path=value, e.g. --set train.epochs=3")
    key, raw = item.split("=", 1)
    parts = [p for p in key.strip().split(".") if p]
    if not parts:
        raise ConfigError(f"--set {item!r}: empty key path")
    try:
        value = yaml.safe_load(raw)
    except yaml.YAMLError as exc:
        raise ConfigError(f"--set {item!r}: value is not valid YAML ({exc})") from None
    node = tree
    for p in parts[:-1]:
        child = node.setdefault(p, {})
        if not isinstance(child, dict):
            raise ConfigError(f"--set {item!r}: {p!r} is a value, not a section")
        node = child
    node[parts[-1]] = value


def load_config(path: str | Path | None, overrides: list[str] | None = None) -> PipelineConfig:
    """Read a YAML file (or nothing, for all defaults), apply `a.b=v` overrides, validate."""
    tree: dict[str, Any] = {}
    source = "defaults"
    if path is not None:
        p = Path(path)
        source = str(p)
        if not p.is_file():
            raise ConfigError(f"config file {source!r} not found; pass the path to a YAML file")
        try:
            loaded = yaml.safe_load(p.read_text())
        except yaml.YAMLError as exc:
            raise ConfigError(f"{source} is not valid YAML: {exc}") from None
        if loaded is None:  # nothing but whitespace or comments; `{}` asks for all defaults
            raise ConfigError(
                f"{source} is empty; a config names at least the run, e.g. `name: my-run`, and "
                "the sections it changes (`python -m pipeline check pipeline.yaml` shows them "
                "all); write `{}` to take every default"
            )
        if not isinstance(loaded, dict):
            raise ConfigError(
                f"{source}: the top level must be a mapping of sections, got {type(loaded).__name__}"
            )
        tree = loaded
    for item in overrides or []:
        _apply_override(tree, item)
    try:
        return PipelineConfig.model_validate(tree)
    except ValidationError as err:
        raise ConfigError(_format_validation_error(err, source)) from None


def dump_config(cfg: PipelineConfig) -> str:
    return yaml.safe_dump(cfg.model_dump(mode="json", by_alias=True), sort_keys=False)
