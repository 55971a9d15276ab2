"""CBOR sequences (RFC 8742): CBOR items back to back on a byte stream.

A stream socket delivers bytes in chunks that have nothing to do with item
boundaries, so the decoder keeps the bytes of an unfinished item and yields
each item once its last byte has arrived.  cbor2 tells a short read
(``CBORDecodeEOF``: wait for more) apart from malformed input (anything else:
``WireError``), so no framing of our own is needed.

Complete items are decoded by cbor2 straight from the buffer.  An item cut
short is not handed to cbor2 again on every chunk (an item dripped in small
writes would be decoded from its start each time: quadratic work a peer
chooses): a ``_Frontier`` walks the CBOR heads of the unfinished item once,
byte strings skipped by length, and cbor2 decodes the item when the walk
says its last byte is in.  A declared length beyond the size limit is refused
as soon as its head arrives.
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


class _BadHead(Exception):
    """A CBOR head that no well-formed item has (reported as ``MalformedItem``)."""


class _Oversized(Exception):
    """A declared length beyond the size limit (reported as ``ItemTooLarge``)."""


# Stack entries of _Frontier for containers of unknown length (otherwise: items still due).
_INDEFINITE = -1
_INDEFINITE_STRING = {2: -2, 3: -3}  # chunks of a byte / text string of unknown length


class _Frontier:
    """Where the unfinished item at the front of a buffer ends, found by walking
    its CBOR heads once across any number of chunks.

    It needs only well-formed heads and lengths; whatever else is wrong with
    the item is cbor2's to find when it decodes it.  Nesting is bounded.
    """

    __slots__ = ("pos", "_stack", "_skip", "_max_item_size")

    def __init__(self, max_item_size: int) -> None:
        self.pos = 0        # buffer offset walked so far
        self._stack: list[int] = []
        self._skip = 0      # string bytes still to pass over
        self._max_item_size = max_item_size

    def advance(self, buf: bytearray) -> bool:
        """Walk the new bytes of ``buf``; True once the item's last byte is in (it ends at ``pos``)."""
        pos, end, stack = self.pos, len(buf), self._stack
        while True:
            if self._skip:
                step = min(self._skip, end - pos)
                pos += step
                self._skip -= step
                if self._skip:
                    break
            else:
                if pos >= end:
                    break
                head = buf[pos]
                major, info = head >> 5, head & 31
                if info < 24:
                    value, size = info, 1
                elif info < 28:
                    size = 1 + (1 << (info - 24))
                    if pos + size > end:
                        break  # the head itself is not complete yet
                    value = int.from_bytes(buf[pos + 1:pos + size], "big")
                elif info == 31:
                    value, size = -1, 1
                else:
                    raise _BadHead(f"reserved additional information {info}")
                pos += size
                if not self._open(major, value):
                    continue  # a container or tag opened, or string bytes to skip
            # One item is complete: close every container it completes.
            while stack and stack[-1] > 0:
                stack[-1] -= 1
                if stack[-1]:
                    break
                stack.pop()
            else:
                if not stack:
                    self.pos = pos
                    return True
        self.pos = pos
        return False

    def _open(self, major: int, value: int) -> bool:
        """Account for one head; True when it is a whole item by itself."""
        stack = self._stack
        in_string = stack[-1] if stack and stack[-1] < _INDEFINITE else None
        if value < 0:  # additional information 31
            if major == 7:  # break
                if not stack or stack[-1] > 0:
                    raise _BadHead("break outside an indefinite-length item")
                stack.pop()
                return True  # the container it closes is complete
            if in_string is not None:
                raise _BadHead("nested indefinite-length string")
            if major in _INDEFINITE_STRING:
                stack.append(_INDEFINITE_STRING[major])
            elif major in (4, 5):
                stack.append(_INDEFINITE)
            else:
                raise _BadHead(f"indefinite length for major type {major}")
            self._check_depth()
            return False
        if in_string is not None and _INDEFINITE_STRING.get(major) != in_string:
            raise _BadHead("indefinite-length string chunk of another type")
        if major in (2, 3):
            if value > self._max_item_size:
                raise _Oversized(f"declares a string of {value} bytes")
            self._skip = value
            return not value
        if major in (4, 5, 6):
            count = value * 2 if major == 5 else value if major == 4 else 1
            if not count:
                return True
            stack.append(count)
            self._check_depth()
            return False
        return True  # integers, simple values, floats

    def _check_depth(self) -> None:
        if len(self._stack) > _MAX_DEPTH:
            raise _BadHead(f"nested deeper than {_MAX_DEPTH}")


class CborSequenceDecoder:
    """Incremental decoder: feed it byte chunks, get complete items back.

    Items may be split at any byte; each byte is looked at a bounded number
    of times however the stream is split.  After a ``WireError`` the stream
    has no recoverable boundary left, so the decoder refuses further input.
    """

    __slots__ = ("_buffer", "_max_item_size", "_offset", "_failed", "_frontier")

    def __init__(self, max_item_size: int = DEFAULT_MAX_ITEM_SIZE) -> None:
        self._buffer = bytearray()
        self._max_item_size = max_item_size
        self._offset = 0  # stream offset of _buffer[0], for error messages
        self._failed: WireError | None = None
        self._frontier: _Frontier | None = None  # set while the front item is unfinished

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
        try:
            while self._buffer:
                frontier = self._frontier
                if frontier is None:
                    self._decode_complete(items)
                    if not self._buffer:
                        break
                    frontier = self._frontier = _Frontier(self._max_item_size)
                if not frontier.advance(self._buffer):
                    break
                items.append(self._decode_one(frontier.pos))
                self._frontier = None
        except _BadHead as exc:
            self._fail(MalformedItem(f"malformed CBOR: {exc}", self._offset))
        except _Oversized as exc:
            self._fail(ItemTooLarge(f"CBOR item at stream offset {self._offset} {exc}, more than the "
                                    f"limit of {self._max_item_size}"))
        except WireError as exc:
            self._fail(exc)
        if len(self._buffer) > self._max_item_size:
            self._fail(ItemTooLarge(
                f"CBOR item at stream offset {self._offset} is still incomplete after "
                f"{len(self._buffer)} bytes (limit {self._max_item_size})"))
        return items

    def _decoder(self, stream: io.BytesIO) -> cbor2.CBORDecoder:
        return cbor2.CBORDecoder(
            stream,
            max_depth=_MAX_DEPTH,
            # Every map key of the protocol is text; refusing other keys also
            # closes the door on maps of crafted colliding integer keys.
            **_STRICT,
        )

    def _decode_complete(self, items: list[Any]) -> None:
        """Decode the items at the front of the buffer up to the first unfinished one."""
        # One decoder for all of them: its position after each is where the next starts.
        stream = io.BytesIO(self._buffer)
        decoder = self._decoder(stream)
        consumed = 0
        end = len(self._buffer)
        while consumed < end:
            try:
                item = decoder.decode()
            except cbor2.CBORDecodeEOF:
                break
            except Exception as exc:  # noqa: BLE001 - cbor2 and its tag hooks raise many kinds
                self._consume(consumed)
                raise MalformedItem(f"malformed CBOR: {exc}", self._offset) from None
            items.append(item)
            consumed = stream.tell()
        self._consume(consumed)

    def _decode_one(self, size: int) -> Any:
        """Decode the item that is exactly the first ``size`` bytes of the buffer."""
        stream = io.BytesIO(self._buffer[:size])
        try:
            item = self._decoder(stream).decode()
        except Exception as exc:  # noqa: BLE001 - as above; EOF here means heads that lied
            raise MalformedItem(f"malformed CBOR: {exc}", self._offset) from None
        if stream.tell() != size:
            raise MalformedItem("malformed CBOR: item shorter than its heads say", self._offset)
        self._consume(size)
        return item

    def _consume(self, size: int) -> None:
        if size:
            del self._buffer[:size]
            self._offset += size

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
        self._frontier = None
        raise error


def decode_sequence(chunks: Iterable[bytes], max_item_size: int = DEFAULT_MAX_ITEM_SIZE) -> Iterator[Any]:
    """Decode a whole CBOR sequence given as chunks; ``TruncatedItem`` if it ends mid-item."""
    decoder = CborSequenceDecoder(max_item_size)
    for chunk in chunks:
        yield from decoder.feed(chunk)
    decoder.close()
