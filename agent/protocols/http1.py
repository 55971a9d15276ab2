"""HTTP/1.x exchanges from the bytes of a connection's read and write syscalls.

The agent sees each syscall's bytes once, in order, per direction, and often
not all of them: captures stop at a few KiB while ``total_len`` says how many
bytes the syscall really moved.  So the parser counts bytes rather than
needing them: a body is skipped by its length whether or not it was captured,
and only a head (start line + header fields) or a chunk-size line has to be
seen to stay in step.  When it cannot stay in step (a head or chunk line went
uncaptured, garbage, joining a connection mid-stream) it looks for the next
thing that looks like a start line and carries on from there; exchanges it
could not follow completely are flagged rather than dropped.

Speed: the agent's budget is about 10 us of CPU per span.  Bytes are scanned
with ``bytes.find`` and compiled regular expressions, never a Python loop per
byte, and header fields are only split into a dict when someone asks for them.
The usual syscall, one that starts with a whole head, takes a shorter route
(``_Parser.feed``): one regular expression scan finds the end of the head and
the fields that decide the framing, and a message that ends with the syscall
is finished on the spot; anything else goes the general way, with the same
results.  Framing follows RFC 9112 section 6.
"""

from __future__ import annotations

import enum
import re
import types
from typing import Any, Final

from ._base import EGRESS, INGRESS, ConnectionHints, Context, Handler, Request, SpanFacts, query_text

__all__ = [
    "Exchange",
    "ExchangeFlags",
    "Http1Connection",
    "Http1Handler",
    "describe",
    "looks_like_http1_request",
    "looks_like_http1_response",
    "EGRESS",
    "INGRESS",
    "find_header",
    "parse_header_block",
]

MAX_HEAD_BYTES = 16 * 1024   # start line + header fields; past this, give up on the message
MAX_LINE_BYTES = 1024        # chunk-size and trailer lines
MAX_PENDING_REQUESTS = 64    # requests waiting for their response (pipelining)
MAX_HEADERS = 100            # header fields kept per message by parse_header_block
_SEQ_MASK = 0xFFFFFFFF

# Whole heads at the start of a syscall take a shorter route through the parser
# (see _Parser.feed); False sends everything the general way (tests compare the two).
_FAST_PATH = True


class ExchangeFlags(enum.IntFlag):
    NONE = 0
    REQUEST_MISSING = enum.auto()     # response seen without its request (joined mid-stream)
    RESPONSE_MISSING = enum.auto()    # no response before close (or too many pending)
    REQUEST_TRUNCATED = enum.auto()   # some request bytes were not captured
    RESPONSE_TRUNCATED = enum.auto()  # some response bytes were not captured
    REQUEST_UNPARSED = enum.auto()    # request head malformed, too big or cut: framing unknown
    RESPONSE_UNPARSED = enum.auto()   # response head malformed, too big or cut: framing unknown
    ENDED_BY_CLOSE = enum.auto()      # response body delimited by the connection closing
    INCOMPLETE = enum.auto()          # connection closed before a message ended
    UPGRADED = enum.auto()            # 101 or CONNECT tunnel: the rest is not HTTP/1
    INTERIM = enum.auto()             # 1xx interim response(s) came before the final one


# Plain ints for the parser's own bookkeeping: IntFlag arithmetic runs Python
# code in the enum module, a microsecond a time.
_F = types.SimpleNamespace(**{flag.name: int(flag) for flag in ExchangeFlags})

# A method is a token; in practice upper case.  This stays loose enough for
# WebDAV and SSDP methods while rejecting most binary noise.
# A target is visible ASCII or (checked apart, see _utf8) UTF-8: no
# control characters, nothing a browser or an HTTP library would send raw.
_TARGET = rb"[!-~\x80-\xff]"
_REQUEST_LINE = re.compile(rb"([A-Z][A-Z0-9_-]{0,31}) (" + _TARGET + rb"+) HTTP/(1\.[01])\r?\n")
_STATUS_LINE = re.compile(rb"HTTP/(1\.[01]) ([0-9]{3})(?: ([^\r\n]*))?\r?\n")
# Could still become a start line once more bytes arrive (no newline seen yet).
_VERSION_PREFIX = rb"(?:H(?:T(?:T(?:P(?:/(?:1(?:\.(?:[01]\r?)?)?)?)?)?)?)?)?"
_REQUEST_PREFIX = re.compile(rb"[A-Z][A-Z0-9_-]{0,31}(?: " + _TARGET + rb"*(?: " + _VERSION_PREFIX + rb")?)?\Z")
_STATUS_PREFIX = re.compile(
    rb"H(?:T(?:T(?:P(?:/(?:1(?:\.(?:[01](?: (?:[0-9]{1,3}(?: [^\r\n]*)?\r?)?)?)?)?)?)?)?)?)?\Z")
# Resynchronising inside arbitrary bytes: only a whole start line right after a newline counts.
_REQUEST_LINE_AFTER_NL = re.compile(rb"\n(?=[A-Z][A-Z0-9_-]{0,31} " + _TARGET + rb"{1,8192} HTTP/1\.[01]\r?\n)")
_STATUS_LINE_AFTER_NL = re.compile(rb"\n(?=HTTP/1\.[01] [0-9]{3}[ \r\n])")
# The fast path's scan of a head, from the start line's "\n", for the first
# thing that decides its framing (RFC 9112, 6.3).  lastindex tells which:
# 1 the end of the head ("\r\n\r\n"), 2 a plain Content-Length (the value as
# bytes.strip() and isdigit() would take it), None anything else: a bare LF,
# "\n\r\n" after a bare LF, Transfer-Encoding or an odd Content-Length.
_WS = rb"[ \t\r\x0b\x0c]*"
_FRAMING_FIELDS = re.compile(
    rb"\n(?:(?<=\r\n)(\r\n)"
    rb"|(?i:content-length):" + _WS + rb"([0-9]{1,18})" + _WS + rb"(?=\n)"
    rb"|\r\n|\n|(?i:content-length|transfer-encoding):)")
_CHUNK_SIZE = re.compile(rb"([0-9a-fA-F]{1,16})[ \t]*(?:;[^\r\n]*)?\r?\n")
_KNOWN_METHOD = re.compile(rb"(?:GET|HEAD|POST|PUT|DELETE|CONNECT|OPTIONS|TRACE|PATCH) " + _TARGET)
_STATUS_START = re.compile(rb"HTTP/1\.[01] [1-5][0-9][0-9](?:[ \r\n]|\Z)")

# Parser states.
_HEAD, _BODY, _CHUNK_SIZE_LINE, _CHUNK_DATA, _CHUNK_END, _TRAILERS, _UNTIL_CLOSE, _LOST, _OPAQUE = range(9)


def looks_like_http1_request(data: bytes) -> bool:
    """Cheap protocol detection: ``data`` starts with a request line of a standard method."""
    if not _KNOWN_METHOD.match(data):
        return False
    end = data.find(b"\n", 0, 8200)
    if end < 0:
        return True  # the line goes on past what was captured
    return _request_match(data, 0, end + 1) is not None


def looks_like_http1_response(data: bytes) -> bool:
    """Cheap protocol detection: ``data`` starts with an HTTP/1.0 or 1.1 status line."""
    return _STATUS_START.match(data) is not None


def parse_header_block(block: bytes, limit: int = MAX_HEADERS) -> dict[str, str]:
    """Header fields as a dict: lower-cased names, repeated fields joined with ", "."""
    headers: dict[str, str] = {}
    count = 0
    # str methods beat a regex here: a head is a handful of short lines.
    for line in block.decode("latin-1").split("\n"):
        name, colon, value = line.partition(":")
        if not colon or not name or name[0] in " \t":
            continue  # not a field line (or an obsolete folded continuation)
        key = name.strip().lower()
        value = value.strip()
        headers[key] = f"{headers[key]}, {value}" if key in headers else value
        count += 1
        if count >= limit:
            break
    return headers


def find_header(block: bytes, name: bytes, lowered: bytes | None = None) -> str | None:
    """The first value of one header field (``name`` in lower case), without parsing the rest.

    ``lowered`` is ``block.lower()`` when the caller already has it.
    """
    return _find_value(block, lowered, b"\n" + name + b":")


def _find_value(block: bytes, lowered: bytes | None, needle: bytes) -> str | None:
    """find_header with the search string ("\n" + name + ":") already made."""
    if lowered is None:
        lowered = block.lower()
    at = lowered.find(needle)
    if at < 0:
        return None
    start = at + len(needle)
    stop = block.find(b"\n", start)
    return block[start:stop if stop >= 0 else len(block)].strip().decode("latin-1")


# Header names as asked for ("Host", "user-agent") -> their search strings: a
# handful of names are looked up for every exchange.
_NEEDLES: dict[str, bytes] = {}


def _needle(name: str) -> bytes:
    needle = _NEEDLES.get(name)
    if needle is None:
        needle = b"\n" + name.lower().encode("latin-1") + b":"
        if len(_NEEDLES) < 256:
            _NEEDLES[name] = needle
    return needle


# (method, target, path, query, version, query with its values redacted) of a request line.
_LineText = tuple[str | None, str | None, str | None, str | None, str | None, str | None]


class _Message(Request):
    """One request or response as it goes by."""

    __slots__ = ("start_off", "size", "method", "target", "version", "status", "reason", "head",
                 "lowered", "body_size", "flags", "done", "text")

    def __init__(self, start_ns: int, seq: int | None, start_off: int) -> None:
        self.start_ns = start_ns
        self.seq = seq
        self.start_off = start_off
        self.end_ns: int | None = None
        self.size = 0
        self.method: bytes | None = None
        self.target: bytes | None = None
        self.version: bytes | None = None
        self.status = 0
        self.reason: bytes | None = None
        self.head = b""
        self.lowered: bytes | None = None  # head.lower(), kept from the framing check for look-ups
        self.body_size = 0
        self.flags = 0
        self.done = False
        # The request line as text (see _line_text), when the fast path had it cached.
        self.text: _LineText | None = None

    def line_text(self) -> _LineText:
        """The request line as text (see _LineText), made once."""
        text = self.text
        if text is None:
            text = self.text = _line_text(self.method, self.target, self.version)
        return text

    def header(self, needle: bytes) -> str | None:
        """The first value of a header field, by its search string ("\n" + lower-case name + ":")."""
        lowered = self.lowered
        if lowered is None:  # the fast path does not lower heads it does not need to
            lowered = self.lowered = self.head.lower()
        return _find_value(self.head, lowered, needle)


_FLAG_CACHE: dict[int, ExchangeFlags] = {}
_FLAG_NAMES: dict[int, tuple[str, ...]] = {}


def _flag_names(flags: int) -> tuple[str, ...]:
    """Exchange flags as lower-case names, e.g. ("response_truncated",); the few seen are cached."""
    names = _FLAG_NAMES.get(flags)
    if names is None:
        names = _FLAG_NAMES[flags] = tuple(f.name.lower() for f in ExchangeFlags
                                           if f and f & flags == f)
    return names

# Status lines seen ("HTTP/1.1 200 OK\r\n") -> (version, status, reason), bounded.
_STATUS_LINES: dict[bytes, tuple[bytes, int, bytes]] = {}
# A request line up to this size is remembered per connection: a keep-alive
# client often repeats it, and parsing and decoding one costs more than a
# comparison.  (Remembered across connections, lines that never repeat cost
# more to keep and drop than they save.)
_CACHED_LINE_BYTES = 256
# A head up to this size is remembered per direction of a connection, so the
# next message with the same header fields skips the framing scan.
_CACHED_HEAD_BYTES = 1024


def _line_text(method: bytes | None, target: bytes | None, version: bytes | None) -> _LineText:
    """(method, target, path, query, version, query with its values redacted) as str, from a
    request line's parts (remembered with a repeated line: the redaction too)."""
    method_text = method.decode("ascii") if method else None
    version_text = version.decode("ascii") if version else None
    if not target:
        return (method_text, None, None, None, version_text, None)
    text = target.decode("utf-8")  # see _utf8
    path, question, query = text.partition("?")
    if "://" in path:  # absolute form, as sent to proxies
        rest = path.partition("://")[2]
        slash = rest.find("/")
        path = rest[slash:] if slash >= 0 else "/"
    if not question:
        return (method_text, text, path, None, version_text, None)
    return (method_text, text, path, query, version_text, query_text(query, False))


def _utf8(target: bytes) -> bool:
    """A target with high bytes is a URL only if they are UTF-8 (raw bytes are not)."""
    try:
        target.decode("utf-8")
    except UnicodeDecodeError:
        return False
    return True


def _request_match(data: bytes, pos: int, end: int) -> re.Match[bytes] | None:
    """The request line at data[pos:end], if it is one."""
    m = _REQUEST_LINE.match(data, pos, end)
    if m is not None and not m.group(2).isascii() and not _utf8(m.group(2)):
        return None
    return m


def _request_line(line: bytes) -> tuple[bytes, bytes, bytes, tuple] | None:
    """A request line (through its "\n") parsed and described; None if it is not one."""
    m = _REQUEST_LINE.match(line)
    if m is None:
        return None
    method, target, version = m.groups()
    if not target.isascii() and not _utf8(target):
        return None
    return (method, target, version, _line_text(method, target, version))


class Exchange:
    """A request and its response (either may be missing: see ``flags``).

    Times are the timestamps of the syscalls that carried the bytes: ``start_ns``
    the first byte of the request, ``end_ns`` the last byte of the response.
    ``*_seq`` are TCP sequence numbers of the first byte of each message.
    Body sizes count body bytes without chunk framing, captured or not;
    ``*_size`` count every byte of the message on the wire.
    """

    __slots__ = ("_req", "_resp", "_flags", "_request_headers", "_response_headers", "_line")

    def __init__(self, req: _Message | None, resp: _Message | None, flags: int) -> None:
        self._req = req
        self._resp = resp
        if req is not None:
            flags |= req.flags
        if resp is not None:
            flags |= resp.flags
        self._flags = flags
        self._request_headers: dict[str, str] | None = None
        self._response_headers: dict[str, str] | None = None
        # (method, target, path, query, version) as str, made on first use: a
        # request line never changes once parsed, and a span asks for all of it.
        self._line: _LineText | None = None

    @property
    def flags(self) -> ExchangeFlags:
        # Making an IntFlag costs about a microsecond; the few combinations seen are cached.
        flags = _FLAG_CACHE.get(self._flags)
        if flags is None:
            flags = _FLAG_CACHE[self._flags] = ExchangeFlags(self._flags)
        return flags

    @property
    def flag_names(self) -> list[str]:
        """The flags as lower-case names, e.g. ["response_truncated"]."""
        return list(_flag_names(self._flags))

    def request_header(self, name: str) -> str | None:
        """One request header field's value (name in any case), cheaper than request_headers."""
        if self._request_headers is not None:
            return self._request_headers.get(name.lower())
        req = self._req
        return req.header(_needle(name)) if req is not None else None

    def response_header(self, name: str) -> str | None:
        if self._response_headers is not None:
            return self._response_headers.get(name.lower())
        resp = self._resp
        return resp.header(_needle(name)) if resp is not None else None

    # Request side.
    def _request_line(self) -> _LineText:
        req = self._req
        line = self._line = req.line_text() if req is not None else (None,) * 6
        return line

    @property
    def method(self) -> str | None:
        line = self._line
        return (line if line is not None else self._request_line())[0]

    @property
    def target(self) -> str | None:
        line = self._line
        return (line if line is not None else self._request_line())[1]

    @property
    def path(self) -> str | None:
        line = self._line
        return (line if line is not None else self._request_line())[2]

    @property
    def query(self) -> str | None:
        line = self._line
        return (line if line is not None else self._request_line())[3]

    @property
    def version(self) -> str | None:
        line = self._line
        return (line if line is not None else self._request_line())[4]

    @property
    def request_headers(self) -> dict[str, str]:
        if self._request_headers is None:
            self._request_headers = parse_header_block(self._req.head) if self._req else {}
        return self._request_headers

    @property
    def request_body_size(self) -> int | None:
        req = self._req
        return req.body_size if req is not None else None

    @property
    def request_size(self) -> int | None:
        req = self._req
        return req.size if req is not None else None

    @property
    def start_ns(self) -> int | None:
        req = self._req
        if req is not None:
            return req.start_ns
        resp = self._resp
        return resp.start_ns if resp is not None else None

    @property
    def request_end_ns(self) -> int | None:
        req = self._req
        return req.end_ns if req is not None else None

    @property
    def request_seq(self) -> int | None:
        req = self._req
        return req.seq if req is not None else None

    # Response side.
    @property
    def status_code(self) -> int | None:
        resp = self._resp
        return resp.status or None if resp is not None else None

    @property
    def reason(self) -> str | None:
        resp = self._resp
        return resp.reason.decode("latin-1") if resp is not None and resp.reason is not None else None

    @property
    def response_version(self) -> str | None:
        resp = self._resp
        return resp.version.decode("ascii") if resp is not None and resp.version else None

    @property
    def response_headers(self) -> dict[str, str]:
        if self._response_headers is None:
            self._response_headers = parse_header_block(self._resp.head) if self._resp else {}
        return self._response_headers

    @property
    def response_body_size(self) -> int | None:
        resp = self._resp
        return resp.body_size if resp is not None else None

    @property
    def response_size(self) -> int | None:
        resp = self._resp
        return resp.size if resp is not None else None

    @property
    def response_start_ns(self) -> int | None:
        resp = self._resp
        return resp.start_ns if resp is not None else None

    @property
    def end_ns(self) -> int | None:
        resp = self._resp
        if resp is not None and resp.end_ns is not None:
            return resp.end_ns
        req = self._req
        return req.end_ns if req is not None else None

    @property
    def response_seq(self) -> int | None:
        resp = self._resp
        return resp.seq if resp is not None else None

    _FIELDS = ("method", "target", "path", "query", "version", "request_headers",
               "request_body_size", "request_size", "start_ns", "request_end_ns", "request_seq",
               "status_code", "reason", "response_version", "response_headers",
               "response_body_size", "response_size", "response_start_ns", "end_ns",
               "response_seq", "flags")

    def as_dict(self) -> dict[str, object]:
        return {name: getattr(self, name) for name in self._FIELDS}

    def __eq__(self, other: object) -> bool:
        if not isinstance(other, Exchange):
            return NotImplemented
        return self.as_dict() == other.as_dict()

    __hash__ = None  # type: ignore[assignment]

    def __repr__(self) -> str:
        return (f"Exchange({self.method} {self.target} -> {self.status_code}, "
                f"start_ns={self.start_ns}, end_ns={self.end_ns}, flags={self.flags!r})")


def describe(ex: Exchange, server_side: bool, head_fields: list[Any] | None = None,
             keep_query_values: bool = False) -> SpanFacts:
    """An exchange as span facts (see ``_describe``)."""
    return _describe(ex._req, ex._resp, ex._flags, server_side, head_fields, keep_query_values)


_HOST = b"\nhost:"
_USER_AGENT = b"\nuser-agent:"


def _describe(req: _Message | None, resp: _Message | None, flags: int, server_side: bool,
              head_fields: list[Any] | None, keep_query_values: bool) -> SpanFacts:
    """A request and its response (either may be missing) as span facts.

    ``flags`` are the exchange's (the messages' own are added).  ``head_fields``
    is a connection's memory of the last request head described, as [head,
    Host, User-Agent]: a head that repeats byte for byte (a keep-alive client
    sends the same fields every time) skips both look-ups.  The query's values
    are redacted unless ``keep_query_values``; the span name has the path only.
    """
    method = path = None
    if req is not None:
        flags |= req.flags
        method, _, path, query, version, redacted = req.text or req.line_text()
        if method and path is not None:  # a request line was seen: always so but after a loss
            attrs: dict[str, Any] = {"network.protocol.name": "http",
                                     "network.protocol.version": version,
                                     "http.request.method": method, "url.path": path}
        else:
            attrs = {"network.protocol.name": "http"}
            if version:
                attrs["network.protocol.version"] = version
            if method:
                attrs["http.request.method"] = method
            if path is not None:
                attrs["url.path"] = path
        if query:
            attrs["url.query"] = query if keep_query_values else redacted
    else:
        attrs = {"network.protocol.name": "http"}
    status = 0
    if resp is not None:
        flags |= resp.flags
        status = resp.status
        if status:
            attrs["http.response.status_code"] = status
    if req is not None:
        # Single look-ups: building the whole header dict costs more than both.
        if head_fields is not None and req.head == head_fields[0]:
            host = head_fields[1]
            agent = head_fields[2]
        else:
            host = req.header(_HOST)
            agent = req.header(_USER_AGENT)
            if head_fields is not None:
                head_fields[0] = req.head
                head_fields[1] = host
                head_fields[2] = agent
        if host:
            attrs["http.request.header.host"] = host
        if agent:
            attrs["user_agent.original"] = agent
        attrs["http.request.body.size"] = req.body_size
    if resp is not None:
        attrs["http.response.body.size"] = resp.body_size
    if flags:
        attrs["sidetrace.http.flags"] = ",".join(_flag_names(flags))
    # Server spans fail on 5xx, client spans on 4xx too; otherwise the status
    # stays unset (OpenTelemetry HTTP semantic conventions).
    span_status = "unset"
    if status >= 500 or (not server_side and status >= 400):
        span_status = "error"
        attrs["error.type"] = str(status)
    if req is not None:
        start = req.start_ns
        end = resp.end_ns if resp is not None and resp.end_ns is not None else req.end_ns
    else:
        start = resp.start_ns
        end = resp.end_ns
    if end is None:
        end = start
    name = f"{method or 'HTTP'} {path}" if path is not None else (method or "HTTP")
    return SpanFacts(name, start or 0, end or 0, server_side, attrs, span_status, None,
                     req.seq if req is not None else None, resp.seq if resp is not None else None)


def _framing(lowered: bytes, is_request: bool) -> tuple[int | None, bool, bool]:
    """(Content-Length or None, chunked, malformed) from a lower-cased head.

    The head starts with the start line's "\n", so every field name follows one.
    Field names have no whitespace before the colon (RFC 9112, 5.1).
    """
    length: int | None = None
    at = lowered.find(b"\ncontent-length:")
    while at >= 0:
        start = at + 16
        stop = lowered.find(b"\n", start)
        if stop < 0:
            stop = len(lowered)
        text = lowered[start:stop].strip()
        if b"," in text:
            # "5, 5" is allowed: a list of one repeated value (RFC 9110, 8.6).
            values = {v.strip() for v in text.split(b",")}
            if len(values) != 1:
                return None, False, True
            text = values.pop()
        if not text.isdigit() or len(text) > 18 or (length is not None and int(text) != length):
            return None, False, True
        length = int(text)
        at = lowered.find(b"\ncontent-length:", stop)
    at = lowered.find(b"\ntransfer-encoding:")
    if at < 0:
        return length, False, False
    codings: list[bytes] = []
    while at >= 0:
        start = at + 19
        stop = lowered.find(b"\n", start)
        if stop < 0:
            stop = len(lowered)
        codings += [c.strip() for c in lowered[start:stop].split(b",")]
        at = lowered.find(b"\ntransfer-encoding:", stop)
    # Transfer-Encoding overrides Content-Length.  Unless chunked comes last
    # a request is invalid and a response runs until close (RFC 9112, 6.3).
    if codings[-1] == b"chunked":
        return None, True, False
    return None, False, is_request


class _Parser:
    """The messages of one direction: requests or responses."""

    __slots__ = ("handler", "is_request", "state", "buf", "scan_from", "remaining", "msg",
                 "offset", "resyncs", "last_line", "last_head")

    def __init__(self, handler: Http1Handler, is_request: bool) -> None:
        self.handler = handler
        self.is_request = is_request
        self.state = _HEAD
        self.buf = bytearray()   # an unfinished head or line
        self.scan_from = 0       # where to resume looking for the end of a buffered head
        self.remaining = 0       # body or chunk bytes still to come
        self.msg: _Message | None = None
        self.offset = 0          # stream offset of the current feed's first byte
        self.resyncs = 0
        # The fast path's last request line (through its "\n") and _request_line's answer.
        self.last_line: tuple[bytes, tuple] | None = None
        # The fast path's last head and its framing: (head from the start
        # line's "\n", Content-Length, chunked, head.lower() or None).
        self.last_head: tuple[bytes, int | None, bool, bytes | None] | None = None

    def feed(self, data: bytes, total: int, ts: int, seq: int | None) -> None:
        if self.state != _HEAD or self.buf or not _FAST_PATH:
            self._feed(data, 0, total, ts, seq)
            return
        # The fast path, for a syscall that starts with a whole head (the usual
        # case on a keep-alive connection).  It gets the same results as _head
        # and _after_head in fewer steps, and leaves anything out of the
        # ordinary to them, deciding so before it changes any state.
        # The start line ends at the first newline whether it matches or not,
        # so the line's bytes alone decide: request and status lines repeat.
        is_request = self.is_request
        if is_request:
            last = self.last_line
            if last is not None and data.startswith(last[0]):
                nl = len(last[0]) - 1
                line = last[1]
            else:
                nl = data.find(b"\n", 0, MAX_HEAD_BYTES)
                line = _request_line(data[:nl + 1]) if nl >= 0 else None
                if line is None:
                    self._feed(data, 0, total, ts, seq)
                    return
                if nl < _CACHED_LINE_BYTES:
                    self.last_line = (data[:nl + 1], line)
        else:
            nl = data.find(b"\n", 0, MAX_HEAD_BYTES)
            if nl < 0:
                self._feed(data, 0, total, ts, seq)
                return
            line = _STATUS_LINES.get(data[:nl + 1])
            if line is None:
                m = _STATUS_LINE.match(data)
                if m is None:
                    self._feed(data, 0, total, ts, seq)
                    return
                version, status, reason = m.groups()
                line = (version, int(status), reason or b"")
                if nl < 128:
                    if len(_STATUS_LINES) >= 256:
                        _STATUS_LINES.clear()
                    _STATUS_LINES[data[:nl + 1]] = line
        # What decides the framing: the first empty line, Content-Length and
        # Transfer-Encoding (RFC 9112, 6.3).  Header fields byte for byte the
        # same as the last head's (after a start line ending in CRLF, as that
        # one's did) are framed the same way.
        last = self.last_head
        if (last is not None and data.startswith(last[0], nl) and data[nl - 1] == 13
                and nl + len(last[0]) <= MAX_HEAD_BYTES):
            head, length, chunked, lowered = last
            head_end = nl + len(head)
        else:
            length = None
            chunked = False
            lowered = None
            scan = _FRAMING_FIELDS.search(data, nl, MAX_HEAD_BYTES)
            found = scan.lastindex if scan is not None else None
            if found == 2:
                length = int(scan.group(2))
                scan = _FRAMING_FIELDS.search(data, scan.end(), MAX_HEAD_BYTES)
                found = scan.lastindex if scan is not None else None
            if found == 1:
                # "\r\n\r\n" with no bare "\n\n" before it and at most one plain Content-Length.
                head_end = scan.end()
            else:
                # Transfer-Encoding, a repeated or odd Content-Length, a bare LF, no
                # end: as _head and _after_head do it, or all the way their way.
                stop = data.find(b"\r\n\r\n", 0, MAX_HEAD_BYTES)
                if stop < 0 or data.find(b"\n\n", 0, stop) >= 0:
                    self._feed(data, 0, total, ts, seq)
                    return
                head_end = stop + 4
                lowered = data[nl:head_end].lower()
                length, chunked, bad = _framing(lowered, is_request)
                if bad:
                    self._feed(data, 0, total, ts, seq)
                    return
            head = data[nl:head_end]
            if head_end - nl <= _CACHED_HEAD_BYTES and data[nl - 1] == 13:
                self.last_head = (head, length, chunked, lowered)
        msg = _Message(ts, None if seq is None else seq & _SEQ_MASK, self.offset)
        msg.head = head
        msg.lowered = lowered
        if is_request:
            msg.method, msg.target, msg.version, msg.text = line
            if length is None:
                length = 0  # a request without framing has no body
            self.handler._request_head(msg)
        else:
            version, status, reason = line
            if status < 200:
                self._feed(data, 0, total, ts, seq)
                return
            method = self.handler._answered_method()
            if method == b"HEAD" or status == 204 or status == 304:
                length = 0
                chunked = False
            elif length is None and not chunked or method == b"CONNECT" and status < 300:
                self._feed(data, 0, total, ts, seq)  # runs until close, or a tunnel
                return
            msg.version = version
            msg.status = status
            msg.reason = reason
            self.handler._response_head(msg)
        self.msg = msg
        if not chunked and head_end + length == total == len(data):
            # The whole message and nothing else.
            msg.body_size = length
            self._finish(total, ts)
            self.offset += total
            return
        # A body that goes on, more messages, uncaptured bytes: the general loop.
        if chunked:
            self.state = _CHUNK_SIZE_LINE
        elif length:
            self.remaining = length
            self.state = _BODY
        else:
            self._finish(head_end, ts)
        self._feed(data, head_end, total, ts, seq)

    def _feed(self, data: bytes, pos: int, total: int, ts: int, seq: int | None) -> None:
        end = len(data)
        while pos < end:
            state = self.state
            if state == _HEAD:
                pos = self._head(data, pos, end, ts, seq)
            elif state == _BODY or state == _CHUNK_DATA:
                take = end - pos
                if take > self.remaining:
                    take = self.remaining
                self.remaining -= take
                pos += take
                self.msg.body_size += take
                if self.remaining:
                    break
                if state == _BODY:
                    self._finish(pos, ts)
                else:
                    self.state = _CHUNK_END
            elif state == _UNTIL_CLOSE:
                self.msg.body_size += end - pos
                self.msg.end_ns = ts
                pos = end
            elif state == _LOST:
                pos = self._resync(data, pos, end, ts)
            elif state == _OPAQUE:
                break
            else:
                pos = self._line(data, pos, end, ts)
        if total > end:
            self._skip(end, total - end, ts)
            end = total
        self.offset += end

    # --- heads --------------------------------------------------------------

    def _new_message(self, pos: int, ts: int, seq: int | None) -> _Message:
        return _Message(ts, None if seq is None else (seq + pos) & _SEQ_MASK, self.offset + pos)

    def _head(self, data: bytes, pos: int, end: int, ts: int, seq: int | None) -> int:
        if self.buf:
            return self._head_continued(data, pos, end, ts)
        first = data[pos]
        if first == 13 or first == 10:
            # Stray CRLFs between messages are to be ignored (RFC 9112, 2.2).
            while pos < end and data[pos] in b"\r\n":
                pos += 1
            if pos == end:
                return end
        # A head counts only if it ends within MAX_HEAD_BYTES, however it was split.
        limit = pos + MAX_HEAD_BYTES
        search_end = end if end < limit else limit
        stop = data.find(b"\r\n\r\n", pos, search_end)
        if stop >= 0:
            bare = data.find(b"\n\n", pos, stop)
            head_end = bare + 2 if bare >= 0 else stop + 4
        else:
            bare = data.find(b"\n\n", pos, search_end)
            if bare < 0:
                # The head goes on in a later syscall, if this is HTTP at all.
                if not self._plausible_start(data[pos:pos + 64]):
                    return self._lose(data, pos, end, ts)
                self.msg = self._new_message(pos, ts, seq)
                if end >= limit:
                    self.buf += data[pos:limit]
                    self._salvage_head()
                    return limit
                self.buf += data[pos:end]
                self.scan_from = end - pos
                return end
            head_end = bare + 2
        # The usual case, a whole head in one syscall: _parse_head inlined.
        msg = _Message(ts, None if seq is None else (seq + pos) & _SEQ_MASK, self.offset + pos)
        if self.is_request:
            m = _request_match(data, pos, head_end)
            if m is None:
                return self._lose(data, pos, end, ts)
            msg.method, msg.target, msg.version = m.groups()
        else:
            m = _STATUS_LINE.match(data, pos, head_end)
            if m is None:
                return self._lose(data, pos, end, ts)
            msg.version, status, reason = m.groups()
            msg.status = int(status)
            msg.reason = reason or b""
        msg.head = data[m.end() - 1:head_end]
        return self._after_head(msg, head_end, ts)

    def _head_continued(self, data: bytes, pos: int, end: int, ts: int) -> int:
        buf = self.buf
        before = len(buf)
        # Room for the rest of a MAX_HEAD_BYTES head and its terminator, no more.
        piece_end = min(end, pos + MAX_HEAD_BYTES + 4 - before)
        buf += data[pos:piece_end]
        scan = max(self.scan_from - 3, 0)
        stop = buf.find(b"\r\n\r\n", scan)
        bare = buf.find(b"\n\n", scan, stop if stop >= 0 else len(buf))
        if bare >= 0:
            head_end = bare + 2
        elif stop >= 0:
            head_end = stop + 4
        else:
            self.scan_from = len(buf)
            if before < 64 and not self._plausible_start(bytes(buf[:64])):
                self.buf = bytearray()
                return self._lose_buffered(data, pos, end, ts)
            if len(buf) >= MAX_HEAD_BYTES:
                self._salvage_head()
            return piece_end
        msg = self.msg
        head = bytes(buf[:head_end])
        self.buf = bytearray()
        if not self._parse_head(msg, head, 0, head_end):
            return self._lose_buffered(data, pos, end, ts)
        return self._after_head(msg, pos + head_end - before, ts)

    def _plausible_start(self, prefix: bytes) -> bool:
        if b"\n" in prefix:
            # A whole start line is here: it has to be right.
            if self.is_request:
                return _request_match(prefix, 0, len(prefix)) is not None
            return _STATUS_LINE.match(prefix) is not None
        partial = _REQUEST_PREFIX if self.is_request else _STATUS_PREFIX
        return partial.match(prefix) is not None

    def _parse_head(self, msg: _Message, data: bytes, pos: int, head_end: int) -> bool:
        """Fill in ``msg`` from the head at data[pos:head_end]; False if it is not one."""
        if self.is_request:
            m = _request_match(data, pos, head_end)
            if m is None:
                return False
            msg.method, msg.target, msg.version = m.groups()
        else:
            m = _STATUS_LINE.match(data, pos, head_end)
            if m is None:
                return False
            msg.version, status, reason = m.groups()
            msg.status = int(status)
            msg.reason = reason or b""
        # Keep the start line's newline: every header line then follows a "\n".
        msg.head = data[m.end() - 1:head_end]
        return True

    def _after_head(self, msg: _Message, pos: int, ts: int) -> int:
        """Decide how the body is delimited (RFC 9112, 6.3) and go on with it."""
        self.msg = msg
        msg.lowered = lowered = msg.head.lower()
        length: int | None = None
        chunked = bad = False
        at = lowered.find(b"\ncontent-length:")
        if b"\ntransfer-encoding:" in lowered:
            length, chunked, bad = _framing(lowered, self.is_request)
        elif at >= 0:
            # The usual body: one plain Content-Length.  Anything odder goes the long way.
            stop = lowered.find(b"\n", at + 16)
            text = lowered[at + 16:stop].strip()
            if text.isdigit() and len(text) < 19 and lowered.find(b"\ncontent-length:", stop) < 0:
                length = int(text)
            else:
                length, chunked, bad = _framing(lowered, self.is_request)
        handler = self.handler
        if self.is_request:
            handler._request_head(msg)
            if bad:
                return self._lost_after_head(msg, pos, ts, _F.REQUEST_UNPARSED)
            if length is None:
                length = 0  # a request without framing has no body
        else:
            status = msg.status
            method = handler._response_head(msg)
            if status < 200:
                if status == 101:
                    msg.flags |= _F.UPGRADED
                    self._finish(pos, ts)
                    handler._upgrade()
                    return pos
                # Interim (100 Continue...): the final response follows.
                self.msg = None
                handler._interim()
                return pos
            if method == b"HEAD" or status == 204 or status == 304:
                length, chunked, bad = 0, False, False
            elif method == b"CONNECT" and status < 300:
                msg.flags |= _F.UPGRADED
                self._finish(pos, ts)
                handler._upgrade()
                return pos
            if bad:
                return self._lost_after_head(msg, pos, ts, _F.RESPONSE_UNPARSED)
            if length is None and not chunked:
                self.state = _UNTIL_CLOSE
                msg.end_ns = ts
                return pos
        if chunked:
            self.state = _CHUNK_SIZE_LINE
        elif length:
            self.remaining = length
            self.state = _BODY
        else:
            self._finish(pos, ts)
        return pos

    def _salvage_head(self) -> None:
        """A head we will not see the end of: keep what its start line says, then resync."""
        msg = self.msg
        head = bytes(self.buf)
        self.buf = bytearray()
        self.msg = None
        self.state = _LOST
        self.resyncs += 1
        if msg is None:
            return
        nl = head.find(b"\n")
        if nl < 0 or not self._parse_head(msg, head, 0, nl + 1):
            return
        msg.head = head[nl:]
        msg.flags |= _F.REQUEST_UNPARSED if self.is_request else _F.RESPONSE_UNPARSED
        if self.is_request:
            self.handler._request_head(msg)
        elif msg.status < 200:
            self.handler._interim()
            return
        else:
            self.handler._response_head(msg)
        self.msg = msg

    # --- chunked bodies -----------------------------------------------------

    def _line(self, data: bytes, pos: int, end: int, ts: int) -> int:
        """The chunk-size, chunk-end and trailer lines of a chunked body."""
        if not self.buf:
            # Fast path for whole, well-formed lines: no slicing, no buffering.
            state = self.state
            if state == _CHUNK_END and data.startswith(b"\r\n", pos):
                pos += 2
                self.state = state = _CHUNK_SIZE_LINE
                if pos >= end:
                    return pos
            if state == _CHUNK_SIZE_LINE:
                m = _CHUNK_SIZE.match(data, pos, end)
                if m is not None:
                    size = int(m.group(1), 16)
                    if size:
                        self.remaining = size
                        self.state = _CHUNK_DATA
                    else:
                        self.state = _TRAILERS
                    return m.end()
        nl = data.find(b"\n", pos, end)
        if nl < 0:
            self.buf += data[pos:end]
            if len(self.buf) > MAX_LINE_BYTES:
                self.buf = bytearray()
                self._lost_in_body()
            return end
        if self.buf:
            self.buf += data[pos:nl + 1]
            line = bytes(self.buf)
            self.buf = bytearray()
        else:
            line = data[pos:nl + 1]
        pos = nl + 1
        state = self.state
        if state == _CHUNK_SIZE_LINE:
            m = _CHUNK_SIZE.fullmatch(line)
            if m is None:
                self._lost_in_body()
                return pos
            size = int(m.group(1), 16)
            if size:
                self.remaining = size
                self.state = _CHUNK_DATA
            else:
                self.state = _TRAILERS
        elif state == _CHUNK_END:
            if line != b"\r\n" and line != b"\n":
                self._lost_in_body()
                return pos
            self.state = _CHUNK_SIZE_LINE
        elif line == b"\r\n" or line == b"\n":  # the empty line after the trailers
            self._finish(pos, ts)
        return pos

    # --- losing and finding our place ----------------------------------------

    def _skip(self, start: int, count: int, ts: int) -> None:
        """Bytes [start, start + count) of this feed went by uncaptured."""
        state = self.state
        msg = self.msg
        truncated = _F.REQUEST_TRUNCATED if self.is_request else _F.RESPONSE_TRUNCATED
        if state == _BODY or state == _CHUNK_DATA:
            take = count if count < self.remaining else self.remaining
            self.remaining -= take
            msg.body_size += take
            msg.flags |= truncated
            if self.remaining:
                return
            if state == _CHUNK_DATA:
                if take == count:
                    self.state = _CHUNK_END
                else:  # the chunk framing after the data went by unseen
                    self._lost_with(msg)
                return
            self._finish(start + take, ts)
            if take < count:  # the next message started in bytes we did not see
                self.state = _LOST
                self.resyncs += 1
        elif state == _UNTIL_CLOSE:
            msg.body_size += count
            msg.flags |= truncated
            msg.end_ns = ts
        elif state == _LOST:
            if msg is not None:
                msg.flags |= truncated
                msg.end_ns = ts
        elif state == _HEAD:
            if self.buf:
                msg.flags |= truncated
                self._salvage_head()
            else:
                self.state = _LOST
                self.resyncs += 1
        elif state != _OPAQUE:  # inside chunk framing
            self.buf = bytearray()
            msg.flags |= truncated
            self._lost_with(msg)

    def _lose(self, data: bytes, pos: int, end: int, ts: int) -> int:
        """Not at a message start after all: look for one further on."""
        self.msg = None
        self.state = _LOST
        self.resyncs += 1
        return self._resync(data, pos + 1, end, ts)

    def _lose_buffered(self, data: bytes, pos: int, end: int, ts: int) -> int:
        """The buffered start of a head was not one after all: look for a message
        from ``pos`` on, where this syscall's bytes begin (the likeliest place
        for one to start)."""
        self.msg = None
        self.state = _LOST
        self.resyncs += 1
        return self._resync(data, pos, end, ts)

    def _lost_after_head(self, msg: _Message, pos: int, ts: int, flag: int) -> int:
        msg.flags |= flag
        msg.end_ns = ts
        self._lost_with(msg)
        return pos

    def _lost_in_body(self) -> None:
        msg = self.msg
        msg.flags |= _F.REQUEST_UNPARSED if self.is_request else _F.RESPONSE_UNPARSED
        self._lost_with(msg)

    def _lost_with(self, msg: _Message) -> None:
        """Stop following ``msg``: it ends where the next message starts, or at close."""
        self.state = _LOST
        self.resyncs += 1
        self.msg = msg

    def _resync(self, data: bytes, pos: int, end: int, ts: int) -> int:
        if pos == 0:
            # A syscall boundary is the likeliest place for a message to start.
            head = data[:64]
            if (looks_like_http1_request(head) if self.is_request
                    else looks_like_http1_response(head)):
                self._found(0)
                return 0
        pattern = _REQUEST_LINE_AFTER_NL if self.is_request else _STATUS_LINE_AFTER_NL
        m = pattern.search(data, max(pos - 1, 0), end)
        if self.msg is not None:
            self.msg.end_ns = ts  # the bytes before the next start belong to the lost message
        if m is None:
            if not self.is_request:
                # Bytes up to the end of this syscall belong to no response we
                # can read (the lost one's framing is unknown from here): the
                # answers to the requests waiting may be among them (see _found).
                self.handler._lost(False, ts)
            return end
        self._found(m.end())
        return m.end()

    def _found(self, pos: int) -> None:
        lost = self.msg
        self.msg = None
        self.state = _HEAD
        if lost is not None and not lost.done:
            lost.size = self.offset + pos - lost.start_off
            lost.done = True
            self.handler._message_done(self.is_request, lost)
        if not self.is_request:
            # Requests waiting since before the bytes we could not read were
            # answered there: the response found is not theirs.
            self.handler._replies_found()

    def abandon(self) -> None:
        """Give up on a lost message now instead of at the next start line."""
        lost = self.msg
        if self.state == _LOST and lost is not None and not lost.done:
            lost.size = self.offset - lost.start_off
            lost.done = True
            self.msg = None
            self.handler._message_done(self.is_request, lost)

    # --- ends of messages ---------------------------------------------------

    def _finish(self, pos: int, ts: int) -> None:
        msg = self.msg
        msg.end_ns = ts
        msg.size = self.offset + pos - msg.start_off
        msg.done = True
        self.msg = None
        self.state = _HEAD
        if not self.is_request:  # an exchange is complete when its response is
            self.handler._response_done(msg)

    def opaque(self) -> None:
        self.state = _OPAQUE
        self.buf = bytearray()

    def restart(self) -> None:
        """Read the next bytes as the start of a message (what was in flight was
        left out); the remembered request line and head stay."""
        if self.state != _OPAQUE:
            self.state = _HEAD
        self.buf = bytearray()
        self.scan_from = 0
        self.remaining = 0
        self.msg = None

    def close(self, ts: int | None) -> None:
        if self.state == _HEAD and self.buf and self.msg is not None:
            self.msg.flags |= _F.INCOMPLETE
            self._salvage_head()
        msg = self.msg
        self.msg = None
        state = self.state
        self.state = _OPAQUE
        if msg is None or msg.done:
            return
        if state == _UNTIL_CLOSE:
            msg.flags |= _F.ENDED_BY_CLOSE
        elif state != _LOST or msg.flags & _F.INCOMPLETE:
            msg.flags |= _F.INCOMPLETE
        if msg.end_ns is None:
            msg.end_ns = ts if ts is not None else msg.start_ns
        msg.size = self.offset - msg.start_off
        msg.done = True
        self.handler._message_done(self.is_request, msg)


class Http1Handler(Handler):
    """HTTP/1.x for one TCP connection, both directions: requests and responses paired FIFO.

    ``feed`` takes each syscall's captured bytes in order and returns the
    exchanges completed by them as span facts, oldest first; ``close``
    flushes what is left when the connection ends.
    """

    name = "http"
    MAX_PENDING = MAX_PENDING_REQUESTS

    __slots__ = ("_requests", "_responses", "_paired", "_interim_seen", "_head_fields")

    @staticmethod
    def detect(data: bytes, direction: str, hints: ConnectionHints) -> bool:
        return looks_like_http1_request(data) or looks_like_http1_response(data)

    looks_like_request = staticmethod(looks_like_http1_request)
    looks_like_reply = staticmethod(looks_like_http1_response)

    def __init__(self, role: str = "unknown", context: Context | None = None) -> None:
        super().__init__(role, context)
        self._requests = _Parser(self, True)
        self._responses = _Parser(self, False)
        self._paired: _Message | None = None      # the request of the response in progress
        self._interim_seen = False
        # The last request head described and its (Host, User-Agent): a
        # keep-alive client usually sends the same header fields every time.
        self._head_fields: list[Any] = [None, None, None]

    def _new_reader(self, carries_requests: bool) -> _Parser:
        return self._requests if carries_requests else self._responses

    def _restart_readers(self) -> int:
        self._requests.restart()
        self._responses.restart()
        paired = self._paired is not None and self._paired is not _OWED
        self._paired = None
        self._interim_seen = False
        return int(paired)

    @property
    def pending_requests(self) -> int:
        return len(self._pending)

    def _end(self, ts_ns: int | None) -> None:
        self._requests.close(ts_ns)
        self._responses.close(ts_ns)

    # --- called by the parsers ----------------------------------------------

    def _request_head(self, msg: _Message) -> None:
        # Without pipelining a new request means the previous response is over:
        # the best end we will get for a response we lost track of.
        if self._responses.state == _LOST and not self._pending:
            self._responses.abandon()
        self._restarted = False
        self._push(msg)

    def _answered_method(self) -> bytes | None:
        """The method of the request the next response answers (it decides the framing)."""
        pending = self._pending
        if self._skip_replies or not pending:
            return None
        return pending[0].method  # never a gap: HTTP/1 requests are all seen or resynced past

    def _response_head(self, msg: _Message) -> bytes | None:
        """Pair a response with its request; the request's method decides its framing."""
        if not self._confirmed:
            self._confirm()  # a status line
        if msg.status < 200 and msg.status != 101:
            return self._answered_method()
        owed = self._skip_replies
        request = self._take(msg.start_ns)
        # After a restart, a response with no request answers one left out.
        self._paired = _OWED if owed or request is None and self._restarted else request
        return request.method if request is not None else None

    def _interim(self) -> None:
        self._interim_seen = True

    def _message_done(self, is_request: bool, msg: _Message) -> None:
        if not is_request:  # an exchange is complete when its response is
            self._response_done(msg)

    def _response_done(self, msg: _Message) -> None:
        request = self._paired
        self._paired = None
        flags = 0
        if self._interim_seen:
            flags = _F.INTERIM
            self._interim_seen = False
        if request is _OWED:
            return  # the answer to a request given up when too many were waiting
        if request is None:
            flags |= _F.REQUEST_MISSING
        self._respond(request, msg, flags)

    def _upgrade(self) -> None:
        self._requests.opaque()
        self._responses.opaque()

    # --- spans ---------------------------------------------------------------

    def _unanswered(self, request: _Message, ts_ns: int | None) -> None:
        self._respond(request, None, _F.RESPONSE_MISSING)

    def _respond(self, request: _Message | None, response: _Message | None, flags: int = 0) -> None:
        self._emit(_describe(request, response, flags, self.role == "server", self._head_fields,
                             self.context.keep_query_values))


class Http1Connection(Http1Handler):
    """The handler's exchanges as parsed, before they are described.

    ``feed`` and ``close`` return :class:`Exchange` objects instead of span
    facts: for tests and tools that look at HTTP/1 parsing itself.
    """

    __slots__ = ()

    def _respond(self, request: _Message | None, response: _Message | None, flags: int = 0) -> None:
        self._release(Exchange(request, response, flags))


# A response owed to a request given up because too many were waiting: no span.
_OWED: Final = _Message(0, None, 0)
