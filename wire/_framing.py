"""CBOR sequences (RFC 8742): CBOR items back to back on a byte stream.

A stream socket delivers bytes in chunks that have nothing to do with item
boundaries, so the decoder keeps the bytes of an unfinished item and yields
each item once its last byte has arrived.  cbor2 tells a short read
(``CBORDecodeEOF``: wait for more) apart from malformed input (anything else:
``WireError``), so no framing of our own is needed.
"""

from __future__ import annotations

import io
from collections.abc import Iterable, Iterator
from typing import Any

import cbor2

__all__ = [
    "DEFAULT_MAX_ITEM_SIZE",
    "CborSequenceDecoder",
    "ItemTooLarge",
    "MalformedItem",
    "TruncatedItem",
    "WireError",
    "decode_sequence",
    "encode_item",
]

# A span is a few hundred bytes; 1 MiB leaves room for big attribute values
# while bounding what a peer that never finishes an item can make us buffer.
DEFAULT_MAX_ITEM_SIZE = 1 << 20
# Messages nest four deep at most; the limit only has to stop a stack blow-up.
_MAX_DEPTH = 64


def _strict_options() -> dict[str, bool]:
    """Decoder options that refuse duplicate map keys and non-text-like keys.

    cbor2's pure-Python decoder (the 5.x series, used where no compiled
    cbor2 can be installed, e.g. the one-file zipapp) has neither option:
    there a duplicate key keeps its last value, and the item size limit is
    what bounds a map of crafted keys.
    """
    strict = {"allow_duplicate_keys": False, "strict_hashable_types": True}
    try:
        cbor2.CBORDecoder(io.BytesIO(b""), **strict)
    except TypeError:
        return {}
    return strict


_STRICT = _strict_options()


class WireError(Exception):
    """The peer broke the wire protocol (bad CBOR, oversized or unfinished item, bad message)."""


class MalformedItem(WireError):
    """The bytes are not well-formed CBOR."""

    def __init__(self, message: str, offset: int) -> None:
        super().__init__(f"{message} (item starting at stream offset {offset})")
        self.offset = offset


class ItemTooLarge(WireError):
    """An item grew past the decoder's size limit before it was complete."""


class TruncatedItem(WireError):
    """The stream ended inside an item."""


def encode_item(item: Any) -> bytes:
    """One item of a CBOR sequence: its CBOR encoding, nothing around it."""
    return cbor2.dumps(item)


class CborSequenceDecoder:
    """Incremental decoder: feed it byte chunks, get complete items back.

    Items may be split at any byte.  After a ``WireError`` the stream has no
    recoverable boundary left, so the decoder refuses further input.
    """

    __slots__ = ("_buffer", "_max_item_size", "_offset", "_failed")

    def __init__(self, max_item_size: int = DEFAULT_MAX_ITEM_SIZE) -> None:
        self._buffer = bytearray()
        self._max_item_size = max_item_size
        self._offset = 0  # stream offset of _buffer[0], for error messages
        self._failed: WireError | None = None

    @property
    def pending(self) -> int:
        """Bytes held for an item that is not complete yet."""
        return len(self._buffer)

    def feed(self, chunk: bytes | bytearray | memoryview) -> list[Any]:
        """Add bytes; return the items they complete, in stream order."""
        if self._failed is not None:
            raise self._failed
        if not chunk:
            return []
        self._buffer += chunk
        items: list[Any] = []
        # One decoder for all the items in the buffer: its file position after
        # each decode is where the next item starts.
        stream = io.BytesIO(self._buffer)
        decoder = cbor2.CBORDecoder(
            stream,
            max_depth=_MAX_DEPTH,
            # Every map key of the protocol is text; refusing other keys also
            # closes the door on maps of crafted colliding integer keys.
            **_STRICT,
        )
        consumed = 0
        end = len(self._buffer)
        while consumed < end:
            try:
                item = decoder.decode()
            except cbor2.CBORDecodeEOF:
                break
            except Exception as exc:  # noqa: BLE001 - cbor2 and its tag hooks raise many kinds
                self._fail(MalformedItem(f"malformed CBOR: {exc}", self._offset + consumed))
            items.append(item)
            consumed = stream.tell()
        if consumed:
            del self._buffer[:consumed]
            self._offset += consumed
        if len(self._buffer) > self._max_item_size:
            self._fail(ItemTooLarge(
                f"CBOR item at stream offset {self._offset} is still incomplete after "
                f"{len(self._buffer)} bytes (limit {self._max_item_size})"))
        return items

    def close(self) -> None:
        """The stream ended: raise ``TruncatedItem`` if it ended inside an item."""
        if self._failed is not None:
            raise self._failed
        if self._buffer:
            self._fail(TruncatedItem(
                f"stream ended {len(self._buffer)} bytes into a CBOR item "
                f"at stream offset {self._offset}"))

    def _fail(self, error: WireError) -> None:
        self._failed = error
        self._buffer.clear()
        raise error


def decode_sequence(chunks: Iterable[bytes], max_item_size: int = DEFAULT_MAX_ITEM_SIZE) -> Iterator[Any]:
    """Decode a whole CBOR sequence given as chunks; ``TruncatedItem`` if it ends mid-item."""
    decoder = CborSequenceDecoder(max_item_size)
    for chunk in chunks:
        yield from decoder.feed(chunk)
    decoder.close()
