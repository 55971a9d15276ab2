"""Redis (RESP2 and RESP3) as a protocol handler: commands and their replies as spans.

Framing.  Every RESP value starts with a header line (a type byte, then text,
then CRLF); bulk payloads follow their ``$<len>`` header and are *counted*,
not buffered, so a 512 MB value costs the same as a 5 byte one and may go
partly uncaptured (``total_len`` > ``len(data)``).  Only a header line cut
between two syscalls is buffered (at most ``MAX_LINE`` bytes), and only the
first ``KEEP_PARTS`` elements of a command (name, key, one more) are kept, each
cut at ``KEEP_BYTES``.

Pairing.  Replies come back in command order (FIFO), so pipelining needs no
more than a queue.  What is not a reply: RESP3 ``>`` push messages, RESP2
pub/sub ``message``/``pmessage``/``smessage`` arrays once the connection
subscribed, anything after MONITOR.  A (P|S)SUBSCRIBE or (P|S)UNSUBSCRIBE
gets one confirmation per channel and makes a single span.  Commands that get
no reply (``CLIENT REPLY OFF/SKIP``) end when they reach the queue's head.

Losing track.  When a header line went uncaptured (a 4 KiB capture of a write
holding many small values), the parser does not know where the next value
starts.  It waits for a syscall whose bytes start like a command (request
side) or a reply (reply side), the likeliest place for a value to start.
Meanwhile: commands lost on the request side leave a *gap* in the queue that
swallows the replies which began before the next command we did see; a reply
lost on the reply side is ended where the next reply starts (or when the next
command arrives), and commands that were already waiting when replies were
lost get spans without a response.  Every command seen makes exactly one span.

Query text rule (``db.query.text``): the command name (upper case), the
sub-command of container commands (``CONFIG GET``, ``CLIENT SETNAME``, ...),
then the first argument verbatim (normally the key: ``GET user:42``) unless
that argument is a value or a secret (AUTH, ECHO, PING, EVAL, SCRIPT LOAD,
...), then one ``?`` per further argument (values, fields, options alike):
``SET user:42 ?``, ``HSET h ? ?``, ``AUTH ? ?``.  Keys with spaces or
non-printable bytes are quoted with escapes; long keys are cut.
"""

from __future__ import annotations

import re
from typing import Any, Final

from ._base import ConnectionHints, Context, Handler, Request, SpanFacts, opposite

__all__ = ["RedisHandler", "looks_like_command", "looks_like_reply",
           "query_text"]

MAX_LINE: Final = 64 * 1024      # a header or inline command line; redis caps inline requests at 64 KiB
MAX_BULK: Final = 1 << 32        # larger is not RESP (redis's own cap is 512 MB)
MAX_DEPTH: Final = 64            # nested aggregates
MAX_PENDING: Final = 1024        # commands waiting for replies (pipelining)
KEEP_PARTS: Final = 3            # first elements kept: name, first argument, sub-command's argument
KEEP_BYTES: Final = 256          # of each kept element
REPLY_KEEP_BYTES: Final = 16     # of a reply's first elements: enough for "punsubscribe"
MAX_PLACEHOLDERS: Final = 32     # "?"s written into db.query.text before "..."
MAX_MESSAGE: Final = 256         # status_message
_SEQ_MASK: Final = 0xFFFFFFFF

REDIS_PORTS: Final = frozenset({6379, 6380, 16379, 26379})

# Every command of redis 7 plus the modules most often met; an unknown name
# is still parsed once the connection is known to be redis.
KNOWN_COMMANDS: Final = frozenset("""
ACL APPEND ASKING AUTH BGREWRITEAOF BGSAVE BITCOUNT BITFIELD BITFIELD_RO BITOP BITPOS BLMOVE BLMPOP
BLPOP BRPOP BRPOPLPUSH BZMPOP BZPOPMAX BZPOPMIN CLIENT CLUSTER COMMAND CONFIG COPY DBSIZE DEBUG DECR
DECRBY DEL DISCARD DUMP ECHO EVAL EVALSHA EVALSHA_RO EVAL_RO EXEC EXISTS EXPIRE EXPIREAT EXPIRETIME
FAILOVER FCALL FCALL_RO FLUSHALL FLUSHDB FUNCTION GEOADD GEODIST GEOHASH GEOPOS GEORADIUS
GEORADIUSBYMEMBER GEORADIUSBYMEMBER_RO GEORADIUS_RO GEOSEARCH GEOSEARCHSTORE GET GETBIT GETDEL GETEX
GETRANGE GETSET HDEL HELLO HEXISTS HEXPIRE HGET HGETALL HINCRBY HINCRBYFLOAT HKEYS HLEN HMGET HMSET
HPERSIST HPEXPIRE HPTTL HRANDFIELD HSCAN HSET HSETNX HSTRLEN HTTL HVALS INCR INCRBY INCRBYFLOAT INFO
KEYS LASTSAVE LATENCY LCS LINDEX LINSERT LLEN LMOVE LMPOP LOLWUT LPOP LPOS LPUSH LPUSHX LRANGE LREM
LSET LTRIM MEMORY MGET MIGRATE MODULE MONITOR MOVE MSET MSETNX MULTI OBJECT PERSIST PEXPIRE PEXPIREAT
PEXPIRETIME PFADD PFCOUNT PFDEBUG PFMERGE PFSELFTEST PING PSETEX PSUBSCRIBE PSYNC PTTL PUBLISH PUBSUB
PUNSUBSCRIBE QUIT RANDOMKEY READONLY READWRITE RENAME RENAMENX REPLCONF REPLICAOF RESET RESTORE
RESTORE-ASKING ROLE RPOP RPOPLPUSH RPUSH RPUSHX SADD SAVE SCAN SCARD SCRIPT SDIFF SDIFFSTORE SELECT
SET SETBIT SETEX SETNX SETRANGE SHUTDOWN SINTER SINTERCARD SINTERSTORE SISMEMBER SLAVEOF SLOWLOG
SMEMBERS SMISMEMBER SMOVE SORT SORT_RO SPOP SPUBLISH SRANDMEMBER SREM SSCAN SSUBSCRIBE STRLEN
SUBSCRIBE SUBSTR SUNION SUNIONSTORE SUNSUBSCRIBE SWAPDB SYNC TIME TOUCH TTL TYPE UNLINK UNSUBSCRIBE
UNWATCH WAIT WAITAOF WATCH XACK XADD XAUTOCLAIM XCLAIM XDEL XGROUP XINFO XLEN XPENDING XRANGE XREAD
XREADGROUP XREVRANGE XSETID XTRIM ZADD ZCARD ZCOUNT ZDIFF ZDIFFSTORE ZINCRBY ZINTER ZINTERCARD
ZINTERSTORE ZLEXCOUNT ZMPOP ZMSCORE ZPOPMAX ZPOPMIN ZRANDMEMBER ZRANGE ZRANGEBYLEX ZRANGEBYSCORE
ZRANGESTORE ZRANK ZREM ZREMRANGEBYLEX ZREMRANGEBYRANK ZREMRANGEBYSCORE ZREVRANGE ZREVRANGEBYLEX
ZREVRANGEBYSCORE ZREVRANK ZSCAN ZSCORE ZUNION ZUNIONSTORE
""".split())
# Module commands look like "JSON.SET", "FT.SEARCH", "TS.ADD", "BF.ADD".
_MODULE_COMMAND = re.compile(rb"[A-Za-z]{2,8}\.[A-Za-z_]{2,24}")

# Inline commands ("PING\r\n" typed into telnet) share words with SMTP, FTP,
# POP3 and IRC (QUIT, TYPE, AUTH, PING :x, ...) and memcached (lower-case
# get/set): only upper-case words that no common text protocol starts with.
_INLINE_COMMANDS: Final = frozenset("""
DBSIZE DEL EXISTS EXPIRE FLUSHALL FLUSHDB GET HGET HGETALL HSET INCR INFO KEYS LLEN LPUSH LRANGE MGET
MONITOR MSET PING RPUSH SADD SCARD SELECT SET SMEMBERS TTL ZADD ZRANGE ZCARD
""".split())

# Commands whose second word is a sub-command (kept in db.query.text, upper case).
_CONTAINERS: Final = frozenset("""
ACL CLIENT CLUSTER COMMAND CONFIG FUNCTION LATENCY MEMORY MODULE OBJECT PUBSUB SCRIPT SLOWLOG XGROUP
XINFO
""".split())
# Whose first argument (after the sub-command, if any) is a value or a secret, never a key.
_VALUE_FIRST: Final = frozenset({
    "AUTH", "ECHO", "PING", "EVAL", "EVAL_RO", "SCRIPT LOAD", "FUNCTION LOAD",
    "FUNCTION RESTORE", "MODULE LOAD", "MODULE LOADEX",
})
_SUBSCRIBE_REPLIES: Final = {
    "SUBSCRIBE": b"subscribe", "PSUBSCRIBE": b"psubscribe", "SSUBSCRIBE": b"ssubscribe",
    "UNSUBSCRIBE": b"unsubscribe", "PUNSUBSCRIBE": b"punsubscribe", "SUNSUBSCRIBE": b"sunsubscribe",
}
# Confirmation kind -> (which subscriptions it counts: channels, patterns, shard channels; adds one?)
_CONFIRM_KIND: Final = {
    b"subscribe": (0, True), b"unsubscribe": (0, False), b"psubscribe": (1, True),
    b"punsubscribe": (1, False), b"ssubscribe": (2, True), b"sunsubscribe": (2, False),
}
_CONFIRMATIONS: Final = frozenset(_CONFIRM_KIND)
_PUBSUB_MESSAGES: Final = frozenset({b"message", b"pmessage", b"smessage"})

_NAME = re.compile(rb"[A-Za-z][A-Za-z0-9_.|:-]{0,63}")
_PLAIN_KEY = re.compile(rb"[!-~]{1,128}")
_ERROR_PREFIX = re.compile(r"[A-Z][A-Z0-9_]{0,31}")

# Detection: a command array's first two headers and a command name.
_RESP_COMMAND = re.compile(rb"\*([1-9][0-9]{0,6})\r\n\$([1-9][0-9]?)\r\n([A-Za-z][A-Za-z0-9_.|-]{0,31})\r\n")
_INLINE_COMMAND = re.compile(rb"([A-Z]{3,9})(?:( [^\r\n]{0,1024}))?\r?\n")
# A reply's first line, well formed.
_REPLY_LINE = re.compile(
    rb"(?:[+-][^\r\n]{0,4096}|[:(]-?[0-9]{1,40}|[$*%~>|=!](?:-1|[0-9]{1,10}|\?)|_|#[tf]"
    rb"|,[-+0-9.eEinfa]{1,64})\r\n")

# Value kinds (the first header byte) and parser states.
_INLINE = 0   # an inline command (no type byte)
_LINE_TYPES: Final = frozenset(b"+-:,#(_")
_BULK_TYPES: Final = frozenset(b"$=!")
_AGGREGATE_TYPES: Final = frozenset(b"*~>%|")
_PAIRS: Final = frozenset(b"%|")
_STAR, _PUSH, _ERROR, _BULK_ERROR, _SIMPLE, _ATTRIBUTE = b"*>-!+|"


def looks_like_command(data: bytes) -> bool:
    """``data`` starts with a redis command: a RESP array led by a name, or a known inline one.

    The RESP framing is distinctive enough for a name redis may not know
    (``NOSUCHCMD``): its reply (an error) confirms the protocol.  An inline
    command is a bare line of text, so only well-known names count.
    """
    if not data:
        return False
    if data[0] == 42:  # "*"
        m = _RESP_COMMAND.match(data)
        return m is not None and int(m.group(2)) == len(m.group(3))
    m = _INLINE_COMMAND.match(data)
    if m is None or m.group(1).decode("ascii") not in _INLINE_COMMANDS:
        return False
    args = m.group(2) or b""
    # Not an HTTP/0.9 or IRC line: no paths, no ":" trailing parameters, no HTTP version.
    return b" /" not in args and b" :" not in args and b"HTTP/" not in args


def looks_like_reply(data: bytes) -> bool:
    """``data`` starts with a well-formed RESP reply header line."""
    return bool(data) and data[0] in b"+-:$*%~>|=!_#,(" and _REPLY_LINE.match(data) is not None


def _render_word(word: bytes) -> str:
    """A key or name as text: printable ASCII as is, anything else quoted with escapes."""
    if _PLAIN_KEY.fullmatch(word) and word[:1] != b'"':
        return word.decode("ascii")
    text = "".join(_ESCAPED[b] for b in word[:128])
    return f'"{text}{"..." if len(word) > 128 else ""}"'


# How each byte is written inside a quoted key (as redis-cli quotes them).
_ESCAPED: Final = [chr(b) if 0x20 <= b < 0x7F else f"\\x{b:02x}" for b in range(256)]
_ESCAPED[0x22] = '\\"'
_ESCAPED[0x5C] = "\\\\"


def query_text(name: str, parts: list[bytes | None], argc: int) -> str:
    """``db.query.text`` by the rule in the module docstring.

    ``parts`` are the command's first elements (name included), ``argc`` the
    number of elements; parts that were not captured are ``None``.
    """
    words = [name]
    at = 1
    full = name
    if name in _CONTAINERS and argc > 1:
        sub = parts[1] if len(parts) > 1 else None
        if sub is not None and _NAME.fullmatch(sub):
            full = f"{name} {sub.decode('ascii').upper()}"
            words.append(full.partition(" ")[2])
        else:
            words.append("?")
        at = 2
    if argc > at:
        first = parts[at] if len(parts) > at else None
        words.append("?" if first is None or full in _VALUE_FIRST else _render_word(first))
        at += 1
    rest = argc - at
    if rest > MAX_PLACEHOLDERS:
        words += ["?"] * MAX_PLACEHOLDERS + ["..."]
    elif rest > 0:
        words += ["?"] * rest
    return " ".join(words)


def _command_name(first: bytes | None) -> str:
    if first is None:
        return "UNKNOWN"
    name = _NAMES.get(first)
    if name is None:
        name = first.decode("ascii").upper() if _NAME.fullmatch(first) else "UNKNOWN"
        if len(_NAMES) < 4096:  # bounded: names are few, but a client could make up many
            _NAMES[first] = name
    return name


_NAMES: dict[bytes, str] = {}


class _Value:
    """One top-level RESP value (a command or a reply) as it goes by."""

    __slots__ = ("start_ns", "end_ns", "seq", "kind", "count", "parts", "truncated")

    def __init__(self, start_ns: int, seq: int | None) -> None:
        self.start_ns = start_ns
        self.end_ns = start_ns
        self.seq = seq
        self.kind = -1                       # first header byte; _INLINE for inline commands
        self.count = 0                       # elements of a top-level aggregate (pairs * 2 for maps)
        self.parts: list[bytes | None] = []  # first elements' (or a scalar's) content, cut short
        self.truncated = False               # some of its bytes were not captured


class _Command(Request):
    """A command waiting for its reply."""

    __slots__ = ("name", "text", "flags", "no_reply", "select", "confirms", "expect", "every_channel",
                 "reply_start", "reply_seq")

    def __init__(self, name: str, text: str, start_ns: int, end_ns: int, seq: int | None) -> None:
        super().__init__(start_ns, end_ns, seq)
        self.name = name
        self.text = text
        self.flags: list[str] = []
        self.no_reply = False
        self.select: str | None = None       # SELECT's database index
        self.confirms: bytes | None = None   # (un)subscribe: the confirmation kind it waits for
        self.expect = 0                      # ... and how many more
        self.every_channel = False           # an UNSUBSCRIBE without arguments: one per subscription
        self.reply_start: int | None = None  # first confirmation
        self.reply_seq: int | None = None


class _Stream:
    """Tokenizes one direction's bytes into top-level RESP values."""

    __slots__ = ("handler", "is_request", "value", "stack", "attrs", "bulk_left", "bulk_type",
                 "keep", "keep_left", "streamed", "buf", "lost", "resyncs")

    def __init__(self, handler: RedisHandler, is_request: bool) -> None:
        self.handler = handler
        self.is_request = is_request
        self.value: _Value | None = None
        self.stack: list[int] = []     # elements left in each open aggregate; -1: streamed ("*?")
        self.attrs: list[bool] = []    # whether each open aggregate is an attribute map ("|")
        self.bulk_left = 0             # payload bytes + CRLF still to come
        self.bulk_type = 0
        self.keep: bytearray | None = None
        self.keep_left = 0
        self.streamed = False          # inside a streamed string ("$?" then ";<len>" chunks)
        self.buf = bytearray()         # a header line cut by a syscall boundary
        self.lost = False
        self.resyncs = 0

    def feed(self, data: bytes, total: int, ts: int, seq: int | None) -> None:
        end = len(data)
        if self.lost:
            if not end or not self.handler._may_resync(self.is_request, data, ts):
                return
            self.lost = False
        if end:
            self._parse(data, end, ts, seq)
        if total > end and not self.lost:
            self._skip(total - end, ts)

    # --- tokens -------------------------------------------------------------

    def _parse(self, data: bytes, end: int, ts: int, seq: int | None) -> None:
        pos = 0
        fast = self._fast_command if self.is_request else self._fast_reply
        while pos < end:
            if self.value is None:
                # Most values lie whole inside one syscall: take them in one go.
                done = fast(data, pos, end, ts, seq)
                if done > pos:
                    pos = done
                    continue
                self.value = _Value(ts, None if seq is None else (seq + pos) & _SEQ_MASK)
            left = self.bulk_left
            if left:
                take = end - pos
                if take > left:
                    take = left
                keep = self.keep
                if keep is not None and self.keep_left:
                    piece = data[pos:pos + min(take, self.keep_left)]
                    keep += piece
                    self.keep_left -= len(piece)
                pos += take
                left -= take
                self.bulk_left = left
                if not left:
                    # The CRLF after a payload is where a desynchronised stream shows.
                    if pos >= 2 and take >= 2 and data[pos - 2:pos] != b"\r\n":
                        self._lose(ts)
                        return
                    self._bulk_done(ts)
                continue
            nl = data.find(b"\n", pos, end)
            if nl < 0:
                if len(self.buf) + end - pos > MAX_LINE:
                    self._lose(ts)
                    return
                self.buf += data[pos:end]
                return
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
            self._line(line, ts)
            if self.lost:
                return

    # --- fast paths: a whole value in this syscall's bytes ---------------------------------
    #
    # They build exactly the _Value the token-by-token path would, or give up
    # (return -1) on anything unusual or cut, leaving it to that path.

    def _fast_command(self, data: bytes, pos: int, end: int, ts: int, seq: int | None) -> int:
        if data[pos] != 42:  # "*"
            return -1
        nl = data.find(b"\n", pos + 1, pos + 12)
        if nl < 0 or data[nl - 1] != 13:
            return -1
        text = data[pos + 1:nl - 1]
        if not text.isdigit() or len(text) > 6:
            return -1
        count = int(text)
        if count == 0:
            return -1
        parts: list[bytes | None] = []
        p = nl + 1
        left = count
        while left:
            if p >= end:
                break
            if data[p] != 36:  # "$"
                return -1
            nl = data.find(b"\n", p + 1, p + 14)
            if nl < 0:
                break
            if data[nl - 1] != 13:
                return -1
            text = data[p + 1:nl - 1]
            if not text.isdigit():
                return -1
            start = nl + 1
            stop = start + int(text)
            if stop + 2 > end:
                break
            if data[stop] != 13 or data[stop + 1] != 10:
                return -1
            if len(parts) < KEEP_PARTS:
                parts.append(data[start:min(stop, start + KEEP_BYTES)])
            p = stop + 2
            left -= 1
        value = _Value(ts, None if seq is None else (seq + pos) & _SEQ_MASK)
        value.kind = _STAR
        value.count = count
        value.parts = parts
        if left:
            # Cut by the end of these bytes: the token path goes on from this element.
            self.value = value
            self.stack.append(left)
            self.attrs.append(False)
            return p
        self.handler._value_done(True, value)
        return p

    def _fast_reply(self, data: bytes, pos: int, end: int, ts: int, seq: int | None) -> int:
        kind = data[pos]
        nl = data.find(b"\n", pos + 1, end)
        if nl < 0 or data[nl - 1] != 13:
            return -1
        if kind in _FAST_LINES:
            if kind == 95 and nl != pos + 2:
                return -1
            parts: list[bytes | None] = [data[pos + 1:min(nl - 1, pos + 1 + KEEP_BYTES)]]
            count = 0
            p = nl + 1
        elif kind == 36:  # "$": a reply's payload is never kept
            text = data[pos + 1:nl - 1]
            if text.isdigit() and len(text) <= 10:
                p = nl + 1 + int(text)
                if p + 2 > end or data[p] != 13 or data[p + 1] != 10:
                    return -1
                p += 2
            elif text == b"-1":
                p = nl + 1
            else:
                return -1
            parts = [None]
            count = 0
        elif kind in _FAST_AGGREGATES:
            text = data[pos + 1:nl - 1]
            if text.isdigit() and len(text) <= 10:
                count = int(text) * (2 if kind == 37 else 1)
            elif text == b"-1":
                count = 0
            else:
                return -1
            p = nl + 1
            if count:
                parts = []
                stack = [count]
                p = _scan_elements(data, p, end, stack, parts)
                if p < 0:
                    return -1
                if stack:
                    # Cut by the end of these bytes: the token path goes on from this element.
                    value = _Value(ts, None if seq is None else (seq + pos) & _SEQ_MASK)
                    value.kind = kind
                    value.count = count
                    value.parts = parts
                    self.value = value
                    self.stack = stack
                    self.attrs = [False] * len(stack)
                    return p
            else:
                parts = [None]
        else:
            return -1
        value = _Value(ts, None if seq is None else (seq + pos) & _SEQ_MASK)
        value.kind = kind
        value.count = count
        value.parts = parts
        self.handler._value_done(False, value)
        return p

    def _line(self, line: bytes, ts: int) -> None:
        if line[-1:] == b"\r":
            line = line[:-1]
        stack = self.stack
        value = self.value
        if not line:
            if stack or self.streamed or value.kind >= 0:
                self._lose(ts)
            else:
                self.value = None  # an empty inline line between commands: redis skips it
            return
        kind = line[0]
        if self.is_request and not stack and kind != _STAR:
            if value.kind >= 0:  # an attribute cannot lead a command
                self._lose(ts)
                return
            self._inline(value, line, ts)
            return
        if kind in _LINE_TYPES:
            if not stack:
                value.kind = kind
            if kind == 95 and len(line) != 1:  # "_" null
                self._lose(ts)
                return
            # Only the value's own content or its first elements are kept.
            want = not stack or (len(stack) == 1 and not self.attrs[0]
                                 and len(value.parts) < KEEP_PARTS)
            self._element(line[1:KEEP_BYTES + 1] if want else None, ts)
        elif kind in _BULK_TYPES:
            if line == b"$?":
                if not stack:
                    value.kind = kind
                self.streamed = True
                return
            length = _header_int(line)
            if length is None or length < -1 or length > MAX_BULK:
                self._lose(ts)
                return
            if not stack:
                value.kind = kind
            if length == -1:
                self._element(None, ts)
                return
            self._start_bulk(kind, length)
        elif kind in _AGGREGATE_TYPES:
            if len(stack) >= MAX_DEPTH:
                self._lose(ts)
                return
            if line[1:] == b"?" and kind != _ATTRIBUTE:
                count = -1
            else:
                count = _header_int(line)
                if count is None or count < -1 or count > MAX_BULK:
                    self._lose(ts)
                    return
                if count == -1:  # RESP2 null array
                    if not stack:
                        value.kind = kind
                    self._element(None, ts)
                    return
                if kind in _PAIRS:
                    count *= 2
            if kind != _ATTRIBUTE and not stack:
                value.kind = kind
                value.count = count
            if count == 0:
                if kind != _ATTRIBUTE:
                    self._element(None, ts)
                return
            stack.append(count)
            self.attrs.append(kind == _ATTRIBUTE)
        elif kind == 59 and self.streamed:  # ";<len>" chunk of a streamed string
            length = _header_int(line)
            if length is None or length < 0 or length > MAX_BULK:
                self._lose(ts)
            elif length == 0:
                self.streamed = False
                self._element(None, ts)
            else:
                self._start_bulk(kind, length)
        elif kind == 46 and len(line) == 1 and stack and stack[-1] < 0:  # "." ends "*?"
            stack.pop()
            self.attrs.pop()
            self._closed_aggregate(ts)
        else:
            self._lose(ts)

    def _start_bulk(self, kind: int, length: int) -> None:
        self.bulk_type = kind
        self.bulk_left = length + 2
        stack = self.stack
        if self.streamed:
            want = 0
        elif not stack:
            # A reply's payload is data, never kept: only a bulk error's text is.
            want = KEEP_BYTES if self.is_request or kind == _BULK_ERROR else 0
        elif len(stack) == 1 and not self.attrs[0] and len(self.value.parts) < KEEP_PARTS:
            want = KEEP_BYTES if self.is_request else REPLY_KEEP_BYTES
        else:
            want = 0
        if want:
            self.keep = bytearray()
            self.keep_left = min(length, want)
        else:
            self.keep = None
            self.keep_left = 0

    def _bulk_done(self, ts: int) -> None:
        keep = self.keep
        self.keep = None
        if self.bulk_type == 59:
            return  # one chunk of a streamed string; ";0" ends it
        self._element(bytes(keep) if keep is not None else None, ts)

    def _inline(self, value: _Value, line: bytes, ts: int) -> None:
        words = line.split()
        if not words:
            self.value = None
            return
        value.kind = _INLINE
        value.count = len(words)
        value.parts = [w[:KEEP_BYTES] for w in words[:KEEP_PARTS]]
        self._finish(ts)

    def _element(self, content: bytes | None, ts: int) -> None:
        """A scalar ended: it is the whole value, or one element of the innermost aggregate."""
        stack = self.stack
        value = self.value
        if not stack:
            value.parts.append(content)
            self._finish(ts)
            return
        if len(stack) == 1 and not self.attrs[0] and len(value.parts) < KEEP_PARTS:
            value.parts.append(content)
        top = stack[-1]
        if top < 0:
            return  # a streamed aggregate ends with "."
        if top > 1:
            stack[-1] = top - 1
            return
        stack.pop()
        if self.attrs.pop():
            return  # an attribute map is not an element: the value it annotates follows
        self._closed_aggregate(ts)

    def _closed_aggregate(self, ts: int) -> None:
        """An aggregate ended: the value is complete, or its parent has one more element."""
        stack = self.stack
        while stack:
            value = self.value
            if len(stack) == 1 and not self.attrs[0] and len(value.parts) < KEEP_PARTS:
                value.parts.append(None)
            top = stack[-1]
            if top < 0:
                return
            if top > 1:
                stack[-1] = top - 1
                return
            stack.pop()
            if self.attrs.pop():
                return
        self._finish(ts)

    def _finish(self, ts: int) -> None:
        value = self.value
        value.end_ns = ts
        self.value = None
        self.handler._value_done(self.is_request, value)

    # --- losing track ---------------------------------------------------------

    def _skip(self, count: int, ts: int) -> None:
        """``count`` bytes went by uncaptured: fine inside a payload, fatal anywhere else."""
        left = self.bulk_left
        if left:
            self.value.truncated = True
            take = count if count < left else left
            self.bulk_left = left - take
            count -= take
            if take == left:
                if self.keep_left:
                    self.keep = None  # part of what we meant to keep went uncaptured: a cut name misleads
                self._bulk_done(ts)
        if count:
            self._lose(ts)

    def _lose(self, ts: int) -> None:
        value = self.value
        self.value = None
        self.stack.clear()
        self.attrs.clear()
        self.bulk_left = 0
        self.keep = None
        self.streamed = False
        self.buf.clear()
        self.lost = True
        self.resyncs += 1
        if value is not None:
            value.end_ns = ts
            value.truncated = True
        self.handler._lost(self.is_request, ts, value)

    def reset_lost(self) -> None:
        """Forget everything in progress and wait for the next value start (no callbacks)."""
        self.value = None
        self.stack.clear()
        self.attrs.clear()
        self.bulk_left = 0
        self.keep = None
        self.streamed = False
        self.buf.clear()
        self.lost = True

    def close(self) -> _Value | None:
        """The value in progress, if any (the connection ended inside it)."""
        value = self.value
        self.value = None
        if value is not None and value.kind >= 0 and (value.parts or not self.is_request):
            return value
        return None


_FAST_LINES: Final = frozenset(b"+-:,#(_")
_FAST_AGGREGATES: Final = frozenset(b"*~%>")


def _scan_elements(data: bytes, p: int, end: int, stack: list[int], parts: list[bytes | None]) -> int:
    """Skip the elements ``stack`` counts from ``p``, keeping the first ones in ``parts``.

    Returns where it stopped: the value's end (``stack`` empty), or the start
    of an element cut by the end of ``data`` (``stack`` says what is left);
    -1 on anything the token path should look at.
    """
    find = data.find
    while stack:
        if p >= end:
            return p
        kind = data[p]
        nl = find(b"\n", p + 1, end)
        if nl < 0:
            return p
        if data[nl - 1] != 13:
            return -1
        keep = len(stack) == 1 and len(parts) < KEEP_PARTS
        if kind == 36:  # "$"
            text = data[p + 1:nl - 1]
            if text.isdigit() and len(text) <= 10:
                start = nl + 1
                stop = start + int(text)
                if stop + 2 > end:
                    return p
                if data[stop] != 13 or data[stop + 1] != 10:
                    return -1
                if keep:
                    parts.append(data[start:min(stop, start + REPLY_KEEP_BYTES)])
                p = stop + 2
            elif text == b"-1":
                if keep:
                    parts.append(None)
                p = nl + 1
            else:
                return -1
        elif kind in _FAST_LINES:
            if kind == 95 and nl != p + 2:
                return -1
            if keep:
                parts.append(data[p + 1:min(nl - 1, p + 1 + KEEP_BYTES)])
            p = nl + 1
        elif kind in _FAST_AGGREGATES:
            text = data[p + 1:nl - 1]
            if text.isdigit() and len(text) <= 10:
                inner = int(text) * (2 if kind == 37 else 1)
            elif text == b"-1":
                inner = 0
            else:
                return -1
            p = nl + 1
            if inner:
                if len(stack) >= MAX_DEPTH:
                    return -1
                stack.append(inner)
                continue  # it counts as its parent's element once it ends
            if keep:
                parts.append(None)
        else:
            return -1  # attributes, streamed and verbatim values: the token path
        # One element ended; so may the aggregates it closes.
        while stack:
            left = stack[-1] - 1
            if left:
                stack[-1] = left
                break
            stack.pop()
            if len(stack) == 1 and len(parts) < KEEP_PARTS:
                parts.append(None)
    return p


def _header_int(line: bytes) -> int | None:
    text = line[1:]
    # int() would also take "+5", " 5" and "5_0": RESP allows digits and a leading "-" only.
    if not text or not (text.isdigit() or (text[:1] == b"-" and text[1:].isdigit())) or len(text) > 20:
        return None
    return int(text)


class RedisHandler(Handler):
    """Commands and replies of one connection, paired into spans (FIFO, see the module doc)."""

    name = "redis"
    MAX_PENDING = MAX_PENDING

    __slots__ = ("_namespace", "_subscriptions", "_monitoring", "_reply_off", "_skip_next")

    @staticmethod
    def detect(data: bytes, direction: str, hints: ConnectionHints) -> bool:
        if hints.l4 != "tcp" or not data:
            return False
        first = data[0]
        if first == 42 or 65 <= first <= 90:  # "*" or an upper-case inline command
            if looks_like_command(data):
                return True
        # A reply first (joined mid-stream) is too weak a signal without the port.
        return ((hints.local_port in REDIS_PORTS or hints.remote_port in REDIS_PORTS)
                and looks_like_reply(data))

    looks_like_request = staticmethod(looks_like_command)
    looks_like_reply = staticmethod(looks_like_reply)

    def __init__(self, role: str = "unknown", context: Context | None = None) -> None:
        super().__init__(role, context)
        self._namespace: str | None = None
        self._subscriptions = [0, 0, 0]   # channels, patterns, shard channels
        self._monitoring = False
        self._reply_off = False        # CLIENT REPLY OFF
        self._skip_next = False        # CLIENT REPLY SKIP

    def _new_reader(self, carries_requests: bool) -> _Stream:
        return _Stream(self, carries_requests)

    @property
    def pending_commands(self) -> int:
        return len(self._pending)

    def _end(self, ts_ns: int | None) -> None:
        if not self._readers:
            return
        partial = self._readers[self.request_direction].close()
        if partial is not None:
            partial.truncated = True
            self._value_done(True, partial)
        partial_reply = self._readers[opposite(self.request_direction)].close()
        if partial_reply is not None and self._held is None and not self._monitoring:
            partial_reply.truncated = True
            if ts_ns is not None:
                partial_reply.end_ns = ts_ns
            self._pair(partial_reply)

    # --- values from the streams ------------------------------------------------

    def _value_done(self, is_request: bool, value: _Value) -> None:
        if is_request:
            self._command_done(value)
            return
        if not self._confirmed:
            self._confirm()  # a whole RESP value
        if not self._monitoring:
            self._reply_done(value)

    def _command_done(self, value: _Value) -> None:
        if self._monitoring:
            return
        parts = value.parts
        first = parts[0] if parts else None
        name = _command_name(first)
        # Which bytes redis cannot have been sent as a command: anything but an
        # array or an inline line, an array not led by a name (one cut short by
        # the capture is fine), an inline line not led by a command redis has.
        if value.kind == _STAR:
            plausible = first is None or name != "UNKNOWN"  # an unknown name is redis's to refuse
        elif value.kind == _INLINE:
            plausible = name in KNOWN_COMMANDS or _MODULE_COMMAND.fullmatch(first) is not None
        else:
            plausible = False
        if not plausible:
            self._not_this_protocol()
        argc = value.count if value.count > 0 else len(parts)
        cmd = _Command(name, query_text(name, parts, argc), value.start_ns, value.end_ns, value.seq)
        if value.truncated:
            cmd.flags.append("request_truncated")
        arg1 = parts[1] if len(parts) > 1 else None
        if name == "SELECT" and arg1 is not None and arg1.isdigit() and len(arg1) < 6:
            cmd.select = str(int(arg1))
        elif name in _SUBSCRIBE_REPLIES:
            cmd.confirms = _SUBSCRIBE_REPLIES[name]
            cmd.expect = argc - 1
            cmd.every_channel = cmd.expect <= 0 and name.endswith("UNSUBSCRIBE")
        if name == "CLIENT" and arg1 is not None and arg1.upper() == b"REPLY":
            mode = (parts[2] or b"").upper() if len(parts) > 2 else b""
            if mode == b"ON":
                self._reply_off = self._skip_next = False  # ON itself is answered
            elif mode == b"OFF" or self._reply_off:
                self._reply_off = True
                cmd.no_reply = True
            elif mode == b"SKIP":
                self._skip_next = True  # no reply to SKIP itself nor to the next command
                cmd.no_reply = True
        elif self._reply_off:
            cmd.no_reply = True
        elif self._skip_next:
            self._skip_next = False
            cmd.no_reply = True
        self._push(cmd)

    def _reply_done(self, value: _Value) -> None:
        kind = value.kind
        if kind == _PUSH or (kind == _STAR and self._is_pubsub_array(value)):
            first = value.parts[0] if value.parts else None
            if first in _CONFIRMATIONS:
                self._confirmation(value, first)
            return  # a pushed message or a stray confirmation: not a reply
        self._pair(value)

    def _is_pubsub_array(self, value: _Value) -> bool:
        parts = value.parts
        if not parts or value.count < 3:
            return False
        first = parts[0]
        if first in _PUBSUB_MESSAGES:
            return any(self._subscriptions)
        if first in _CONFIRMATIONS:
            head = self._next_request()
            return (head is not None and head.confirms is not None) or any(self._subscriptions)
        return False

    def _confirmation(self, value: _Value, kind: bytes) -> None:
        family, subscribing = _CONFIRM_KIND[kind]
        before = self._subscriptions[family]
        self._subscriptions[family] = before + 1 if subscribing else max(before - 1, 0)
        head = self._next_request()
        if head is None or head.confirms != kind:
            return  # a confirmation for a command we did not see
        if head.reply_start is None:
            head.reply_start = value.start_ns
            head.reply_seq = value.seq
            if head.every_channel:
                head.expect = max(before, 1)  # with none, redis still confirms once
        head.expect -= 1
        # The confirmation's last element counts the subscriptions left.
        none_left = head.every_channel and len(value.parts) > 2 and value.parts[2] == b"0"
        if head.expect <= 0 or none_left:
            self._pending.popleft()
            self._respond(head, value)
            self._drain_no_reply()

    def _pair(self, value: _Value) -> None:
        cmd = self._take(value.start_ns)
        if cmd is None:
            return
        if value.kind == _SIMPLE and value.parts:
            text = value.parts[0]
            if cmd.select is not None and text == b"OK":
                self._namespace = cmd.select
            elif cmd.name == "MONITOR" and text == b"OK":
                self._monitoring = True
            elif cmd.name == "RESET" and text == b"RESET":
                self._namespace = "0"
                self._subscriptions = [0, 0, 0]
                self._reply_off = self._skip_next = False
        self._respond(cmd, value)
        self._drain_no_reply()

    # --- losing track (called by the streams) -------------------------------------

    def _lost(self, carries_requests: bool, ts: int, value: _Value | None = None) -> None:
        if carries_requests and value is not None and value.kind in (_STAR, _INLINE) and value.parts:
            self._command_done(value)  # its name and key were seen: it still gets its span
        super()._lost(carries_requests, ts)
        if carries_requests or value is None:
            return
        if value.kind >= 0:
            if not self._confirmed:
                self._confirm()  # its first header was RESP: a reply cut short by the capture
        if value.kind != _PUSH and not self._monitoring:
            cmd = self._take(value.start_ns)
            if cmd is not None:
                self._hold(cmd, value)

    # --- spans -------------------------------------------------------------------

    def _unanswered(self, cmd: _Command, ts_ns: int | None) -> None:
        self._respond(cmd, None, "response_missing")

    def _respond(self, cmd: _Command, reply: _Value | None, flag: str | None = None) -> None:
        attrs: dict[str, Any] = {
            "db.system.name": "redis",
            "db.system": "redis",
            "db.operation.name": cmd.name,
            "db.query.text": cmd.text,
        }
        namespace = cmd.select if cmd.name == "SELECT" and cmd.select is not None else self._namespace
        if namespace is not None:
            attrs["db.namespace"] = namespace
        flags = list(cmd.flags)
        if flag:
            flags.append(flag)
        status = "unset"
        message = None
        end = cmd.end_ns
        response_seq = None
        if reply is not None:
            end = reply.end_ns
            response_seq = reply.seq if cmd.reply_seq is None else cmd.reply_seq
            if reply.truncated:
                flags.append("response_truncated")
            if reply.kind == _ERROR or reply.kind == _BULK_ERROR:
                text = (reply.parts[0] or b"") if reply.parts else b""
                message = text.decode("utf-8", "replace")[:MAX_MESSAGE]
                prefix = message.partition(" ")[0]
                if not _ERROR_PREFIX.fullmatch(prefix):
                    prefix = "ERR"
                status = "error"
                attrs["error.type"] = prefix
                attrs["db.response.status_code"] = prefix
            elif reply.kind == _SIMPLE and reply.parts and reply.parts[0] == b"QUEUED":
                attrs["sidetrace.redis.queued"] = True
        elif cmd.no_reply:
            flags.append("no_reply")
        if flags:
            attrs["sidetrace.redis.flags"] = ",".join(flags)
        self._emit(SpanFacts(
            name=cmd.name, start_ns=cmd.start_ns, end_ns=max(end, cmd.start_ns),
            server_side=self.role == "server", attributes=attrs, status=status,
            status_message=message, request_seq=cmd.seq, response_seq=response_seq,
        ))
