"""The Open Inference Protocol (KServe v2, Triton's HTTP/REST API) on the wire: requests with
JSON tensors or the binary tensor data extension in, responses the same way out.

    POST /v2/models/{name}/infer
    {"inputs": [{"name": "input", "shape": [1, 3, 32, 32], "datatype": "FP32", "data": [...]}],
     "outputs": [{"name": "logits"}]}

Binary extension: the header `Inference-Header-Content-Length: N` says the first N bytes are
the JSON; each input with `"parameters": {"binary_data_size": k}` takes the next k bytes (raw,
little-endian, row-major). Outputs asked with `"parameters": {"binary_data": true}` come back
the same way, after the JSON, and the response carries the same header.
"""

from __future__ import annotations

import json
import math
from typing import Any

import numpy as np

from serving.dtypes import PROTOCOL, PROTOCOL_NAMES

HEADER_LENGTH = "Inference-Header-Content-Length"


class ProtocolError(ValueError):
    """A request that breaks the protocol; the message is for the client (400)."""


def _params(spec: dict[str, Any], what: str) -> dict[str, Any]:
    p = spec.get("parameters") or {}
    if not isinstance(p, dict):
        raise ProtocolError(f"{what}: parameters must be an object")
    return p


def _is_int(v: object) -> bool:
    return isinstance(v, int) and not isinstance(v, bool)


def _header(body: bytes, header_length: str | None) -> tuple[dict[str, Any], bytes]:
    if header_length is None:
        json_part, rest = body, b""
    else:
        try:
            n = int(header_length)
        except ValueError:
            raise ProtocolError(
                f"{HEADER_LENGTH} must be an integer, got {header_length!r}"
            ) from None
        if not 0 < n <= len(body):
            raise ProtocolError(f"{HEADER_LENGTH} {n} does not fit a {len(body)}-byte body")
        json_part, rest = body[:n], body[n:]
    try:
        req = json.loads(json_part)
    except (json.JSONDecodeError, UnicodeDecodeError, RecursionError) as exc:
        raise ProtocolError(f"the request is not valid JSON ({type(exc).__name__})") from None
    if not isinstance(req, dict) or not isinstance(req.get("inputs"), list) or not req["inputs"]:
        raise ProtocolError('the request needs "inputs": a non-empty list of tensors')
    outputs = req.get("outputs")
    if outputs is not None and (
        not isinstance(outputs, list) or not all(isinstance(o, dict) for o in outputs)
    ):
        raise ProtocolError('"outputs" must be a list of objects with a "name"')
    _params(req, "the request")
    return req, rest


def _tensor(spec: dict[str, Any], binary: memoryview, offset: int) -> tuple[np.ndarray, int]:
    name = spec.get("name")
    dtype = PROTOCOL.get(str(spec.get("datatype")))
    shape = spec.get("shape")
    if not isinstance(name, str) or dtype is None:
        raise ProtocolError(
            f"input {name!r}: datatype {spec.get('datatype')!r} is not one of {', '.join(PROTOCOL)}"
        )
    if not isinstance(shape, list) or not all(_is_int(d) and d >= 0 for d in shape):
        raise ProtocolError(f"input {name!r}: shape must be a list of non-negative integers")
    count = math.prod(shape)  # exact: no overflow to a small number
    size = _params(spec, f"input {name!r}").get("binary_data_size")
    if size is not None:
        if not _is_int(size) or size != count * dtype.itemsize or offset + size > len(binary):
            raise ProtocolError(
                f"input {name!r}: binary_data_size {size} does not match shape {shape} of "
                f"{PROTOCOL_NAMES[dtype]} or the bytes sent"
            )
        arr = np.frombuffer(binary[offset : offset + size], dtype=dtype.newbyteorder("<"))
        return arr.reshape(shape), offset + size
    data = spec.get("data")
    if data is None:
        raise ProtocolError(f"input {name!r} has neither data nor binary_data_size")
    if count > 1 << 28:
        raise ProtocolError(f"input {name!r}: shape {shape} is far too large")
    try:
        arr = np.asarray(data, dtype=dtype)
    except (TypeError, ValueError, OverflowError) as exc:
        raise ProtocolError(
            f"input {name!r}: data is not {PROTOCOL_NAMES[dtype]} ({exc})"
        ) from None
    if arr.size != count:
        raise ProtocolError(f"input {name!r}: {arr.size} values for shape {shape} ({count})")
    return arr.reshape(shape), offset


def parse_request(body: bytes, header_length: str | None) -> tuple[dict, dict[str, np.ndarray]]:
    """(the JSON header, input name -> array)."""
    req, rest = _header(body, header_length)
    binary, offset, arrays = memoryview(rest), 0, {}
    for spec in req["inputs"]:
        if not isinstance(spec, dict):
            raise ProtocolError("each input is an object with name, shape, datatype and data")
        arr, offset = _tensor(spec, binary, offset)
        arrays[spec["name"]] = arr
    if offset != len(binary):
        raise ProtocolError(f"{len(binary) - offset} bytes of binary data belong to no input")
    return req, arrays


def check_outputs(request: dict[str, Any], names: list[str]) -> None:
    """The outputs a request asks for exist (checked before the model runs)."""
    for spec in request.get("outputs") or []:
        if spec.get("name") not in names:
            raise ProtocolError(
                f"unknown output {spec.get('name')!r}; this model has {', '.join(names)}"
            )
        _params(spec, f"output {spec.get('name')!r}")


def encode_response(
    model: str, version: str, request: dict[str, Any], outputs: dict[str, np.ndarray]
) -> tuple[bytes, dict[str, str]]:
    """(body, extra headers): the requested outputs (all if none named), each as JSON data or
    binary as asked; the binary parts follow the JSON header."""
    wanted = request.get("outputs") or [{"name": n} for n in outputs]
    binary_default = bool(_params(request, "the request").get("binary_data_output", False))
    meta, chunks = [], []
    for spec in wanted:
        name = spec.get("name")
        if name not in outputs:
            raise ProtocolError(f"unknown output {name!r}; this model has {', '.join(outputs)}")
        arr = np.ascontiguousarray(outputs[name])
        entry: dict[str, Any] = {
            "name": name,
            "shape": list(arr.shape),
            "datatype": PROTOCOL_NAMES[arr.dtype],
        }
        if _params(spec, f"output {name!r}").get("binary_data", binary_default):
            raw = arr.astype(arr.dtype.newbyteorder("<"), copy=False).tobytes()
            entry["parameters"] = {"binary_data_size": len(raw)}
            chunks.append(raw)
        else:
            entry["data"] = arr.reshape(-1).tolist()
        meta.append(entry)
    head = {"model_name": model, "model_version": version, "outputs": meta}
    if "id" in request:
        head["id"] = request["id"]
    text = json.dumps(head, separators=(",", ":")).encode()
    if not chunks:
        return text, {"content-type": "application/json"}
    return text + b"".join(chunks), {
        HEADER_LENGTH: str(len(text)),
        "content-type": "application/octet-stream",
    }
