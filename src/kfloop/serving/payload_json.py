"""JSON inference payloads with a v2 tensor's numbers read straight into Arrow or numpy.

For the payload logger, :func:`load_payload` gives what ``orjson.loads`` gives, except that
the ``data`` of a v2 tensor (an element of an ``inputs`` or ``outputs`` list) of
:data:`MIN_ARRAY` or more values, all numbers (nested lists flattened), is a float64 Arrow
array with no null (JSON has no NaN), which :mod:`kfloop.serving.events` takes as the column
it would have made of the list. :func:`load_envelopes` does the same for the ``data`` of
structured-mode CloudEvents, one or a batched-mode array of them. For the predictor,
:func:`load_request` reads the flat numbers of its numeric inputs into float64 numpy arrays.

The document is parsed by simdjson (``pysimdjson``) into its own tape, and only what the
decoders read becomes Python objects: a 1,024-row request's numbers are copied out of the
tape as doubles in C (``Array.as_buffer``), where ``orjson`` made a Python float of each
value and ``pa.array`` then read them back one by one. Strings, short tensors and everything
else become what ``orjson`` makes of them.

Only payloads of :data:`FAST_BYTES` or more are read this way. Anything simdjson does not take
as the decoders expect (malformed JSON, an integer past 64 bits, a number out of range, a
duplicated key, whose last value ``orjson`` keeps, a string that is not UTF-8) is read by
``orjson`` instead, so results and error messages are those of ``orjson`` wherever the two
could differ.
"""

from __future__ import annotations

from collections.abc import Container
from typing import Any, cast

import numpy as np
import orjson
import pyarrow as pa
import simdjson

FAST_BYTES = 32 * 1024
"""Payloads shorter than this are read by ``orjson`` alone (a batch: when its first four
events start within four times this, :func:`_small_events`). A lazy document costs a call
per key, and below about 256 rows a tensor's numbers save less than that: decoding a request
of the demo model's 11 features (orjson, then :func:`~kfloop.serving.events.decode_request`)
took 11 us at 1 row against 28 us through simdjson, 143 against 144 us at 256 rows (20 KB),
447 against 359 us at 1,024 rows (77 KB); a batch of 64 one-row events, 668 against 1,907
us."""

MIN_ARRAY = 16
"""A tensor's ``data`` of fewer values stays a list (the decoders keep short columns as
lists); the same as :data:`kfloop.serving.events.ARROW_ROWS`."""

_TENSOR_LISTS = ("inputs", "outputs")
_FLOAT64 = np.dtype(np.float64)
_ARROW_FLOAT64 = pa.float64()
_WHITESPACE = b" \t\n\r"  # JSON's
_SMALL_EVENTS = 4
_NUMBERS = (float, int)  # not bool: a boolean tensor is walked, as orjson's list would be
# What pysimdjson raises on a document or a value it does not take: ValueError (malformed
# JSON, a number out of range, a bad string; UnicodeDecodeError is one), RuntimeError (an
# integer past 64 bits), TypeError (a value of another type than asked for).
_NOT_TAKEN = (ValueError, RuntimeError, TypeError)


class _Duplicate(Exception):
    """An object repeats a key: ``orjson`` keeps the last value, simdjson's lookup the first."""


def _list_after_comma(raw: bytes) -> bool:
    """Whether a list in ``raw`` follows a comma: its ``[`` looked at one by one (``find`` of
    one byte is a ``memchr``), up to the first that does. A body of flat tensors has a few
    dozen, a nested one has such a list among its first: 5 us for a 1,024-row body of 77 KB,
    where a regular expression tried every comma (160 us), and a search for ``[]`` (a
    two-byte needle) read every byte (65 us). One in a string counts too, which only takes
    the slower path."""
    at = raw.find(b"[")
    while at != -1:
        before = at - 1
        while before >= 0 and raw[before] in _WHITESPACE:
            before -= 1
        if before >= 0 and raw[before] == 0x2C:  # ","
            return True
        at = raw.find(b"[", at + 1)
    return False


def _keys(obj: simdjson.Object) -> list[str]:
    keys: list[str] = list(obj.keys())
    if len(set(keys)) != len(keys):
        raise _Duplicate
    return keys


def _plain(value: Any) -> Any:
    """A value as ``orjson`` gives it."""
    if isinstance(value, simdjson.Object):
        return value.as_dict()
    if isinstance(value, simdjson.Array):
        return value.as_list()
    return value


def _doubles(value: simdjson.Array, first: Any) -> np.ndarray | None:
    """Every number of ``value`` (nested lists flattened) as float64, or None when its
    ``first`` number is not one or a null, a string or a boolean comes further on."""
    if type(first) not in _NUMBERS:
        return None
    try:
        return np.frombuffer(value.as_buffer(of_type="d"), _FLOAT64)
    except TypeError:
        return None


class _Reader:
    """Converts one simdjson document (parsed from ``raw``) as ``orjson`` would read it, but
    for the numbers of v2 tensors."""

    def __init__(self, raw: bytes) -> None:
        self.raw = raw
        self._after_comma: bool | None = None

    def list_after_comma(self) -> bool:
        """Whether a list in the body follows a comma (found once, when first asked)."""
        if self._after_comma is None:
            self._after_comma = _list_after_comma(self.raw)
        return self._after_comma

    def data(self, value: Any) -> Any:
        """A tensor's ``data``: a float64 Arrow array when it is a long array of numbers."""
        if not isinstance(value, simdjson.Array) or len(value) < MIN_ARRAY:
            return _plain(value)
        first = value[0]
        nested = isinstance(first, simdjson.Array)
        while isinstance(first, simdjson.Array) and len(first):  # nested: its first number
            first = first[0]
        # Every nested list is flattened, as the decoders flatten a tensor whose first is one.
        doubles = _doubles(value, first)
        if doubles is None:
            return value.as_list()
        # A flat tensor (its first value a number) is walked value by value, where a list in it
        # is read as its one value or is a wrong type, not flattened: taken only when no list
        # in the body follows a comma (then none is in it).
        if not nested and (self.list_after_comma() or len(doubles) != len(value)):
            return value.as_list()
        return pa.array(doubles, _ARROW_FLOAT64)  # the same memory: JSON has no NaN

    def tensor(self, value: Any) -> Any:
        if not isinstance(value, simdjson.Object):
            return _plain(value)
        return {k: self.data(value[k]) if k == "data" else _plain(value[k]) for k in _keys(value)}

    def payload(self, obj: simdjson.Object) -> dict[str, Any]:
        out: dict[str, Any] = {}
        for key in _keys(obj):
            value = obj[key]
            if key in _TENSOR_LISTS and isinstance(value, simdjson.Array):
                out[key] = [self.tensor(t) for t in value]
            else:
                out[key] = _plain(value)
        return out

    def envelope(self, value: Any) -> Any:
        """A structured-mode CloudEvent: its ``data`` read as a payload."""
        if not isinstance(value, simdjson.Object):
            return _plain(value)
        out: dict[str, Any] = {}
        for key in _keys(value):
            item = value[key]
            if key == "data" and isinstance(item, simdjson.Object):
                out[key] = self.payload(item)
            else:
                out[key] = _plain(item)
        return out


class _RequestReader(_Reader):
    """The predictor's reading of a v2 request: the flat ``data`` of a numeric input as a
    float64 numpy array, which :func:`~kfloop.serving.signature.numeric_column` makes float32
    as it makes the list (a double, then float32, whatever the reader)."""

    def __init__(self, raw: bytes, numeric: Container[str]) -> None:
        super().__init__(raw)
        self.numeric = numeric

    def tensor(self, value: Any) -> Any:
        if not isinstance(value, simdjson.Object):
            return _plain(value)
        keys = _keys(value)
        name = value["name"] if "name" in keys else None
        if not (isinstance(name, str) and name in self.numeric):
            return {k: _plain(value[k]) for k in keys}
        return {k: self.numbers(value[k]) if k == "data" else _plain(value[k]) for k in keys}

    def numbers(self, value: Any) -> Any:
        """Flat numbers (the caller checked that no list follows a comma in the body) as
        float64; anything else as ``orjson`` gives it."""
        if not isinstance(value, simdjson.Array) or len(value) < MIN_ARRAY:
            return _plain(value)
        doubles = _doubles(value, value[0])
        return value.as_list() if doubles is None else doubles


def _small_events(raw: bytes) -> bool:
    """Whether a batch's events start less than :data:`FAST_BYTES` apart, on average over
    its first four (each has its ``"specversion"``): a bounded scan, where counting them
    all took 350 us of a 1 MB batch. A string that holds it only takes the slower path."""
    needle, window = b'"specversion"', _SMALL_EVENTS * FAST_BYTES
    found, at = 0, raw.find(needle, 0, window)
    while at != -1:
        found += 1
        if found >= _SMALL_EVENTS:
            return True
        at = raw.find(needle, at + 1, window)
    return False


def _parse(raw: bytes | str) -> Any | None:
    """The simdjson document of ``raw``, or None when ``orjson`` is to read it."""
    if isinstance(raw, str) or len(raw) < FAST_BYTES:
        return None
    try:
        # A parser per document: a reused one refuses to parse while a value of the last
        # document is still referenced (costs nothing measurable at these sizes).
        return simdjson.Parser().parse(raw)
    except _NOT_TAKEN:
        return None


def load_payload(raw: bytes | str) -> Any:
    """An inference payload's JSON (see the module docs).

    Raises:
        ValueError: ``raw`` is not JSON (``orjson``'s error).
    """
    doc = _parse(raw)
    if isinstance(doc, simdjson.Object):
        try:
            return _Reader(cast(bytes, raw)).payload(doc)
        except (_Duplicate, *_NOT_TAKEN):
            pass
    return orjson.loads(raw)


def load_envelopes(raw: bytes | str) -> Any:
    """A structured-mode CloudEvent, or a batched-mode JSON array of them, each one's ``data``
    read as :func:`load_payload` reads a payload.

    Raises:
        ValueError: ``raw`` is not JSON (``orjson``'s error).
    """
    doc = None if isinstance(raw, bytes) and _small_events(raw) else _parse(raw)
    try:
        if isinstance(doc, simdjson.Array):
            reader = _Reader(cast(bytes, raw))
            return [reader.envelope(item) for item in doc]
        if isinstance(doc, simdjson.Object):
            return _Reader(cast(bytes, raw)).envelope(doc)
    except (_Duplicate, *_NOT_TAKEN):
        pass
    return orjson.loads(raw)


def load_request(raw: bytes, numeric: Container[str]) -> Any:
    """A v2 inference request's JSON as the predictor reads it: what ``orjson.loads`` gives,
    except that the ``data`` of an ``inputs`` tensor named in ``numeric``, flat, of
    :data:`MIN_ARRAY` or more numbers, is a read-only float64 numpy array.

    Only a body of :data:`FAST_BYTES` or more in which no list follows a comma is read this
    way: a flat tensor with a list further on (which numpy refuses as ragged, where simdjson
    would flatten it) and nested tensors (``[[v], [v]]``) are read by ``orjson``.

    Raises:
        ValueError: ``raw`` is not JSON (``orjson``'s error).
    """
    if len(raw) < FAST_BYTES or not numeric or _list_after_comma(raw):
        return orjson.loads(raw)
    doc = _parse(raw)
    if isinstance(doc, simdjson.Object):
        try:
            return _RequestReader(raw, numeric).payload(doc)
        except (_Duplicate, *_NOT_TAKEN):
            pass
    return orjson.loads(raw)
