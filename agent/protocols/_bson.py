"""A bounded BSON reader for observed MongoDB traffic.

Reads what a protocol handler needs from a document that may be cut short
by the capture: keys in order, scalar values, nested documents and arrays.
It never buffers more than it is given, never recurses deeper than
``MAX_DEPTH``, keeps at most ``MAX_ELEMENTS`` elements per call (the rest of
each document is skipped by its length) and cuts strings to ``MAX_STRING``
characters.

Two ways a document can end early, told apart:

- cut by the capture (the bytes stop inside it): what was read is returned
  with ``complete`` False;
- malformed (a length or a type byte that cannot be, an element running past
  its document's declared end, a key without its NUL): :class:`BsonError`.

Values: double -> float, string/code/symbol -> str, document and array ->
:class:`Document`, bool, null/undefined -> None, int32/int64/datetime/
timestamp -> int, everything else (binary, ObjectId, regex, decimal128,
DBPointer, min/max key, code with scope) -> :class:`Other` naming its type.
"""

from __future__ import annotations

import struct
from typing import Any, Final

__all__ = ["MAX_DEPTH", "MAX_ELEMENTS", "MAX_STRING", "BsonError", "Document", "Other",
           "decode_document", "document_length", "find_nul"]

MAX_DEPTH: Final = 16          # nesting kept; deeper documents become Other("document")
MAX_ELEMENTS: Final = 512      # elements kept per decode_document call, all depths together
MAX_STRING: Final = 256        # characters kept of a string value
MAX_KEY: Final = 128           # bytes kept of a key
MAX_DOCUMENT: Final = 48_000_000   # larger is not a MongoDB document (the server's message cap)

_I32 = struct.Struct("<i").unpack_from
_I64 = struct.Struct("<q").unpack_from
_U64 = struct.Struct("<Q").unpack_from
_F64 = struct.Struct("<d").unpack_from

# Fixed-size types: type byte -> (size, name of the Other it becomes, or None: decoded)
_FIXED: Final = {
    0x01: 8,    # double
    0x07: 12,   # ObjectId
    0x08: 1,    # bool
    0x09: 8,    # UTC datetime
    0x10: 4,    # int32
    0x11: 8,    # timestamp
    0x12: 8,    # int64
    0x13: 16,   # decimal128
}
_EMPTY: Final = frozenset({0x06, 0x0A, 0x7F, 0xFF})  # undefined, null, max key, min key
_STRINGS: Final = frozenset({0x02, 0x0D, 0x0E})       # string, JavaScript code, symbol
_OTHER_NAMES: Final = {
    0x05: "binary", 0x06: "undefined", 0x07: "objectId", 0x0B: "regex", 0x0C: "dbPointer",
    0x0F: "codeWithScope", 0x13: "decimal128", 0x7F: "maxKey", 0xFF: "minKey", 0x03: "document",
    0x04: "array",
}


class BsonError(ValueError):
    """The bytes are not BSON (as opposed to BSON cut short by the capture)."""


class Other:
    """A value the reader does not convert (binary, ObjectId, ...): its type only."""

    __slots__ = ("kind",)

    def __init__(self, kind: str) -> None:
        self.kind = kind

    def __eq__(self, other: object) -> bool:
        return isinstance(other, Other) and other.kind == self.kind

    def __hash__(self) -> int:
        return hash(self.kind)

    def __repr__(self) -> str:
        return f"Other({self.kind!r})"


class Document:
    """A decoded document or array: ``items`` in wire order.

    ``complete`` is False when the capture or a bound cut it (some elements
    are missing); ``length`` is its declared size in bytes.
    """

    __slots__ = ("items", "complete", "array", "length")

    def __init__(self, array: bool, length: int) -> None:
        self.items: list[tuple[str, Any]] = []
        self.complete = True
        self.array = array
        self.length = length

    def get(self, key: str, default: Any = None) -> Any:
        for k, v in self.items:
            if k == key:
                return v
        return default

    def first(self) -> tuple[str, Any] | None:
        return self.items[0] if self.items else None

    def values(self) -> list[Any]:
        return [v for _, v in self.items]

    def __len__(self) -> int:
        return len(self.items)

    def __eq__(self, other: object) -> bool:
        return (isinstance(other, Document) and other.items == self.items
                and other.complete == self.complete and other.array == self.array)

    def __repr__(self) -> str:
        body = ", ".join(f"{k!r}: {v!r}" for k, v in self.items)
        cut = "" if self.complete else ", ..."
        return f"[{body}{cut}]" if self.array else f"{{{body}{cut}}}"


def document_length(data: bytes | memoryview, pos: int = 0) -> int | None:
    """The declared length of the document at ``pos``; None if fewer than 4 bytes are there.

    Raises BsonError for a length no document can have.
    """
    if len(data) - pos < 4:
        return None
    length = _I32(data, pos)[0]
    if length < 5 or length > MAX_DOCUMENT:
        raise BsonError(f"document length {length}")
    return length


class _Budget:
    __slots__ = ("left",)

    def __init__(self, elements: int) -> None:
        self.left = elements


def decode_document(data: bytes | memoryview, pos: int = 0, *, max_elements: int = MAX_ELEMENTS,
                    descend: frozenset[str] | None = None,
                    skip: frozenset[str] = frozenset()) -> tuple[Document, int]:
    """The document at ``data[pos:]`` and the offset just past its declared end.

    The end may lie beyond ``len(data)`` when the capture cut the document.
    With ``descend``, only the top-level documents and arrays under those
    keys are decoded; the others are stepped over by their length and read
    as Other("document") or Other("array") (a reply's batch of documents
    costs nothing).  ``skip`` steps over those under its keys the same way.  Raises BsonError when the bytes are malformed, or when
    not even the 4-byte length is there.
    """
    length = document_length(data, pos)
    if length is None:
        raise BsonError("no document length")
    doc = _decode(data, pos, length, False, 0, _Budget(max_elements), descend, skip)
    return doc, pos + length


def _decode(data: bytes | memoryview, pos: int, length: int, array: bool, depth: int,
            budget: _Budget, descend: frozenset[str] | None = None,
            skip: frozenset[str] = frozenset()) -> Document:
    doc = Document(array, length)
    end = pos + length          # declared end: the terminating NUL is at end - 1
    have = len(data)
    stop = end - 1 if end - 1 < have else have
    items = doc.items
    at = pos + 4
    while True:
        if at >= have:
            doc.complete = False          # cut by the capture
            return doc
        kind = data[at]
        if kind == 0:
            if at != end - 1:
                raise BsonError("document ends before its declared length")
            return doc
        if at >= end - 1:
            raise BsonError("element past the document's declared end")
        if budget.left <= 0:
            doc.complete = False          # a bound, not the capture: the rest is skipped
            return doc
        # key: a cstring
        key_end = find_nul(data, at + 1, stop)
        if key_end < 0:
            if stop < end - 1:
                doc.complete = False      # the capture ends inside the key
                return doc
            raise BsonError("key without NUL")
        key_bytes = bytes(data[at + 1:min(key_end, at + 1 + MAX_KEY)])
        key = key_bytes.decode("utf-8", "replace")
        at = key_end + 1
        value, at = _value(data, kind, at, end, have,
                           MAX_DEPTH if (descend is not None and key not in descend) or key in skip
                           else depth, budget)
        if value is _CUT:
            doc.complete = False
            return doc
        budget.left -= 1
        items.append((key, value))


class _Cut:
    """Marker: the capture ended inside the value."""


_CUT: Final = _Cut()


def find_nul(data: bytes | memoryview, start: int, stop: int) -> int:
    """The offset of the first NUL in ``data[start:stop]``, or -1."""
    if isinstance(data, bytes):
        return data.find(b"\0", start, stop)
    for i in range(start, stop):
        if data[i] == 0:
            return i
    return -1


def _value(data: bytes | memoryview, kind: int, at: int, end: int, have: int, depth: int,
           budget: _Budget) -> tuple[Any, int]:
    """(value, offset after it); value is _CUT when the capture ends inside it."""
    size = _FIXED.get(kind)
    if size is not None:
        after = at + size
        if after > end - 1:
            raise BsonError(f"type {kind:#x} runs past its document")
        if after > have:
            return _CUT, after
        if kind == 0x10:
            return _I32(data, at)[0], after
        if kind == 0x12 or kind == 0x09:
            return _I64(data, at)[0], after
        if kind == 0x01:
            return _F64(data, at)[0], after
        if kind == 0x08:
            b = data[at]
            if b > 1:
                raise BsonError("bool neither 0 nor 1")
            return b == 1, after
        if kind == 0x11:
            return _U64(data, at)[0], after
        return Other(_OTHER_NAMES[kind]), after
    if kind in _EMPTY:
        return (None if kind in (0x06, 0x0A) else Other(_OTHER_NAMES[kind])), at
    if kind in _STRINGS:
        return _string(data, at, end, have)
    if kind == 0x03 or kind == 0x04:
        if at + 4 > have:
            return _CUT, at
        length = _I32(data, at)[0]
        if length < 5 or at + length > end - 1:
            raise BsonError("embedded document length")
        if depth + 1 >= MAX_DEPTH:
            return Other(_OTHER_NAMES[kind]), at + length
        sub = _decode(data, at, length, kind == 0x04, depth + 1, budget)
        return sub, at + length       # a cut sub-document still counts as this element
    if kind == 0x05:  # binary: int32 length, subtype, bytes
        if at + 4 > have:
            return _CUT, at
        length = _I32(data, at)[0]
        after = at + 5 + length
        if length < 0 or after > end - 1:
            raise BsonError("binary length")
        return Other("binary"), after
    if kind == 0x0B:  # regex: two cstrings
        first = find_nul(data, at, min(end - 1, have))
        if first < 0:
            if have < end - 1:
                return _CUT, at
            raise BsonError("regex without NUL")
        second = find_nul(data, first + 1, min(end - 1, have))
        if second < 0:
            if have < end - 1:
                return _CUT, at
            raise BsonError("regex options without NUL")
        return Other("regex"), second + 1
    if kind == 0x0C:  # DBPointer: string, then 12 bytes
        _, after = _string(data, at, end, have)
        if after + 12 > end - 1:
            raise BsonError("dbPointer runs past its document")
        return Other("dbPointer"), after + 12
    if kind == 0x0F:  # code with scope: int32 total length, string, document
        if at + 4 > have:
            return _CUT, at
        length = _I32(data, at)[0]
        if length < 14 or at + length > end - 1:
            raise BsonError("codeWithScope length")
        return Other("codeWithScope"), at + length
    raise BsonError(f"unknown type {kind:#x}")


def _string(data: bytes | memoryview, at: int, end: int, have: int) -> tuple[Any, int]:
    """int32 length (counting the NUL), UTF-8 bytes, NUL."""
    if at + 4 > have:
        if at + 4 > end - 1:
            raise BsonError("string runs past its document")
        return _CUT, at
    length = _I32(data, at)[0]
    after = at + 4 + length
    if length < 1 or after > end - 1:
        raise BsonError("string length")
    if after <= have:
        if data[after - 1] != 0:
            raise BsonError("string without NUL")
        text = bytes(data[at + 4:min(after - 1, at + 4 + 4 * MAX_STRING)])
        return text.decode("utf-8", "replace")[:MAX_STRING], after
    return _CUT, after
