"""PostgreSQL (frontend/backend protocol 3.x) as a protocol handler.

What becomes a span:

* a simple Query ('Q'): one span from the Query to its ReadyForQuery ('Z'),
  covering every statement in it (several make a batch) and any COPY data;
* an extended-protocol Execute ('E'): one span per Execute, from the first
  message of the run that led up to it (Parse/Bind/Describe after the last
  Execute or Sync) to the Execute's own completion (CommandComplete,
  EmptyQueryResponse, PortalSuspended or ErrorResponse).  The statement text
  comes from the Parse of the statement the Bind named, kept in a bounded
  per-connection map of statement name -> text (portal -> text likewise).
  Per Execute rather than per Sync because drivers differ in how they use
  Sync (pg8000 syncs after Parse and after Describe, psycopg's pipeline mode
  once for many statements): one span per statement run reads the same
  whatever the driver.  Spans of a Sync batch are released at its
  ReadyForQuery, so an error raised at Sync time (a deferred constraint at
  the implicit commit) still marks the last one;
* a Sync batch that failed before any Execute ran (a Parse with a syntax
  error): one error span named after the statement that failed.

Startup, authentication, Describe-only or Parse-only batches, CancelRequest
and Terminate make no span; the startup message's ``database`` (or ``user``,
its default) gives ``db.namespace`` and ``user`` gives ``sidetrace.db.user``
(no OpenTelemetry key exists for it).  After SSLRequest or GSSENCRequest is
accepted the bytes are encrypted: the connection then yields nothing.

An ErrorResponse sets status "error", ``db.response.status_code`` and
``error.type`` to its SQLSTATE ('C' field) and the status message to its 'M'
field; NoticeResponse is not an error.  Executes the server skipped because
an earlier message of their batch failed make no span.

Bytes are counted rather than needed: a message's body is skipped by its
length whether or not it was captured, so only 5-byte headers have to be
seen.  A header that went uncaptured loses the stream's place; the backend
stream finds it again at ReadyForQuery ('Z' length 5), at a syscall that
starts with well-formed messages, or when the client sends its next request
(spans then end at the last response syscall and carry ``sidetrace.db.truncated``).
"""

from __future__ import annotations

import struct
from typing import Any

from ._base import EGRESS, INGRESS, ConnectionHints, Context, Handler, Request, SpanFacts
from ._sqlredact import POSTGRESQL, describe_query, starts_like_sql

__all__ = ["PostgresHandler", "looks_like_backend", "looks_like_frontend", "looks_like_startup"]

_SEQ_MASK = 0xFFFFFFFF
MAX_MESSAGE = 1 << 30          # the server's own limit on a message
MAX_STARTUP = 10_000           # the server's limit on a startup packet
MAX_TEXT = 4096                # statement text kept per message, in bytes
MAX_NAME = 64                  # NAMEDATALEN: statement and portal names
MAX_STATEMENTS = 128           # prepared statement name -> text, per connection
MAX_PORTALS = 16
MAX_PENDING = 512              # frontend messages waiting for their reply
MAX_HELD = 64                  # completed Executes waiting for their batch's ReadyForQuery
DETECT_MAX_MESSAGE = 1 << 24   # detection: a message longer than this is not believed

PROTOCOL_3 = 3 << 16
SSL_REQUEST = 80877103
GSSENC_REQUEST = 80877104
CANCEL_REQUEST = 80877102

_U16 = struct.Struct(">H")
_U32 = struct.Struct(">I")
_I32 = struct.Struct(">i")

# What waits in the queue for the backend's answer.
_PARSE, _BIND, _DESCRIBE, _EXECUTE, _CLOSE, _SYNC, _QUERY, _FUNCTION = range(8)
_ENDS_AT_Z = (_SYNC, _QUERY, _FUNCTION)

# Message bodies kept for parsing (bytes); the rest of a body is only counted.
_FRONT_KEEP = {
    0: MAX_STARTUP, ord("Q"): MAX_TEXT + 1, ord("P"): MAX_NAME + MAX_TEXT + 2,
    ord("B"): 2 * MAX_NAME + 2, ord("D"): MAX_NAME + 2, ord("C"): MAX_NAME + 2,
    ord("E"): MAX_NAME + 5,
}
_BACK_KEEP = {ord("E"): 2048, ord("C"): 64, ord("Z"): 1}
_FRONT_TYPES = frozenset(b"QPBEDSCHXFdcfp")
_BACK_TYPES = frozenset(b"RSKZTDCEN123ntsIGHWdcAVv")


def _cstring(buf: bytes | bytearray, start: int, stop: int, limit: int) -> tuple[bytes, int] | None:
    """The NUL-terminated string at buf[start:], at most ``limit`` bytes; (text, after NUL)."""
    nul = buf.find(b"\0", start, min(stop, start + limit + 1))
    if nul < 0:
        return None
    return bytes(buf[start:nul]), nul + 1


_PRINTABLE = bytes(range(32, 127))


def _printable(raw: bytes) -> bool:
    """Only printable ASCII (names, tags); empty counts."""
    return not raw.translate(None, _PRINTABLE)


# --- detection ------------------------------------------------------------------------


def looks_like_startup(data: bytes) -> bool:
    """StartupMessage (3.x), SSLRequest, GSSENCRequest or CancelRequest."""
    if len(data) < 8:
        return False
    length, code = _U32.unpack_from(data, 0)[0], _U32.unpack_from(data, 4)[0]
    if code == SSL_REQUEST or code == GSSENC_REQUEST:
        return length == 8
    if code == CANCEL_REQUEST:
        return length == 16
    if code >> 16 != 3 or code & 0xFFFF > 2 or not 8 < length <= MAX_STARTUP:
        return False
    # Parameters: name\0value\0 pairs then a final \0; "user" is mandatory.
    params = data[8:length]
    if len(params) < length - 8:          # cut short by the capture: judge what is here
        return b"\0" in params and _params_plausible(params.rpartition(b"\0")[0] + b"\0")
    return params.endswith(b"\0\0") and _params_plausible(params[:-1]) and b"user\0" in params


def _params_plausible(params: bytes) -> bool:
    names = params.split(b"\0")[0:-1:2]
    return bool(names) and all(0 < len(n) <= 64 and n.isascii() and n.replace(b"_", b"").replace(
        b".", b"").isalnum() for n in names)


def _check_front(t: int, body: bytes, size: int, whole: bool) -> bool:
    """Is ``body`` (the visible part of a ``size``-byte frontend body) plausible for type ``t``?"""
    if t in b"SHXc":
        return size == 0
    if t == 0x51:  # Q
        return starts_like_sql(body) and (not whole or body.find(b"\0") == size - 1)
    if t == 0x50:  # P: name, query, parameter types
        got = _cstring(body, 0, len(body), MAX_NAME)
        if got is None:
            return not whole and len(body) < MAX_NAME
        name, at = got
        if not _printable(name) or not starts_like_sql(body, at):
            return False
        if not whole:
            return True
        end = body.find(b"\0", at)
        if end < 0 or end + 3 > size:
            return False
        count = _U16.unpack_from(body, end + 1)[0]
        return end + 3 + 4 * count == size
    if t == 0x42:  # B: portal, statement, formats, values, result formats
        return _check_bind(body, size, whole)
    if t in b"DC":
        if size < 2 or body[:1] not in (b"S", b"P"):
            return False
        got = _cstring(body, 1, len(body), MAX_NAME)
        if got is None:
            return not whole and len(body) < MAX_NAME + 1
        return _printable(got[0]) and (not whole or got[1] == size)
    if t == 0x45:  # E: portal, max rows
        got = _cstring(body, 0, len(body), MAX_NAME)
        if got is None:
            return not whole and len(body) < MAX_NAME
        return _printable(got[0]) and (not whole or got[1] + 4 == size)
    if t == 0x66:  # f: CopyFail message
        return not whole or body.find(b"\0") == size - 1
    if t == 0x46:  # F: function oid, argument formats and values, result format
        return size >= 10
    return t in b"dp"


def _check_bind(body: bytes, size: int, whole: bool) -> bool:
    at = 0
    for _ in range(2):
        got = _cstring(body, at, len(body), MAX_NAME)
        if got is None:
            return not whole and len(body) - at < MAX_NAME
        if not _printable(got[0]):
            return False
        at = got[1]
    n = len(body)
    try:
        formats = _U16.unpack_from(body, at)[0]
        at += 2
        for i in range(formats):
            if _U16.unpack_from(body, at + 2 * i)[0] > 1:
                return False
        at += 2 * formats
        values = _U16.unpack_from(body, at)[0]
        at += 2
        for _ in range(values):
            length = _I32.unpack_from(body, at)[0]
            if length < -1:
                return False
            at += 4 + max(length, 0)
        results = _U16.unpack_from(body, at)[0]
        at += 2 + 2 * results
    except struct.error:
        return not whole and at <= n  # ran out of captured bytes: fine so far
    return at == size if whole else True


def _check_back(t: int, body: bytes, size: int, whole: bool) -> bool:
    """Is ``body`` plausible for a backend message of type ``t``?"""
    if t in b"123ncsI":
        return size == 0
    if t == 0x5A:  # Z
        return size == 1 and (len(body) < 1 or body[0] in b"ITE")
    if t == 0x52:  # R: authentication request
        if size < 4 or len(body) < 4:
            return size >= 4 and not whole
        code = _U32.unpack_from(body, 0)[0]
        return code in (0, 2, 3, 5, 6, 7, 8, 9, 10, 11, 12) and (code != 0 or size == 4)
    if t == 0x4B:  # K: process id and secret key (longer keys from protocol 3.2)
        return 8 <= size <= 264
    if t == 0x53:  # S: parameter name and value
        got = _cstring(body, 0, len(body), 64)
        if got is None or not _printable(got[0]) or not got[0]:
            return False
        return not whole or body.find(b"\0", got[1]) == size - 1
    if t == 0x43:  # C: command tag
        tag = body[:size - 1] if whole else body
        word = tag.split(b" ", 1)[0]
        return (word.isalpha() and word.isupper() and _printable(tag)
                and (not whole or body.find(b"\0") == size - 1))
    if t in b"EN":
        return _check_fields(body, size, whole)
    if t == 0x54:  # T: row description
        return _walk_fields(body, size, whole, 18)
    if t == 0x44:  # D: data row
        return _walk_columns(body, size, whole)
    if t == 0x74:  # t: parameter description
        if len(body) < 2:
            return size >= 2 and not whole
        return size == 2 + 4 * _U16.unpack_from(body, 0)[0]
    return t in b"GHWdAVv"


def _check_fields(body: bytes, size: int, whole: bool) -> bool:
    at = 0
    n = len(body)
    seen = 0
    while at < n:
        code = body[at]
        if code == 0:
            return at + 1 == size and seen > 0
        if code not in b"SVCMDHPpqWstcdnFLR":
            return False
        nul = body.find(b"\0", at + 1)
        if nul < 0:
            return not whole
        at = nul + 1
        seen += 1
    return not whole


def _walk_fields(body: bytes, size: int, whole: bool, fixed: int) -> bool:
    if len(body) < 2:
        return size >= 2 and not whole
    count = _U16.unpack_from(body, 0)[0]
    at = 2
    for _ in range(count):
        nul = body.find(b"\0", at, at + MAX_NAME + 1)
        if nul < 0:
            return not whole and len(body) - at <= MAX_NAME
        at = nul + 1 + fixed
        if at > len(body):
            return not whole
    return at == size if whole else at <= size


def _walk_columns(body: bytes, size: int, whole: bool) -> bool:
    if len(body) < 2:
        return size >= 2 and not whole
    count = _U16.unpack_from(body, 0)[0]
    at = 2
    for _ in range(count):
        if at + 4 > len(body):
            return not whole and at <= size
        length = _I32.unpack_from(body, at)[0]
        if length < -1:
            return False
        at += 4 + max(length, 0)
    return at == size if whole else at <= size


def _chain(data: bytes, frontend: bool, limit: int = DETECT_MAX_MESSAGE,
           max_messages: int = 1 << 30) -> int:
    """How many well-formed messages ``data`` starts with (0: not this stream's framing).

    Every message must check out; the last may run past the captured bytes.
    Bytes left over that cannot hold a header make the whole thing implausible.
    With ``max_messages``, only that many are checked.
    """
    types = _FRONT_TYPES if frontend else _BACK_TYPES
    check = _check_front if frontend else _check_back
    pos = 0
    n = len(data)
    count = 0
    while pos < n:
        if n - pos < 5:
            return 0
        t = data[pos]
        length = _U32.unpack_from(data, pos + 1)[0]
        if t not in types or not 4 <= length <= limit:
            return 0
        stop = pos + 1 + length
        whole = stop <= n
        if not check(t, data[pos + 5:min(stop, n)], length - 4, whole):
            return 0
        count += 1
        if count >= max_messages:
            return count
        pos = stop
    return count


def looks_like_frontend(data: bytes) -> bool:
    """A client's bytes: startup-class packet or typed frontend messages."""
    return looks_like_startup(data) or _chain(data, True) > 0


def looks_like_backend(data: bytes) -> bool:
    return _chain(data, False) > 0


# --- one direction's framing -----------------------------------------------------------


class _Stream:
    """Splits one direction's bytes into messages, counting what was not captured."""

    __slots__ = ("frontend", "handler", "head", "type", "remaining", "keep", "body",
                 "msg_ns", "msg_seq", "lost", "untyped_ok", "answer_byte", "last_ns", "types",
                 "keep_table")

    def __init__(self, handler: PostgresHandler, frontend: bool) -> None:
        self.handler = handler
        self.frontend = frontend
        self.types = _FRONT_TYPES if frontend else _BACK_TYPES
        self.keep_table = _FRONT_KEEP if frontend else _BACK_KEEP
        self.head = b""          # a header split across syscalls
        self.type = 0
        self.remaining = 0       # body bytes still to come
        self.keep = 0            # body bytes still wanted for parsing
        self.body = bytearray()
        self.msg_ns = 0
        self.msg_seq: int | None = None
        self.lost = False
        self.untyped_ok = frontend   # startup-class packets (no type byte) until StartupMessage
        self.answer_byte = False     # the backend's one-byte answer to SSL/GSSENC requests
        self.last_ns = 0

    def feed(self, data: bytes, total: int, ts: int, seq: int | None) -> None:
        pos = 0
        end = len(data)
        self.last_ns = ts
        types = self.types
        keep_table = self.keep_table
        handler = self.handler
        frontend = self.frontend
        unpack = _U32.unpack_from
        # DataRows in a row (the commonest messages by far) are counted here and
        # handed over together, with the first one's sequence number, before
        # anything else is: what one _progress call per row would do.
        rows = 0
        rows_seq: int | None = None
        while pos < end:
            if (not self.remaining and not self.lost and end - pos >= 5 and not self.head
                    and not self.answer_byte and (data[pos] or not self.untyped_ok)):
                # Fast path: a typed message wholly inside this syscall, parsed in place.
                t = data[pos]
                length = unpack(data, pos + 1)[0]
                stop = pos + 1 + length
                if stop <= end and t in types and length >= 4:
                    msg_seq = None if seq is None else (seq + pos) & _SEQ_MASK
                    if t == 0x44 and not frontend:
                        if not rows:
                            rows_seq = msg_seq
                        rows += 1
                        pos = stop
                        continue
                    if rows:
                        handler._progress(rows_seq, ts, rows)
                        rows = 0
                    keep = pos + 5 + keep_table.get(t, 0)
                    if frontend:
                        self.untyped_ok = False
                        handler._frontend_message(t, data, pos + 5, keep if keep < stop else stop,
                                                  ts, msg_seq, ts)
                    else:
                        handler._backend_message(t, data, pos + 5, keep if keep < stop else stop,
                                                 ts, msg_seq, ts)
                    pos = stop
                    continue
            if rows:
                handler._progress(rows_seq, ts, rows)
                rows = 0
            if self.remaining:
                pos = self._body(data, pos, end, ts)
            elif self.lost:
                pos = self._resync(data, pos, end, ts, seq)
            else:
                pos = self._header(data, pos, end, ts, seq)
        if rows:
            handler._progress(rows_seq, ts, rows)
        if total > end:
            self._skip(total - end, ts)
        if self.lost and not frontend:
            handler._answer_lost(ts)

    def _header(self, data: bytes, pos: int, end: int, ts: int, seq: int | None) -> int:
        if self.answer_byte:
            self.answer_byte = False
            answer = data[pos]
            if answer in b"SG":
                self.handler._encrypted()
                return end
            if answer == 0x4E:  # 'N': carry on unencrypted
                return pos + 1
        head = self.head
        if head:
            need = self._header_size(head[0]) - len(head)
            head += data[pos:pos + need]
            pos += need
            if len(head) < self._header_size(head[0]):
                self.head = head
                return end
            self.head = b""
            return self._begin(head, 0, pos, data, end, self.msg_ns, self.msg_seq, ts)
        size = self._header_size(data[pos])
        if end - pos < size:
            self.head = data[pos:end]
            self.msg_ns = ts
            self.msg_seq = None if seq is None else (seq + pos) & _SEQ_MASK
            return end
        return self._begin(data, pos, pos + size, data, end, ts,
                           None if seq is None else (seq + pos) & _SEQ_MASK, ts)

    def _header_size(self, first: int) -> int:
        return 4 if first == 0 and self.untyped_ok else 5

    def _begin(self, hdr: bytes, at: int, pos: int, data: bytes, end: int, msg_ns: int,
               msg_seq: int | None, ts: int) -> int:
        """A complete header at hdr[at:]; its body starts at data[pos]."""
        t = hdr[at]
        if t == 0 and self.untyped_ok:
            length = _U32.unpack_from(hdr, at)[0]
            ok = 8 <= length <= MAX_STARTUP
        else:
            length = _U32.unpack_from(hdr, at + 1)[0]
            ok = t in self.types and 4 <= length <= MAX_MESSAGE
            if ok and self.frontend:
                self.untyped_ok = False
        if not ok:
            self._lose()
            return pos
        size = length - 4
        keep = self.keep_table.get(t, 0)
        if keep > size:
            keep = size
        if pos + size <= end:
            # The whole message is in this syscall: parse it in place.
            self._dispatch(t, data, pos, pos + keep, msg_ns, msg_seq, ts)
            return pos + size
        self.type = t
        self.remaining = size
        self.keep = keep
        self.body = bytearray()
        self.msg_ns = msg_ns
        self.msg_seq = msg_seq
        return self._body(data, pos, end, ts)

    def _body(self, data: bytes, pos: int, end: int, ts: int) -> int:
        take = end - pos
        if take > self.remaining:
            take = self.remaining
        want = self.keep - len(self.body)
        if want > 0:
            self.body += data[pos:pos + (want if want < take else take)]
        self.remaining -= take
        pos += take
        if not self.remaining:
            body = bytes(self.body)
            self.body = bytearray()
            self._dispatch(self.type, body, 0, len(body), self.msg_ns, self.msg_seq, ts)
        return pos

    def _skip(self, count: int, ts: int) -> None:
        """``count`` bytes at the end of this syscall went by uncaptured."""
        if self.lost:
            return
        if self.remaining:
            take = count if count < self.remaining else self.remaining
            self.remaining -= take
            count -= take
            if len(self.body) < self.keep:
                self.keep = len(self.body)  # later bytes would not follow on from these
            if not self.remaining:
                body = bytes(self.body)
                self.body = bytearray()
                self._dispatch(self.type, body, 0, len(body), self.msg_ns, self.msg_seq, ts)
        if count > 0:
            self._lose()

    def _dispatch(self, t: int, buf: bytes, start: int, stop: int, msg_ns: int,
                  msg_seq: int | None, end_ns: int) -> None:
        if self.frontend:
            self.handler._frontend_message(t, buf, start, stop, msg_ns, msg_seq, end_ns)
        else:
            self.handler._backend_message(t, buf, start, stop, msg_ns, msg_seq, end_ns)

    def _lose(self) -> None:
        self.lost = True
        self.head = b""
        self.remaining = 0
        self.body = bytearray()
        self.handler._lost(self.frontend, self.last_ns)

    def reset(self) -> None:
        """Assume the next syscall starts with a message (the other side moved on)."""
        self.lost = False
        self.head = b""
        self.remaining = 0
        self.body = bytearray()

    def _resync(self, data: bytes, pos: int, end: int, ts: int, seq: int | None) -> int:
        # A syscall is the likeliest place for messages to start again.
        if pos == 0 and _chain(data, self.frontend, MAX_MESSAGE):
            self.lost = False
            return 0
        if self.frontend:
            return end
        # ReadyForQuery is short and distinctive: the next message starts after it.
        at = data.find(b"Z\0\0\0\x05", pos, end)
        while at >= 0:
            after = at + 6
            if after <= end and data[at + 5] in b"ITE" and (
                    end - after < 5 or _chain(data[after:], False, MAX_MESSAGE, 1)):
                self.lost = False
                self._dispatch(0x5A, data, at + 5, after, ts,
                               None if seq is None else (seq + at) & _SEQ_MASK, ts)
                return after
            at = data.find(b"Z\0\0\0\x05", at + 1, end)
        return end


# --- the connection ------------------------------------------------------------------


class _Group:
    """Frontend messages from the last Execute/Sync/Query up to and including the next Execute."""

    __slots__ = ("start_ns", "start_seq", "response_seq")

    def __init__(self, start_ns: int, start_seq: int | None) -> None:
        self.start_ns = start_ns
        self.start_seq = start_seq
        self.response_seq: int | None = None


class _Item(Request):
    """A frontend message waiting for the backend's answer (``start_ns``: its group's start)."""

    __slots__ = ("kind", "group", "text", "rows", "tag_rows", "error", "truncated")

    def __init__(self, kind: int, group: _Group | None, text: bytes | None) -> None:
        super().__init__(group.start_ns if group is not None else 0, None, None)
        self.kind = kind
        self.group = group
        self.text = text
        self.rows = 0
        self.tag_rows: int | None = None
        self.error: tuple[str, str] | None = None  # (SQLSTATE, message)
        self.truncated = False


def _error_fields(buf: bytes, start: int, stop: int) -> tuple[str, str]:
    code = message = ""
    at = start
    while at < stop:
        field = buf[at]
        if field == 0:
            break
        nul = buf.find(b"\0", at + 1, stop)
        value = buf[at + 1:nul if nul >= 0 else stop]
        if field == 0x43:    # 'C': SQLSTATE
            code = value.decode("ascii", "replace")
        elif field == 0x4D:  # 'M': primary message
            message = value.decode("utf-8", "replace")
        if nul < 0:
            break
        at = nul + 1
    return code, message


def _tag_rows(tag: bytes) -> int | None:
    """Rows a command tag says were returned: "SELECT 5", "FETCH 5" (not INSERT/UPDATE counts)."""
    word, _, count = tag.partition(b" ")
    if word in (b"SELECT", b"FETCH") and count.isdigit():
        return int(count)
    return None


class PostgresHandler(Handler):
    """One PostgreSQL connection, both directions (see the module doc).

    Frontend messages wait in the FIFO for the backend's answers; the
    answers say which message they end (ParseComplete a Parse, ReadyForQuery
    a Sync or a Query, ...).
    """

    name = "postgresql"
    MAX_PENDING = MAX_PENDING

    __slots__ = ("database", "user", "_requests", "_responses", "_awaiting_sync", "_group",
                 "_statements", "_portals", "_discarding")

    @staticmethod
    def detect(data: bytes, direction: str, hints: ConnectionHints) -> bool:
        if hints.l4 != "tcp" or len(data) < 5:
            return False
        if looks_like_startup(data):
            return True
        if hints.role == "server":
            return _chain(data, direction == INGRESS) > 0
        if hints.role == "client":
            return _chain(data, direction == EGRESS) > 0
        return _chain(data, True) > 0 or _chain(data, False) > 0

    looks_like_request = staticmethod(looks_like_frontend)
    looks_like_reply = staticmethod(looks_like_backend)

    def __init__(self, role: str = "unknown", context: Context | None = None) -> None:
        super().__init__(role, context)
        self.database: str | None = None
        self.user: str | None = None
        self._requests = _Stream(self, True)
        self._responses = _Stream(self, False)
        self._awaiting_sync: list[_Item] = []   # finished Executes waiting for ReadyForQuery
        self._group: _Group | None = None
        self._statements: dict[bytes, bytes] = {}
        self._portals: dict[bytes, bytes | None] = {}
        self._discarding = False           # after an extended-protocol error, until Sync

    def _new_reader(self, carries_requests: bool) -> _Stream:
        return self._requests if carries_requests else self._responses

    def _end(self, ts_ns: int | None) -> None:
        self._release_synced()

    # --- frontend messages ----------------------------------------------------------------

    def _frontend_message(self, t: int, buf: bytes, start: int, stop: int, msg_ns: int,
                          msg_seq: int | None, end_ns: int) -> None:
        if t == 0:
            self._startup(buf, start, stop)
            return
        if t in b"dcfpHX":
            return  # COPY data, password, Flush, Terminate: nothing to answer or record
        if self._responses.lost and self._pending and (t == 0x51 or self._group is None):
            # A new request while the answer to the last one went uncaptured: it ended.
            self._flush_lost()
        if self._discarding:
            if t != 0x53:
                return  # the server skips everything up to Sync after an error
            self._discarding = False
        group = self._group
        if t == 0x51:  # Query
            self._group = None
            text = self._text(buf, start, stop)
            self._push(_Item(_QUERY, _Group(msg_ns, msg_seq), text))
            return
        if t == 0x53:  # Sync
            self._group = None
            self._push(_Item(_SYNC, group, None))
            return
        if group is None:
            group = self._group = _Group(msg_ns, msg_seq)
        if t == 0x50:  # Parse
            got = _cstring(buf, start, stop, MAX_NAME)
            if got is None:
                self._push(_Item(_PARSE, group, None))
                return
            name, at = got
            text = self._text(buf, at, stop)
            if text is not None:
                self._remember(self._statements, name, text, MAX_STATEMENTS)
            self._push(_Item(_PARSE, group, text))
        elif t == 0x42:  # Bind
            got = _cstring(buf, start, stop, MAX_NAME)
            text = None
            if got is not None:
                portal, at = got
                named = _cstring(buf, at, stop, MAX_NAME)
                if named is not None:
                    text = self._statements.get(named[0])
                self._remember(self._portals, portal, text, MAX_PORTALS)
            self._push(_Item(_BIND, group, text))
        elif t == 0x44:  # Describe
            text = None
            got = _cstring(buf, start + 1, stop, MAX_NAME) if stop > start else None
            if got is not None:
                table = self._statements if buf[start] == 0x53 else self._portals
                text = table.get(got[0])
            self._push(_Item(_DESCRIBE, group, text))
        elif t == 0x45:  # Execute
            self._group = None
            got = _cstring(buf, start, stop, MAX_NAME)
            text = self._portals.get(got[0]) if got is not None else None
            self._push(_Item(_EXECUTE, group, text))
        elif t == 0x43:  # Close
            got = _cstring(buf, start + 1, stop, MAX_NAME) if stop > start else None
            if got is not None:
                table = self._statements if buf[start] == 0x53 else self._portals
                table.pop(got[0], None)
            self._push(_Item(_CLOSE, group, None))
        elif t == 0x46:  # FunctionCall: answered by FunctionCallResponse and ReadyForQuery
            self._group = None
            self._push(_Item(_FUNCTION, group, None))

    @staticmethod
    def _text(buf: bytes, start: int, stop: int) -> bytes:
        """Statement text up to its NUL, or all that was kept of it."""
        nul = buf.find(b"\0", start, stop)
        return bytes(buf[start:nul if nul >= 0 else stop])[:MAX_TEXT]

    @staticmethod
    def _remember(table: dict, key: bytes, value: Any, limit: int) -> None:
        table.pop(key, None)
        table[key] = value
        if len(table) > limit:
            del table[next(iter(table))]  # the oldest: dicts keep insertion order

    def _startup(self, buf: bytes, start: int, stop: int) -> None:
        if stop - start < 4:
            return
        code = _U32.unpack_from(buf, start)[0]
        if code == SSL_REQUEST or code == GSSENC_REQUEST:
            self._responses.answer_byte = True
            self._requests.untyped_ok = True
            return
        if code >> 16 != 3:
            return
        fields = bytes(buf[start + 4:stop]).split(b"\0")
        params = dict(zip(fields[0:-1:2], fields[1::2]))
        user = params.get(b"user")
        database = params.get(b"database") or user
        if user:
            self.user = user.decode("utf-8", "replace")
        if database:
            self.database = database.decode("utf-8", "replace")
        self._requests.untyped_ok = False

    def _unanswered(self, item: _Item, ts_ns: int | None) -> None:
        # Nobody answers: the connection closed, or (a full FIFO) we joined mid-stream
        # or lost the backend.  Its answer, if any, was cut off.
        if item.kind in (_QUERY, _EXECUTE):
            item.truncated = True
            self._finish(item, None)

    # --- backend messages ------------------------------------------------------------------

    def _progress(self, msg_seq: int | None, end_ns: int, rows: int = 0) -> _Item | None:
        """A backend message answering the oldest request (``rows`` DataRows): its end so far."""
        if not self._confirmed:
            self._confirm()  # a backend message, framed and typed as the server sends them
        pending = self._pending
        if not pending:
            return None
        head = pending[0]
        head.rows += rows
        head.end_ns = end_ns
        group = head.group
        if group is not None and group.response_seq is None:
            group.response_seq = msg_seq
        return head

    def _backend_message(self, t: int, buf: bytes, start: int, stop: int, msg_ns: int,
                         msg_seq: int | None, end_ns: int) -> None:
        if t == 0x44:  # DataRow: the commonest message
            self._progress(msg_seq, end_ns, 1)
            return
        if t == 0x41:  # NotificationResponse: comes at any time, answers nothing
            if not self._confirmed:
                self._confirm()
            return
        pending = self._pending
        head = self._progress(msg_seq, end_ns)
        if t == 0x31:
            self._pop_until(_PARSE)
        elif t == 0x32:
            self._pop_until(_BIND)
        elif t == 0x33:
            self._pop_until(_CLOSE)
        elif t == 0x6E:  # NoData
            self._pop_until(_DESCRIBE)
        elif t == 0x54:  # RowDescription: ends a Describe, or starts a Query's rows
            if head is not None and head.kind == _DESCRIBE:
                pending.popleft()
        elif t in b"CIs":  # CommandComplete, EmptyQueryResponse, PortalSuspended
            if head is None:
                return
            if t == 0x43:
                rows = _tag_rows(bytes(buf[start:stop]).rstrip(b"\0"))
                if rows is not None:
                    head.tag_rows = rows if head.tag_rows is None else head.tag_rows + rows
            if head.kind == _EXECUTE:
                pending.popleft()
                self._await_sync(head, end_ns)
        elif t == 0x45:  # ErrorResponse
            self._error(_error_fields(buf, start, stop), end_ns)
        elif t == 0x5A:  # ReadyForQuery
            self._ready(end_ns)

    def _pop_until(self, kind: int) -> None:
        """Pop the item ``kind`` answers; anything before it was answered unseen."""
        pending = self._pending
        if pending and pending[0].kind == kind:
            pending.popleft()
            return
        if not any(item.kind == kind for item in pending):
            return  # not ours to answer (joined mid-stream)
        while pending:
            item = pending.popleft()
            if item.kind == kind:
                return
            if item.kind in (_QUERY, _EXECUTE):
                item.truncated = True
                self._await_sync(item, item.end_ns or item.group.start_ns)

    def _await_sync(self, item: _Item, end_ns: int) -> None:
        """A finished Execute: its span waits for its batch's ReadyForQuery (an error at Sync marks it)."""
        item.end_ns = end_ns
        self._awaiting_sync.append(item)
        if len(self._awaiting_sync) > MAX_HELD:
            self._finish(self._awaiting_sync.pop(0), None)

    def _error(self, error: tuple[str, str], end_ns: int) -> None:
        pending = self._pending
        if not pending:
            # A startup failure, or the error belongs to a Sync batch whose Executes
            # are done (raised at the implicit commit): mark the last of them.
            if self._awaiting_sync:
                self._awaiting_sync[-1].error = error
                self._awaiting_sync[-1].end_ns = end_ns
            return
        head = pending[0]
        if head.kind in _ENDS_AT_Z:
            if head.kind == _SYNC and self._awaiting_sync:
                self._awaiting_sync[-1].error = error
                self._awaiting_sync[-1].end_ns = end_ns
            else:
                head.error = error
            return
        # Extended protocol: the server drops the rest of the batch up to Sync.
        failed: _Item | None = None
        first = head
        while pending and pending[0].kind not in _ENDS_AT_Z:
            item = pending.popleft()
            if item.kind == _EXECUTE and failed is None:
                failed = item
        if failed is None:
            # Nothing ran: the span is the failed preparation, named after its statement.
            failed = _Item(_EXECUTE, first.group, first.text)
        failed.error = error
        self._await_sync(failed, end_ns)
        if not pending:
            self._discarding = True

    def _ready(self, end_ns: int) -> None:
        pending = self._pending
        if pending and (pending[0].kind in _ENDS_AT_Z
                        or any(item.kind in _ENDS_AT_Z for item in pending)):
            while pending:
                item = pending.popleft()
                if item.kind in _ENDS_AT_Z:
                    if item.kind == _QUERY:
                        self._release_synced()
                        self._finish(item, end_ns)
                    break
                if item.kind == _EXECUTE:
                    item.truncated = True
                    self._await_sync(item, item.end_ns or end_ns)
        else:
            # Startup's ReadyForQuery, or we are out of step: what is queued is stale.
            while pending:
                item = pending.popleft()
                if item.kind in (_QUERY, _EXECUTE):
                    item.truncated = True
                    self._await_sync(item, item.end_ns or end_ns)
        self._release_synced()

    def _release_synced(self) -> None:
        done = self._awaiting_sync
        if done:
            self._awaiting_sync = []
            for item in done:
                self._finish(item, None)

    def _lost(self, frontend: bool, ts: int) -> None:
        for item in self._pending:
            item.truncated = True
        if frontend:
            pending = self._pending
            if self._group is not None and pending and pending[-1].kind in (_BIND, _DESCRIBE):
                # A Bind too big to capture (a large parameter) hid what followed it; every
                # driver follows a Bind with Execute and Sync, so expect their answers.
                execute = _Item(_EXECUTE, self._group, pending[-1].text)
                execute.truncated = True
                self._push(execute)
                self._push(_Item(_SYNC, None, None))
            self._group = None

    def _answer_lost(self, ts: int) -> None:
        """Backend bytes we cannot follow are still the answer to the oldest request."""
        if self._pending:
            self._pending[0].end_ns = ts

    def _flush_lost(self) -> None:
        """The client moved on while the backend stream was lost: its answers are over."""
        end = self._responses.last_ns
        while self._pending:
            item = self._pending.popleft()
            if item.kind in (_QUERY, _EXECUTE):
                item.truncated = True
                self._await_sync(item, item.end_ns or end)
        self._release_synced()
        self._responses.reset()
        self._discarding = False

    def _encrypted(self) -> None:
        self._pending.clear()
        self._stop()

    # --- spans ---------------------------------------------------------------------------

    def _finish(self, item: _Item, end_ns: int | None) -> None:
        group = item.group
        if group is None:
            return
        if end_ns is None:
            end_ns = item.end_ns if item.end_ns is not None else group.start_ns
        attrs: dict[str, Any] = {"db.system.name": "postgresql", "db.system": "postgresql"}
        name = None
        if item.text is not None:
            name, query = describe_query(item.text.decode("utf-8", "replace"), POSTGRESQL)
            attrs.update(query)
        if self.database is not None:
            attrs["db.namespace"] = self.database
        if self.user is not None:
            attrs["sidetrace.db.user"] = self.user
        rows = item.tag_rows if item.truncated else (item.rows or item.tag_rows or 0)
        if rows is not None and item.error is None:
            attrs["db.response.returned_rows"] = rows
        if item.truncated:
            attrs["sidetrace.db.truncated"] = True
        status = "unset"
        message = None
        if item.error is not None:
            code, message = item.error
            status = "error"
            if code:
                attrs["db.response.status_code"] = code
                attrs["error.type"] = code
            else:
                attrs["error.type"] = "_OTHER"
            message = message or None
        self._emit(SpanFacts(
            name=name or "postgresql", start_ns=group.start_ns, end_ns=max(end_ns, group.start_ns),
            server_side=self.role == "server", attributes=attrs, status=status,
            status_message=message, request_seq=group.start_seq, response_seq=group.response_seq,
        ))
