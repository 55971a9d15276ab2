"""HTTP/2 (RFC 9113) and gRPC exchanges from the bytes of a connection's syscalls.

Three layers, bottom up:

* ``_Reader`` turns one direction's bytes into frames.  It counts lengths, so a
  frame whose payload went uncaptured (captures stop at a few KiB while
  ``total_len`` says what the syscall moved) is stepped over without its
  bytes.  TCP sequence numbers, when the tracer has them, reveal syscalls that
  never reached us (lost events): their bytes are counted as uncaptured too.
  Only a frame *header* that was not captured loses the framing; the reader
  then waits for a syscall that starts with a convincing chain of frames.
* ``HeaderDecoder`` is HPACK (RFC 7541) that knows what it does not know.  The
  dynamic table is a FIFO addressed from its newest entry, so when a header
  block is lost the entries it (and everything before it) inserted become
  unknown, yet every entry inserted afterwards sits at an exactly known index.
  References into the unknown part decode as "unknown" instead of as the
  wrong field: after a loss we never guess, we only report what is certain.
* ``Http2Handler`` keeps the streams of one connection (each a request and a
  response, paired by stream id, many at once) and describes every finished
  stream as a span, gRPC included.

Detection (``looks_like_http2``): the client preface; a server's first
SETTINGS frame (not an ACK, stream 0, known parameters with legal values,
and only frames after it); or, for a connection joined mid-stream, two
plausible frame headers back to back (type 0-9, flags the type defines,
reserved bit clear, stream-id and length rules of the type, length within
16 KiB).  The frame walk after losing the framing uses the same test, with
the largest SETTINGS_MAX_FRAME_SIZE either side announced.

Span facts, per client-initiated stream: ``http.request.method``,
``url.path``, ``url.query``, ``http.response.status_code``,
``user_agent.original``, ``http.request.body.size`` and
``http.response.body.size`` (DATA bytes, padding excluded),
``network.protocol.name`` "http", ``network.protocol.version`` "2",
``sidetrace.http2.stream_id``; for gRPC (content-type application/grpc*,
or a grpc-status) ``rpc.system`` "grpc", ``rpc.service``, ``rpc.method``,
``rpc.grpc.status_code`` (trailers or a Trailers-Only response), and the
name "package.Service/Method" (otherwise "METHOD /path").  Status "error"
for a non-zero grpc-status (message: grpc-message, percent-decoded;
``error.type``: the code's name), for HTTP 5xx (4xx too on client spans),
for a stream reset with an error code (``sidetrace.http2.error_code``) and
for streams a GOAWAY left unprocessed.  ``sidetrace.http.flags`` lists
what was missing: request_missing, response_missing (flushed at close or
when more than MAX_OPEN_STREAMS are open), headers_partial (some fields
unknown), headers_lost (a whole block), reset_by_client/server, refused.

Frames of even (server-initiated, pushed) streams keep the HPACK state in
step but are not reported.  Nothing here raises on bad input and every
buffer is bounded.
"""

from __future__ import annotations

import struct
from typing import Any
from urllib.parse import unquote_to_bytes

# Huffman decoding (RFC 7541, appendix B) from the hpack library.
from hpack.exceptions import HPACKDecodingError
from hpack.huffman_table import decode_huffman as _decode_huffman

from ._base import (BY_ID, EGRESS, INGRESS, ConnectionHints, Context, Handler, SpanFacts, opposite,
                    query_text)

__all__ = ["Http2Handler", "HeaderDecoder", "PREFACE", "looks_like_http2"]

PREFACE = b"PRI * HTTP/2.0\r\n\r\nSM\r\n\r\n"

# Frame types and flags (RFC 9113, section 6).
DATA, HEADERS, PRIORITY, RST_STREAM, SETTINGS, PUSH_PROMISE, PING, GOAWAY, WINDOW_UPDATE, \
    CONTINUATION = range(10)
END_STREAM = 0x1
ACK = 0x1
END_HEADERS = 0x4
PADDED = 0x8
PRIORITY_FLAG = 0x20
# Flags each known type defines: detection insists on no others.
_VALID_FLAGS = (0x09, 0x2D, 0, 0, 0x01, 0x0C, 0x01, 0, 0, 0x04)

DEFAULT_MAX_FRAME = 16384
MAX_HEADER_BLOCK = 64 * 1024   # a header block (HEADERS + CONTINUATIONs) we are willing to hold
MAX_OPEN_STREAMS = 256         # per connection; the oldest is flushed past this
MAX_TABLE_SIZE = 64 * 1024     # HPACK dynamic table, whatever the encoder asks for
MAX_STATUS_MESSAGE = 1024
_SEQ_MASK = 0xFFFFFFFF
_FRAME_HEADER = struct.Struct(">IBI")  # (length << 8 | type), flags, stream id

ERROR_CODES = ("NO_ERROR", "PROTOCOL_ERROR", "INTERNAL_ERROR", "FLOW_CONTROL_ERROR",
               "SETTINGS_TIMEOUT", "STREAM_CLOSED", "FRAME_SIZE_ERROR", "REFUSED_STREAM",
               "CANCEL", "COMPRESSION_ERROR", "CONNECT_ERROR", "ENHANCE_YOUR_CALM",
               "INADEQUATE_SECURITY", "HTTP_1_1_REQUIRED")
GRPC_CODES = ("OK", "CANCELLED", "UNKNOWN", "INVALID_ARGUMENT", "DEADLINE_EXCEEDED", "NOT_FOUND",
              "ALREADY_EXISTS", "PERMISSION_DENIED", "RESOURCE_EXHAUSTED", "FAILED_PRECONDITION",
              "ABORTED", "OUT_OF_RANGE", "UNIMPLEMENTED", "INTERNAL", "UNAVAILABLE", "DATA_LOSS",
              "UNAUTHENTICATED")


def _error_name(code: int) -> str:
    return ERROR_CODES[code] if 0 <= code < len(ERROR_CODES) else f"0x{code:x}"


# --- detection -----------------------------------------------------------------


def _plausible(length: int, kind: int, flags: int, stream: int, max_frame: int) -> bool:
    """Could these be the fields of a real frame header?  Strict: known types only."""
    if kind > CONTINUATION or stream & 0x80000000 or length > max_frame:
        return False
    if flags & ~_VALID_FLAGS[kind]:
        return False
    if kind in (SETTINGS, PING, GOAWAY):
        if stream:
            return False
        if kind == SETTINGS:
            return length % 6 == 0 and not (flags & ACK and length)
        if kind == PING:
            return length == 8
        return length >= 8
    if kind == WINDOW_UPDATE:
        return length == 4
    if not stream:
        return False
    if kind == PRIORITY:
        return length == 5
    if kind == RST_STREAM:
        return length == 4
    return True


def _frame_chain(data: bytes, total: int, max_frame: int) -> bool:
    """Does ``data`` (the captured start of ``total`` bytes) start with frames?

    Convincing means two plausible headers back to back within the captured
    bytes, or one whose frame ends exactly where the syscall's bytes end.
    """
    pos = 0
    headers = 0
    captured = len(data)
    while pos + 9 <= captured:
        word, flags, stream = _FRAME_HEADER.unpack_from(data, pos)
        length = word >> 8
        if not _plausible(length, word & 0xFF, flags, stream, max_frame):
            return False
        headers += 1
        pos += 9 + length
        if headers >= 2 or pos == total:
            return True
    return False


def _server_settings(data: bytes) -> bool:
    """A server's connection preface: a SETTINGS frame (not an ACK) first."""
    if len(data) < 9:
        return False
    word, flags, stream = _FRAME_HEADER.unpack_from(data, 0)
    length = word >> 8
    if word & 0xFF != SETTINGS or flags or stream or length % 6 or length > 6 * 32:
        return False
    end = 9 + length
    if len(data) < end:
        return False
    known = 0
    for at in range(9, end, 6):
        ident, value = struct.unpack_from(">HI", data, at)
        if ident == 2 and value > 1 or ident == 4 and value > 0x7FFFFFFF:
            return False
        if ident == 5 and not DEFAULT_MAX_FRAME <= value <= 0xFFFFFF:
            return False
        known += 1 <= ident <= 9 and ident != 7
    if length and not known:
        return False
    # Whatever follows in the same syscall must be frames too.
    return len(data) == end or (len(data) >= end + 9 and _frame_chain(data[end:], len(data) - end,
                                                                      DEFAULT_MAX_FRAME))


def looks_like_http2(data: bytes) -> bool:
    """The client preface, a server's first SETTINGS, or a run of frames (joined mid-stream)."""
    if data[:1] == b"P":
        return len(data) >= 14 and PREFACE.startswith(data[:24])
    return _server_settings(data) or _frame_chain(data, -1, DEFAULT_MAX_FRAME)


# --- HPACK ------------------------------------------------------------------------

STATIC_TABLE: tuple[tuple[bytes, bytes], ...] = tuple(
    (name.encode(), value.encode()) for name, value in (
        (":authority", ""), (":method", "GET"), (":method", "POST"), (":path", "/"),
        (":path", "/index.html"), (":scheme", "http"), (":scheme", "https"), (":status", "200"),
        (":status", "204"), (":status", "206"), (":status", "304"), (":status", "400"),
        (":status", "404"), (":status", "500"), ("accept-charset", ""),
        ("accept-encoding", "gzip, deflate"), ("accept-language", ""), ("accept-ranges", ""),
        ("accept", ""), ("access-control-allow-origin", ""), ("age", ""), ("allow", ""),
        ("authorization", ""), ("cache-control", ""), ("content-disposition", ""),
        ("content-encoding", ""), ("content-language", ""), ("content-length", ""),
        ("content-location", ""), ("content-range", ""), ("content-type", ""), ("cookie", ""),
        ("date", ""), ("etag", ""), ("expect", ""), ("expires", ""), ("from", ""), ("host", ""),
        ("if-match", ""), ("if-modified-since", ""), ("if-none-match", ""), ("if-range", ""),
        ("if-unmodified-since", ""), ("last-modified", ""), ("link", ""), ("location", ""),
        ("max-forwards", ""), ("proxy-authenticate", ""), ("proxy-authorization", ""),
        ("range", ""), ("referer", ""), ("refresh", ""), ("retry-after", ""), ("server", ""),
        ("set-cookie", ""), ("strict-transport-security", ""), ("transfer-encoding", ""),
        ("user-agent", ""), ("vary", ""), ("via", ""), ("www-authenticate", ""),
    ))
_STATIC_COUNT = len(STATIC_TABLE)  # 61


class _Malformed(Exception):
    """A header block that cannot be decoded any further."""


def _integer(block: bytes, pos: int, prefix_bits: int) -> tuple[int, int]:
    """An HPACK integer (RFC 7541, 5.1) starting at ``pos``: (value, next position)."""
    mask = (1 << prefix_bits) - 1
    value = block[pos] & mask
    pos += 1
    if value < mask:
        return value, pos
    shift = 0
    while True:
        if pos >= len(block) or shift > 28:  # truncated, or more than we ever need
            raise _Malformed
        byte = block[pos]
        pos += 1
        value += (byte & 0x7F) << shift
        shift += 7
        if not byte & 0x80:
            return value, pos


def _string(block: bytes, pos: int) -> tuple[bytes | None, int, int]:
    """An HPACK string literal: (text or None if undecodable, encoded length, next position)."""
    if pos >= len(block):
        raise _Malformed
    huffman = block[pos] & 0x80
    length, pos = _integer(block, pos, 7)
    end = pos + length
    if end > len(block):
        raise _Malformed
    raw = block[pos:end]
    if not huffman:
        return raw, length, end
    try:
        return _decode_huffman(raw), length, end
    except HPACKDecodingError:  # an invalid Huffman string: unknown text, table still in step
        return None, length, end


class HeaderDecoder:
    """HPACK decoding for one direction of one connection.

    ``complete`` is True while every entry of the dynamic table is known (the
    connection was followed from its start and no header block was lost).
    ``decode`` returns (fields, certain): fields are (name, value) pairs where
    either may be None when it comes from an unknown table entry or cannot be
    decoded; ``certain`` is False when any field was unknown.
    """

    __slots__ = ("entries", "size", "max_size", "complete")

    def __init__(self, complete: bool = True) -> None:
        # Oldest first: index 62 is entries[-1].  (name, value, size); name or value None = unknown.
        self.entries: list[tuple[bytes | None, bytes | None, int]] = []
        self.size = 0
        self.max_size = 4096
        self.complete = complete

    def forget(self) -> None:
        """A header block went by undecoded: every entry we hold moved by an unknown amount."""
        self.entries.clear()
        self.size = 0
        self.complete = False

    def _lookup(self, index: int) -> tuple[bytes | None, bytes | None]:
        if index <= _STATIC_COUNT:
            if index == 0:
                raise _Malformed
            return STATIC_TABLE[index - 1]
        back = index - _STATIC_COUNT
        entries = self.entries
        if back <= len(entries):
            name, value, _ = entries[-back]
            return name, value
        if self.complete:
            raise _Malformed  # beyond a table we know completely: not a block we can trust
        return None, None

    def _insert(self, name: bytes | None, value: bytes | None, name_len: int, value_len: int) -> None:
        # An entry's size is its decoded lengths + 32.  When a part is unknown its
        # encoded length stands in: evicting too little only keeps entries the
        # encoder no longer refers to; evicting too much only makes them unknown.
        size = 32 + (len(name) if name is not None else name_len) + \
            (len(value) if value is not None else value_len)
        if size > self.max_size:
            self.entries.clear()
            self.size = 0
            return
        self.entries.append((name, value, size))
        self.size += size
        self._evict()

    def _evict(self) -> None:
        entries = self.entries
        drop = 0
        while self.size > self.max_size and drop < len(entries):
            self.size -= entries[drop][2]
            drop += 1
        if drop:
            del entries[:drop]

    def decode(self, block: bytes) -> tuple[list[tuple[bytes | None, bytes | None]], bool]:
        fields: list[tuple[bytes | None, bytes | None]] = []
        certain = True
        pos = 0
        end = len(block)
        try:
            while pos < end:
                byte = block[pos]
                if byte & 0x80:  # indexed field
                    if byte < 0xBE:  # static table, one byte: the commonest field of all
                        if byte == 0x80:
                            raise _Malformed
                        name, value = STATIC_TABLE[byte - 0x81]
                        pos += 1
                        fields.append((name, value))
                        continue
                    if byte < 0xFF and byte - 0xBD <= len(self.entries):  # dynamic, one byte
                        name, value, _ = self.entries[0xBD - byte]
                        pos += 1
                        if name is None or value is None:
                            certain = False
                        fields.append((name, value))
                        continue
                    index, pos = _integer(block, pos, 7)
                    name, value = self._lookup(index)
                elif byte & 0x40 or not byte & 0x20:  # literal field, indexed name or new name
                    bits = 6 if byte & 0x40 else 4
                    index, pos = _integer(block, pos, bits)
                    if index:
                        name, _ = self._lookup(index)
                        name_len = len(name) if name is not None else 0
                    else:
                        name, name_len, pos = _string(block, pos)
                    value, value_len, pos = _string(block, pos)
                    if bits == 6:
                        self._insert(name, value, name_len, value_len)
                else:  # dynamic table size update
                    size, pos = _integer(block, pos, 5)
                    self.max_size = min(size, MAX_TABLE_SIZE)
                    self._evict()
                    continue
                if name is None or value is None:
                    certain = False
                fields.append((name, value))
        except _Malformed:
            # The encoder's table and ours may now differ in ways we cannot tell.
            self.forget()
            certain = False
        return fields, certain


# --- frames of one direction ------------------------------------------------------

_START, _PREFACE, _HEADER, _PAYLOAD, _LOST = range(5)


class _Block:
    """A header block being gathered from HEADERS/PUSH_PROMISE + CONTINUATION frames.

    ``cut``: some of it was not captured; ``data`` holds what came before the
    first missing byte, and nothing after it is added.
    """

    __slots__ = ("kind", "stream", "end_stream", "start_ns", "seq", "data", "cut")

    def __init__(self, kind: int, stream: int, end_stream: bool, start_ns: int,
                 seq: int | None) -> None:
        self.kind = kind
        self.stream = stream
        self.end_stream = end_stream
        self.start_ns = start_ns
        self.seq = seq
        self.data = bytearray()
        self.cut = False


class _Reader:
    """Frames from one direction's bytes, handed to the connection as they complete."""

    __slots__ = ("handler", "direction", "state", "next_seq", "head", "preface_at", "kind", "flags",
                 "stream", "length", "remaining", "keep", "payload", "short", "frame_ns", "frame_seq",
                 "decoder", "block", "first_frame", "resyncs")

    def __init__(self, handler: Http2Handler, direction: str) -> None:
        self.handler = handler
        self.direction = direction
        self.state = _START
        self.next_seq: int | None = None  # TCP sequence number the next syscall should start at
        self.head = bytearray()           # a frame header split across syscalls
        self.preface_at = 0
        self.kind = self.flags = self.stream = self.length = 0
        self.remaining = 0                # payload bytes of the current frame still to come
        self.keep = 0                     # of which we still want to hold this many
        self.payload: bytes | bytearray = b""
        self.short = False                # some wanted payload bytes were not captured
        self.frame_ns = 0
        self.frame_seq: int | None = None
        self.decoder = HeaderDecoder()
        self.block: _Block | None = None
        self.first_frame = True
        self.resyncs = 0

    def feed(self, data: bytes, total: int, ts: int, seq: int | None) -> None:
        if seq is not None:
            expected = self.next_seq
            if expected is not None and seq != expected:
                delta = (seq - expected) & _SEQ_MASK
                if delta < 0x80000000:
                    # Bytes moved that no event showed us: count them as uncaptured.
                    self._consume(b"", delta, ts, None)
                else:
                    # Part of this syscall was fed already (a peeked read, read again).
                    overlap = 0x100000000 - delta
                    if overlap >= total:
                        return
                    data = data[overlap:]
                    total -= overlap
                    seq = (seq + overlap) & _SEQ_MASK
            self.next_seq = (seq + total) & _SEQ_MASK
        self._consume(data, total, ts, seq)

    def _consume(self, data: bytes, total: int, ts: int, seq: int | None) -> None:
        captured = len(data)
        pos = 0
        while pos < total:
            state = self.state
            if state == _PAYLOAD:
                take = self.remaining if self.remaining < total - pos else total - pos
                keep = self.keep
                if keep:
                    want = keep if keep < take else take
                    got = data[pos:pos + want]
                    if len(got) < want:
                        self.short = True
                    if self.payload:
                        if type(self.payload) is bytes:  # pieces from several syscalls
                            self.payload = bytearray(self.payload)
                        self.payload += got
                    else:
                        self.payload = got  # the usual case: a whole payload, no copy
                    self.keep = keep - want
                self.remaining -= take
                pos += take
                if not self.remaining:
                    self._end_frame(ts)
            elif state == _HEADER:
                if pos >= captured:  # a frame header went by uncaptured: framing lost
                    self._lose()
                    return
                head = self.head
                if not head and pos + 9 <= captured:
                    word, flags, stream = _FRAME_HEADER.unpack_from(data, pos)
                    self.frame_ns = ts
                    self.frame_seq = None if seq is None else (seq + pos) & _SEQ_MASK
                    pos += 9
                else:
                    if not head:
                        self.frame_ns = ts
                        self.frame_seq = None if seq is None else (seq + pos) & _SEQ_MASK
                    got = data[pos:pos + 9 - len(head)]
                    head += got
                    pos += len(got)
                    if len(head) < 9:
                        continue
                    word, flags, stream = _FRAME_HEADER.unpack(head)
                    head.clear()
                self._begin(word >> 8, word & 0xFF, flags, stream & 0x7FFFFFFF, ts)
            elif state == _START or state == _PREFACE:
                pos = self._preface(data, pos, total)
            else:  # _LOST: only a syscall boundary can bring the framing back
                if pos or not captured or not _frame_chain(data, total, self.handler.max_frame):
                    return
                self.state = _HEADER
                self.resyncs += 1

    def _preface(self, data: bytes, pos: int, total: int) -> int:
        at = self.preface_at
        got = data[pos:pos + len(PREFACE) - at]
        if got and PREFACE.startswith(got, at):
            at += len(got)
            self.preface_at = at
            if at == len(PREFACE):
                self.state = _HEADER
                self.handler._preface(self.direction)
            else:
                self.state = _PREFACE
                if pos + len(got) < total:  # the rest of the preface went uncaptured
                    self._lose()
                    return total
            return pos + len(got)
        if self.state == _PREFACE or not got:
            self._lose()
            return total
        self.state = _HEADER  # no preface: the server's direction, or joined mid-stream
        return pos

    def _lose(self) -> None:
        self.state = _LOST
        self.head.clear()
        self.payload = b""
        self.decoder.forget()  # header blocks may go by unseen from here on
        if self.block is not None:
            self.block.cut = True
            self._finish_block(self.frame_ns)

    def _begin(self, length: int, kind: int, flags: int, stream: int, ts: int) -> None:
        if self.first_frame:
            self.first_frame = False
            # Followed from the start: the client's preface, or the server's first SETTINGS.
            if self.preface_at != len(PREFACE):
                if kind == SETTINGS and not flags and not stream:
                    self.handler._confirm()  # the server's preface: the peer speaks HTTP/2
                else:
                    self.decoder.complete = False
        self.kind = kind
        self.flags = flags
        self.stream = stream
        self.length = length
        self.remaining = length
        self.short = False
        self.payload = b""
        if kind == HEADERS or kind == CONTINUATION or kind == PUSH_PROMISE:
            held = len(self.block.data) if self.block is not None else 0
            if length + held <= MAX_HEADER_BLOCK:
                self.keep = length
            else:
                self.keep = 0
                self.short = True
        elif kind == DATA:
            self.keep = 1 if flags & PADDED else 0
        elif kind == SETTINGS:
            self.keep = min(length, 6 * 16)
        elif kind == RST_STREAM or kind == GOAWAY:
            self.keep = min(length, 8)
        else:
            self.keep = 0
        self.state = _PAYLOAD
        if not length:
            self._end_frame(ts)

    def _end_frame(self, ts: int) -> None:
        self.state = _HEADER
        kind = self.kind
        flags = self.flags
        stream = self.stream
        payload = self.payload
        conn = self.handler
        if self.block is not None and kind != CONTINUATION:
            self.block.cut = True  # a header block cut short by another frame
            self._finish_block(ts)
        if kind == DATA:
            length = self.length
            if flags & PADDED:
                length -= 1 + (payload[0] if payload else 0)
            conn._data(self.direction, stream, bool(flags & END_STREAM), max(length, 0),
                       self.frame_ns, self.frame_seq, ts)
        elif kind == HEADERS or kind == PUSH_PROMISE:
            if flags & END_HEADERS and not self.short:
                # The usual case: a whole header block in one captured frame.
                fragment = self._fragment(kind, flags, bytes(payload), self.length)
                if fragment is not None:
                    fields, certain = self.decoder.decode(fragment)
                    if kind == HEADERS:
                        conn._headers(self.direction, stream, fields, certain,
                                      bool(flags & END_STREAM), self.frame_ns, self.frame_seq, ts)
                    return
            block = _Block(kind, stream, bool(flags & END_STREAM) and kind == HEADERS,
                           self.frame_ns, self.frame_seq)
            self.block = block
            fragment = self._fragment(kind, flags, bytes(payload), self.length)
            if fragment is None:
                block.cut = True
            else:
                block.data += fragment
                block.cut = self.short
            if flags & END_HEADERS:
                self._finish_block(ts)
        elif kind == CONTINUATION:
            block = self.block
            if block is None or block.stream != stream:
                if block is not None:
                    block.cut = True
                    self._finish_block(ts)
                self.decoder.forget()  # a fragment of a block we never saw the start of
                return
            if not block.cut:
                block.data += payload
                block.cut = self.short
            if flags & END_HEADERS:
                self._finish_block(ts)
        elif kind == RST_STREAM:
            if len(payload) >= 4:
                conn._reset(self.direction, stream, int.from_bytes(payload[:4], "big"), ts)
        elif kind == SETTINGS:
            if not flags & ACK:
                for at in range(0, len(payload) - 5, 6):
                    ident, value = struct.unpack_from(">HI", payload, at)
                    if ident == 5 and value <= 0xFFFFFF:
                        conn.max_frame = max(conn.max_frame, value)
        elif kind == GOAWAY:
            if len(payload) >= 8:
                last, code = struct.unpack_from(">II", payload, 0)
                conn._goaway(self.direction, last & 0x7FFFFFFF, code, ts)

    @staticmethod
    def _fragment(kind: int, flags: int, payload: bytes, length: int) -> bytes | None:
        """The header block fragment of a HEADERS or PUSH_PROMISE frame of ``length`` bytes.

        Padding and priority fields are left out; ``payload`` may be only the
        captured start of the frame's payload (then so is the fragment).
        """
        start = 0
        pad = 0
        if flags & PADDED:
            if not payload:
                return None
            pad = payload[0]
            start = 1
        if kind == HEADERS and flags & PRIORITY_FLAG:
            start += 5
        elif kind == PUSH_PROMISE:
            start += 4
        end = length - pad
        if end < start:
            return None  # padding longer than the frame: a broken frame
        return payload[start:end]

    def _finish_block(self, ts: int) -> None:
        block = self.block
        self.block = None
        if block.cut:
            # The representations before the first missing byte still decode; the
            # missing ones may have inserted entries, which moves every entry we hold.
            fields, certain = self.decoder.decode(bytes(block.data)) if block.data else ([], False)
            self.decoder.forget()
            certain = False
            if not fields:
                fields = None
        else:
            fields, certain = self.decoder.decode(bytes(block.data))
        if block.kind == HEADERS:
            self.handler._headers(self.direction, block.stream, fields, certain, block.end_stream,
                               block.start_ns, block.seq, ts)


# --- streams and spans ------------------------------------------------------------

# Header fields worth keeping; the rest are decoded (HPACK needs it) and dropped.
_WANTED = frozenset((b":method", b":path", b":status", b":authority", b"content-type",
                     b"user-agent", b"grpc-status", b"grpc-message"))


class _Half:
    """What one direction of a stream carried: a request or a response."""

    __slots__ = ("start_ns", "seq", "end_ns", "ended", "fields", "status", "blocks", "body",
                 "uncertain", "undecoded", "headless")

    def __init__(self, start_ns: int, seq: int | None) -> None:
        self.start_ns = start_ns
        self.seq = seq
        self.end_ns = start_ns
        self.ended = False                  # END_STREAM seen
        self.fields: dict[bytes, bytes] = {}
        self.status: int | None = None      # final :status (1xx are interim)
        self.blocks = 0                     # header blocks seen
        self.body = 0                       # DATA payload bytes, padding excluded
        self.uncertain = False              # some header field could not be known
        self.undecoded = False              # a header block was lost entirely
        self.headless = False               # DATA came before any header block we saw


class _Stream:
    __slots__ = ("id", "halves", "reset_code", "reset_by", "reset_ns", "refused")

    def __init__(self, stream_id: int) -> None:
        self.id = stream_id
        self.halves: dict[str, _Half] = {}
        self.reset_code: int | None = None
        self.reset_by: str | None = None
        self.reset_ns: int | None = None
        self.refused = False


class Http2Handler(Handler):
    """One HTTP/2 connection (gRPC included): frames in, one span per finished stream out.

    Streams are paired by id.  ``role`` is decided by the client preface, or
    by the first header block that shows ``:method`` or ``:status``.
    """

    name = "http2"
    ROLE_FROM_FIRST_BYTES = False
    PAIRING = BY_ID
    MAX_PENDING = MAX_OPEN_STREAMS

    __slots__ = ("max_frame", "_max_stream")

    @staticmethod
    def detect(data: bytes, direction: str, hints: ConnectionHints) -> bool:
        return hints.l4 == "tcp" and looks_like_http2(data)

    def __init__(self, role: str = "unknown", context: Context | None = None) -> None:
        super().__init__(role, context)
        self._readers = {INGRESS: _Reader(self, INGRESS), EGRESS: _Reader(self, EGRESS)}
        self._max_stream = 0
        self.max_frame = DEFAULT_MAX_FRAME        # largest SETTINGS_MAX_FRAME_SIZE announced

    @property
    def open_streams(self) -> int:
        return len(self._open)

    def headers_complete(self, direction: str) -> bool:
        """Is every HPACK table entry of ``direction`` known (nothing lost so far)?"""
        return self._readers[direction].decoder.complete

    # --- called by the readers -------------------------------------------------

    def _preface(self, direction: str) -> None:
        self._decide(direction)

    def _decide(self, request_direction: str) -> None:
        """The request direction is known now: streams that waited for it may be finished."""
        if self.request_direction == request_direction:
            return
        super()._decide(request_direction)
        for stream in list(self._open.values()):
            self._check(stream)

    def _stream(self, stream_id: int) -> _Stream | None:
        stream = self._open.get(stream_id)
        if stream is not None:
            return stream
        # Client streams only (odd ids), each new one above every id seen so far:
        # a frame of an older stream arrives after we finished it, or before we joined.
        if not stream_id & 1 or stream_id <= self._max_stream:
            return None
        self._max_stream = stream_id
        stream = _Stream(stream_id)
        self._open_request(stream_id, stream)
        return stream

    def _half(self, stream: _Stream, direction: str, start_ns: int, seq: int | None) -> _Half:
        half = stream.halves.get(direction)
        if half is None:
            half = stream.halves[direction] = _Half(start_ns, seq)
        return half

    def _headers(self, direction: str, stream_id: int,
                 fields: list[tuple[bytes | None, bytes | None]] | None, certain: bool,
                 end_stream: bool, start_ns: int, seq: int | None, end_ns: int) -> None:
        stream = self._stream(stream_id)
        if stream is None:
            return
        half = self._half(stream, direction, start_ns, seq)
        half.blocks += 1
        half.end_ns = end_ns
        if fields is None:
            half.undecoded = True
        else:
            if not certain:
                half.uncertain = True
            kept = half.fields
            status = None
            for name, value in fields:
                if name in _WANTED and value is not None:
                    if name == b":status":
                        status = value
                    elif name not in kept or name in (b"grpc-status", b"grpc-message"):
                        kept[name] = value  # trailers override; first block wins otherwise
            if status is not None and status.isdigit():
                if not self._confirmed:
                    self._confirm()  # a response header block
                code = int(status)
                if code >= 200 or half.status is None:
                    half.status = code
            if self.request_direction is None:
                if b":method" in kept:
                    self._decide(direction)
                elif status is not None:
                    self._decide(opposite(direction))
        if end_stream:
            half.ended = True
        self._check(stream)

    def _data(self, direction: str, stream_id: int, end_stream: bool, size: int, start_ns: int,
              seq: int | None, end_ns: int) -> None:
        stream = self._stream(stream_id)
        if stream is None:
            return
        half = self._half(stream, direction, start_ns, seq)
        if not half.blocks:
            half.headless = True
        half.body += size
        half.end_ns = end_ns
        if end_stream:
            half.ended = True
            self._check(stream)

    def _reset(self, direction: str, stream_id: int, code: int, ts: int) -> None:
        stream = self._open.get(stream_id)
        if stream is None:
            return
        stream.reset_code = code
        stream.reset_by = direction
        stream.reset_ns = ts
        self._finish(stream, ts)

    def _goaway(self, direction: str, last_stream: int, code: int, ts: int) -> None:
        # Streams above the server's last processed id were never handled: refused.
        if self.request_direction is None or direction == self.request_direction:
            return
        for stream in [s for s in self._open.values() if s.id > last_stream]:
            stream.refused = True
            self._finish(stream, ts)

    # --- finishing streams ---------------------------------------------------------

    def _check(self, stream: _Stream) -> None:
        if stream.id not in self._open:
            return  # finished already
        request_direction = self.request_direction
        if request_direction is None:
            # Deciding re-checks every stream, this one included.
            if self._guess(stream) is None or stream.id not in self._open:
                return
            request_direction = self.request_direction
        response = stream.halves.get(opposite(request_direction))
        if response is not None and response.ended:
            self._finish(stream, response.end_ns)

    def _guess(self, stream: _Stream) -> str | None:
        """Joined mid-stream with nothing decodable: when both halves ended, the later is the response."""
        if len(stream.halves) < 2 or not all(h.ended for h in stream.halves.values()):
            return None
        (d1, h1), (d2, h2) = stream.halves.items()
        request = d1 if (h1.start_ns, h1.end_ns) <= (h2.start_ns, h2.end_ns) else d2
        self._decide(request)
        return request

    def _finish(self, stream: _Stream, ts: int | None) -> None:
        self._open.pop(stream.id, None)
        request_direction = self.request_direction or self._guess_any(stream)
        if request_direction is None:
            return  # cannot tell request from response: nothing worth reporting
        self._emit(describe(stream, request_direction, ts, self.context.keep_query_values))

    def _unanswered(self, stream: _Stream, ts_ns: int | None) -> None:
        self._finish(stream, ts_ns)

    def _guess_any(self, stream: _Stream) -> str | None:
        halves = stream.halves
        if not halves:
            return None
        first = min(halves, key=lambda d: halves[d].start_ns)
        return first if len(halves) == 2 else None


def _text(value: bytes | None) -> str | None:
    return None if value is None else value.decode("latin-1")


def describe(stream: _Stream, request_direction: str, ts: int | None,
             keep_query_values: bool = False) -> SpanFacts:
    """A finished (or abandoned) stream as span facts (query values redacted unless kept)."""
    request = stream.halves.get(request_direction)
    response = stream.halves.get(opposite(request_direction))
    server_side = request_direction == INGRESS
    req_fields = request.fields if request is not None else {}
    resp_fields = response.fields if response is not None else {}
    attrs: dict[str, Any] = {"network.protocol.name": "http", "network.protocol.version": "2",
                             "sidetrace.http2.stream_id": stream.id}
    method = _text(req_fields.get(b":method"))
    target = _text(req_fields.get(b":path"))
    path = None
    if method:
        attrs["http.request.method"] = method
    if target is not None:
        path, question, query = target.partition("?")
        attrs["url.path"] = path
        if question:
            attrs["url.query"] = query_text(query, keep_query_values)
    if agent := _text(req_fields.get(b"user-agent")):
        attrs["user_agent.original"] = agent
    status = response.status if response is not None else None
    if status is not None:
        attrs["http.response.status_code"] = status
    if request is not None and request.body:
        attrs["http.request.body.size"] = request.body
    if response is not None and response.body:
        attrs["http.response.body.size"] = response.body

    content_type = req_fields.get(b"content-type") or resp_fields.get(b"content-type") or b""
    grpc_status_text = resp_fields.get(b"grpc-status")
    grpc_status = int(grpc_status_text) if grpc_status_text and grpc_status_text.isdigit() else None
    is_grpc = content_type.startswith(b"application/grpc") or grpc_status is not None

    span_status = "unset"
    message = None
    name = f"{method or 'HTTP'} {path}" if path is not None else (method or "HTTP")
    if is_grpc:
        attrs["rpc.system"] = "grpc"
        if path is not None and path.startswith("/") and path.count("/") == 2:
            service, _, rpc_method = path[1:].partition("/")
            if service and rpc_method:
                attrs["rpc.service"] = service
                attrs["rpc.method"] = rpc_method
                name = f"{service}/{rpc_method}"
        elif path is None:
            name = "grpc"
        if grpc_status is not None:
            attrs["rpc.grpc.status_code"] = grpc_status
            if grpc_status:
                span_status = "error"
                attrs["error.type"] = (GRPC_CODES[grpc_status] if grpc_status < len(GRPC_CODES)
                                       else str(grpc_status))
                raw = resp_fields.get(b"grpc-message")
                message = (unquote_to_bytes(raw).decode("utf-8", "replace")[:MAX_STATUS_MESSAGE]
                           if raw else attrs["error.type"])
    # HTTP status: server spans fail on 5xx, client spans on 4xx too (OpenTelemetry HTTP conventions).
    if span_status == "unset" and status is not None and (
            status >= 500 or (not server_side and status >= 400)):
        span_status = "error"
        attrs["error.type"] = str(status)

    flags = []
    if request is None or (not request.blocks and not request.undecoded):
        flags.append("request_missing")
    ended = response is not None and response.ended
    if stream.reset_code is not None:
        error = _error_name(stream.reset_code)
        attrs["sidetrace.http2.error_code"] = error
        who = "client" if stream.reset_by == request_direction else "server"
        flags.append(f"reset_by_{who}")
        if stream.reset_code and span_status != "error":
            span_status = "error"
            attrs.setdefault("error.type", error)
            message = f"stream reset by the {who}: {error}"
    elif stream.refused:
        flags.append("refused")
        span_status = "error"
        attrs.setdefault("error.type", "REFUSED_STREAM")
        message = "not processed by the server (GOAWAY)"
    elif not ended:
        flags.append("response_missing")
    halves = [h for h in (request, response) if h is not None]
    if any(h.undecoded for h in halves):
        flags.append("headers_lost")
    elif any(h.uncertain for h in halves):
        flags.append("headers_partial")
    if flags:
        attrs["sidetrace.http.flags"] = ",".join(flags)

    first = request if request is not None and not request.headless else None
    start = first.start_ns if first is not None else min(h.start_ns for h in halves)
    if ended:
        end = response.end_ns
    elif stream.reset_ns is not None:
        end = stream.reset_ns
    elif ts is not None:
        end = ts
    else:
        end = max(h.end_ns for h in halves)
    return SpanFacts(
        name=name, start_ns=start, end_ns=max(end, start), server_side=server_side,
        attributes=attrs, status=span_status, status_message=message,
        request_seq=first.seq if first is not None else None,
        response_seq=response.seq if response is not None else None,
        response_start_ns=response.start_ns if response is not None else None,
    )
