"""Input validation against a packaged model's signature (``metadata.json`` ``inputs``).

Pure functions, no KServe import: the predictor turns :class:`SignatureError` into KServe's
``InvalidInput`` (HTTP 400, gRPC ``INVALID_ARGUMENT``); the tests call them without a server.

The contract (``kfloop.model.package``): every input is one raw feature of shape ``[N, 1]``;

- numeric features are ``tensor(float)``: v2 datatype ``FP32``; v1 JSON numbers (``true``/
  ``false`` are 1/0, for boolean source columns); ``null`` or NaN means *missing*;
- categorical features are ``tensor(string)``: v2 datatype ``BYTES`` (UTF-8); v1 JSON strings;
  ``null`` means missing (sent to the model as ``""``); unseen values are allowed.

Infinity policy: +/-Inf in a numeric feature is REJECTED by default (``allow_inf=False``),
naming the input and the row. The ONNX graph would treat it as missing, but JSON cannot carry
it, so it only arrives through binary tensors or gRPC, where it almost always means an
upstream bug (a division by zero) that silently becoming "missing" would hide; and the drift
monitor would see a value no training row had. Send NaN (v2) or ``null`` for a missing value.
Pass ``allow_inf=True`` (``--allow-inf``) to accept it as missing, as the model does.

Shapes: a v2 tensor may be ``[N]`` or ``[N, 1]``; every tensor of one request has the same N;
``1 <= N <= max_rows``.
"""

from __future__ import annotations

import json
import math
import os
import struct
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from functools import cached_property
from pathlib import Path
from typing import Any

import numpy as np
import pyarrow as pa
import pyarrow.compute as pc

from kfloop.core.errors import DataError

NUMERIC = "numeric"
CATEGORICAL = "categorical"
FP32 = "FP32"
BYTES = "BYTES"
DEFAULT_MAX_ROWS = 1024
_ONNX_TO_V2 = {"tensor(float)": FP32, "tensor(string)": BYTES}


class SignatureError(DataError):
    """A request does not match the model's signature. ``input`` names the feature at fault
    (``""`` when the fault is the request as a whole)."""

    def __init__(self, input_name: str, message: str) -> None:
        self.input = input_name
        super().__init__(f"input {input_name!r}: {message}" if input_name else message)


@dataclass(frozen=True)
class InputSpec:
    """One model input: a raw feature."""

    name: str
    kind: str  # NUMERIC or CATEGORICAL
    onnx_type: str

    @property
    def datatype(self) -> str:
        """The Open Inference Protocol datatype clients must send."""
        return _ONNX_TO_V2[self.onnx_type]


@dataclass(frozen=True)
class Signature:
    """The inputs and output of a packaged model, in the graph's input order."""

    inputs: tuple[InputSpec, ...]
    output: str
    task: str = ""

    @property
    def names(self) -> list[str]:
        return [i.name for i in self.inputs]

    @cached_property
    def numeric_names(self) -> frozenset[str]:
        """The names of the numeric inputs."""
        return frozenset(i.name for i in self.inputs if i.kind == NUMERIC)

    def input(self, name: str) -> InputSpec | None:
        for spec in self.inputs:
            if spec.name == name:
                return spec
        return None

    @classmethod
    def from_metadata(cls, metadata: Mapping[str, Any], where: str = "metadata.json") -> Signature:
        """Read ``inputs``/``outputs`` of a ``metadata.json`` dict.

        Raises:
            DataError: naming the field of ``where`` that is missing or unsupported.
        """
        raw_inputs = metadata.get("inputs")
        if not isinstance(raw_inputs, list) or not raw_inputs:
            raise DataError(f"{where}: 'inputs' must be a non-empty list (the model signature)")
        inputs = []
        for i, item in enumerate(raw_inputs):
            if not isinstance(item, Mapping) or not isinstance(item.get("name"), str):
                raise DataError(f"{where}: inputs[{i}] must be an object with a 'name'")
            onnx_type = item.get("onnx_type")
            if onnx_type not in _ONNX_TO_V2:
                raise DataError(
                    f"{where}: inputs[{i}] ({item['name']!r}) has onnx_type {onnx_type!r}; "
                    f"the predictor serves {sorted(_ONNX_TO_V2)}"
                )
            kind = item.get("kind") or (NUMERIC if onnx_type == "tensor(float)" else CATEGORICAL)
            if kind not in (NUMERIC, CATEGORICAL):
                raise DataError(f"{where}: inputs[{i}] ({item['name']!r}) has kind {kind!r}")
            inputs.append(InputSpec(name=item["name"], kind=kind, onnx_type=onnx_type))
        names = [i.name for i in inputs]
        if len(set(names)) != len(names):
            raise DataError(f"{where}: duplicate input names in {names}")
        outputs = metadata.get("outputs")
        if not isinstance(outputs, list) or not outputs or not isinstance(outputs[0], Mapping):
            raise DataError(f"{where}: 'outputs' must be a non-empty list")
        return cls(
            inputs=tuple(inputs),
            output=str(outputs[0].get("name", "prediction")),
            task=str(metadata.get("task", "")),
        )

    @classmethod
    def load(cls, path: str | os.PathLike[str]) -> Signature:
        """Read the signature from a ``metadata.json`` file."""
        p = Path(path)
        try:
            data = json.loads(p.read_text(encoding="utf-8"))
        except (OSError, UnicodeDecodeError, json.JSONDecodeError) as exc:
            raise DataError(f"{p}: cannot read the model metadata: {exc}") from None
        if not isinstance(data, Mapping):
            raise DataError(f"{p}: must be a JSON object")
        return cls.from_metadata(data, str(p))


@dataclass(frozen=True)
class TensorHeader:
    """What a v2 request says about one input tensor before its data is decoded."""

    name: str
    datatype: str
    shape: Sequence[int]


# -- row limits ----------------------------------------------------------------------------------


def check_rows(rows: int, max_rows: int) -> int:
    """``1 <= rows <= max_rows`` or :class:`SignatureError`."""
    if rows < 1:
        raise SignatureError("", "the request holds no rows")
    if rows > max_rows:
        raise SignatureError(
            "",
            f"the request holds {rows} rows, above the limit of {max_rows} rows per request "
            "(--max-rows-per-request); split it into smaller batches",
        )
    return rows


# -- column conversion ---------------------------------------------------------------------------


def numeric_column(name: str, values: Any, *, allow_inf: bool = False) -> np.ndarray:
    """Values (list or array) as float32 ``(n, 1)``; None/NaN = missing; Inf per policy."""
    try:
        with np.errstate(over="ignore"):  # past float32's range: inf, refused below
            array = np.asarray(values, dtype=np.float32).reshape(-1, 1)
    except (TypeError, ValueError):
        raise SignatureError(
            name, f"expected numbers ({FP32}) for this numeric feature, got non-numeric data"
        ) from None
    if not allow_inf:
        bad = np.flatnonzero(np.isinf(array[:, 0]))
        if bad.size:
            raise SignatureError(
                name,
                f"infinite value at row {int(bad[0])} ({bad.size} row(s)); infinity is not "
                "accepted, send NaN or null for a missing value",
            )
    return array


_BYTES_LENGTH = struct.Struct("<I")  # a BYTES element's length prefix
_STR = frozenset({str})
_STR_OR_NONE = frozenset({str, type(None)})


def string_column(name: str, values: Any) -> np.ndarray:
    """Values (str, UTF-8 bytes or None) as an object array ``(n, 1)`` of str; None -> ""."""
    if type(values) is list:  # a flat JSON list of strings: checked at C speed
        types = set(map(type, values))
        if types <= _STR_OR_NONE:
            column = np.empty((len(values), 1), dtype=object)
            column[:, 0] = values if types <= _STR else ["" if v is None else v for v in values]
            return column
    elif isinstance(values, pa.Array) and values.type == pa.string():  # decode_binary's
        # Arrow split the elements and checked their UTF-8; the model takes str objects.
        return values.to_numpy(zero_copy_only=False).reshape(-1, 1)
    elif (  # an object array of str
        type(values) is np.ndarray
        and values.dtype == object
        and values.ndim == 1
        and set(map(type, values)) <= _STR
    ):
        return values.reshape(-1, 1)
    flat = np.asarray(values, dtype=object).reshape(-1)
    out = np.empty((flat.size, 1), dtype=object)
    for i, value in enumerate(flat):
        if value is None:
            out[i, 0] = ""
        elif isinstance(value, str):
            out[i, 0] = value
        elif isinstance(value, bytes | np.bytes_):
            try:
                out[i, 0] = bytes(value).decode("utf-8")
            except UnicodeDecodeError:
                raise SignatureError(name, f"row {i} is not valid UTF-8") from None
        else:
            raise SignatureError(
                name,
                f"expected a string ({BYTES}) for this categorical feature at row {i}, "
                f"got {type(value).__name__} {value!r:.40}",
            )
    return out


# -- KServe v1: {"instances": [...]} -------------------------------------------------------------


def _v1_numeric(name: str, value: Any, row: int) -> float:
    if value is None:
        return math.nan
    if isinstance(value, bool):
        return 1.0 if value else 0.0
    if isinstance(value, int | float):
        return float(value)
    raise SignatureError(
        name,
        f"row {row}: expected a number for this numeric feature, got "
        f"{type(value).__name__} {value!r:.40}",
    )


def _v1_string(name: str, value: Any, row: int) -> str:
    if value is None:
        return ""
    if isinstance(value, str):
        return value
    raise SignatureError(
        name,
        f"row {row}: expected a string for this categorical feature, got "
        f"{type(value).__name__} {value!r:.40}",
    )


def v1_columns(
    signature: Signature,
    payload: Any,
    *,
    max_rows: int = DEFAULT_MAX_ROWS,
    allow_inf: bool = False,
) -> dict[str, np.ndarray]:
    """Columns from a v1 body ``{"instances": rows}``.

    A row is an object of named features (all of them, no others) or a list of values in the
    signature's order.
    """
    if not isinstance(payload, Mapping):
        raise SignatureError("", 'the body must be a JSON object {"instances": [...]}')
    if "instances" not in payload:
        raise SignatureError("", 'the body has no "instances" list')
    rows = payload["instances"]
    if not isinstance(rows, list):
        raise SignatureError("", '"instances" must be a list of rows')
    n = check_rows(len(rows), max_rows)
    names = signature.names
    cells: dict[str, list[Any]] = {name: [None] * n for name in names}
    known = set(names)
    for r, row in enumerate(rows):
        if isinstance(row, Mapping):
            unknown = [k for k in row if k not in known]
            if unknown:
                raise SignatureError(
                    str(unknown[0]),
                    f"row {r}: not an input of this model; its inputs are {', '.join(names)}",
                )
            for name in names:
                if name not in row:
                    raise SignatureError(name, f"row {r}: missing (send null for a missing value)")
                cells[name][r] = row[name]
        elif isinstance(row, list):
            if len(row) != len(names):
                raise SignatureError(
                    "",
                    f"row {r} has {len(row)} values; the model takes {len(names)} in this "
                    f"order: {', '.join(names)}",
                )
            for name, value in zip(names, row, strict=True):
                cells[name][r] = value
        else:
            raise SignatureError(
                "", f"row {r} must be an object of named features or a list of values"
            )
    columns: dict[str, np.ndarray] = {}
    for spec in signature.inputs:
        values = cells[spec.name]
        if spec.kind == NUMERIC:
            floats = [_v1_numeric(spec.name, v, r) for r, v in enumerate(values)]
            columns[spec.name] = numeric_column(spec.name, floats, allow_inf=allow_inf)
        else:
            columns[spec.name] = string_column(
                spec.name, [_v1_string(spec.name, v, r) for r, v in enumerate(values)]
            )
    return columns


# -- Open Inference Protocol v2 ------------------------------------------------------------------


def check_v2_headers(
    signature: Signature, tensors: Sequence[TensorHeader], *, max_rows: int = DEFAULT_MAX_ROWS
) -> int:
    """Check names, datatypes and shapes of the v2 input tensors; return the row count.

    Run before decoding any data, so a wrong datatype is reported as such, not as a decoding
    failure.
    """
    names = signature.names
    seen: set[str] = set()
    rows: int | None = None
    first = ""
    for tensor in tensors:
        spec = signature.input(tensor.name)
        if spec is None:
            raise SignatureError(
                tensor.name, f"not an input of this model; its inputs are {', '.join(names)}"
            )
        if tensor.name in seen:
            raise SignatureError(tensor.name, "sent twice")
        seen.add(tensor.name)
        if tensor.datatype != spec.datatype:
            raise SignatureError(
                tensor.name,
                f"datatype {tensor.datatype} is wrong; this {spec.kind} feature takes "
                f"{spec.datatype}",
            )
        shape = list(tensor.shape)
        if (
            len(shape) not in (1, 2)
            or (len(shape) == 2 and shape[1] != 1)
            or any(not isinstance(d, int) or d < 0 for d in shape)
        ):
            raise SignatureError(
                tensor.name, f"shape {shape} is wrong; send [N] or [N, 1] (one value per row)"
            )
        if rows is None:
            rows, first = shape[0], tensor.name
        elif shape[0] != rows:
            raise SignatureError(
                tensor.name, f"has {shape[0]} rows but {first!r} has {rows}; send equal rows"
            )
    missing = [name for name in names if name not in seen]
    if missing:
        raise SignatureError(
            missing[0],
            f"missing; the request must hold one tensor per input ({len(missing)} missing: "
            f"{', '.join(missing)})",
        )
    return check_rows(rows or 0, max_rows)


def v2_column(spec: InputSpec, values: Any, rows: int, *, allow_inf: bool = False) -> np.ndarray:
    """One decoded v2 tensor as a model column ``(rows, 1)``."""
    column = (
        numeric_column(spec.name, values, allow_inf=allow_inf)
        if spec.kind == NUMERIC
        else string_column(spec.name, values)
    )
    if column.shape[0] != rows:
        raise SignatureError(
            spec.name, f"holds {column.shape[0]} values but its shape says {rows} rows"
        )
    return column


def decode_binary(name: str, datatype: str, raw: bytes) -> np.ndarray | list[str] | pa.Array:
    """One tensor of the v2 binary tensor extension, flat: ``FP32`` little-endian floats as
    an array; ``BYTES`` elements (each prefixed by its 4-byte little-endian length) as str, in
    a list, or from :data:`BYTES_ARROW_ROWS` elements an Arrow string array
    (:func:`bytes_column`; :func:`string_column` makes the model's str of it, and the
    payload logger can send it as it is)."""
    if datatype == FP32:
        if len(raw) % 4:
            raise SignatureError(
                name, f"binary data of {len(raw)} bytes is not a whole number of FP32 values"
            )
        return np.frombuffer(raw, dtype="<f4")
    if datatype != BYTES:
        raise SignatureError(name, f"datatype {datatype} is not served")
    try:
        return bytes_column(raw)  # Arrow split the elements and checked their UTF-8
    except BytesFramingError as exc:
        if exc.length is None:
            message = f"binary BYTES data is cut short at byte {exc.offset}"
        elif exc.utf8:
            message = f"row {exc.index} is not valid UTF-8"
        else:
            message = f"binary BYTES element {exc.index} is cut short"
        raise SignatureError(name, message) from None


class BytesFramingError(ValueError):
    """A ``BYTES`` tensor whose framing does not hold: element ``index`` (its length prefix at
    byte ``offset``) has a prefix cut short (``length`` None), runs past the data, or, with
    ``utf8``, is not UTF-8."""

    def __init__(self, index: int, offset: int, length: int | None, utf8: bool = False) -> None:
        self.index, self.offset, self.length, self.utf8 = index, offset, length, utf8
        super().__init__(f"BYTES element {index} at byte {offset}")


def split_bytes(raw: bytes) -> list[str]:
    """The elements of a v2 binary ``BYTES`` tensor (each a 4-byte little-endian length, then
    that many UTF-8 bytes) as str.

    All ASCII (short length prefixes and ASCII text, as category codes are), the tensor is
    decoded once and each element sliced from it, with no decode per element (1,024 short
    elements, fastest of six runs: 337 -> 284 us).

    Raises:
        BytesFramingError: the framing does not hold (see there).
    """
    items: list[str] = []
    append, length_at = items.append, _BYTES_LENGTH.unpack_from
    offset, end = 0, len(raw)
    # All ASCII, no element can fail to decode: each is a slice of one decoded str.
    text = raw.decode("ascii") if raw.isascii() else None
    while offset < end:
        if offset + 4 > end:
            raise BytesFramingError(len(items), offset, None)
        length = length_at(raw, offset)[0]
        stop = offset + 4 + length
        if stop > end:
            raise BytesFramingError(len(items), offset, length)
        if text is not None:
            append(text[offset + 4 : stop])
        else:
            try:
                append(raw[offset + 4 : stop].decode())
            except UnicodeDecodeError:
                raise BytesFramingError(len(items), offset, length, utf8=True) from None
        offset = stop
    return items


BYTES_ARROW_ROWS = 256
"""A binary ``BYTES`` tensor of at least this many elements is read straight into Arrow
(:func:`bytes_column`); Arrow's fixed cost per call makes smaller ones cheaper as a list (64
short strings: 38 us against 22 us)."""


def bytes_column(raw: bytes) -> list[str] | pa.Array:
    """The elements of a v2 binary ``BYTES`` tensor: a list of str below
    :data:`BYTES_ARROW_ROWS`, else an Arrow string array made without a Python object per
    element: a loop finds where each element starts (no loop when all have one length), and
    Arrow drops the length prefixes and checks the UTF-8. 1,024 short strings cost 160 us (45
    us of one length), against 191 us for :func:`split_bytes` and about 35 us more to convert
    its list.

    Raises:
        BytesFramingError: the framing does not hold (as :func:`split_bytes` says).
    """
    end = len(raw)
    if end < 4 * BYTES_ARROW_ROWS:  # too few elements, whatever their lengths
        return split_bytes(raw)
    offsets = _equal_widths(raw)
    if offsets is None:
        starts: list[int] = []
        append, offset = starts.append, 0
        try:
            while offset < end:
                append(offset)
                offset += 4 + _BYTES_LENGTH.unpack_from(raw, offset)[0]
        except struct.error:  # a length prefix cut short
            offset = end + 1
        if offset != end or len(starts) < BYTES_ARROW_ROWS:
            return split_bytes(raw)  # its error names the element
        starts.append(end)
        offsets = np.array(starts, np.int32)
    framed = pa.BinaryArray.from_buffers(
        pa.binary(), len(offsets) - 1, [None, pa.py_buffer(offsets), pa.py_buffer(raw)]
    )
    try:
        return pc.binary_slice(framed, 4, end).cast(pa.string())
    except pa.ArrowInvalid:  # not UTF-8
        return split_bytes(raw)


def _equal_widths(raw: bytes) -> np.ndarray | None:
    """Where each element starts (and the end), when every element of a BYTES tensor has the
    first one's length (codes such as countries' often do): read at once, with no loop."""
    if len(raw) < 4:
        return None
    width = 4 + _BYTES_LENGTH.unpack_from(raw, 0)[0]
    count = len(raw) // width
    if count < BYTES_ARROW_ROWS or len(raw) % width or count >= 2**31 // width:
        return None
    lengths: np.ndarray = np.ndarray((count,), "<u4", raw, 0, (width,))
    if not (lengths == width - 4).all():
        return None
    return np.arange(0, len(raw) + 1, width, dtype=np.int32)


def merge_columns(parts: Sequence[Mapping[str, np.ndarray]]) -> dict[str, np.ndarray]:
    """Concatenate requests' columns (same keys) along the rows."""
    if len(parts) == 1:
        return dict(parts[0])
    return {name: np.concatenate([p[name] for p in parts], axis=0) for name in parts[0]}


def row_count(columns: Mapping[str, np.ndarray]) -> int:
    """Rows of a column dict (0 when empty)."""
    for column in columns.values():
        return int(column.shape[0])
    return 0
