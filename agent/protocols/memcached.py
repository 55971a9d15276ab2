"""Memcached (text, meta and binary protocols) as a protocol handler.

Text and meta commands are a line, storage commands (set/add/replace/append/
prepend/cas, ms) then a data block of a length the line gives; replies are
lines, retrievals a ``VALUE``/``VA`` line and a data block.  Data blocks are
*counted*, never buffered: only a line cut between two syscalls is (at most
``MAX_LINE`` bytes).  A connection speaks binary when its first byte is 0x80
(request) or 0x81 (response): fixed 24-byte headers giving the body length.

Pairing is FIFO, and what ends a reply depends on the command it answers:
``get``/``gets``/``gat``/``gats`` (any number of keys) end with ``END`` after
one ``VALUE`` block per hit, ``stats`` with ``END`` (or ``RESET``/``OK``), the
rest after one line (and ``VA``'s data block).  Commands with ``noreply`` and
``quit`` get no reply: their span ends with the command.  Quiet meta commands
(flag ``q``) leave out their usual success reply (``EN`` for mg, ``HD`` for
ms/md): a reply that cannot be theirs (that code, ``MN``, another opaque
``O`` token) means they succeeded silently.  In binary, responses carry the
request's opcode and opaque: quiet requests (getq, setq, ...) skipped by a
response succeeded silently; ``stat`` gets responses until an empty one.

Losing track (a line that went uncaptured) is handled as for redis: wait for a
syscall that starts like a command or a reply; commands we could not see
leave a gap that swallows the replies which began before the next command we
saw; commands already waiting when the replies were lost get spans without a
response.  Every command seen makes exactly one span.

Query text rule (``db.query.text``): the command, its key verbatim (the first
argument; for gat/gats the second, after the expiry time), the ``noreply``
keyword, and ``?`` for every other argument (flags, expiry, lengths, values,
further keys, meta flags): ``set user:42 ? ? ? noreply``, ``get a ? ?``.
Commands without a key (stats, flush_all, verbosity, ...) keep their first
argument.  Binary requests: the command, the key, and ``?`` when extras or a
value follow.
"""

from __future__ import annotations

import re
import struct
from typing import Any, Final

from ._base import ConnectionHints, Context, Handler, Request, SpanFacts

__all__ = ["MemcachedHandler", "looks_like_binary",
           "looks_like_text_command", "looks_like_text_reply", "query_text"]

MAX_LINE: Final = 64 * 1024      # a command line (multi-gets can be long) or a reply line
MAX_DATA: Final = 1 << 31        # a data block or binary body; memcached's items are at most 1 GiB
MAX_PENDING: Final = 1024        # commands waiting for replies (pipelining, quiet commands)
KEEP_BYTES: Final = 256          # of a key, and of an error line
MAX_PLACEHOLDERS: Final = 32
MAX_MESSAGE: Final = 256
BINARY_HEADER: Final = 24
_SEQ_MASK: Final = 0xFFFFFFFF

MEMCACHED_PORTS: Final = frozenset({11211, 11212, 21211})

_STORAGE: Final = frozenset({b"set", b"add", b"replace", b"append", b"prepend", b"cas"})
_RETRIEVAL: Final = frozenset({b"get", b"gets", b"gat", b"gats"})
_NO_KEY: Final = frozenset({b"stats", b"version", b"flush_all", b"verbosity", b"mn", b"quit",
                            b"lru_crawler", b"slabs", b"watch", b"cache_memlimit", b"shutdown",
                            b"misbehave", b"debugtime", b"lru", b"extstore"})
_META: Final = frozenset({b"mg", b"ms", b"md", b"ma", b"me", b"mn"})
# Commands whose first argument is a key (gat/gats: the second).
_KEYED: Final = _STORAGE | _RETRIEVAL | _META - {b"mn"} | {b"delete", b"incr", b"decr", b"touch"}

# The reply codes each meta command can get (errors aside); quiet mode ("q")
# leaves out the success code: EN (a miss) for mg, HD for the others.
_META_REPLIES: Final = {
    b"mg": frozenset({b"VA", b"HD", b"EN"}), b"ms": frozenset({b"HD", b"NS", b"EX"}),
    b"md": frozenset({b"HD", b"NF", b"EX"}), b"ma": frozenset({b"HD", b"VA", b"NF", b"NS", b"EX"}),
    b"me": frozenset({b"ME", b"EN"}), b"mn": frozenset({b"MN"}),
}
_QUIET_SUPPRESSED: Final = {b"mg": b"EN", b"ms": b"HD", b"md": b"HD", b"ma": b"HD"}
_ERRORS: Final = frozenset({b"ERROR", b"CLIENT_ERROR", b"SERVER_ERROR"})
_STATUS_WORDS: Final = frozenset({b"STORED", b"NOT_STORED", b"EXISTS", b"NOT_FOUND", b"DELETED",
                                  b"TOUCHED", b"OK", b"RESET", b"HD", b"NS", b"EX", b"NF", b"EN",
                                  b"ERROR", b"CLIENT_ERROR", b"SERVER_ERROR"})
# Words that start a reply (lines inside stats and dumps may start with anything).
_REPLY_WORDS: Final = _STATUS_WORDS | {b"VALUE", b"END", b"STAT", b"VERSION", b"VA", b"MN", b"ME",
                                       b"ITEM", b"PREFIX"}
_OP_NAME = re.compile(rb"[a-z_]{1,32}")
_PLAIN_KEY = re.compile(rb"[!-~]{1,128}")

# Detection: a whole, valid command line.
_KEY = rb"[!-~\x80-\xff]{1,250}"
_NUM = rb"-?[0-9]{1,20}"
_META_FLAGS = rb"(?: [A-Za-z][!-~]{0,64}){0,24}"
_TEXT_COMMAND = re.compile(
    rb"(?:gets?(?: " + _KEY + rb")+"
    rb"|gats? " + _NUM + rb"(?: " + _KEY + rb")+"
    rb"|(?:set|add|replace|append|prepend) " + _KEY + rb" [0-9]{1,10} " + _NUM + rb" [0-9]{1,10}(?: noreply)?"
    rb"|cas " + _KEY + rb" [0-9]{1,10} " + _NUM + rb" [0-9]{1,10} [0-9]{1,20}(?: noreply)?"
    rb"|delete " + _KEY + rb"(?: 0)?(?: noreply)?"
    rb"|(?:incr|decr) " + _KEY + rb" [0-9]{1,20}(?: noreply)?"
    rb"|touch " + _KEY + rb" " + _NUM + rb"(?: noreply)?"
    rb"|stats(?: [a-z_0-9]{1,32}){0,3}"
    rb"|version|mn"
    rb"|flush_all(?: " + _NUM + rb")?(?: noreply)?"
    rb"|verbosity [0-9]{1,3}(?: noreply)?"
    rb"|m[gdae] " + _KEY + _META_FLAGS +
    rb"|ms " + _KEY + rb" [0-9]{1,10}" + _META_FLAGS +
    rb") ?\r?\n")
_TEXT_REPLY = re.compile(
    rb"(?:VALUE " + _KEY + rb" [0-9]{1,10} [0-9]{1,10}(?: [0-9]{1,20})?"
    rb"|END|STORED|NOT_STORED|EXISTS|NOT_FOUND|DELETED|TOUCHED|OK|RESET|ERROR"
    rb"|(?:CLIENT|SERVER)_ERROR[^\r\n]{0,1024}|STAT [^\r\n]{1,1024}|VERSION [^\r\n]{1,64}|[0-9]{1,20}"
    rb"|VA [0-9]{1,10}" + _META_FLAGS + rb"|(?:HD|EN|NF|NS|EX)" + _META_FLAGS + rb"|MN|ME [^\r\n]{1,1024}"
    rb")\r\n")

_BINARY_OPS: Final = {
    0x00: "get", 0x01: "set", 0x02: "add", 0x03: "replace", 0x04: "delete", 0x05: "incr",
    0x06: "decr", 0x07: "quit", 0x08: "flush_all", 0x09: "get", 0x0a: "noop", 0x0b: "version",
    0x0c: "get", 0x0d: "get", 0x0e: "append", 0x0f: "prepend", 0x10: "stats", 0x11: "set",
    0x12: "add", 0x13: "replace", 0x14: "delete", 0x15: "incr", 0x16: "decr", 0x17: "quit",
    0x18: "flush_all", 0x19: "append", 0x1a: "prepend", 0x1b: "verbosity", 0x1c: "touch",
    0x1d: "gat", 0x1e: "gat", 0x20: "sasl_list_mechs", 0x21: "sasl_auth", 0x22: "sasl_step",
    0x23: "gat", 0x24: "gat",
}
_BINARY_QUIET_GETS: Final = frozenset({0x09, 0x0d, 0x1e, 0x24})   # reply only on a hit
_BINARY_QUIET_WRITES: Final = frozenset(range(0x11, 0x1b))        # reply only on an error
_BINARY_QUIET: Final = _BINARY_QUIET_GETS | _BINARY_QUIET_WRITES
_BINARY_STAT, _BINARY_NOOP, _BINARY_QUIT, _BINARY_QUITQ = 0x10, 0x0a, 0x07, 0x17
_BINARY_STATUS: Final = {
    0x0000: "NO_ERROR", 0x0001: "KEY_ENOENT", 0x0002: "KEY_EEXISTS", 0x0003: "E2BIG",
    0x0004: "EINVAL", 0x0005: "NOT_STORED", 0x0006: "DELTA_BADVAL", 0x0007: "NOT_MY_VBUCKET",
    0x0008: "AUTH_ERROR", 0x0009: "AUTH_CONTINUE", 0x0081: "UNKNOWN_COMMAND", 0x0082: "ENOMEM",
    0x0083: "NOT_SUPPORTED", 0x0084: "EINTERNAL", 0x0085: "EBUSY", 0x0086: "ETMPFAIL",
}
# Outcomes that answer the question asked (a miss, a failed add or cas) are not errors.
_BINARY_NOT_ERRORS: Final = frozenset({0x0000, 0x0001, 0x0002, 0x0005, 0x0009})
_HEADER = struct.Struct(">BBHBBHIIQ")


def looks_like_text_command(data: bytes) -> bool:
    """``data`` starts with a whole, valid memcached text or meta command line."""
    return bool(data) and 97 <= data[0] <= 118 and _TEXT_COMMAND.match(data) is not None


def looks_like_text_reply(data: bytes) -> bool:
    return bool(data) and _TEXT_REPLY.match(data) is not None


def _binary_header(data: bytes, magic: int) -> tuple[int, int, int, int, int, int] | None:
    """(opcode, key length, extras length, status, body length, opaque) of a plausible header."""
    if len(data) < BINARY_HEADER or data[0] != magic:
        return None
    _, opcode, keylen, extlen, dtype, status, bodylen, opaque, _ = _HEADER.unpack_from(data)
    if dtype != 0 or opcode not in _BINARY_OPS or extlen + keylen > bodylen or bodylen > MAX_DATA:
        return None
    if keylen > 250 and opcode != 0x21:  # SASL mechanism names go in the key too
        return None
    if magic == 0x81 and status not in _BINARY_STATUS:
        return None
    return opcode, keylen, extlen, status, bodylen, opaque


def looks_like_binary(data: bytes) -> bool:
    """``data`` starts with a binary-protocol request (0x80) or response (0x81) header."""
    if not data or data[0] not in (0x80, 0x81):
        return False
    head = _binary_header(data, data[0])
    if head is None:
        return False
    opcode, keylen, extlen = head[0], head[1], head[2]
    if data[0] == 0x80:
        # Requests: gets and deletes carry a key and no extras, stores 8 bytes of extras.
        if opcode in (0x00, 0x09, 0x0c, 0x0d, 0x04, 0x14):
            return keylen > 0 and extlen == 0
        if opcode in (0x01, 0x02, 0x03, 0x11, 0x12, 0x13):
            return keylen > 0 and extlen == 8
    return True


def _render_key(key: bytes) -> str:
    """A key as text: printable ASCII as is, anything else quoted with escapes."""
    if _PLAIN_KEY.fullmatch(key) and key[:1] != b'"':
        return key.decode("ascii")
    text = "".join(_ESCAPED[b] for b in key[:128])
    return f'"{text}{"..." if len(key) > 128 else ""}"'


_ESCAPED: Final = [chr(b) if 0x20 <= b < 0x7F else f"\\x{b:02x}" for b in range(256)]
_ESCAPED[0x22] = '\\"'
_ESCAPED[0x5C] = "\\\\"


def query_text(tokens: list[bytes]) -> str:
    """``db.query.text`` of a text command by the rule in the module docstring."""
    cmd = tokens[0]
    words = [_op_name(cmd)]
    # The key, or a keyless command's first argument (a sub-command); unknown commands keep nothing.
    keep_at = (2 if cmd in (b"gat", b"gats") else 1) if cmd in _KEYED or cmd in _NO_KEY else -1
    placeholders = 0
    for i, token in enumerate(tokens[1:], 1):
        if i == keep_at:
            words.append(_render_key(token[:KEEP_BYTES]))
        elif token == b"noreply":
            words.append("noreply")
        elif placeholders < MAX_PLACEHOLDERS:
            words.append("?")
            placeholders += 1
        else:
            words.append("...")
            break
    return " ".join(words)


def _op_name(cmd: bytes) -> str:
    name = _OPS.get(cmd)
    if name is None:
        name = cmd.decode("ascii") if _OP_NAME.fullmatch(cmd) else "unknown"
        if len(_OPS) < 1024:  # bounded: a client could make up many words
            _OPS[cmd] = name
    return name


_OPS: dict[bytes, str] = {}


class _Request(Request):
    """A command waiting for its reply."""

    __slots__ = ("op", "text", "flags", "no_reply", "quiet", "cmd", "multi", "opaque", "keys",
                 "opcode", "replies", "echo_key")

    def __init__(self, op: str, text: str, start_ns: int, seq: int | None) -> None:
        super().__init__(start_ns, start_ns, seq)
        self.op = op
        self.text = text
        self.flags: list[str] = []
        self.no_reply = False     # noreply, quit: no reply at all
        self.quiet = False        # meta "q" or a binary quiet opcode: a reply only sometimes
        self.cmd = b""            # the text command word
        self.multi = False        # the reply is lines up to END
        self.opaque: bytes | int | None = None
        self.keys = 0             # keys of a retrieval
        self.opcode = -1          # binary
        self.replies: frozenset[bytes] = frozenset()  # meta: the reply codes it can get
        self.echo_key: bytes | None = None            # meta "k" flag: the reply names the key


class _Reply:
    """A reply (text: one or more lines and data blocks; binary: one or more packets)."""

    __slots__ = ("start_ns", "end_ns", "seq", "word", "line", "hits", "truncated", "status")

    def __init__(self, start_ns: int, seq: int | None) -> None:
        self.start_ns = start_ns
        self.end_ns = start_ns
        self.seq = seq
        self.word = b""           # first word of the (last) line: END, STORED, CLIENT_ERROR, ...
        self.line = b""           # that line, cut at KEEP_BYTES
        self.hits = 0             # VALUE blocks
        self.truncated = False
        self.status = -1          # binary status


class _TextStream:
    """One direction of the text protocol: lines, and data blocks counted by length."""

    __slots__ = ("handler", "is_request", "buf", "data_left", "line_start", "line_seq", "lost",
                 "resyncs", "truncated")

    def __init__(self, handler: MemcachedHandler, is_request: bool) -> None:
        self.handler = handler
        self.is_request = is_request
        self.buf = bytearray()
        self.data_left = 0           # data block bytes + CRLF still to come
        self.line_start = 0          # ts and seq of the first byte of the line being read
        self.line_seq: int | None = None
        self.lost = False
        self.resyncs = 0
        self.truncated = False       # some of the current item's bytes were not captured

    def feed(self, data: bytes, total: int, ts: int, seq: int | None) -> None:
        end = len(data)
        if self.lost:
            if not end or not self.handler._may_resync(self.is_request, data, ts):
                return
            self.lost = False
        pos = 0
        while pos < end and not self.lost:
            left = self.data_left
            if left:
                take = min(left, end - pos)
                pos += take
                self.data_left = left - take
                if take == left:
                    if take >= 2 and data[pos - 2:pos] != b"\r\n":
                        self._lose(ts)
                        return
                    self.handler._data_done(self.is_request, ts, self.truncated)
                continue
            nl = data.find(b"\n", pos, end)
            if not self.buf:
                self.line_start = ts
                self.line_seq = None if seq is None else (seq + pos) & _SEQ_MASK
            if nl < 0:
                if len(self.buf) + end - pos > MAX_LINE:
                    self._lose(ts)
                    return
                self.buf += data[pos:end]
                break
            if self.buf:
                self.buf += data[pos:nl]
                line = bytes(self.buf)
                self.buf.clear()
                if len(line) > MAX_LINE:
                    self._lose(ts)
                    return
            else:
                line = data[pos:nl]
            pos = nl + 1
            if line[-1:] == b"\r":
                line = line[:-1]
            self.truncated = False
            length = self.handler._line(self.is_request, line, self.line_start, self.line_seq, ts)
            if length is None:
                self._lose(ts)
                return
            if length >= 0:
                self.data_left = length + 2
        if total > end and not self.lost:
            self._skip(total - end, ts)

    def _skip(self, count: int, ts: int) -> None:
        left = self.data_left
        if left:
            self.truncated = True
            take = min(left, count)
            self.data_left = left - take
            count -= take
            if take == left:
                self.handler._data_done(self.is_request, ts, True)
        if count:
            self._lose(ts)

    def _lose(self, ts: int) -> None:
        self.reset_lost()
        self.resyncs += 1
        self.handler._lost(self.is_request, ts)

    def reset_lost(self) -> None:
        self.buf.clear()
        self.data_left = 0
        self.lost = True


class _BinaryStream:
    """One direction of the binary protocol: 24-byte headers, bodies counted by length."""

    __slots__ = ("handler", "is_request", "magic", "buf", "body_left", "keep", "keep_left", "head",
                 "start_ns", "seq", "lost", "resyncs", "truncated")

    def __init__(self, handler: MemcachedHandler, is_request: bool) -> None:
        self.handler = handler
        self.is_request = is_request
        self.magic = 0x80 if is_request else 0x81
        self.buf = bytearray()          # a header cut by a syscall boundary
        self.body_left = 0
        self.keep = bytearray()         # the body's first bytes: extras, key, an error text
        self.keep_left = 0
        self.head: tuple[int, int, int, int, int, int] | None = None
        self.start_ns = 0
        self.seq: int | None = None
        self.lost = False
        self.resyncs = 0
        self.truncated = False

    def feed(self, data: bytes, total: int, ts: int, seq: int | None) -> None:
        end = len(data)
        if self.lost:
            if not end or not self.handler._may_resync(self.is_request, data, ts):
                return
            self.lost = False
        pos = 0
        while pos < end:
            if self.head is not None:
                take = min(self.body_left, end - pos)
                if self.keep_left:
                    piece = data[pos:pos + min(take, self.keep_left)]
                    self.keep += piece
                    self.keep_left -= len(piece)
                pos += take
                self.body_left -= take
                if not self.body_left:
                    self._done(ts)
                continue
            if not self.buf:
                self.start_ns = ts
                self.seq = None if seq is None else (seq + pos) & _SEQ_MASK
            take = min(BINARY_HEADER - len(self.buf), end - pos)
            self.buf += data[pos:pos + take]
            pos += take
            if len(self.buf) < BINARY_HEADER:
                break
            head = _binary_header(bytes(self.buf), self.magic)
            self.buf.clear()
            if head is None:
                self._lose(ts)
                return
            self.head = head
            self.truncated = False
            self.body_left = head[4]
            self.keep = bytearray()
            self.keep_left = min(head[4], head[1] + head[2] + KEEP_BYTES)
            if not self.body_left:
                self._done(ts)
        if total > end and not self.lost:
            count = total - end
            if self.head is not None:
                self.truncated = True
                take = min(self.body_left, count)
                self.body_left -= take
                count -= take
                if not self.body_left:
                    self._done(ts)
            if count:
                self._lose(ts)

    def _done(self, ts: int) -> None:
        head = self.head
        self.head = None
        self.handler._packet(self.is_request, head, bytes(self.keep), self.start_ns, self.seq, ts,
                          self.truncated)

    def _lose(self, ts: int) -> None:
        self.reset_lost()
        self.resyncs += 1
        self.handler._lost(self.is_request, ts)

    def reset_lost(self) -> None:
        self.buf.clear()
        self.head = None
        self.body_left = 0
        self.keep_left = 0
        self.lost = True


class MemcachedHandler(Handler):
    """Commands and replies of one connection, paired into spans (FIFO, see the module doc).

    The protocol (text or binary) is decided by the first bytes.
    """

    name = "memcached"
    MAX_PENDING = MAX_PENDING

    __slots__ = ("binary", "_storing", "_reply", "_reply_owner", "_reply_multi")

    @staticmethod
    def detect(data: bytes, direction: str, hints: ConnectionHints) -> bool:
        if hints.l4 != "tcp" or not data:
            return False
        first = data[0]
        if first == 0x80 or first == 0x81:
            return looks_like_binary(data)
        if looks_like_text_command(data):
            return True
        # A reply first (joined mid-stream) is too weak a signal without the port.
        return ((hints.local_port in MEMCACHED_PORTS or hints.remote_port in MEMCACHED_PORTS)
                and looks_like_text_reply(data))

    def __init__(self, role: str = "unknown", context: Context | None = None) -> None:
        super().__init__(role, context)
        self.binary: bool | None = None
        self._storing: _Request | None = None    # a command whose data block is being read
        self._reply: _Reply | None = None        # a reply in progress (multi-line, VA, stat)
        self._reply_owner: _Request | None = None
        self._reply_multi = False

    def looks_like_request(self, data: bytes) -> bool:
        if self.binary is not False and data[:1] == b"\x80" and looks_like_binary(data):
            return True
        return not self.binary and looks_like_text_command(data)

    def looks_like_reply(self, data: bytes) -> bool:
        if self.binary is not False and data[:1] == b"\x81" and looks_like_binary(data):
            return True
        return not self.binary and looks_like_text_reply(data)

    def _begin(self, direction: str, data: bytes) -> _TextStream | _BinaryStream | None:
        if not data:
            return None
        self.binary = data[0] in (0x80, 0x81)
        return super()._begin(direction, data)

    def _new_reader(self, carries_requests: bool) -> _TextStream | _BinaryStream:
        return (_BinaryStream if self.binary else _TextStream)(self, carries_requests)

    @property
    def pending_commands(self) -> int:
        return len(self._pending)

    def _end(self, ts_ns: int | None) -> None:
        if self._storing is not None:
            self._storing.flags.append("request_truncated")
            self._push(self._storing)
            self._storing = None
        if self._reply is not None and self._held is None:
            reply = self._reply
            reply.truncated = True
            if ts_ns is not None:
                reply.end_ns = ts_ns
            self._reply = None
            if self._reply_owner is not None:
                self._respond(self._reply_owner, reply)

    # --- text protocol ------------------------------------------------------------

    def _line(self, is_request: bool, line: bytes, start_ns: int, seq: int | None,
              ts: int) -> int | None:
        """A text line; returns the length of the data block that follows (-1: none, None: bad)."""
        if is_request:
            return self._command_line(line, start_ns, seq, ts)
        return self._reply_line(line, start_ns, seq, ts)

    def _command_line(self, line: bytes, start_ns: int, seq: int | None, ts: int) -> int | None:
        tokens = line.split()
        if not tokens:
            return -1  # memcached ignores empty lines
        cmd = tokens[0]
        if _OP_NAME.fullmatch(cmd) is None:
            # Not a word memcached could take for a command (it answers one it does not
            # know with ERROR, which makes a span): a line of something else.
            self._not_this_protocol()
        req = _Request(_op_name(cmd), query_text(tokens), start_ns, seq)
        req.cmd = cmd
        req.end_ns = ts
        length = -1
        n = len(tokens)
        if cmd in _STORAGE:
            if n >= (6 if cmd == b"cas" else 5) and tokens[4].isdigit() and len(tokens[4]) < 11:
                length = int(tokens[4])
                req.no_reply = tokens[-1] == b"noreply" and n == (7 if cmd == b"cas" else 6)
        elif cmd in _RETRIEVAL:
            req.multi = True
            req.keys = n - (2 if cmd in (b"gat", b"gats") else 1)
        elif cmd == b"stats" or (cmd == b"lru_crawler" and n > 1 and tokens[1] in (b"metadump", b"mgdump")):
            req.multi = True
        elif cmd in _META:
            flags = tokens[3:] if cmd == b"ms" else tokens[2:]
            if cmd == b"ms" and n >= 3 and tokens[2].isdigit() and len(tokens[2]) < 11:
                length = int(tokens[2])
            replies = _META_REPLIES[cmd]
            for flag in flags:
                if flag == b"q":
                    req.quiet = cmd in _QUIET_SUPPRESSED
                elif flag[:1] == b"O":
                    req.opaque = flag
                elif flag == b"k" and n > 1:
                    req.echo_key = b"k" + tokens[1]
                elif cmd == b"ms" and flag[:1] in (b"C", b"M"):
                    replies = replies | {b"NF"}  # compare-and-swap and append modes can miss
            if req.quiet:
                replies = replies - {_QUIET_SUPPRESSED[cmd]}
            req.replies = replies
        elif cmd == b"quit":
            req.no_reply = True
        elif n > 1 and tokens[-1] == b"noreply" and cmd in (b"delete", b"incr", b"decr", b"touch",
                                                           b"flush_all", b"verbosity"):
            req.no_reply = True
        if length > MAX_DATA:
            return None
        if length >= 0:
            self._storing = req  # queued once its data block went by
        else:
            self._push(req)
        return length

    def _reply_line(self, line: bytes, start_ns: int, seq: int | None, ts: int) -> int | None:
        word, _, rest = line.partition(b" ")
        length = -1
        if word == b"VALUE" or word == b"VA":
            fields = rest.split()
            size = fields[2] if word == b"VALUE" and len(fields) >= 3 else fields[0] if fields else b""
            if not size.isdigit() or len(size) > 10 or int(size) > MAX_DATA:
                return None
            length = int(size)
        reply = self._reply
        if reply is None:
            head = self._next_request()
            known = word in _REPLY_WORDS or word.isdigit()
            # Lines inside stats and dumps may start with anything; a retrieval's are VALUE and END.
            if not known and (head is None or not head.multi or head.cmd in _RETRIEVAL):
                return None  # not a reply: we are out of step
            if known:
                if not self._confirmed:
                    self._confirm()  # a reply line memcached sends
            reply = self._reply = _Reply(start_ns, seq)
            owner = self._owner_text(word, rest)
            self._reply_owner = owner
            # Without its command, the words tell whether lines up to END follow.
            self._reply_multi = owner.multi if owner is not None else word in (b"VALUE", b"STAT")
        reply.word = word
        reply.line = line[:KEEP_BYTES]
        reply.end_ns = ts
        if word == b"VALUE":
            reply.hits += 1
        if length >= 0:
            return length  # the reply goes on with the data block
        self._text_item_done(word)
        return -1

    def _data_done(self, is_request: bool, ts: int, truncated: bool) -> None:
        if is_request:
            req = self._storing
            self._storing = None
            if req is not None:
                req.end_ns = ts
                if truncated:
                    req.flags.append("request_truncated")
                self._push(req)
            return
        reply = self._reply
        if reply is not None:
            reply.end_ns = ts
            reply.truncated |= truncated
            self._text_item_done(reply.word)

    def _text_item_done(self, word: bytes) -> None:
        if self._reply_multi and word != b"END" and word not in _ERRORS:
            owner = self._reply_owner
            # "stats reset" and "stats detail on" answer with a single RESET or OK.
            if not (word in (b"RESET", b"OK") and owner is not None and owner.cmd == b"stats"):
                return
        reply = self._reply
        owner = self._reply_owner
        self._reply = None
        self._reply_owner = None
        if owner is not None:
            self._respond(owner, reply)
            self._drain_no_reply()

    def _owner_text(self, word: bytes, rest: bytes) -> _Request | None:
        """The command a text reply answers, past quiet commands that succeeded silently."""
        opaque = key = None
        if len(word) == 2 and rest:  # a meta reply: its flags echo O(paque) and k(ey)
            for flag in rest.split()[1 if word == b"VA" else 0:]:
                if flag[:1] == b"O":
                    opaque = flag
                elif flag[:1] == b"k":
                    key = flag

        def may_answer(head: _Request) -> bool:
            if word in _ERRORS:
                return True
            return word in head.replies and head.opaque == opaque and head.echo_key == key
        return self._take(self._reply.start_ns, may_answer)

    # --- binary protocol ------------------------------------------------------------

    def _packet(self, is_request: bool, head: tuple[int, int, int, int, int, int], body: bytes,
                start_ns: int, seq: int | None, ts: int, truncated: bool) -> None:
        opcode, keylen, extlen, status, bodylen, opaque = head
        if is_request:
            key = body[extlen:extlen + keylen]
            words = [_BINARY_OPS[opcode]]
            if keylen:
                words.append(_render_key(key[:KEEP_BYTES]))
            if bodylen > keylen or extlen:
                words.append("?")
            req = _Request(_BINARY_OPS[opcode], " ".join(words), start_ns, seq)
            req.end_ns = ts
            req.opcode = opcode
            req.opaque = opaque
            req.quiet = opcode in _BINARY_QUIET
            req.no_reply = opcode == _BINARY_QUITQ
            req.multi = opcode == _BINARY_STAT
            if truncated:
                req.flags.append("request_truncated")
            self._push(req)
            return
        reply = self._reply
        if reply is None:
            if not self._confirmed:
                self._confirm()  # a response header with a known opcode and status
            reply = _Reply(start_ns, seq)
            owner = self._owner_binary(opcode, opaque, start_ns)
        else:
            owner = self._reply_owner
        reply.end_ns = ts
        reply.truncated |= truncated
        if status > reply.status:
            reply.status = status
            reply.line = body[extlen + keylen:][:KEEP_BYTES]
        if opcode == _BINARY_STAT and keylen and status == 0:
            self._reply = reply  # one stat per packet until an empty one
            self._reply_owner = owner
            return
        self._reply = None
        self._reply_owner = None
        if owner is not None:
            self._respond(owner, reply)
            self._drain_no_reply()

    def _owner_binary(self, opcode: int, opaque: int, start_ns: int) -> _Request | None:
        # Responses echo the request's opcode and opaque: a quiet request skipped
        # over was a miss (getq) or a success (setq); a gap ends at the request
        # the response names.
        def answers(head: _Request) -> bool:
            return head.opcode == opcode and head.opaque == opaque
        return self._take(start_ns, answers, answers)

    # --- losing track (called by the streams) ----------------------------------------

    def _lost(self, carries_requests: bool, ts: int) -> None:
        if carries_requests and self._storing is not None:
            # Its line was seen; its data block was not followed to the end.
            self._storing.flags.append("request_truncated")
            self._storing.end_ns = ts
            self._push(self._storing)
            self._storing = None
        super()._lost(carries_requests, ts)
        if carries_requests:
            return
        reply = self._reply
        owner = self._reply_owner
        self._reply = None
        self._reply_owner = None
        if reply is not None and owner is not None:
            reply.truncated = True
            reply.end_ns = ts
            self._hold(owner, reply)

    # --- spans -------------------------------------------------------------------------

    def _unanswered(self, req: _Request, ts_ns: int | None) -> None:
        self._respond(req, None, None if req.quiet or req.no_reply else "response_missing")

    def _respond(self, req: _Request, reply: _Reply | None, flag: str | None = None) -> None:
        attrs: dict[str, Any] = {
            "db.system.name": "memcached",
            "db.system": "memcached",
            "db.operation.name": req.op,
            "db.query.text": req.text,
        }
        flags = list(req.flags)
        if flag:
            flags.append(flag)
        if req.keys > 1:
            attrs["db.operation.batch.size"] = req.keys
        status = "unset"
        message = None
        end = req.end_ns
        response_seq = None
        if reply is not None:
            end = reply.end_ns
            response_seq = reply.seq
            if reply.truncated:
                flags.append("response_truncated")
            if self.binary:
                code = _BINARY_STATUS.get(reply.status, str(reply.status))
                if reply.status > 0:
                    attrs["db.response.status_code"] = code
                if reply.status not in _BINARY_NOT_ERRORS and reply.status >= 0:
                    status = "error"
                    attrs["error.type"] = code
                    message = reply.line.decode("utf-8", "replace")[:MAX_MESSAGE] or code
            else:
                word = reply.word
                if word in _STATUS_WORDS:
                    attrs["db.response.status_code"] = word.decode("ascii")
                if word in _ERRORS:
                    status = "error"
                    attrs["error.type"] = word.decode("ascii")
                    detail = reply.line.partition(b" ")[2] or word
                    message = detail.decode("utf-8", "replace")[:MAX_MESSAGE]
                if req.multi and req.cmd in _RETRIEVAL:
                    attrs["db.response.returned_rows"] = reply.hits
        elif req.quiet:
            flags.append("quiet")
        elif req.no_reply:
            flags.append("no_reply")
        if flags:
            attrs["sidetrace.memcached.flags"] = ",".join(flags)
        self._emit(SpanFacts(
            name=req.op, start_ns=req.start_ns, end_ns=max(end, req.start_ns),
            server_side=self.role == "server", attributes=attrs, status=status,
            status_message=message, request_seq=req.seq, response_seq=response_seq,
        ))
