"""The Open Inference Protocol routes (KServe v2 / Triton HTTP): server and model metadata,
health and readiness, and inference on the model's own tensors."""

from importlib.metadata import PackageNotFoundError, version
from typing import Any

import numpy as np

from serving import v2
from serving.dtypes import PROTOCOL_NAMES
from serving.state import ServerState, error, read_body, require_ready, run, with_deadline

SERVER_NAME = "skd-pipeline"


def add_v2_routes(app, state: ServerState, name: str) -> None:
    from fastapi import HTTPException, Request, Response  # the serve extra

    s = state.settings

    def check(model: str, ver: str = "1") -> None:
        if model != name:
            raise HTTPException(404, f"unknown model {model!r}; this server serves {name!r}")
        if ver not in ("", "1"):
            raise HTTPException(404, f"model {name!r} has version 1 only, not {ver!r}")

    @app.get("/v2")
    def server_metadata() -> dict[str, Any]:
        try:
            ver = version(SERVER_NAME)
        except PackageNotFoundError:
            ver = "0"
        return {"name": SERVER_NAME, "version": ver, "extensions": ["binary_tensor_data"]}

    def tensors(items) -> list[dict[str, Any]]:
        return [
            {
                "name": t.name,
                "datatype": PROTOCOL_NAMES[t.dtype],
                "shape": [d if d is not None else -1 for d in t.shape],
            }
            for t in items
        ]

    @app.get("/v2/models/{model}")
    @app.get("/v2/models/{model}/versions/{ver}")
    def model_metadata(model: str, ver: str = "1") -> dict[str, Any]:
        check(model, ver)
        if state.clf is None:
            raise HTTPException(503, state.error or "the model is loading")
        pred = state.clf.predictor
        return {
            "name": name,
            "versions": ["1"],
            "platform": pred.platform,
            "inputs": tensors(pred.inputs),
            "outputs": tensors(pred.outputs),
        }

    @app.get("/v2/models/{model}/ready")
    @app.get("/v2/models/{model}/versions/{ver}/ready")
    def model_ready(model: str, ver: str = "1"):
        check(model, ver)
        return {"name": name, "ready": True} if state.ready else error(503, "not ready", 1)

    @app.post("/v2/models/{model}/infer")
    @app.post("/v2/models/{model}/versions/{ver}/infer")
    async def infer(model: str, request: Request, ver: str = "1"):
        check(model, ver)
        require_ready(state)
        declared = request.headers.get("content-length")
        if declared is not None and declared.isdigit() and int(declared) > s.max_bytes:
            raise HTTPException(413, f"request is {int(declared):,} bytes, over {s.max_bytes:,}")
        body = await with_deadline(read_body(request, s.max_bytes), s.body_timeout_s)
        out_name = state.clf.predictor.outputs[0].name
        try:
            req, arrays = v2.parse_request(body, request.headers.get(v2.HEADER_LENGTH.lower()))
            x = _model_input(state, arrays, req)
            v2.check_outputs(req, [out_name])  # before the model runs, not after
        except v2.ProtocolError as exc:
            raise HTTPException(400, str(exc)) from None
        logits = await run(state, x)
        content, headers = v2.encode_response(name, "1", req, {out_name: logits})
        return Response(content, headers=headers)


def _model_input(state: ServerState, arrays: dict[str, np.ndarray], req: dict) -> np.ndarray:
    """The one input tensor, checked against the model's name, datatype and shape."""
    inp = state.clf.predictor.inputs[0]
    if set(arrays) != {inp.name}:
        raise v2.ProtocolError(f"this model takes one input, {inp.name!r}; got {sorted(arrays)}")
    x = arrays[inp.name]
    want_type = PROTOCOL_NAMES[inp.dtype]
    sent_type = next(t.get("datatype") for t in req["inputs"] if t.get("name") == inp.name)
    if sent_type != want_type:
        raise v2.ProtocolError(f"input {inp.name!r} is {want_type}; got {sent_type}")
    want = list(inp.shape)
    if x.ndim != len(want) or any(
        w is not None and w != d for w, d in zip(want, x.shape, strict=True)
    ):
        shown = [d if d is not None else -1 for d in want]
        raise v2.ProtocolError(
            f"input {inp.name!r} has shape {list(x.shape)}; the model takes {shown}"
        )
    if x.shape[0] > state.settings.max_images:
        raise v2.ProtocolError(
            f"{x.shape[0]} images in one request, over {state.settings.max_images}"
        )
    return np.ascontiguousarray(x, dtype=inp.dtype)
