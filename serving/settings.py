"""Settings of the HTTP server, from command-line flags and/or a YAML file (`serve --config`):
the same names in both, flags winning. Checked before anything loads."""

from __future__ import annotations

import os
from pathlib import Path

import yaml
from pydantic import BaseModel, ConfigDict, Field, ValidationError

from pipeline.errors import ConfigError


class ServeSettings(BaseModel):
    model_config = ConfigDict(extra="forbid")

    host: str = Field("127.0.0.1", description="bind address; 0.0.0.0 listens on all")
    port: int = Field(8000, ge=0, le=65535, description="TCP port")
    model_name: str | None = Field(
        None, description="name in /v2/models/{name}; default: the run's"
    )
    threads: int | None = Field(None, ge=1, description="ONNX Runtime intra-op threads")
    # dynamic batching and back-pressure
    max_batch_size: int = Field(32, ge=1, description="images per inference call; 1: no batching")
    max_queue_delay_us: int = Field(
        0, ge=0, description="wait for a batch to fill, at most; 0: batch what queued meanwhile"
    )
    max_queue: int = Field(256, ge=1, description="images waiting; beyond: 503 + Retry-After")
    request_timeout_s: float = Field(10.0, gt=0, description="deadline from arrival to answer")
    # what one request may bring
    max_images: int = Field(64, ge=1, description="images per request")
    max_bytes: int = Field(32 << 20, ge=1, description="bytes per request body")
    max_pixels: int = Field(40_000_000, ge=1, description="decoded pixels per image")
    max_request_pixels: int = Field(50_000_000, ge=1, description="decoded pixels per request")
    max_concurrent_decodes: int = Field(4, ge=1, description="images decoded at once, server-wide")
    # connections
    header_timeout_s: float = Field(10.0, gt=0, description="to receive a request's headers")
    body_timeout_s: float = Field(30.0, gt=0, description="to receive a request's body")
    max_connections: int | None = Field(1024, ge=1, description="open connections; beyond: 503")
    access_log: bool = Field(False, description="log every request (costs ~10% throughput)")
    inline_decode_pixels: int = Field(
        65536, ge=0, description="decode smaller requests on the event loop, not in a thread"
    )
    api_key: str | None = Field(
        None,
        description="required in X-API-Key or Authorization: Bearer (or set SERVE_API_KEY, "
        "which keeps it out of the process list)",
    )
    providers: list[str] | None = Field(None, description="ONNX Runtime execution providers")


def load_settings(path: Path | None, overrides: dict) -> ServeSettings:
    """A YAML file's settings (if given) with the command line's non-None values on top."""
    tree: dict = {}
    if path is not None:
        if not Path(path).is_file():
            raise ConfigError(f"serve config {path} not found")
        loaded = yaml.safe_load(Path(path).read_text())
        if not isinstance(loaded, dict):
            raise ConfigError(f"{path}: expected a mapping of server settings")
        tree = loaded
    tree |= {k: v for k, v in overrides.items() if v is not None}
    if tree.get("api_key") is None and os.environ.get("SERVE_API_KEY"):
        tree["api_key"] = os.environ["SERVE_API_KEY"]
    try:
        settings = ServeSettings.model_validate(tree)
    except ValidationError as err:
        lines = [f"invalid server settings{f' in {path}' if path else ''}:"]
        for e in err.errors():
            where = ".".join(str(p) for p in e["loc"])
            lines.append(f"  {where}: {e['msg']} (got {e.get('input')!r})")
        raise ConfigError("\n".join(lines)) from None
    if settings.max_images > settings.max_queue:
        raise ConfigError(
            f"max_images ({settings.max_images}) is over max_queue ({settings.max_queue}): such a "
            "request could never be queued; raise max_queue or lower max_images"
        )
    return settings
