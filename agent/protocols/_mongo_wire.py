"""The MongoDB wire protocol: message headers and bodies, from captured bytes.

Every message starts with a 16-byte little-endian header: total length
(header included), requestID, responseTo (the requestID it answers), opCode.
Bodies read here:

- OP_MSG (2013): flag bits (checksumPresent, moreToCome, exhaustAllowed;
  an unknown bit among the low 16 is malformed, as the specification says),
  then sections: kind 0 is the command or reply document, kind 1 a document
  sequence (``documents`` of an insert, ``updates``, ``deletes``) of which
  the identifier and the number of documents are kept; a CRC-32C checksum
  closes the message when flagged (it is stepped over, not verified).
- OP_QUERY (2004) and OP_REPLY (1): the legacy pair drivers still use for
  the connection handshake: the query's collection (``admin.$cmd``) and
  document, the reply's flags and first document.
- OP_COMPRESSED (2012): the original opCode and compressor.  ``noop``
  bodies are read as they are; ``zlib`` bodies are inflated (at most
  ``MAX_INFLATED`` bytes, from the captured prefix); snappy and zstd have no
  decoder in the standard library and are only marked.
- The opcodes MongoDB 6.0 removed (OP_INSERT, OP_UPDATE, OP_DELETE,
  OP_GET_MORE, OP_KILL_CURSORS) are known for framing and not read.

A message's bytes may be cut short by the capture: ``parse_message`` reads
what is there and says whether anything is missing; it raises
:class:`MongoWireError` only for bytes that cannot be MongoDB.
"""

from __future__ import annotations

import dataclasses
import struct
import zlib
from typing import Final

from ._bson import BsonError, Document, decode_document, document_length, find_nul

__all__ = ["HEADER_SIZE", "MAX_MESSAGE", "OPCODE_NAMES", "OP_COMPRESSED", "OP_MSG", "OP_QUERY",
           "OP_REPLY", "Header", "Message", "MongoWireError", "parse_header", "parse_message"]

HEADER_SIZE: Final = 16
MAX_MESSAGE: Final = 48_000_000     # maxMessageSizeBytes of every MongoDB release
MAX_INFLATED: Final = 64 * 1024     # bytes of a zlib body inflated
MAX_SECTIONS: Final = 64
# Driver plumbing a command carries: its nested documents are stepped over, not read.
SESSION_KEYS: Final = frozenset({"lsid", "$clusterTime", "$readPreference", "signature"})

OP_REPLY: Final = 1
OP_UPDATE: Final = 2001
OP_INSERT: Final = 2002
OP_QUERY: Final = 2004
OP_GET_MORE: Final = 2005
OP_DELETE: Final = 2006
OP_KILL_CURSORS: Final = 2007
OP_COMPRESSED: Final = 2012
OP_MSG: Final = 2013

OPCODE_NAMES: Final = {
    OP_REPLY: "OP_REPLY", OP_UPDATE: "OP_UPDATE", OP_INSERT: "OP_INSERT", OP_QUERY: "OP_QUERY",
    OP_GET_MORE: "OP_GET_MORE", OP_DELETE: "OP_DELETE", OP_KILL_CURSORS: "OP_KILL_CURSORS",
    OP_COMPRESSED: "OP_COMPRESSED", OP_MSG: "OP_MSG",
}
COMPRESSORS: Final = {0: "noop", 1: "snappy", 2: "zlib", 3: "zstd"}

CHECKSUM_PRESENT: Final = 1 << 0
MORE_TO_COME: Final = 1 << 1
EXHAUST_ALLOWED: Final = 1 << 16
_REQUIRED_BITS: Final = 0xFFFF & ~(CHECKSUM_PRESENT | MORE_TO_COME)

_HEADER = struct.Struct("<iiii").unpack_from
_I32 = struct.Struct("<i").unpack_from
_U32 = struct.Struct("<I").unpack_from
_REPLY_FIXED = struct.Struct("<iqii").unpack_from


class MongoWireError(ValueError):
    """Bytes that are not a MongoDB message."""


@dataclasses.dataclass(frozen=True, slots=True)
class Header:
    length: int
    request_id: int
    response_to: int
    opcode: int


def parse_header(data: bytes | memoryview, pos: int = 0) -> Header | None:
    """The header at ``pos``; None if fewer than 16 bytes are there.

    Raises MongoWireError for a length or opCode no MongoDB message has.
    """
    if len(data) - pos < HEADER_SIZE:
        return None
    length, request_id, response_to, opcode = _HEADER(data, pos)
    if opcode not in OPCODE_NAMES:
        raise MongoWireError(f"opCode {opcode}")
    if length < HEADER_SIZE + 4 or length > MAX_MESSAGE:
        raise MongoWireError(f"message length {length}")
    return Header(length, request_id, response_to, opcode)


@dataclasses.dataclass(slots=True)
class Message:
    """What was read of one message.

    ``body``: OP_MSG's kind-0 section, OP_QUERY's query, OP_REPLY's first
    document (None when not captured).  ``sequences``: OP_MSG kind-1
    sections as (identifier, documents counted or None when not all were
    captured).  ``complete``: every byte of the message was there to read.
    """

    header: Header
    flags: int = 0
    body: Document | None = None
    collection: str | None = None          # OP_QUERY's fullCollectionName
    sequences: list[tuple[str, int | None]] = dataclasses.field(default_factory=list)
    compressor: str | None = None          # set for OP_COMPRESSED
    opcode: int = 0                        # the opCode read (the original one inside OP_COMPRESSED)
    cursor_id: int | None = None           # OP_REPLY
    returned: int | None = None            # OP_REPLY's numberReturned
    complete: bool = True

    @property
    def more_to_come(self) -> bool:
        return self.opcode == OP_MSG and bool(self.flags & MORE_TO_COME)

    @property
    def exhaust_allowed(self) -> bool:
        return self.opcode == OP_MSG and bool(self.flags & EXHAUST_ALLOWED)


def parse_message(data: bytes | memoryview, descend: frozenset[str] | None = None) -> Message:
    """One message from its captured prefix ``data`` (header included).

    ``descend``: decode only the body's nested documents under these keys
    (see ``decode_document``); a reply needs its error fields, not its batch.
    """
    header = parse_header(data)
    if header is None:
        raise MongoWireError("no header")
    msg = Message(header, opcode=header.opcode)
    end = header.length
    have = min(len(data), end)
    if len(data) < end:
        msg.complete = False
    body = bytes(data[HEADER_SIZE:have])   # bytes: its find() looks for NULs in C
    _read_body(msg, header.opcode, body, end - HEADER_SIZE, descend)
    return msg


def _read_body(msg: Message, opcode: int, body: memoryview, size: int,
               descend: frozenset[str] | None) -> None:
    """Read an opCode's body; ``size`` is its declared size, ``body`` what was captured."""
    try:
        if opcode == OP_MSG:
            _op_msg(msg, body, size, descend)
        elif opcode == OP_QUERY:
            _op_query(msg, body, size, descend)
        elif opcode == OP_REPLY:
            _op_reply(msg, body, size, descend)
        elif opcode == OP_COMPRESSED:
            _op_compressed(msg, body, size, descend)
        elif len(body) < size:
            msg.complete = False
    except BsonError as exc:
        raise MongoWireError(f"{OPCODE_NAMES.get(opcode, opcode)}: {exc}") from None


def _op_msg(msg: Message, body: memoryview, size: int, descend: frozenset[str] | None) -> None:
    if len(body) < 4:
        msg.complete = False
        return
    flags = msg.flags = _U32(body, 0)[0]
    if flags & _REQUIRED_BITS:
        raise MongoWireError(f"OP_MSG flag bits {flags:#x}")
    end = size - 4 if flags & CHECKSUM_PRESENT else size
    at = 4
    sections = 0
    while at < end:
        if at >= len(body):
            msg.complete = False
            return
        sections += 1
        if sections > MAX_SECTIONS:
            raise MongoWireError("too many OP_MSG sections")
        kind = body[at]
        at += 1
        if kind == 0:
            if msg.body is not None:
                raise MongoWireError("two OP_MSG body sections")
            length = document_length(body, at)
            if length is None:
                msg.complete = False
                return
            if at + length > end:
                raise MongoWireError("OP_MSG body past the message")
            doc, at = decode_document(body, at, descend=descend, skip=SESSION_KEYS)
            msg.body = doc
            if not doc.complete:
                msg.complete = False
        elif kind == 1:
            at = _sequence(msg, body, at, end)
            if at < 0:
                return
        else:
            raise MongoWireError(f"OP_MSG section kind {kind}")
    if at != end:
        raise MongoWireError("OP_MSG sections do not end where the message does")
    if len(body) < size:
        msg.complete = False


def _sequence(msg: Message, body: memoryview, at: int, end: int) -> int:
    """A kind-1 section at ``at``: its end, or -1 when the capture stops inside it."""
    if at + 4 > len(body):
        msg.complete = False
        return -1
    length = _I32(body, at)[0]
    stop = at + length
    if length < 5 or stop > end:
        raise MongoWireError("OP_MSG document sequence length")
    name_end = find_nul(body, at + 4, min(stop, len(body)))
    if name_end < 0:
        if len(body) < stop:
            msg.complete = False
            return -1
        raise MongoWireError("document sequence identifier without NUL")
    identifier = bytes(body[at + 4:name_end]).decode("utf-8", "replace")[:64]
    count: int | None = 0
    doc_at = name_end + 1
    while doc_at < stop:
        length = document_length(body, doc_at)
        if length is None:
            count = None
            break
        if doc_at + length > stop:
            raise MongoWireError("document past its sequence")
        doc_at += length
        count += 1
    msg.sequences.append((identifier, count))
    if count is None:
        msg.complete = False
        return -1
    return stop


def _op_query(msg: Message, body: memoryview, size: int, descend: frozenset[str] | None) -> None:
    if len(body) < 4:
        msg.complete = False
        return
    msg.flags = _I32(body, 0)[0]
    name_end = find_nul(body, 4, min(len(body), size, 4 + 512))
    if name_end < 0:
        if len(body) < size and len(body) < 4 + 512:
            msg.complete = False
            return
        raise MongoWireError("OP_QUERY collection name without NUL")
    msg.collection = bytes(body[4:name_end]).decode("utf-8", "replace")
    at = name_end + 1 + 8          # numberToSkip, numberToReturn
    length = document_length(body, at) if at + 4 <= len(body) else None
    if length is None:
        msg.complete = False
        return
    if at + length > size:
        raise MongoWireError("OP_QUERY query past the message")
    msg.body, after = decode_document(body, at, descend=descend, skip=SESSION_KEYS)
    if not msg.body.complete or len(body) < size:
        msg.complete = False


def _op_reply(msg: Message, body: memoryview, size: int, descend: frozenset[str] | None) -> None:
    if len(body) < 20:
        msg.complete = False
        return
    flags, cursor_id, _, returned = _REPLY_FIXED(body, 0)
    msg.flags, msg.cursor_id, msg.returned = flags, cursor_id, returned
    if returned < 0 or returned > MAX_MESSAGE // 5:
        raise MongoWireError(f"OP_REPLY numberReturned {returned}")
    if returned == 0:
        if size != 20:
            raise MongoWireError("OP_REPLY with no documents has a body")
        return
    length = document_length(body, 20) if len(body) >= 24 else None
    if length is None:
        msg.complete = False
        return
    if 20 + length > size:
        raise MongoWireError("OP_REPLY document past the message")
    msg.body, _ = decode_document(body, 20, descend=descend, skip=SESSION_KEYS)
    if not msg.body.complete or len(body) < size:
        msg.complete = False


def _op_compressed(msg: Message, body: memoryview, size: int, descend: frozenset[str] | None) -> None:
    if len(body) < 9:
        msg.complete = False
        return
    original, uncompressed = _I32(body, 0)[0], _I32(body, 4)[0]
    compressor = body[8]
    if original not in OPCODE_NAMES or original == OP_COMPRESSED:
        raise MongoWireError(f"OP_COMPRESSED of opCode {original}")
    if compressor not in COMPRESSORS:
        raise MongoWireError(f"compressor id {compressor}")
    if uncompressed < 4 or uncompressed > MAX_MESSAGE:
        raise MongoWireError(f"uncompressed size {uncompressed}")
    msg.compressor = COMPRESSORS[compressor]
    msg.opcode = original
    payload = body[9:]
    if compressor == 0:
        inner = payload
    elif compressor == 2:
        inflater = zlib.decompressobj()
        try:
            inner = inflater.decompress(bytes(payload), min(uncompressed, MAX_INFLATED))
        except zlib.error as exc:
            raise MongoWireError(f"zlib: {exc}") from None
    else:
        msg.complete = False
        return
    _read_body(msg, original, inner, uncompressed, descend)
    if len(body) < size:
        msg.complete = False
