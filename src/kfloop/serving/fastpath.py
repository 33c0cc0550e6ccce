"""The raw ASGI front of the predictor's REST server: the v2 inference fast path, admin guard.

:class:`PredictorFront` wraps KServe's FastAPI app (it is the ASGI app uvicorn runs) and
handles exactly two things itself, everything else falls through to FastAPI untouched:

- ``POST /v2/models/<name>/infer`` and ``/v2/models/<name>/versions/<version>/infer`` (the
  served version) with a JSON body or the binary tensor extension
  (``Inference-Header-Content-Length``): the body is parsed with ``orjson`` (binary tensors
  with :func:`~kfloop.serving.signature.decode_binary`), checked against the model's
  signature (the 400 messages of :mod:`kfloop.serving.signature`, naming the input), run
  through the model's dynamic batcher, payload-logged (the body as it arrived, JSON or binary,
  as the KServe agent logs it) and counted in the ``kfloop_predictor_*`` metrics by
  :meth:`~kfloop.serving.predictor.OnnxPredictor.fast_infer`. The answer is byte for byte
  KServe's: JSON (``model_name``, ``model_version``, ``id``, ``parameters``, ``outputs`` with
  ``parameters: null``), or, when ``binary_data_output`` / an output's ``binary_data`` asks for
  it, KServe's JSON header and the raw FP32 predictions. FastAPI routing, pydantic validation,
  KServe's ``InferRequest``/``InferResponse`` objects and its middlewares are skipped: that is
  where a batch-1 request spent most of its time. ``kfloop_predictor_fast_path_requests_total``
  counts the requests it answered.
  Anything the fast path does not take exactly as KServe would goes to FastAPI, with the bytes
  already read replayed, so the answer stays KServe's own: a CloudEvent (``ce-specversion`` or
  an ``application/cloudevents+json`` body: KServe answers with one), an unknown or unready
  model, another version, a body that is not JSON or not the plain v2 shape, other request or
  output ``parameters``, several requested outputs, a body over ``--max-body-bytes``.
- The Open Inference Protocol repository endpoints under ``/v2/repository/models/`` (``load``,
  ``unload``): :class:`AdminGuard` lets a request through only with
  ``Authorization: Bearer <token>`` (``KFLOOP_SERVING_ADMIN_TOKEN`` or ``--admin-token-file``;
  compared in constant time): 401 otherwise. With no token configured they are refused (403,
  the message names the variable) unless ``--allow-unauthenticated-admin``. The token is
  never logged nor echoed. Inference, health, metadata and metrics stay open.
"""

from __future__ import annotations

import hmac
import os
import re
import uuid
from collections.abc import Awaitable, Callable, Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Protocol

import numpy as np
import orjson
from prometheus_client import Counter

from kfloop.core.errors import ConfigError
from kfloop.serving.payload_events import BinaryBody
from kfloop.serving.payload_json import load_request

ADMIN_TOKEN_ENV = "KFLOOP_SERVING_ADMIN_TOKEN"
REPOSITORY_PREFIX = "/v2/repository/models/"

ASGIApp = Callable[[dict[str, Any], Any, Any], Awaitable[None]]
Receive = Callable[[], Awaitable[dict[str, Any]]]

FAST_REQUESTS = Counter(
    "kfloop_predictor_fast_path_requests_total",
    "v2 JSON inference requests answered by the raw ASGI fast path, by HTTP status (the others "
    "went through KServe's FastAPI routes).",
    ["status"],
)

_INFER_PATH = re.compile(r"^/v2/models/([^/]+)(?:/versions/([^/]+))?/infer$")
_JSON_HEADERS = [(b"content-type", b"application/json")]
_REQUEST_KEYS = frozenset({"id", "inputs", "parameters", "outputs"})
_INPUT_KEYS = frozenset({"name", "shape", "datatype", "data", "parameters"})


# -- the admin guard -------------------------------------------------------------------------------


@dataclass(frozen=True)
class AdminGuard:
    """Who may call the repository load/unload endpoints.

    Args:
        token: The bearer token; ``""``: none configured. Kept out of ``repr``.
        allow_unauthenticated: With no token, let every caller in (``--allow-unauthenticated-
            admin``, for a loopback-only local run); ignored when a token is set.
    """

    token: str = field(default="", repr=False)
    allow_unauthenticated: bool = False

    @classmethod
    def configure(
        cls,
        token_file: str | None = None,
        *,
        allow_unauthenticated: bool = False,
        environ: Mapping[str, str] | None = None,
    ) -> AdminGuard:
        """The guard from ``--admin-token-file`` (first) or ``$KFLOOP_SERVING_ADMIN_TOKEN``.

        Raises:
            ConfigError: the file cannot be read or holds no token (naming the option), or the
                variable is set but blank.
        """
        env = os.environ if environ is None else environ
        if token_file:
            try:
                token = Path(token_file).read_text(encoding="utf-8").strip()
            except (OSError, UnicodeDecodeError) as exc:
                raise ConfigError(
                    "admin_token_file", f"{token_file}: cannot read it ({type(exc).__name__})"
                ) from None
            if not token:
                raise ConfigError("admin_token_file", f"{token_file}: the file is empty")
        else:
            raw = env.get(ADMIN_TOKEN_ENV)
            token = (raw or "").strip()
            if raw is not None and not token:
                raise ConfigError(ADMIN_TOKEN_ENV, "is set but blank; unset it or give a token")
        if any(c.isspace() for c in token):
            where = "admin_token_file" if token_file else ADMIN_TOKEN_ENV
            raise ConfigError(where, "the token must not contain whitespace")
        return cls(token=token, allow_unauthenticated=allow_unauthenticated)

    @property
    def mode(self) -> str:
        """For the start-up log line: "token", "open" or "refused" (never the token)."""
        if self.token:
            return "token"
        return "open" if self.allow_unauthenticated else "refused"

    def refusal(self, authorization: bytes | None) -> tuple[int, str] | None:
        """None when the caller may proceed, else (HTTP status, message)."""
        if not self.token:
            if self.allow_unauthenticated:
                return None
            return (
                403,
                "the model repository endpoints (load/unload) are disabled: no admin token is "
                f"configured; set {ADMIN_TOKEN_ENV} (or --admin-token-file) and send "
                "'Authorization: Bearer <token>', or start with --allow-unauthenticated-admin",
            )
        expected = b"Bearer " + self.token.encode("utf-8")
        if authorization is None or not hmac.compare_digest(authorization.strip(), expected):
            return (
                401,
                "the model repository endpoints (load/unload) need 'Authorization: Bearer "
                f"<token>' with the token the server was given ({ADMIN_TOKEN_ENV} or "
                "--admin-token-file)",
            )
        return None

    def allows_metadata(self, metadata: Any) -> tuple[int, str] | None:
        """:meth:`refusal` for gRPC invocation metadata (pairs of key, value)."""
        value: bytes | None = None
        for key, item in metadata or ():
            if str(key).lower() == "authorization":
                value = item.encode("utf-8") if isinstance(item, str) else bytes(item)
                break
        return self.refusal(value)


# -- the fast path ---------------------------------------------------------------------------------


class FastInferModel(Protocol):
    """What the fast path needs of a served model (:class:`OnnxPredictor` has it)."""

    name: str
    ready: bool
    fast_numeric_inputs: frozenset[str]
    """Inputs whose JSON data may come as a float64 array (:func:`load_request`)."""

    def fast_version_ok(self, version: str | None) -> bool: ...

    async def fast_infer(
        self,
        inputs: list[dict[str, Any]],
        request_id: str,
        model_version: str | None,
        binary_output: bool,
        requested_output: str | None,
        request_body: bytes | BinaryBody,
    ) -> tuple[int, bytes, int | None]: ...


def _replay(first: bytes, more: bool, receive: Receive) -> Receive:
    """A ``receive`` that hands out the bytes already read, then the rest of the stream."""
    done = False

    async def replayed() -> dict[str, Any]:
        nonlocal done
        if not done:
            done = True
            return {"type": "http.request", "body": first, "more_body": more}
        return await receive()

    return replayed


@dataclass(frozen=True)
class PlainV2:
    """A v2 request the fast path answers: its inputs (``data`` list, a float64 array of a
    numeric input's numbers (:func:`load_request`), or ``raw`` bytes of the
    binary tensor extension), its ``id`` and whether the answer is a binary tensor."""

    inputs: list[dict[str, Any]]
    request_id: str | None
    binary_output: bool
    requested_output: str | None = None


def _flag(value: Any) -> bool | None:
    return value if isinstance(value, bool) else None


def plain_v2(payload: Any, raw: bytes | None = None) -> PlainV2 | None:
    """The request, when KServe would take it the way the fast path does; None for anything
    else (it then goes to KServe). ``raw``: the bytes after the JSON header of a binary body."""
    if not isinstance(payload, dict) or not _REQUEST_KEYS.issuperset(payload):
        return None
    parameters = payload.get("parameters") or {}
    if not isinstance(parameters, dict) or not {"binary_data_output"}.issuperset(parameters):
        return None
    binary_output = parameters.get("binary_data_output", False)
    if _flag(binary_output) is None:
        return None
    request_id = payload.get("id")
    if request_id is not None and not isinstance(request_id, str):
        return None
    outputs = payload.get("outputs")
    requested = None
    if outputs is not None:
        # Requested outputs: each one's binary_data decides (absent: JSON), as in KServe.
        if not isinstance(outputs, list) or len(outputs) != 1 or not isinstance(outputs[0], dict):
            return None
        out_params = outputs[0].get("parameters") or {}
        if not isinstance(out_params, dict) or not {"binary_data"}.issuperset(out_params):
            return None
        binary_output = out_params.get("binary_data", False)
        requested = outputs[0].get("name")
        if not isinstance(requested, str) or _flag(binary_output) is None:
            return None
    inputs = payload.get("inputs")
    if not isinstance(inputs, list) or not inputs:
        return None
    offset = 0
    for item in inputs:
        if (
            not isinstance(item, dict)
            or not _INPUT_KEYS.issuperset(item)
            or not isinstance(item.get("name"), str)
            or not isinstance(item.get("datatype"), str)
            or not isinstance(item.get("shape"), list)
            or not all(isinstance(d, int) and not isinstance(d, bool) for d in item["shape"])
        ):
            return None
        params = item.get("parameters") or {}
        if not isinstance(params, dict) or not {"binary_data_size"}.issuperset(params):
            return None
        if "binary_data_size" in params:
            size = params["binary_data_size"]
            if raw is None or "data" in item or not isinstance(size, int) or size < 0:
                return None
            if offset + size > len(raw):
                return None
            item["raw"] = raw[offset : offset + size]
            offset += size
        elif not isinstance(item.get("data"), list | np.ndarray):  # load_request's numbers
            return None
    if raw is not None and offset != len(raw):
        return None
    return PlainV2(inputs, request_id, bool(binary_output), requested)


class PredictorFront:
    """The ASGI app uvicorn runs: fast v2 JSON inference and the admin guard before ``app``.

    Args:
        app: KServe's FastAPI app (with kfloop's routes and middlewares).
        lookup: Model by name (the repository's ``get_model``); None when not served.
        admin: Who may call the repository endpoints.
        max_body_bytes: A fast-path body above it goes to ``app``, whose guard answers it.
    """

    def __init__(
        self,
        app: ASGIApp,
        lookup: Callable[[str], Any],
        admin: AdminGuard,
        *,
        max_body_bytes: int,
    ) -> None:
        self.app = app
        self.lookup = lookup
        self.admin = admin
        self.max_body_bytes = max_body_bytes

    async def __call__(self, scope: dict[str, Any], receive: Receive, send: Any) -> None:
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return
        path: str = scope["path"]
        if path.startswith(REPOSITORY_PREFIX):
            refusal = self.admin.refusal(_header(scope, b"authorization"))
            if refusal is not None:
                status, message = refusal
                extra = [(b"www-authenticate", b"Bearer")] if status == 401 else []
                await _send_json(send, status, orjson.dumps({"error": message}), extra)
                return
        elif scope["method"] == "POST" and path.endswith("/infer"):
            match = _INFER_PATH.match(path)
            if match is not None:
                rest = await self._infer(scope, receive, send, match.group(1), match.group(2))
                if rest is None:
                    return
                receive = rest
        await self.app(scope, receive, send)

    async def _infer(
        self, scope: dict[str, Any], receive: Receive, send: Any, name: str, version: str | None
    ) -> Receive | None:
        """Answer a plain v2 JSON request (None), or return the ``receive`` for ``app``."""
        ce_id = x_request_id = b""
        header_length: int | None = None
        for key, value in scope["headers"]:
            if key == b"inference-header-content-length":
                if not value.isdigit():
                    return receive
                header_length = int(value)
            elif key == b"ce-specversion":
                return receive  # a CloudEvent: KServe answers with one
            if key == b"content-type" and value.startswith(b"application/cloudevents"):
                return receive
            if key == b"content-length" and value.isdigit() and int(value) > self.max_body_bytes:
                return receive
            if key == b"ce-id":
                ce_id = value
            elif key == b"x-request-id":
                x_request_id = value
        model = self.lookup(name)
        if (
            model is None
            or not getattr(model, "ready", False)
            or not hasattr(model, "fast_infer")
            or not model.fast_version_ok(version)
        ):
            return receive
        chunks: list[bytes] = []
        size = 0
        more = True
        while more:
            message = await receive()
            if message["type"] != "http.request":  # the client went away
                return None
            chunk = message.get("body", b"")
            chunks.append(chunk)
            size += len(chunk)
            more = bool(message.get("more_body", False))
            if size > self.max_body_bytes:
                return _replay(b"".join(chunks), more, receive)
        body = chunks[0] if len(chunks) == 1 else b"".join(chunks)
        plain = None
        try:
            if header_length is None:
                plain = plain_v2(load_request(body, model.fast_numeric_inputs))
            elif header_length <= len(body):
                plain = plain_v2(orjson.loads(body[:header_length]), body[header_length:])
        except orjson.JSONDecodeError:
            pass
        if plain is None:
            return _replay(body, False, receive)
        # As KServe: ce-id, then x-request-id, then the body's id, else a new UUID.
        header_id = (ce_id or x_request_id).decode("latin-1")
        request_id = header_id or plain.request_id or str(uuid.uuid4())
        status, answer, json_length = await model.fast_infer(
            plain.inputs,
            request_id,
            version,
            plain.binary_output,
            plain.requested_output,
            body if header_length is None else BinaryBody(body, header_length),
        )
        FAST_REQUESTS.labels(str(status)).inc()
        if json_length is None:
            await _send_json(send, status, answer)
        else:  # binary: no content-type, as KServe answers it
            length = (b"inference-header-content-length", str(json_length).encode())
            await _send(send, status, answer, [length])
        return None


def _header(scope: dict[str, Any], name: bytes) -> bytes | None:
    for key, value in scope["headers"]:
        if key == name:
            return bytes(value)
    return None


async def _send_json(
    send: Any, status: int, body: bytes, extra: list[tuple[bytes, bytes]] | None = None
) -> None:
    await _send(send, status, body, [*_JSON_HEADERS, *(extra or [])])


async def _send(send: Any, status: int, body: bytes, extra: list[tuple[bytes, bytes]]) -> None:
    headers = [*extra, (b"content-length", str(len(body)).encode())]
    await send({"type": "http.response.start", "status": status, "headers": headers})
    await send({"type": "http.response.body", "body": body})
