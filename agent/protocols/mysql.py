"""MySQL and MariaDB (client/server protocol 4.1+) as a protocol handler.

What becomes a span:

* COM_QUERY: from the command packet to the last packet of its answer (OK,
  ERR, or a result set's final EOF/OK, following every result set while the
  server says more results exist; LOCAL INFILE uploads included);
* COM_STMT_EXECUTE: likewise, with the text of the statement its id names,
  from a bounded per-connection map of statement id -> text filled by
  COM_STMT_PREPARE's answers;
* COM_PING: a span named PING;
* COM_STMT_PREPARE only when it fails (the statement never runs, so its
  error would show nowhere else).

The handshake, authentication, COM_QUIT (no answer), COM_STMT_CLOSE,
COM_STMT_FETCH, COM_INIT_DB and the other utility commands make no span.
The greeting's server version says MariaDB or MySQL (``db.system.name``;
"mysql" when the greeting was not seen); the handshake response's database
(or a later COM_INIT_DB) gives ``db.namespace`` and its user name
``sidetrace.db.user``.  After an SSL request, or when compression is
negotiated, the bytes are no longer plain packets: the connection then
yields nothing.

An ERR packet sets status "error", ``db.response.status_code`` and
``error.type`` to the error number (as text, e.g. "1146"),
``sidetrace.db.sqlstate`` to its SQLSTATE and the status message to its
message.

Packets are counted, not needed: each has a 3-byte length, so bodies are
skipped whether or not they were captured and only 4-byte headers have to be
seen.  A header lost to truncation (or a packet sequence number out of
step) loses the answer's place; the command ends at the last answer syscall
seen, is marked ``sidetrace.db.truncated``, and parsing starts afresh at the
client's next command.  Rows are counted while the place is kept
(``db.response.returned_rows``).
"""

from __future__ import annotations

import struct
from typing import Any

from ._base import ONE_AT_A_TIME, ConnectionHints, Context, Handler, SpanFacts
from ._sqlredact import MYSQL, describe_query, starts_like_sql

__all__ = ["MysqlHandler", "looks_like_command", "looks_like_greeting", "looks_like_handshake_response"]

_SEQ_MASK = 0xFFFFFFFF
MAX_PACKET = 0xFFFFFF          # a longer logical packet continues in the next one
MAX_TEXT = 4096                # statement text kept per command, in bytes
MAX_STATEMENTS = 256           # prepared statement id -> text, per connection
REQUEST_KEEP = MAX_TEXT + 16
RESPONSE_KEEP = 512

# Capability flags (the client's, limited to what the server offered).
CLIENT_CONNECT_WITH_DB = 0x8
CLIENT_COMPRESS = 0x20
CLIENT_PROTOCOL_41 = 0x200
CLIENT_SSL = 0x800
CLIENT_SECURE_CONNECTION = 0x8000
CLIENT_PLUGIN_AUTH_LENENC_DATA = 0x200000
CLIENT_DEPRECATE_EOF = 0x1000000
CLIENT_ZSTD_COMPRESSION = 0x4000000
CLIENT_QUERY_ATTRIBUTES = 0x8000000
MARIADB_CACHE_METADATA = 0x10  # in MariaDB's extended capabilities

SERVER_MORE_RESULTS_EXISTS = 0x8
SERVER_STATUS_CURSOR_EXISTS = 0x40

COM_QUIT, COM_INIT_DB, COM_QUERY, COM_FIELD_LIST = 0x01, 0x02, 0x03, 0x04
COM_PING, COM_CHANGE_USER = 0x0E, 0x11
COM_STMT_PREPARE, COM_STMT_EXECUTE, COM_STMT_SEND_LONG_DATA = 0x16, 0x17, 0x18
COM_STMT_CLOSE, COM_STMT_FETCH = 0x19, 0x1C
# Commands answered by exactly one packet (OK, ERR, EOF or a string).
_ONE_PACKET = frozenset((0x02, 0x05, 0x06, 0x07, 0x08, 0x09, 0x0C, 0x0D, 0x0E, 0x1A, 0x1B, 0x1F))
_NO_ANSWER = frozenset((COM_QUIT, COM_STMT_SEND_LONG_DATA, COM_STMT_CLOSE))
_KNOWN_COMMANDS = frozenset(range(0x00, 0x20))

# Answer states.
_FIRST, _COLUMNS, _EOF_AFTER_COLUMNS, _MAYBE_EOF, _ROWS, _PREPARED, _INFILE, _LOST = range(8)
_EOF_STEP, _MAYBE_EOF_STEP = -1, -2
# Connection phases.
_HANDSHAKE, _AUTH, _COMMAND, _OPAQUE = range(4)

_U16 = struct.Struct("<H")
_U32 = struct.Struct("<I")


def _lenenc(buf: bytes, at: int, stop: int) -> tuple[int, int] | None:
    """A length-encoded integer at buf[at:]: (value, index after it); None if cut or NULL."""
    if at >= stop:
        return None
    first = buf[at]
    if first < 0xFB:
        return first, at + 1
    width = {0xFC: 2, 0xFD: 3, 0xFE: 8}.get(first)
    if width is None or at + 1 + width > stop:
        return None
    return int.from_bytes(buf[at + 1:at + 1 + width], "little"), at + 1 + width


def _header(data: bytes, at: int = 0) -> tuple[int, int]:
    """(payload length, sequence id) of the packet header at data[at:at + 4]."""
    return data[at] | data[at + 1] << 8 | data[at + 2] << 16, data[at + 3]


# --- detection ------------------------------------------------------------------------


def looks_like_greeting(data: bytes) -> bool:
    """The server's first packet: protocol 10 handshake, sequence 0, alone in its syscall."""
    if len(data) < 40 or data[3] != 0 or data[4] != 10:
        return False
    length, _ = _header(data)
    nul = data.find(b"\0", 5, 5 + 64)
    if nul < 6 or not data[5:6].isdigit() or length + 4 != len(data):
        return False
    version = data[5:nul]
    return all(31 < c < 127 for c in version) and length >= nul - 4 + 4 + 8 + 1 + 2


def looks_like_handshake_response(data: bytes) -> bool:
    """The client's answer to the greeting: sequence 1, protocol 4.1 capabilities, zero filler."""
    if len(data) < 36 or data[3] != 1:
        return False
    length, _ = _header(data)
    if length < 32 or length + 4 != len(data):
        return False
    caps = _U32.unpack_from(data, 4)[0]
    # 23 filler bytes; MariaDB puts its extended capabilities in the last 4.
    return bool(caps & CLIENT_PROTOCOL_41) and data[12] != 0 and not any(data[13:32])


def looks_like_command(data: bytes, strict: bool = True) -> bool:
    """A command packet (sequence 0) the agent can follow from the middle of a connection.

    ``strict``: only COM_QUERY / COM_STMT_PREPARE with SQL text and COM_STMT_EXECUTE
    (for detection); otherwise any known command with a believable length (resync).
    """
    if len(data) < 5 or data[3] != 0:
        return False
    length, _ = _header(data)
    if length < 1 or (length + 4 != len(data) and (length + 4 < len(data) or len(data) < 1024)):
        return False
    command = data[4]
    if command in (COM_QUERY, COM_STMT_PREPARE):
        if starts_like_sql(data, 5):
            return True
        # Query attributes (MySQL 8): parameter count 0, one parameter set, then the text.
        return command == COM_QUERY and data[5:7] == b"\0\1" and starts_like_sql(data, 7)
    if command == COM_STMT_EXECUTE:
        # Statement id, cursor flags, iteration count (always 1).
        return length >= 10 and data[9] < 0x10 and data[10:14] == b"\1\0\0\0"
    if strict:
        return False
    return command in _KNOWN_COMMANDS and (command != COM_QUIT or length == 1)


# --- one direction's framing -----------------------------------------------------------


class _Stream:
    """Splits one direction's bytes into packets, counting what was not captured."""

    __slots__ = ("handler", "request", "head", "seq_id", "length", "remaining", "keep", "body",
                 "msg_ns", "msg_seq", "lost", "continued", "last_ns")

    def __init__(self, handler: MysqlHandler, request: bool) -> None:
        self.handler = handler
        self.request = request
        self.head = b""          # a header split across syscalls
        self.seq_id = 0
        self.length = 0
        self.remaining = 0
        self.keep = 0
        self.body = bytearray()
        self.msg_ns = 0
        self.msg_seq: int | None = None
        self.lost = False
        self.continued = False   # the previous packet was 16 MiB - 1: this one carries on
        self.last_ns = 0

    def feed(self, data: bytes, total: int, ts: int, seq: int | None) -> None:
        pos = 0
        end = len(data)
        self.last_ns = ts
        if self.lost:
            if not self.handler._may_resync(self.request, data, ts):
                return
            self.reset()
        handler = self.handler
        request = self.request
        keep = REQUEST_KEEP if request else RESPONSE_KEEP
        while pos < end:
            if self.remaining:
                pos = self._body(data, pos, end, ts)
                continue
            if not self.head and not self.continued and end - pos >= 4:
                # Fast path: a packet wholly inside this syscall, parsed in place.
                length = data[pos] | data[pos + 1] << 8 | data[pos + 2] << 16
                stop = pos + 4 + length
                if stop <= end:
                    if (not request and length < MAX_PACKET
                            and handler._row(data[pos + 3], data[pos + 4] if length else -1, ts)):
                        # The hottest path: rows of a result set.  Those that follow in
                        # this syscall, whole and in sequence, are counted together.
                        expect = (data[pos + 3] + 1) & 0xFF
                        pos = run = stop
                        count = 0
                        while end - pos >= 5:
                            length = data[pos] | data[pos + 1] << 8 | data[pos + 2] << 16
                            stop = pos + 4 + length
                            if (stop > end or not length or length >= MAX_PACKET
                                    or data[pos + 4] >= 0xFE or data[pos + 3] != expect):
                                break
                            count += 1
                            expect = (expect + 1) & 0xFF
                            pos = stop
                        if count and not handler._row(data[run + 3], data[run + 4], ts, count):
                            pos = run
                        continue
                    self.continued = length == MAX_PACKET
                    kept = pos + 4 + keep
                    handler._packet(request, data[pos + 3], length, data, pos + 4,
                                    kept if kept < stop else stop, ts,
                                    None if seq is None else (seq + pos) & _SEQ_MASK, ts)
                    if self.lost:
                        return
                    pos = stop
                    continue
            if self.head:
                need = 4 - len(self.head)
                hdr = self.head + data[pos:pos + need]
                pos += need
                if len(hdr) < 4:
                    self.head = hdr
                    break
                self.head = b""
                pos = self._begin(hdr, 0, pos, data, end, self.msg_ns, self.msg_seq, ts)
            elif end - pos < 4:
                self.head = data[pos:end]
                self.msg_ns = ts
                self.msg_seq = None if seq is None else (seq + pos) & _SEQ_MASK
                break
            else:
                pos = self._begin(data, pos, pos + 4, data, end, ts,
                                  None if seq is None else (seq + pos) & _SEQ_MASK, ts)
            if self.lost:
                return
        if total > end:
            self._skip(total - end, ts)

    def _begin(self, hdr: bytes, at: int, pos: int, data: bytes, end: int, msg_ns: int,
               msg_seq: int | None, ts: int) -> int:
        """A complete header at hdr[at:]; its body starts at data[pos]."""
        length = hdr[at] | hdr[at + 1] << 8 | hdr[at + 2] << 16
        seq_id = hdr[at + 3]
        keep = REQUEST_KEEP if self.request else RESPONSE_KEEP
        if keep > length:
            keep = length
        if pos + length <= end:
            self._dispatch(seq_id, length, data, pos, pos + keep, msg_ns, msg_seq, ts)
            return pos + length
        self.seq_id = seq_id
        self.length = length
        self.remaining = length
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
            self._dispatch_buffered(ts)
        return pos

    def _dispatch_buffered(self, ts: int) -> None:
        body = bytes(self.body)
        self.body = bytearray()
        self._dispatch(self.seq_id, self.length, body, 0, len(body), self.msg_ns,
                       self.msg_seq, ts)

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
                self._dispatch_buffered(ts)
        if count > 0:
            self.lose()

    def _dispatch(self, seq_id: int, length: int, buf: bytes, start: int, stop: int,
                  msg_ns: int, msg_seq: int | None, end_ns: int) -> None:
        if self.continued:
            # The tail of a logical packet longer than 16 MiB - 1: nothing new starts here.
            self.continued = length == MAX_PACKET
            self.handler._continuation(self.request, seq_id, end_ns)
            return
        self.continued = length == MAX_PACKET
        self.handler._packet(self.request, seq_id, length, buf, start, stop, msg_ns,
                             msg_seq, end_ns)

    def lose(self) -> None:
        self.lost = True
        self.head = b""
        self.remaining = 0
        self.body = bytearray()
        self.continued = False
        self.handler._lost(self.request, self.last_ns)

    def reset(self) -> None:
        self.lost = False
        self.head = b""
        self.remaining = 0
        self.body = bytearray()
        self.continued = False


# --- the connection --------------------------------------------------------------------


class _Command:
    """A command and what is known of its answer so far."""

    __slots__ = ("code", "text", "start_ns", "start_seq", "response_seq", "end_ns", "rows",
                 "error", "truncated", "state", "columns", "steps")

    def __init__(self, code: int, text: bytes | None, start_ns: int, start_seq: int | None) -> None:
        self.code = code
        self.text = text
        self.start_ns = start_ns
        self.start_seq = start_seq
        self.response_seq: int | None = None
        self.end_ns: int | None = None
        self.rows = 0
        self.error: tuple[int, str, str] | None = None   # (error number, SQLSTATE, message)
        self.truncated = False
        self.state = _ROWS if code in (COM_STMT_FETCH, COM_FIELD_LIST) else _FIRST
        self.columns = 0
        self.steps: list[int] = []   # COM_STMT_PREPARE: definitions and EOFs still to come


def _status_of_ok(buf: bytes, start: int, stop: int) -> int:
    """Server status flags of an OK packet (0x00 or 0xfe header)."""
    got = _lenenc(buf, start + 1, stop)               # affected rows
    got = got and _lenenc(buf, got[1], stop)          # last insert id
    if not got or got[1] + 2 > stop:
        return 0
    return _U16.unpack_from(buf, got[1])[0]


def _terminator_status(buf: bytes, start: int, stop: int, length: int) -> int:
    """Status flags of an EOF packet (5 bytes) or of an OK packet standing in for one."""
    if length == 5:
        return _U16.unpack_from(buf, start + 3)[0] if stop - start >= 5 else 0
    return _status_of_ok(buf, start, stop)


def _error(buf: bytes, start: int, stop: int) -> tuple[int, str, str]:
    code = _U16.unpack_from(buf, start + 1)[0] if stop - start >= 3 else 0
    at = start + 3
    state = ""
    if at < stop and buf[at] == 0x23:  # '#': protocol 4.1 SQLSTATE marker
        state = bytes(buf[at + 1:at + 6]).decode("ascii", "replace")
        at += 6
    return code, state, bytes(buf[at:stop]).decode("utf-8", "replace")


class MysqlHandler(Handler):
    """One MySQL or MariaDB connection, both directions (see the module doc).

    The protocol has no pipelining: a client sends one command and reads its
    whole answer, so the command being answered is all the pairing there is.
    """

    name = "mysql"
    PAIRING = ONE_AT_A_TIME

    __slots__ = ("system", "database", "user", "_requests", "_responses", "_phase", "_caps",
                 "_server_caps", "_mariadb_caps", "_deprecate_eof", "_command", "_next_seq",
                 "_statements", "_last_statement", "_pending_database", "_swallow_eof")

    @staticmethod
    def detect(data: bytes, direction: str, hints: ConnectionHints) -> bool:
        if hints.l4 != "tcp":
            return False
        return (looks_like_greeting(data) or looks_like_handshake_response(data)
                or looks_like_command(data))

    @staticmethod
    def looks_like_request(data: bytes) -> bool:
        return looks_like_handshake_response(data) or looks_like_command(data)

    looks_like_reply = staticmethod(looks_like_greeting)

    def __init__(self, role: str = "unknown", context: Context | None = None) -> None:
        super().__init__(role, context)
        self.system = "mysql"
        self.database: str | None = None
        self.user: str | None = None
        self._requests = _Stream(self, True)
        self._responses = _Stream(self, False)
        self._phase: int | None = None   # decided by the first whole packet
        self._caps = 0
        self._server_caps = 0
        self._mariadb_caps = 0
        self._deprecate_eof: bool | None = None    # unknown until the handshake or an answer says
        self._command: _Command | None = None      # the command being answered
        self._next_seq = 0
        self._statements: dict[int, bytes | None] = {}
        self._last_statement: int | None = None
        self._pending_database: bytes | None = None
        self._swallow_eof = False

    def _new_reader(self, carries_requests: bool) -> _Stream:
        return self._requests if carries_requests else self._responses

    def _end(self, ts_ns: int | None) -> None:
        command = self._command
        if command is not None:
            command.truncated = True
            self._finish(command)

    def _opaque(self) -> None:
        """TLS or compression from here on: nothing more to parse."""
        self._phase = _OPAQUE
        self._stop()

    def _first_packet(self, request: bool, seq_id: int, length: int, buf: bytes, start: int,
                      stop: int) -> None:
        """Where in the conversation the first whole packet is: handshake or commands."""
        if not request and seq_id == 0 and stop - start > 1 and buf[start] == 10:
            self._phase = _HANDSHAKE
        elif (request and seq_id == 1 and stop - start >= 32
              and _U32.unpack_from(buf, start)[0] & CLIENT_PROTOCOL_41 and not any(buf[start + 9:start + 28])):
            self._phase = _HANDSHAKE  # joined after the greeting
        else:
            self._phase = _COMMAND

    # --- packets -----------------------------------------------------------------------------

    def _packet(self, request: bool, seq_id: int, length: int, buf: bytes, start: int, stop: int,
                msg_ns: int, msg_seq: int | None, end_ns: int) -> None:
        phase = self._phase
        if phase is None:
            self._first_packet(request, seq_id, length, buf, start, stop)
            phase = self._phase
        if phase == _COMMAND:
            if request:
                self._request(seq_id, length, buf, start, stop, msg_ns, msg_seq, end_ns)
            else:
                self._answer(seq_id, length, buf, start, stop, msg_seq, end_ns)
        elif phase == _HANDSHAKE:
            if not request and seq_id == 0 and stop > start and buf[start] == 10:
                if not self._confirmed:
                    self._confirm()  # the server's greeting
                self._greeting(buf, start, stop)
                self._phase = _AUTH
            elif request and seq_id == 1:
                self._phase = _AUTH
                self._handshake_response(length, buf, start, stop)
        elif phase == _AUTH:
            if request:
                if seq_id == 1:
                    self._handshake_response(length, buf, start, stop)
                elif seq_id == 0 and length:
                    # Authentication packets never restart at 0: this is a command,
                    # so the server's OK went by unseen.
                    self._phase = _COMMAND
                    self._request(seq_id, length, buf, start, stop, msg_ns, msg_seq, end_ns)
            elif stop > start and buf[start] == 0x00:
                self._phase = _COMMAND
                if self._pending_database is not None:
                    self.database = self._pending_database.decode("utf-8", "replace")
                    self._pending_database = None

    def _continuation(self, request: bool, seq_id: int, end_ns: int) -> None:
        self._next_seq = (seq_id + 1) & 0xFF
        command = self._command
        if command is not None and not request:
            command.end_ns = end_ns

    def _greeting(self, buf: bytes, start: int, stop: int) -> None:
        nul = buf.find(b"\0", start + 1, stop)
        if nul < 0:
            return
        version = bytes(buf[start + 1:nul])
        if b"mariadb" in version.lower():
            self.system = "mariadb"
        at = nul + 1 + 4 + 8 + 1          # connection id, scramble part 1, filler
        if at + 2 <= stop:
            self._server_caps = _U16.unpack_from(buf, at)[0]
        if at + 7 <= stop:
            self._server_caps |= _U16.unpack_from(buf, at + 5)[0] << 16
        if at + 18 <= stop and not self._server_caps & 1:
            # MariaDB (it clears CLIENT_MYSQL) keeps extended capabilities in the reserved bytes.
            self._mariadb_caps = _U32.unpack_from(buf, at + 14)[0]

    def _handshake_response(self, length: int, buf: bytes, start: int, stop: int) -> None:
        if stop - start < 32:
            return
        caps = _U32.unpack_from(buf, start)[0]
        if self._server_caps:
            caps &= self._server_caps  # what both sides support is what is used
        if caps & CLIENT_SSL and length == 32:
            self._opaque()  # TLS from here on
            return
        if caps & (CLIENT_COMPRESS | CLIENT_ZSTD_COMPRESSION):
            self._opaque()  # compressed framing after authentication
            return
        self._caps = caps
        self._deprecate_eof = bool(caps & CLIENT_DEPRECATE_EOF)
        self._mariadb_caps &= _U32.unpack_from(buf, start + 28)[0]
        nul = buf.find(b"\0", start + 32, stop)
        if nul < 0:
            return
        self.user = bytes(buf[start + 32:nul]).decode("utf-8", "replace")
        at = nul + 1
        if caps & CLIENT_PLUGIN_AUTH_LENENC_DATA:
            got = _lenenc(buf, at, stop)
            if got is None:
                return
            at = got[1] + got[0]
        elif caps & CLIENT_SECURE_CONNECTION:
            if at >= stop:
                return
            at += 1 + buf[at]
        else:
            nul = buf.find(b"\0", at, stop)
            if nul < 0:
                return
            at = nul + 1
        if caps & CLIENT_CONNECT_WITH_DB and at < stop:
            nul = buf.find(b"\0", at, stop)
            if nul > at:
                self._pending_database = bytes(buf[at:nul])

    # --- commands --------------------------------------------------------------------------

    def _request(self, seq_id: int, length: int, buf: bytes, start: int, stop: int,
                 msg_ns: int, msg_seq: int | None, end_ns: int) -> None:
        command = self._command
        if seq_id != 0 or length == 0:
            # Not a new command: LOCAL INFILE data (an empty packet ends it) or auth data.
            self._next_seq = (seq_id + 1) & 0xFF
            if command is not None and command.state == _INFILE and length == 0:
                command.state = _FIRST
            return
        if command is not None:
            # The client moved on: whatever of the answer was not followed is over.
            command.truncated = True
            self._finish(command)
        self._responses.reset()
        self._swallow_eof = False
        self._next_seq = 1
        if stop <= start:
            # Not one byte of the command was captured: nothing to describe.
            return
        code = buf[start]
        if code in _NO_ANSWER:
            if code == COM_STMT_CLOSE and stop - start >= 5:
                self._statements.pop(_U32.unpack_from(buf, start + 1)[0], None)
            return
        text: bytes | None = None
        if code == COM_QUERY or code == COM_STMT_PREPARE:
            at = start + 1
            if code == COM_QUERY and (self._caps & CLIENT_QUERY_ATTRIBUTES
                                      or (not self._caps and buf[at:at + 2] == b"\0\1")):
                count = _lenenc(buf, at, stop)
                sets = count and _lenenc(buf, count[1], stop)
                at = sets[1] if sets and count[0] == 0 else stop
            text = bytes(buf[at:stop])[:MAX_TEXT] if at < stop else None
        elif code == COM_STMT_EXECUTE and stop - start >= 5:
            stmt = _U32.unpack_from(buf, start + 1)[0]
            if stmt == 0xFFFFFFFF and self._last_statement is not None:  # MariaDB: the last prepared
                stmt = self._last_statement
            text = self._statements.get(stmt)
        elif code == COM_INIT_DB:
            self._pending_database = bytes(buf[start + 1:stop])
        elif code == COM_CHANGE_USER:
            self._phase = _AUTH
            return
        self._command = _Command(code, text, msg_ns, msg_seq)
        if code not in _ONE_PACKET and code not in (COM_QUERY, COM_STMT_PREPARE, COM_STMT_EXECUTE,
                                                     COM_STMT_FETCH, COM_FIELD_LIST):
            self._command.state = _LOST   # binlog dumps and the like: not followed

    def _answer(self, seq_id: int, length: int, buf: bytes, start: int, stop: int,
                msg_seq: int | None, end_ns: int) -> None:
        command = self._command
        if command is None:
            if self._swallow_eof and length == 5 and stop > start and buf[start] == 0xFE:
                self._deprecate_eof = False
            self._swallow_eof = False
            return  # an answer to a command we did not see
        first = buf[start] if stop > start else -1
        if self._row(seq_id, first, end_ns):
            return
        if seq_id != self._next_seq:
            self._responses.lose()  # out of step: a packet went by unseen
            return
        if not self._confirmed:
            self._confirm()  # the answer's packets follow the command's sequence
        self._next_seq = (seq_id + 1) & 0xFF
        command.end_ns = end_ns
        state = command.state
        if command.response_seq is None:
            command.response_seq = msg_seq
        if first < 0:
            return  # an empty packet: nothing to read
        if state == _ROWS:
            if first == 0xFE and length < MAX_PACKET:
                if _terminator_status(buf, start, stop, length) & SERVER_MORE_RESULTS_EXISTS:
                    command.state = _FIRST
                else:
                    self._finish(command)
            elif first == 0xFF:
                command.error = _error(buf, start, stop)
                self._finish(command)
            else:
                command.rows += 1
        elif state == _COLUMNS:
            command.columns -= 1
            if command.columns <= 0:
                command.state = {True: _ROWS, False: _EOF_AFTER_COLUMNS}.get(
                    self._deprecate_eof, _MAYBE_EOF)
        elif state == _FIRST:
            self._first(command, first, length, buf, start, stop)
        elif state == _EOF_AFTER_COLUMNS or state == _MAYBE_EOF:
            if first == 0xFE and (length == 5 or state == _EOF_AFTER_COLUMNS and length < 9):
                self._deprecate_eof = False
                status = _terminator_status(buf, start, stop, length)
                if status & SERVER_STATUS_CURSOR_EXISTS and command.code == COM_STMT_EXECUTE:
                    self._finish(command)  # rows come later, through COM_STMT_FETCH
                else:
                    command.state = _ROWS
            else:
                if state == _MAYBE_EOF:
                    self._deprecate_eof = True
                command.state = _ROWS
                self._answer_again(command, seq_id, length, buf, start, stop, msg_seq, end_ns)
        elif state == _PREPARED:
            self._prepared_step(command, first, length)
        # _INFILE: the client is sending; _LOST: ignored until the next command.

    def _row(self, seq_id: int, first: int, end_ns: int, count: int = 1) -> bool:
        """Rows of the result set being read (the commonest packet), counted; False if not rows.

        ``seq_id`` and ``first`` are the first row's sequence id and first byte
        (-1: an empty packet); the ``count`` rows are in sequence from it.
        """
        command = self._command
        if command is None or command.state != _ROWS or first >= 0xFE or seq_id != self._next_seq:
            return False
        self._next_seq = (seq_id + count) & 0xFF
        command.end_ns = end_ns
        command.rows += count
        return True

    def _answer_again(self, command: _Command, seq_id: int, length: int, buf: bytes, start: int,
                      stop: int, msg_seq: int | None, end_ns: int) -> None:
        self._next_seq = seq_id
        self._answer(seq_id, length, buf, start, stop, msg_seq, end_ns)

    def _first(self, command: _Command, first: int, length: int, buf: bytes, start: int,
               stop: int) -> None:
        code = command.code
        if first == 0xFF:
            command.error = _error(buf, start, stop)
            self._finish(command)
        elif code in _ONE_PACKET:
            if code == COM_INIT_DB and first == 0x00 and self._pending_database:
                self.database = self._pending_database.decode("utf-8", "replace")
            self._pending_database = None
            self._finish(command)
        elif code == COM_STMT_PREPARE:
            self._prepare_ok(command, buf, start, stop)
        elif first == 0x00 and length >= 7:
            if _status_of_ok(buf, start, stop) & SERVER_MORE_RESULTS_EXISTS:
                return  # another result follows
            self._finish(command)
        elif first == 0xFB and code == COM_QUERY:
            command.state = _INFILE  # LOAD DATA LOCAL: the client sends the file
        elif first == 0xFE:
            self._finish(command)
        else:
            got = _lenenc(buf, start, stop)
            if got is None or got[0] == 0:
                self._responses.lose()
                return
            command.columns = got[0]
            command.state = _COLUMNS
            if (self._mariadb_caps & MARIADB_CACHE_METADATA and code == COM_STMT_EXECUTE
                    and got[1] < stop and buf[got[1]] == 0):
                command.state = _MAYBE_EOF  # definitions skipped: the client has them cached

    def _prepare_ok(self, command: _Command, buf: bytes, start: int, stop: int) -> None:
        if stop - start < 9 or buf[start] != 0x00:
            self._responses.lose()
            return
        stmt, columns, params = struct.unpack_from("<IHH", buf, start + 1)
        table = self._statements
        table.pop(stmt, None)
        table[stmt] = command.text
        if len(table) > MAX_STATEMENTS:
            del table[next(iter(table))]  # the oldest: dicts keep insertion order
        self._last_statement = stmt
        eof = {True: [], False: [_EOF_STEP]}.get(self._deprecate_eof, [_MAYBE_EOF_STEP])
        steps: list[int] = []
        for count in (params, columns):
            if count:
                steps += [count] + eof
        command.steps = steps
        command.state = _PREPARED
        self._prepared_step(command, None, 0)

    def _prepared_step(self, command: _Command, first: int | None, length: int) -> None:
        """One packet (``first`` its first byte; None: none yet) of a prepare's definitions."""
        steps = command.steps
        while steps:
            step = steps[0]
            if first is None:
                if step == _MAYBE_EOF_STEP and len(steps) == 1:
                    # Whether an EOF follows is unknown: done, but swallow one if it comes.
                    steps.pop(0)
                    self._swallow_eof = True
                    break
                return
            if step == _EOF_STEP:
                steps.pop(0)
                first = None
            elif step == _MAYBE_EOF_STEP:
                steps.pop(0)
                if first == 0xFE and length == 5:
                    self._deprecate_eof = False
                    first = None
                else:
                    self._deprecate_eof = True
                    for i, later in enumerate(steps):  # no EOFs at all on this connection
                        if later == _MAYBE_EOF_STEP:
                            steps[i] = 0
                    steps[:] = [s for s in steps if s]
            else:
                steps[0] = step - 1
                if steps[0] == 0:
                    steps.pop(0)
                first = None
        if not steps:
            self._finish(command)

    # --- losing track (called by the streams) ---------------------------------------------

    def _lost(self, request: bool, ts: int) -> None:
        command = self._command
        if command is not None:
            command.truncated = True
            if not request:
                command.state = _LOST
                command.end_ns = ts  # bytes we cannot follow are still the answer

    def _may_resync(self, request: bool, data: bytes, ts: int) -> bool:
        """A lost stream's next syscall: only the client's next command brings the place back."""
        if request:
            return looks_like_command(data, strict=False)
        if self._command is not None:
            self._command.end_ns = ts
        return False

    # --- spans ---------------------------------------------------------------------------

    def _finish(self, command: _Command) -> None:
        self._command = None
        code = command.code
        spans = code in (COM_QUERY, COM_STMT_EXECUTE, COM_PING) or (
            code == COM_STMT_PREPARE and command.error is not None)
        if not spans:
            return
        attrs: dict[str, Any] = {"db.system.name": self.system, "db.system": self.system}
        name = None
        if code == COM_PING:
            name = "PING"
            attrs["db.operation.name"] = "PING"
        elif command.text is not None:
            name, query = describe_query(command.text.decode("utf-8", "replace"), MYSQL)
            attrs.update(query)
        if self.database is not None:
            attrs["db.namespace"] = self.database
        if self.user is not None:
            attrs["sidetrace.db.user"] = self.user
        if code != COM_PING and not command.truncated and command.error is None:
            attrs["db.response.returned_rows"] = command.rows
        if command.truncated:
            attrs["sidetrace.db.truncated"] = True
        status = "unset"
        message = None
        if command.error is not None:
            number, state, message = command.error
            status = "error"
            attrs["db.response.status_code"] = str(number)
            attrs["error.type"] = str(number)
            if state:
                attrs["sidetrace.db.sqlstate"] = state
            message = message or None
        end = command.end_ns if command.end_ns is not None else command.start_ns
        self._emit(SpanFacts(
            name=name or self.system, start_ns=command.start_ns, end_ns=max(end, command.start_ns),
            server_side=self.role == "server", attributes=attrs, status=status,
            status_message=message, request_seq=command.start_seq,
            response_seq=command.response_seq,
        ))
