"""KServe payload-logging CloudEvents: parse, pair request with response, decode into rows.

Pure (no I/O, no clock of its own: callers pass ``now``). The KServe agent (and kfloop's
predictor, locally) posts one CloudEvent per inference request and one per response, in
binary mode: ``ce-type`` is :data:`REQUEST_TYPE` or :data:`RESPONSE_TYPE`, ``ce-id`` is shared
by a request and its response, ``ce-source`` is the predictor's URL, and the extensions
``ce-inferenceservicename``, ``ce-namespace``, ``ce-component``, ``ce-endpoint`` (``default``
or ``canary``) and ``ce-metadata`` (JSON) describe where it was served. The body is the raw
inference payload (``data``). Structured mode (``application/cloudevents+json``) is accepted
too; both are parsed with the ``cloudevents`` SDK (:func:`cloudevents.http.from_http`).
Batched content mode (``application/cloudevents-batch+json``: a JSON array of structured-mode
events, CloudEvents HTTP binding 1.0, section 3.3), which kfloop's predictor sends with
``--logger-batch-events`` > 1, is read by :func:`parse_cloudevent_batch`: each element is
decoded as the same event posted alone in structured mode would be.

Payloads decoded into rows of features + prediction:

- KServe v1 request: ``{"instances": [row, ...]}``, a row being a dict ``{feature: value}``
  (a value may be wrapped in a one-element list) or a list of values in the model's input
  order; or the columnar ``{"inputs": {feature: [values]}}``.
- Open Inference Protocol v2 request: ``{"inputs": [{"name", "shape", "datatype", "data"}]}``,
  one ``[N, 1]`` (or ``[N]``) tensor per feature, named after it; or one ``[N, F]`` tensor with
  the F features in the model's input order. ``data`` may be flat or nested.
- v1 response ``{"predictions": [p, ...]}`` (``p`` a number or a one-element list); v2
  response ``{"outputs": [...]}``: the output named ``prediction`` (else the first one),
  shape ``[N]`` or ``[N, 1]``.
- The v2 **binary tensor extension** (what ``tritonclient`` sends with
  ``binary_data=True``; the KServe agent logs the raw body): a JSON header, then the tensors'
  bytes in the order of the ``inputs`` (``outputs``) whose ``parameters.binary_data_size`` is
  set, little-endian, row-major; ``BYTES`` elements each prefixed by a 4-byte little-endian
  length. The header's length comes from the ``Inference-Header-Content-Length`` header of
  the event post, or from that header logged in ``ce-metadata`` (the agent's
  ``metadataHeaders``, ``{"Inference-Header-Content-Length": ["123"]}``), else from where the
  JSON header ends. The tensors are decoded into ``data`` (numbers as a numpy array, float
  NaN = missing; ``BYTES`` as strings, an Arrow array for a long tensor) and the payload is
  then read like a JSON v2 one.

Rows: a request of N rows gives N rows; ``request_id`` is the event id for N = 1 and
``"<id>:<i>"`` (i = 0..N-1) for a batch, so every logged row has its own join key.
Values are checked against the feature schema: numeric features take numbers (and booleans,
as 0/1; null/NaN = missing), categorical features take strings (null/``""`` = missing).
A value of the wrong type is stored as null and reported as a schema violation
``(feature, "wrong_type")``; an input that is not a feature is dropped and reported
``(name, "unknown_feature")``. Only an undecodable event is an error (:class:`EventError`,
HTTP 400): no id, an unknown type, a malformed body or payload.
"""

from __future__ import annotations

import base64
import json
import math
from collections import OrderedDict
from collections.abc import Iterator, Mapping, Sequence
from dataclasses import dataclass, field
from datetime import UTC, datetime
from functools import cached_property
from typing import Any, Literal, TypeAlias

import numpy as np
import pyarrow as pa
from cloudevents import exceptions as ce_exceptions
from cloudevents.http import from_http

from kfloop.core.errors import DataError
from kfloop.serving.payload_json import load_envelopes, load_payload
from kfloop.serving.rows import blank_to_null
from kfloop.serving.signature import BytesFramingError, bytes_column

try:  # orjson comes with kserve; json is the fallback
    import orjson

    def _loads(raw: bytes | str) -> Any:
        return orjson.loads(raw)

except ImportError:  # pragma: no cover - orjson is installed with the serving extra

    def _loads(raw: bytes | str) -> Any:
        return json.loads(raw)


REQUEST_TYPE = "org.kubeflow.serving.inference.request"
RESPONSE_TYPE = "org.kubeflow.serving.inference.response"
# Extension attributes the KServe agent sets (pkg/logger/worker.go).
INFERENCE_SERVICE_ATTR = "inferenceservicename"
NAMESPACE_ATTR = "namespace"
COMPONENT_ATTR = "component"
ENDPOINT_ATTR = "endpoint"
METADATA_ATTR = "metadata"
STRUCTURED_CONTENT_TYPE = "application/cloudevents+json"
BATCH_CONTENT_TYPE = "application/cloudevents-batch+json"
PREDICTION_OUTPUT = "prediction"
HEADER_LENGTH = "inference-header-content-length"
"""The v2 binary extension's header: length in bytes of the JSON part of the body."""
_V2_NUMPY: dict[str, str] = {
    "BOOL": "?",
    "UINT8": "<u1",
    "UINT16": "<u2",
    "UINT32": "<u4",
    "UINT64": "<u8",
    "INT8": "<i1",
    "INT16": "<i2",
    "INT32": "<i4",
    "INT64": "<i8",
    "FP16": "<f2",
    "FP32": "<f4",
    "FP64": "<f8",
}

Kind = Literal["request", "response"]
_KINDS: dict[str, Kind] = {REQUEST_TYPE: "request", RESPONSE_TYPE: "response"}


class EventError(DataError):
    """An event that cannot be logged; ``reason`` is a short metric label, ``status`` HTTP."""

    def __init__(self, reason: str, message: str, status: int = 400) -> None:
        self.reason = reason
        self.status = status
        super().__init__(message)


@dataclass(frozen=True)
class InferenceEvent:
    """One parsed CloudEvent of the KServe payload logger."""

    id: str
    kind: Kind
    source: str
    time: datetime | None
    data: Any
    inference_service: str | None = None
    namespace: str | None = None
    component: str | None = None
    endpoint: str | None = None


def _parse_time(raw: Any) -> datetime | None:
    if not raw:
        return None
    if isinstance(raw, datetime):
        return raw
    try:
        return datetime.fromisoformat(str(raw))
    except ValueError:
        return None


class BinaryAttributes(Mapping[str, str]):
    """The attributes of a binary-mode event, read through to its ``ce-*`` headers (lower-case
    names) instead of copied out of them: most headers are ``ce-*`` ones, and copying them
    into a dict per event was about 3 % of the logger's CPU at batch 1."""

    __slots__ = ("_headers",)

    def __init__(self, lower: Mapping[str, str]) -> None:
        self._headers = lower

    def __getitem__(self, name: str) -> str:
        return self._headers["ce-" + name]

    def get(self, name: str, default: Any = None) -> Any:
        return self._headers.get("ce-" + name, default)

    def __contains__(self, name: object) -> bool:
        return isinstance(name, str) and "ce-" + name in self._headers

    def __iter__(self) -> Iterator[str]:
        return (k[3:] for k in self._headers if k.startswith("ce-"))

    def __len__(self) -> int:
        return sum(1 for k in self._headers if k.startswith("ce-"))


def binary_attributes(lower: Mapping[str, str]) -> BinaryAttributes:
    """Attributes of a binary-mode event: the ``ce-*`` headers (HTTP binding of CloudEvents
    1.0, values as they are, as the SDK reads them), checked like the SDK checks them."""
    spec = lower.get("ce-specversion")
    if spec != "1.0":
        raise EventError("bad_event", f"not a valid CloudEvent: specversion {spec!r}")
    if not (lower.get("ce-id") and lower.get("ce-source") and lower.get("ce-type")):
        missing = [a for a in ("id", "source", "type") if not lower.get("ce-" + a)]
        raise EventError("bad_event", f"not a valid CloudEvent: missing {missing}")
    return BinaryAttributes(lower)


def parse_cloudevent(
    headers: Mapping[str, str], body: bytes | str, use_sdk: bool = False, *, lowercase: bool = False
) -> InferenceEvent:
    """Parse one HTTP-delivered CloudEvent (binary or structured mode).

    Structured mode always goes through the SDK's ``from_http``. Binary mode (what the KServe
    agent sends) reads the ``ce-*`` headers directly by default: the same attributes as
    ``from_http`` (a test holds them equal) at a fifth of its cost, which is most of the
    logger's per-event budget; ``use_sdk=True`` parses binary mode with ``from_http`` too.

    Args:
        headers: HTTP request headers (any case).
        body: the raw HTTP body.
        use_sdk: parse binary mode with the SDK as well.
        lowercase: the header names are already lower case (as uvicorn and ASGI give them).

    Raises:
        EventError: ``no_id`` (no or empty ``ce-id`` / ``id``), ``bad_event`` (not a
            CloudEvent: no specversion/type/source, a malformed structured body),
            ``unknown_type`` (not an inference request or response), ``bad_payload`` (the
            data is not JSON).
    """
    lower = headers if lowercase else {k.lower(): v for k, v in headers.items()}
    binary = "ce-specversion" in lower
    if binary:
        if not (lower.get("ce-id") or "").strip():
            raise EventError(
                "no_id",
                "CloudEvent has no ce-id header; the KServe agent sets it to the request id, "
                "which pairs a request with its response",
            )
    else:
        content_type = media_type(lower.get("content-type"))
        if content_type != STRUCTURED_CONTENT_TYPE:
            raise EventError(
                "bad_event",
                f"not a CloudEvent: no ce-specversion header (binary mode) and content type "
                f"{content_type or 'none'!r} is not {STRUCTURED_CONTENT_TYPE} (structured mode)",
            )
        try:
            envelope = _loads(body)
        except ValueError as exc:
            raise EventError("bad_event", f"structured CloudEvent is not JSON: {exc}") from None
        if not isinstance(envelope, dict):
            raise EventError("bad_event", "structured CloudEvent must be a JSON object")
        if not str(envelope.get("id") or "").strip():
            raise EventError("no_id", "structured CloudEvent has no 'id'")
    if binary and not use_sdk:
        attrs: Mapping[str, Any] = binary_attributes(lower)
        data: Any = body
    else:
        try:
            event = from_http(lower, body, data_unmarshaller=lambda raw: raw)
        except ce_exceptions.GenericException as exc:
            raise EventError("bad_event", f"not a valid CloudEvent: {exc}") from None
        attrs = dict(event.get_attributes())
        data = event.get_data()
    return _inference_event(lower, attrs, data)


def _inference_event(
    lower: Mapping[str, str], attrs: Mapping[str, Any], data: Any
) -> InferenceEvent:
    """The :class:`InferenceEvent` of a CloudEvent's attributes and data (any mode)."""
    ce_type = str(attrs.get("type") or "")
    kind = _KINDS.get(ce_type)
    if kind is None:
        raise EventError(
            "unknown_type",
            f"CloudEvent type {ce_type!r} is neither {REQUEST_TYPE!r} nor {RESPONSE_TYPE!r}",
        )
    if isinstance(data, (bytes, bytearray, str)):
        if not data:
            data = None
        else:
            raw = bytes(data) if isinstance(data, bytearray) else data
            where = f"{kind} event {attrs['id']}"
            header_length = _header_length(lower, attrs, where)
            if header_length is not None:
                data = decode_binary_body(raw, header_length, where)
            else:
                try:
                    data = load_payload(raw)
                except ValueError as exc:
                    data = _binary_or_raise(raw, where, exc)
    return InferenceEvent(
        id=str(attrs["id"]).strip(),
        kind=kind,
        source=str(attrs.get("source") or ""),
        time=_parse_time(attrs.get("time")),
        data=data,
        inference_service=_opt(attrs.get(INFERENCE_SERVICE_ATTR)),
        namespace=_opt(attrs.get(NAMESPACE_ATTR)),
        component=_opt(attrs.get(COMPONENT_ATTR)),
        endpoint=_opt(attrs.get(ENDPOINT_ATTR)),
    )


def media_type(content_type: str | None) -> str:
    """The media type of a ``Content-Type`` value, lower case, without parameters."""
    return (content_type or "").split(";")[0].strip().lower()


def _structured_event(envelope: dict[str, Any], where: str) -> InferenceEvent:
    """One structured-mode event given as a JSON object, checked as the SDK's ``from_http``
    checks a structured post (specversion 1.0; id, source and type present; ``data`` or
    base64 ``data_base64``), then read as :func:`parse_cloudevent` reads it."""
    if not str(envelope.get("id") or "").strip():
        raise EventError("no_id", f"{where}: CloudEvent has no 'id'")
    if envelope.get("specversion") != "1.0":
        raise EventError(
            "bad_event",
            f"{where}: not a valid CloudEvent: specversion {envelope.get('specversion')!r}",
        )
    missing = [a for a in ("source", "type") if not envelope.get(a)]
    if missing:
        raise EventError("bad_event", f"{where}: not a valid CloudEvent: missing {missing}")
    attrs = {k: v for k, v in envelope.items() if k not in ("data", "data_base64")}
    if "data_base64" in envelope:
        try:
            data: Any = base64.b64decode(envelope["data_base64"], validate=True)
        except (ValueError, TypeError) as exc:
            raise EventError("bad_event", f"{where}: data_base64 is not base64: {exc}") from None
    else:
        data = envelope.get("data")
    return _inference_event({}, attrs, data)


def parse_cloudevent_batch(body: bytes | str) -> list[InferenceEvent | EventError]:
    """Parse a batched-content-mode post: a JSON array of structured-mode CloudEvents.

    Each element is decoded as the same event posted alone in structured mode (no id, an
    unknown type, an undecodable payload...): an element that is not a logged inference event
    comes back as its :class:`EventError` (its message names the index), in the element's
    place, so that the caller can take the others.

    Raises:
        EventError: ``bad_batch``: the batch itself is malformed (not JSON, not an array, an
            empty array, an element that is not a JSON object; the message names the index).
    """
    try:
        items = load_envelopes(body)
    except ValueError as exc:
        raise EventError("bad_batch", f"CloudEvents batch is not JSON: {exc}") from None
    if not isinstance(items, list):
        raise EventError(
            "bad_batch",
            f"a CloudEvents batch ({BATCH_CONTENT_TYPE}) must be a JSON array of events, "
            f"got {type(items).__name__}",
        )
    if not items:
        raise EventError("bad_batch", "CloudEvents batch is empty")
    for i, item in enumerate(items):
        if not isinstance(item, dict):
            raise EventError(
                "bad_batch",
                f"CloudEvents batch: event at index {i} is a JSON {type(item).__name__}, "
                "not an object (a structured-mode CloudEvent)",
            )
    out: list[InferenceEvent | EventError] = []
    for i, item in enumerate(items):
        try:
            out.append(_structured_event(item, f"batch index {i}"))
        except EventError as exc:
            if not str(exc).startswith(f"batch index {i}"):
                exc = EventError(exc.reason, f"batch index {i}: {exc}", exc.status)
            out.append(exc)
    return out


def _opt(value: Any) -> str | None:
    return None if value is None or value == "" else str(value)


# -- v2 binary tensor extension -----------------------------------------------------------------


def _header_length(lower: Mapping[str, str], attrs: Mapping[str, Any], where: str) -> int | None:
    """``Inference-Header-Content-Length`` from the post's headers or the logged metadata."""
    raw: Any = lower.get(HEADER_LENGTH)
    if raw is None:
        meta = attrs.get(METADATA_ATTR)
        if not meta or meta == "{}":
            return None
        try:
            parsed = _loads(meta) if isinstance(meta, (str, bytes)) else meta
        except ValueError:
            return None  # metadata is informational; a malformed one does not void the event
        if not isinstance(parsed, dict):
            return None
        raw = next((v for k, v in parsed.items() if str(k).lower() == HEADER_LENGTH), None)
        if isinstance(raw, list):
            raw = raw[0] if raw else None
        if raw is None:
            return None
    text = str(raw).strip()
    if not text.isdigit() or int(text) == 0:
        raise EventError(
            "bad_payload", f"{where}: Inference-Header-Content-Length {raw!r} is not a length"
        )
    return int(text)


def _binary_or_raise(raw: bytes | str, where: str, error: ValueError) -> Any:
    """A body that is not JSON: a v2 binary body whose header length was not sent, else 400.

    The JSON header ends where a JSON decoder stops; it must describe binary tensors.
    """
    not_json = EventError("bad_payload", f"{where}: data is not JSON: {error}")
    if isinstance(raw, str) or not raw.lstrip()[:1] == b"{":
        raise not_json
    text = raw.decode("utf-8", "surrogateescape")  # byte-exact round trip for the offset
    lead = len(text) - len(text.lstrip())
    try:
        header, end = json.JSONDecoder().raw_decode(text, lead)
    except ValueError:
        raise not_json from None
    if not _has_binary_tensors(header):
        raise not_json
    return decode_binary_body(raw, len(text[:end].encode("utf-8", "surrogateescape")), where)


def _tensors(header: Any) -> list[dict[str, Any]]:
    if not isinstance(header, dict):
        return []
    key = "inputs" if isinstance(header.get("inputs"), list) else "outputs"
    tensors = header.get(key)
    return [t for t in tensors if isinstance(t, dict)] if isinstance(tensors, list) else []


def _binary_size(tensor: Mapping[str, Any]) -> Any:
    params = tensor.get("parameters")
    return params.get("binary_data_size") if isinstance(params, dict) else None


def _has_binary_tensors(header: Any) -> bool:
    return any(_binary_size(t) is not None for t in _tensors(header))


def decode_binary_body(body: bytes | str, header_length: int, where: str = "event") -> Any:
    """Decode a v2 binary-extension body: the JSON header with each binary tensor's values
    put in its ``data``, flat: numbers as a numpy array (floating point as float64, NaN =
    missing), ``BYTES`` as UTF-8 strings (:func:`bytes_column`: a list, or an Arrow array
    for a long tensor).

    Raises:
        EventError: ``bad_payload``: a header length past the body, a header that is not JSON,
            tensor sizes that do not add up to the binary part, an unknown datatype, a size
            that is not a whole number of elements, a ``BYTES`` element running past its
            tensor or not UTF-8.
    """
    raw = body.encode() if isinstance(body, str) else body
    if header_length > len(raw):
        raise EventError(
            "bad_payload",
            f"{where}: Inference-Header-Content-Length {header_length} is past the end of the "
            f"{len(raw)}-byte body",
        )
    try:
        header = _loads(raw[:header_length])
    except ValueError as exc:
        raise EventError(
            "bad_payload", f"{where}: the first {header_length} bytes are not a JSON header: {exc}"
        ) from None
    binary = memoryview(raw)[header_length:]
    offset = 0
    for tensor in _tensors(header):
        size = _binary_size(tensor)
        if size is None:
            continue
        name = tensor.get("name", "?")
        if isinstance(size, bool) or not isinstance(size, int) or size < 0:
            raise EventError(
                "bad_payload", f"{where}: tensor {name!r} has binary_data_size {size!r}"
            )
        if offset + size > len(binary):
            raise EventError(
                "bad_payload",
                f"{where}: tensor {name!r} needs {size} bytes at offset {offset} but the binary "
                f"part has {len(binary)}",
            )
        chunk = binary[offset : offset + size]
        offset += size
        tensor["data"] = _tensor_values(chunk, str(tensor.get("datatype", "")), name, where)
    if offset != len(binary):
        raise EventError(
            "bad_payload",
            f"{where}: the binary part has {len(binary)} bytes but the tensors' binary_data_size "
            f"add up to {offset}",
        )
    return header


def _tensor_values(
    chunk: memoryview, datatype: str, name: str, where: str
) -> list[Any] | np.ndarray | pa.Array:
    if datatype == "BYTES":
        try:
            return bytes_column(chunk.tobytes())
        except BytesFramingError as exc:
            tensor = f"{where}: BYTES tensor {name!r}"
            if exc.length is None:
                message = f"{tensor} ends inside a length prefix"
            elif exc.utf8:
                message = f"{tensor}: element {exc.index} is not UTF-8"
            else:
                message = (
                    f"{tensor}: element {exc.index} of {exc.length} bytes runs past the tensor"
                )
            raise EventError("bad_payload", message) from None
    dtype = _V2_NUMPY.get(datatype)
    if dtype is None:
        raise EventError(
            "bad_payload",
            f"{where}: tensor {name!r} has datatype {datatype!r}; binary tensors of "
            f"{sorted([*_V2_NUMPY, 'BYTES'])} are read",
        )
    itemsize = np.dtype(dtype).itemsize
    if len(chunk) % itemsize:
        raise EventError(
            "bad_payload",
            f"{where}: tensor {name!r}: {len(chunk)} bytes is not a whole number of "
            f"{datatype} elements",
        )
    array = np.frombuffer(chunk, dtype=dtype)
    return array.astype(np.float64) if array.dtype.kind == "f" else array


# -- payload decoding -------------------------------------------------------------------------


@dataclass(frozen=True)
class FeatureSchema:
    """The logged features: names in the model's input order and their kinds."""

    names: tuple[str, ...]
    kinds: Mapping[str, str]  # "numeric" | "categorical"

    def __post_init__(self) -> None:
        for name in self.names:
            if self.kinds.get(name) not in ("numeric", "categorical"):
                raise DataError(
                    f"feature {name!r}: kind {self.kinds.get(name)!r} is not numeric or categorical"
                )

    @classmethod
    def from_profile(
        cls, profile: Mapping[str, Any], order: Sequence[str] | None = None
    ) -> FeatureSchema:
        """Schema of a reference profile; ``order`` (the model's inputs) sets the order.

        Without ``order``: the profile's numeric features, then its categorical ones.
        """
        kinds = {n: "numeric" for n in profile.get("numeric", {})}
        kinds.update({n: "categorical" for n in profile.get("categorical", {})})
        names = list(order) if order else list(kinds)
        unknown = [n for n in names if n not in kinds]
        if unknown:
            raise DataError(
                f"model inputs {unknown} are not in the reference profile (features: "
                f"{sorted(kinds)}); use the profile written with this model"
            )
        names += [n for n in kinds if n not in names]
        return cls(tuple(names), kinds)

    @cached_property
    def index(self) -> dict[str, int]:
        """Each feature's position."""
        return {n: i for i, n in enumerate(self.names)}

    @cached_property
    def numeric(self) -> list[bool]:
        """Whether each feature (in order) is numeric."""
        return [self.kinds[n] == "numeric" for n in self.names]


Violation = tuple[str, str]

ARROW_ROWS = 16
"""A decoded column of at least this many values is an Arrow array (float64 for numbers,
string for categories, null = missing), converted as it is decoded: one ``pa.array`` call
checks that every value has an expected type and converts them (at 1,024 rows, a column
costs about half of what checking it in Python, then joining it with the other blocks' lists
and converting those did). The blocks of a flush are then joined in C (``concat_arrays``).
Shorter columns, above all a batch-1 request's one value per feature, stay Python lists: an
Arrow call per block would cost more than its values do, so they are converted at the
flush, every block's values in one call."""

Column: TypeAlias = list[Any] | pa.Array
"""A decoded column: a Python list (fewer than :data:`ARROW_ROWS` values) or an Arrow array
(:data:`ARROW_ROWS` or more)."""

_FLOAT64 = pa.float64()
_STRING = pa.string()

_NONE = type(None)
_FLOAT_ONLY = frozenset({float})
_NUMBERS = frozenset({float, int, _NONE})
_STRINGS = frozenset({str, _NONE})


def _as_list(values: list[Any] | np.ndarray | pa.Array) -> list[Any]:
    """A binary tensor's values (an array) as a list, NaN as None; a list as it is."""
    if isinstance(values, pa.Array):
        return values.to_pylist()
    if not isinstance(values, np.ndarray):
        return values
    out: list[Any] = values.tolist()
    if values.dtype.kind == "f" and not np.isfinite(values).all():
        out = [None if v != v else v for v in out]  # NaN = missing
    return out


def _arrow_column(values: list[Any] | np.ndarray, numeric: bool) -> pa.Array | None:
    """``values`` as logged (float64 numbers, NaN of a binary tensor as null; strings, ``""``
    as null) when each has an expected type (numbers and booleans; strings; null), else None.
    """
    if isinstance(values, np.ndarray):
        if numeric and values.dtype.kind in "fiub":
            return pa.array(values.astype(np.float64, copy=False), _FLOAT64, from_pandas=True)
        return None
    if isinstance(values, pa.Array):  # a binary BYTES tensor's, a JSON tensor's numbers
        if values.type == _FLOAT64:  # payload_json: float64 and no null
            return values if numeric else None
        if numeric or values.type != _STRING:
            return None
        return blank_to_null(values) if _has_blank(values) else values
    try:  # the typed conversion refuses a value of another type (and an int past 2**53)
        if numeric:
            return pa.array(values, _FLOAT64)
        if "" in values:
            values = [None if v == "" else v for v in values]
        return pa.array(values, _STRING)
    except (pa.ArrowException, OverflowError, TypeError, ValueError):
        return None


def _as_floats(values: list[Any]) -> list[Any] | None:
    """``values`` as floats (nulls kept) when they are all numbers or null, checked at C speed
    (``set(map(type, ...))``; a bool is not a number here); else None."""
    types = set(map(type, values))
    if types <= _FLOAT_ONLY:
        return values
    if types <= _NUMBERS:
        return [v if v is None else float(v) for v in values]
    return None


class _Checker:
    """Per-kind value checks, one column at a time; collects schema violations.

    A column whose values are all of the expected Python types (what a JSON or binary v2
    payload gives) is taken as it is, checked at C speed (``set(map(type, ...))``); only a
    column with something else in it is walked value by value.
    """

    def __init__(self, schema: FeatureSchema) -> None:
        self.schema = schema
        self.index = schema.index
        self.numeric = schema.numeric
        self.violations: list[Violation] = []

    def value(self, i: int, v: Any) -> Any:
        if isinstance(v, list) and len(v) == 1:
            v = v[0]
        if v is None:
            return None
        if self.numeric[i]:
            if isinstance(v, float):
                return v
            if isinstance(v, (int, bool)):
                return float(v)
        elif isinstance(v, str):
            return v or None
        self.violations.append((self.schema.names[i], "wrong_type"))
        return None

    def column(self, i: int, values: list[Any] | np.ndarray) -> Column:
        """The values of feature ``i``, checked (numbers as floats, ``""`` as null); an
        Arrow array from :data:`ARROW_ROWS` values."""
        if len(values) >= ARROW_ROWS:
            array = _arrow_column(values, self.numeric[i])
            if array is not None:
                return array
            value = self.value
            walked = [value(i, v) for v in _as_list(values)]
            return _list_or_array(walked, _FLOAT64 if self.numeric[i] else _STRING)
        values = _as_list(values)
        if self.numeric[i]:
            floats = _as_floats(values)
            if floats is not None:
                return floats
        elif set(map(type, values)) <= _STRINGS:
            return [v or None for v in values] if "" in values else values
        value = self.value
        return [value(i, v) for v in values]


def _flatten(data: Any) -> list[Any] | np.ndarray | pa.Array:
    if isinstance(data, np.ndarray):  # a binary tensor's values
        return data.reshape(-1)
    if isinstance(data, pa.Array):  # a binary BYTES tensor's
        return data
    if not isinstance(data, list):
        return [data]
    if not data or not isinstance(data[0], list):
        return data
    out: list[Any] = []
    stack: list[Iterator[Any]] = [iter(data)]
    while stack:
        for item in stack[-1]:
            if isinstance(item, list):
                stack.append(iter(item))
                break
            out.append(item)
        else:
            stack.pop()
    return out


@dataclass
class DecodedRequest:
    """Feature values column by column (schema order, ``n`` values each) and the schema
    violations found."""

    columns: list[Column]
    n: int
    violations: list[Violation] = field(default_factory=list)

    @property
    def rows(self) -> list[list[Any]]:
        """The same values row by row."""
        columns = [_values(c) for c in self.columns]
        return [list(r) for r in zip(*columns, strict=True)] if columns else []


def _values(column: Column) -> list[Any]:
    """A column's values as a list."""
    return column.to_pylist() if isinstance(column, pa.Array) else column


def _has_blank(strings: pa.Array) -> bool:
    """Whether a string array may hold ``""``: an empty slot in its offsets (a null's slot is
    empty too, which only costs the exact check of :func:`blank_to_null`)."""
    offsets = np.frombuffer(
        strings.buffers()[1], np.int32, count=len(strings) + 1, offset=4 * strings.offset
    )
    return bool((offsets[1:] == offsets[:-1]).any())


def _list_or_array(values: list[Any], typ: pa.DataType) -> Column:
    """``values`` as a column: an Arrow array from :data:`ARROW_ROWS` values."""
    return pa.array(values, typ) if len(values) >= ARROW_ROWS else values


def _nulls(n: int, typ: pa.DataType) -> Column:
    """``n`` nulls as a column (a list below :data:`ARROW_ROWS`)."""
    return pa.nulls(n, typ) if n >= ARROW_ROWS else [None] * n


def decode_request(data: Any, schema: FeatureSchema, event_id: str = "?") -> DecodedRequest:
    """Decode a v1 or v2 request payload into columns of feature values (schema order).

    Raises:
        EventError: ``bad_payload``: neither v1 nor v2, rows of the wrong length, tensors of
            different batch sizes, a shape that does not match its data.
    """
    where = f"request event {event_id}"
    if not isinstance(data, dict):
        raise EventError("bad_payload", f"{where}: payload must be a JSON object")
    check = _Checker(schema)
    columns: Mapping[str, Any]
    if "instances" in data:
        columns = _instances_to_columns(data["instances"], check, where)
    elif isinstance(data.get("inputs"), dict):  # v1 columnar
        columns = {k: _flatten(v) for k, v in data["inputs"].items()}
    elif isinstance(data.get("inputs"), list):
        columns = _v2_columns(data["inputs"], check, where)
    else:
        raise EventError(
            "bad_payload",
            f"{where}: payload has neither 'instances' (KServe v1) nor 'inputs' (v2); keys: "
            f"{sorted(data)[:10]}",
        )
    checked, n = _check_columns(columns, check, where)
    return DecodedRequest(checked, n, check.violations)


def _instances_to_columns(instances: Any, check: _Checker, where: str) -> dict[str, list[Any]]:
    if not isinstance(instances, list):
        raise EventError("bad_payload", f"{where}: 'instances' must be a list")
    names = check.schema.names
    width = len(names)

    def checked_width(k: int, inst: list[Any]) -> list[Any]:
        if len(inst) != width:
            raise EventError(
                "bad_payload",
                f"{where}: instance {k} has {len(inst)} values; the model takes {width} "
                f"features {list(names)}",
            )
        return inst

    n = len(instances)
    if n and all(type(inst) is list for inst in instances):
        rows = [checked_width(k, inst) for k, inst in enumerate(instances)]
        transposed = zip(*rows, strict=True)
        return {name: list(col) for name, col in zip(names, transposed, strict=True)}
    columns: dict[str, list[Any]] = {name: [None] * n for name in names}
    for k, inst in enumerate(instances):
        if isinstance(inst, dict):
            for name, v in inst.items():
                col = columns.get(name)
                if col is None:
                    check.violations.append((str(name), "unknown_feature"))
                else:
                    col[k] = v
        elif isinstance(inst, list):
            for name, v in zip(names, checked_width(k, inst), strict=True):
                columns[name][k] = v
        else:
            raise EventError("bad_payload", f"{where}: instance {k} must be an object or a list")
    return columns


def _check_columns(
    columns: Mapping[str, list[Any] | np.ndarray], check: _Checker, where: str
) -> tuple[list[Column], int]:
    """Columns in schema order (a feature not given: all null), checked; and the row count."""
    n: int | None = None
    found: dict[int, list[Any] | np.ndarray] = {}
    for name, values in columns.items():
        i = check.index.get(name)
        if i is None:
            check.violations.append((str(name), "unknown_feature"))
            continue
        if n is None:
            n = len(values)
        elif len(values) != n:
            raise EventError(
                "bad_payload",
                f"{where}: input {name!r} has {len(values)} rows, others have {n}",
            )
        found[i] = values
    rows = n or 0
    out: list[Column] = []
    for i in range(len(check.schema.names)):
        given = found.get(i)
        if given is None:
            out.append(_nulls(rows, _FLOAT64 if check.numeric[i] else _STRING))
        elif rows == 1:
            v = _as_list(given)[0]
            kind = type(v)
            if kind is float if check.numeric[i] else (kind is str and v):
                out.append([v])  # what check.value gives, without the call
            else:
                out.append([check.value(i, v)])
        else:
            out.append(check.column(i, given))
    return out, rows


def _v2_columns(
    inputs: list[Any], check: _Checker, where: str
) -> dict[str, list[Any] | np.ndarray]:
    width = len(check.schema.names)
    index = check.index
    columns: dict[str, list[Any] | np.ndarray] = {}
    for t in inputs:
        # The usual tensor first: a feature's flat data of shape [n, 1] or [n] (what the
        # general path below gives for it, for a fifth of the cost of a 1-row request).
        if type(t) is dict:
            name, data, shape = t.get("name"), t.get("data"), t.get("shape")
            if (
                type(name) is str
                and name in index
                and (
                    (type(data) is list and (not data or type(data[0]) is not list))
                    or (type(data) is np.ndarray and data.ndim == 1)  # binary tensors
                    or isinstance(data, pa.Array)
                )
                and type(shape) is list
                and (
                    (len(shape) == 2 and type(shape[0]) is int and shape[1] == 1)
                    or (len(shape) == 1 and type(shape[0]) is int)
                )
                and shape[0] == len(data)
                and type(shape[-1]) is int
            ):
                columns[name] = data
                continue
        if not isinstance(t, dict) or "name" not in t or "data" not in t:
            raise EventError(
                "bad_payload", f"{where}: each v2 input needs 'name', 'shape', 'datatype', 'data'"
            )
        name = str(t["name"])
        data = _flatten(t["data"])
        shape = t.get("shape") or [len(data)]
        if not isinstance(shape, list) or not all(isinstance(d, int) for d in shape):
            raise EventError("bad_payload", f"{where}: input {name!r} has a bad shape {shape!r}")
        size = math.prod(shape)
        if size != len(data):
            raise EventError(
                "bad_payload",
                f"{where}: input {name!r} has shape {shape} ({size} values) but {len(data)} "
                "values in data",
            )
        inner = math.prod(shape[1:]) if len(shape) > 1 else 1
        if name not in check.index and inner == width and width > 1:
            # one [N, F] tensor: the features in the model's input order
            rows_n = shape[0]
            for i, fname in enumerate(check.schema.names):
                columns[fname] = data[i::width] if rows_n else []
            continue
        if inner != 1 and name in check.index:
            raise EventError(
                "bad_payload",
                f"{where}: input {name!r} has shape {shape}; a feature is [N, 1] or [N]",
            )
        columns[name] = data
    return columns


@dataclass
class DecodedResponse:
    """Predictions per row (``None`` where missing) and the violations found."""

    predictions: Column
    violations: list[Violation] = field(default_factory=list)


def _prediction(v: Any, violations: list[Violation]) -> float | None:
    if isinstance(v, list) and len(v) == 1:
        v = v[0]
    if v is None:
        return None
    if isinstance(v, (float, int)) and not isinstance(v, bool):
        return float(v)
    if isinstance(v, bool):
        return float(v)
    violations.append((PREDICTION_OUTPUT, "wrong_type"))
    return None


def _predictions(values: list[Any] | np.ndarray, violations: list[Violation]) -> Column:
    if len(values) >= ARROW_ROWS:
        array = _arrow_column(values, numeric=True)
        if array is not None:
            return array
    values = _as_list(values)
    floats = _as_floats(values)
    out = floats if floats is not None else [_prediction(v, violations) for v in values]
    return _list_or_array(out, _FLOAT64)


def decode_response(data: Any, event_id: str = "?") -> DecodedResponse:
    """Decode a v1 or v2 response payload into one prediction per row.

    A response without predictions (an error answer such as ``{"error": ...}``) gives no
    prediction: the paired rows get null. Multi-output predictions (``[N, K]``, K > 1) are
    not a single number: null, with a ``(prediction, wrong_shape)`` violation.

    Raises:
        EventError: ``bad_payload``: predictions/outputs of the wrong JSON type.
    """
    where = f"response event {event_id}"
    violations: list[Violation] = []
    if not isinstance(data, dict):
        return DecodedResponse([], [(PREDICTION_OUTPUT, "no_prediction")])
    if "predictions" in data:
        preds = data["predictions"]
        if not isinstance(preds, list):
            raise EventError("bad_payload", f"{where}: 'predictions' must be a list")
        if len(preds) >= ARROW_ROWS:
            array = _arrow_column(preds, numeric=True)
            if array is not None:
                return DecodedResponse(array, violations)
        else:
            floats = _as_floats(preds)
            if floats is not None:
                return DecodedResponse(floats, violations)
        out: list[float | None] = []
        for p in preds:
            if isinstance(p, list) and len(p) > 1:
                violations.append((PREDICTION_OUTPUT, "wrong_shape"))
                out.append(None)
            else:
                out.append(_prediction(p, violations))
        return DecodedResponse(_list_or_array(out, _FLOAT64), violations)
    if isinstance(data.get("outputs"), list):
        outputs = [o for o in data["outputs"] if isinstance(o, dict)]
        if not outputs:
            raise EventError("bad_payload", f"{where}: 'outputs' has no tensor")
        chosen = next((o for o in outputs if o.get("name") == PREDICTION_OUTPUT), outputs[0])
        values = _flatten(chosen.get("data", []))
        shape = chosen.get("shape") or [len(values)]
        if not isinstance(shape, list) or not shape or not all(isinstance(d, int) for d in shape):
            raise EventError("bad_payload", f"{where}: output has a bad shape {shape!r}")
        inner = math.prod(shape[1:]) if len(shape) > 1 else 1
        if inner != 1:
            return DecodedResponse(_nulls(shape[0], _FLOAT64), [(PREDICTION_OUTPUT, "wrong_shape")])
        return DecodedResponse(_predictions(values, violations), violations)
    return DecodedResponse([], [(PREDICTION_OUTPUT, "no_prediction")])


# -- pairing ------------------------------------------------------------------------------------


@dataclass(frozen=True)
class LogRow:
    """One logged row: the Parquet contract's columns (model name/version added on write)."""

    request_id: str
    timestamp_us: int  # microseconds since the epoch, UTC
    endpoint: str | None
    features: list[Any] | None  # schema order; None for a response whose request is lost
    prediction: float | None


@dataclass(frozen=True)
class RowBlock:
    """The rows of one event pair (or of a half-pair written alone), column by column.

    ``columns`` holds one :data:`Column` of ``n`` values per feature (schema order), or is
    None when the request was lost; ``predictions`` holds ``n`` values, or is None when there
    is no prediction (a request whose response was lost, an answer without predictions).
    A block of :data:`ARROW_ROWS` rows or more that the pairer made holds Arrow arrays, a
    smaller one lists.
    """

    request_id: str
    timestamp_us: int  # microseconds since the epoch, UTC, for every row
    endpoint: str | None
    n: int
    columns: list[Column] | None
    predictions: Column | None

    def feature(self, i: int) -> list[Any]:
        """The ``n`` values of feature ``i`` as a list (nulls when the request was lost)."""
        return _values(self.columns[i]) if self.columns is not None else [None] * self.n

    def prediction_values(self) -> list[float | None]:
        """The ``n`` predictions as a list (nulls when there is none)."""
        return _values(self.predictions) if self.predictions is not None else [None] * self.n

    def ids(self) -> list[str]:
        """Row ids: the event id for one row, ``"<id>:<i>"`` for a batch."""
        if self.n == 1:
            return [self.request_id]
        rid = self.request_id
        return [f"{rid}:{i}" for i in range(self.n)]

    def rows(self) -> list[LogRow]:
        """The block row by row."""
        features: list[list[Any] | None] = (
            [list(r) for r in zip(*map(_values, self.columns), strict=True)]
            if self.columns is not None
            else [None] * self.n
        )
        return [
            LogRow(rid, self.timestamp_us, self.endpoint, f, p)
            for rid, f, p in zip(self.ids(), features, self.prediction_values(), strict=True)
        ]


def block_rows(blocks: Sequence[RowBlock]) -> list[LogRow]:
    """Blocks row by row."""
    return [row for b in blocks for row in b.rows()]


@dataclass
class _Pending:
    event: InferenceEvent
    arrived: float  # caller's monotonic clock
    wall: float  # epoch seconds at arrival (the row time when the event has none)
    request: DecodedRequest | None = None
    predictions: Column | None = None

    @property
    def size(self) -> int:
        if self.request is not None:
            return max(self.request.n, 1)
        return max(len(self.predictions) if self.predictions is not None else 0, 1)


@dataclass
class AddResult:
    """What :meth:`EventPairer.add` did with one event."""

    status: Literal["pending", "paired", "duplicate", "late"]
    block: RowBlock | None = None
    violations: list[Violation] = field(default_factory=list)

    @property
    def rows(self) -> list[LogRow]:
        """The paired rows, row by row."""
        return self.block.rows() if self.block is not None else []


@dataclass
class Orphans:
    """Rows written for half-pairs: requests with no response, responses with no request."""

    blocks: list[RowBlock] = field(default_factory=list)
    requests: int = 0
    responses: int = 0

    @property
    def rows(self) -> list[LogRow]:
        """The orphans' rows, row by row."""
        return block_rows(self.blocks)


def _epoch_us(t: datetime | None, fallback_s: float) -> int:
    if t is None:
        return int(fallback_s * 1_000_000)
    if t.tzinfo is None:
        t = t.replace(tzinfo=UTC)
    return int(t.timestamp() * 1_000_000)


def _fit(preds: Column, n: int) -> Column:
    """``preds`` cut or padded with null to ``n`` values (an Arrow array from
    :data:`ARROW_ROWS`, as the request's columns are)."""
    if len(preds) == n:
        return preds
    if isinstance(preds, pa.Array):
        preds = preds.to_pylist()
    fitted = preds[:n] if len(preds) > n else [*preds, *([None] * (n - len(preds)))]
    return _list_or_array(fitted, _FLOAT64)


class EventPairer:
    """Pairs request and response events by id; yields rows when both halves are in.

    Args:
        schema: The logged features.
        hold_seconds: How long a half-pair waits for its other half before
            :meth:`expire` writes it alone (features or prediction null) as an orphan.
        dedupe_ids: How many completed ids are remembered to drop agent retries.
    """

    def __init__(self, schema: FeatureSchema, hold_seconds: float, dedupe_ids: int = 100_000):
        self.schema = schema
        self.hold_seconds = hold_seconds
        self.dedupe_ids = dedupe_ids
        self._pending: OrderedDict[str, _Pending] = OrderedDict()
        # completed ids -> None (paired) or the kind that was written alone (orphan)
        self._done: OrderedDict[str, Kind | None] = OrderedDict()
        self._pending_rows = 0

    @property
    def pending_events(self) -> int:
        """Half-pairs waiting for their other half."""
        return len(self._pending)

    @property
    def pending_rows(self) -> int:
        """Rows held by half-pairs (what they will write)."""
        return self._pending_rows

    def knows(self, event_id: str) -> bool:
        """Whether ``event_id`` is waiting here or was completed here (recently)."""
        return event_id in self._pending or event_id in self._done

    def inherit(self, other: EventPairer) -> None:
        """Remember ``other``'s completed ids too (so that retries of events another pairer
        wrote are still dropped), oldest first, within ``dedupe_ids``."""
        for event_id, orphan in other._done.items():
            if event_id not in self._done:
                self._remember(event_id, orphan)

    def remember(self, event_id: str) -> None:
        """Record ``event_id`` as completed (a post taken whole), so that a retry is dropped."""
        self._remember(event_id)

    def _remember(self, event_id: str, orphan: Kind | None = None) -> None:
        self._done[event_id] = orphan
        if len(self._done) > self.dedupe_ids:
            self._done.popitem(last=False)

    def add(self, event: InferenceEvent, now: float, wall: float) -> AddResult:
        """Add one event; ``now`` is a monotonic clock, ``wall`` epoch seconds (fallback time).

        Raises:
            EventError: the payload cannot be decoded (``bad_payload``).
        """
        eid = event.id
        if eid in self._done:
            orphan = self._done[eid]
            late = orphan is not None and orphan != event.kind
            return AddResult("late" if late else "duplicate")
        other = self._pending.get(eid)
        if other is not None and other.event.kind == event.kind:
            return AddResult("duplicate")
        if event.kind == "request":
            decoded = decode_request(event.data, self.schema, eid)
            if other is None:
                p = _Pending(event, now, wall, request=decoded)
                self._pending[eid] = p
                self._pending_rows += p.size
                return AddResult("pending", violations=decoded.violations)
            request, req_wall = event, wall
            preds = other.predictions if other.predictions is not None else []
            violations = decoded.violations
        else:
            dresp = decode_response(event.data, eid)
            if other is None:
                p = _Pending(event, now, wall, predictions=dresp.predictions)
                self._pending[eid] = p
                self._pending_rows += p.size
                return AddResult("pending", violations=dresp.violations)
            request, preds = other.event, dresp.predictions
            assert other.request is not None
            decoded, req_wall = other.request, other.wall
            violations = dresp.violations
        del self._pending[eid]
        self._pending_rows -= other.size
        self._remember(eid)
        n = decoded.n
        if len(preds) and len(preds) != n:
            violations = [*violations, (PREDICTION_OUTPUT, "row_count_mismatch")]
        if n == 0:
            return AddResult("paired", None, violations)
        block = RowBlock(
            eid,
            _epoch_us(request.time, req_wall),
            request.endpoint,
            n,
            decoded.columns,
            _fit(preds, n) if len(preds) else None,
        )
        return AddResult("paired", block, violations)

    def _orphan_block(self, eid: str, p: _Pending) -> RowBlock | None:
        ts = _epoch_us(p.event.time, p.wall)
        if p.request is not None:
            if not p.request.n:
                return None
            return RowBlock(eid, ts, p.event.endpoint, p.request.n, p.request.columns, None)
        preds = p.predictions if p.predictions is not None and len(p.predictions) else [None]
        return RowBlock(eid, ts, p.event.endpoint, len(preds), None, preds)

    def expire(self, now: float, everything: bool = False) -> Orphans:
        """Write out half-pairs older than ``hold_seconds`` (all of them with ``everything``)."""
        out = Orphans()
        while self._pending:
            eid, p = next(iter(self._pending.items()))
            if not everything and now - p.arrived < self.hold_seconds:
                break
            del self._pending[eid]
            self._pending_rows -= p.size
            self._remember(eid, orphan=p.event.kind)
            block = self._orphan_block(eid, p)
            if block is not None:
                out.blocks.append(block)
            if p.event.kind == "request":
                out.requests += 1
            else:
                out.responses += 1
        return out
