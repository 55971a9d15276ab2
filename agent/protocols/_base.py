"""The one shape of a protocol handler, and what every protocol shares.

A protocol module provides a subclass of :class:`Handler`.  The pipeline asks
each handler class, cheapest first, whether a connection's first payload
looks like its protocol (``detect``); the first that says yes gets an
instance for the connection and is fed every later syscall's bytes in order.
``feed`` and ``close`` return one :class:`SpanFacts` per completed exchange;
the pipeline adds ids, endpoints, process and wall-clock times.

A handler is read the same way whatever its protocol:

* **direction**: ``role`` is the traced process's side, "server" (ingress
  carries requests), "client" (egress does) or "unknown" until the first
  bytes that look like a request (``looks_like_request``) or a reply
  (``looks_like_reply``) decide it.  Protocols that can only tell later (a
  header block of HTTP/2, a DNS message) say so with ``ROLE_FROM_FIRST_BYTES
  = False`` and call ``_decide`` when they know.
* **readers**: one object per direction turns that direction's bytes into
  messages (counting what went uncaptured) and hands each to the handler;
  ``_readers`` maps a direction to its reader once the handler has begun
  (``_begin`` makes them with ``_new_reader``).
* **pairing** (``PAIRING``): first in, first out (``_push``/``_take``:
  replies come back in request order), by id (``_open_request``/``_answer``:
  the reply names its request), or one at a time (the client waits for each
  answer; the handler keeps the one).  A request nobody answers is described
  by ``_unanswered`` when it is pushed out of a full table or the connection
  ends; a request and its reply by ``_respond``.
* **loss**: a reader that can no longer tell where messages start (a header
  went uncaptured, bytes that are not this protocol) calls ``_lost``, then
  asks ``_may_resync`` at each later syscall until one starts like a
  message.  Requests that went by unseen leave a *gap* in the FIFO that
  swallows the replies which began before the next request seen; a reply we
  lost track of is *held* with its request and ends where the next reply
  starts (``_hold``/``_release_held``).  ``_stop`` ends parsing for good
  (encrypted or compressed from here on).
* **the guard**: a parser bug must not take the agent down.  ``feed`` and
  ``close`` catch any exception here, count it (``internal_errors`` and the
  shared ``Context``) and give the connection up: nothing else in the agent
  catches exceptions from protocol code.
* **trust**: a handler decides when a connection is not (or no longer) its
  protocol.  Detection is a guess from a request's first bytes; a reply the
  protocol's reader accepts *confirms* it (``_confirm``: each protocol calls
  it where its own rules accept a reply, the one thing only it knows), and
  until then the connection's spans are held.  A connection whose replies
  never confirm it (the peer answered, but not in this protocol) is given
  up and what it held dropped; so is one whose bytes the protocol cannot
  have sent (an implausible command, ``_not_this_protocol``).  A message
  that is not the protocol's but need not end the connection (a frame
  whose body does not parse) is skipped with ``_reject``.  A connection
  that got no reply at all keeps its spans.  Counted in ``Context``:
  exchanges and messages rejected, connections given up.
* **spans**: ``_emit`` is the one way a span leaves a handler.  Text in the
  name, status message and attributes is made safe (``span_text``: control
  and other invisible characters escaped), and two bounds keep one
  connection from flooding the agent: spans per event (one syscall's bytes)
  and spans per connection per second (counted as over the limit).
* **shedding and loss**: when the kernel leaves whole exchanges of a
  connection out (overload), or the connection's stream offsets show bytes
  that never arrived (lost events), the pipeline calls ``restart`` where
  it goes on: what was in flight is dropped without a span, and parsing
  starts over.

Handlers are pure: bytes in, facts out, no I/O, no clock.  They bound what
they buffer.
"""

from __future__ import annotations

import dataclasses
import re
from collections import deque
from collections.abc import Callable
from typing import Any, ClassVar

INGRESS = "ingress"   # bytes the traced process received
EGRESS = "egress"     # bytes the traced process sent

_OTHER = {INGRESS: EGRESS, EGRESS: INGRESS}


def opposite(direction: str) -> str:
    return _OTHER[direction]


@dataclasses.dataclass(frozen=True, slots=True)
class ConnectionHints:
    """What is known of a connection before its bytes: for detection only."""

    l4: str            # "tcp" or "udp"
    local_port: int
    remote_port: int
    role: str          # "server" (accepted), "client" (connected) or "unknown"


@dataclasses.dataclass(slots=True)
class SpanFacts:
    """One completed exchange as the protocol sees it.

    ``start_ns``/``end_ns`` are kernel monotonic nanoseconds: first byte of
    the request, last byte of the response.  ``server_side`` is True when the
    traced process received the request (a server span).  ``kind`` names a
    messaging span's kind ("producer" or "consumer") where OpenTelemetry says
    so; None: "server" or "client" by ``server_side``.
    ``response_start_ns``, where a protocol multiplexes exchanges on one
    connection, is when the response's first byte went (the linker asks
    which thread sent it).
    """

    name: str
    start_ns: int
    end_ns: int
    server_side: bool
    attributes: dict[str, Any]
    status: str = "unset"            # "unset", "ok" or "error"
    status_message: str | None = None
    request_seq: int | None = None
    response_seq: int | None = None
    kind: str | None = None
    response_start_ns: int | None = None


# One event is one syscall's bytes, at most 4 KiB captured: the smallest
# replies ("+OK\r\n") make about 820 spans of one read, and a full FIFO
# flushed at close 1024.
MAX_SPANS_PER_EVENT = 1024
# Above what the agent can describe per second in all on these machines: one
# connection never takes it all.
MAX_SPANS_PER_SECOND = 20_000
# Spans a connection may hold before a reply confirms its protocol.
MAX_UNCONFIRMED = 64


class Context:
    """What every handler of one pipeline shares: the options it was given, counters it adds to."""

    __slots__ = ("keep_query_values", "max_spans_per_event", "max_spans_per_second",
                 "internal_errors", "rejected", "given_up", "over_limit")

    def __init__(self, *, keep_query_values: bool = False, max_spans_per_event: int = MAX_SPANS_PER_EVENT,
                 max_spans_per_second: int = MAX_SPANS_PER_SECOND) -> None:
        # Query values (``?password=...``) leave the host only when asked for.
        self.keep_query_values = keep_query_values
        self.max_spans_per_event = max_spans_per_event
        self.max_spans_per_second = max_spans_per_second
        # Exceptions caught from protocol code: always a bug, the connection given up.
        self.internal_errors = 0
        # Exchanges that made no span: implausible input, or a connection its
        # replies never confirmed.
        self.rejected = 0
        # Connections given up as not (or no longer) their protocol.
        self.given_up = 0
        # Spans dropped by the per-event and per-connection-per-second bounds.
        self.over_limit = 0


_QUERY_VALUE = re.compile(r"=[^&]*")


def query_text(query: str, keep_values: bool) -> str:
    """A URL query as spans show it: keys kept, each value ``?`` unless ``keep_values``.

    ``password=S3CRET&x=1`` -> ``password=?&x=?``; a key without a value stays.
    Every request target or query a span carries goes through here.
    """
    return query if keep_values else _QUERY_VALUE.sub("=?", query)


def span_text(text: str) -> str:
    """Text as a span carries it: valid UTF-8, nothing a terminal would act on.

    Printable characters stay; control characters (C0, DEL, C1), format
    characters such as bidi overrides, separators other than the space,
    unassigned code points and lone surrogates (bytes that were not UTF-8,
    decoded with ``surrogateescape``) become ``\\xNN``/``\\uNNNN`` escapes.
    """
    if text.isprintable():
        return text
    return "".join(c if c.isprintable() else _escape(c) for c in text)


def _escape(char: str) -> str:
    code = ord(char)
    if 0xDC80 <= code <= 0xDCFF:  # a byte that was not UTF-8 (surrogateescape)
        code -= 0xDC00
    if code < 0x100:
        return f"\\x{code:02x}"
    return f"\\u{code:04x}" if code < 0x10000 else f"\\U{code:08x}"


def _make_safe(facts: SpanFacts) -> tuple:
    """``span_text`` over a span's name, status message and string attributes; its texts after."""
    facts.name = span_text(facts.name)
    if facts.status_message is not None:
        facts.status_message = span_text(facts.status_message)
    attrs = facts.attributes
    for key, value in attrs.items():
        if value.__class__ is str:
            attrs[key] = span_text(value)
    return (facts.name, facts.status_message, *attrs.values())


class _GivenUp(Exception):
    """Raised by ``_not_this_protocol`` to leave the reader's loops; feed and close catch it."""


class Request:
    """A request waiting for its reply, as FIFO pairing sees it.

    ``no_reply``: the protocol says none will come (its span ends with the
    request).  ``quiet``: a reply comes only sometimes (a quiet success says
    nothing).  Protocols that have such requests make them instance slots.
    """

    __slots__ = ("start_ns", "end_ns", "seq")

    gap = False
    no_reply = False
    quiet = False
    done = True        # all of it seen (a protocol that pushes a request at its head says when)

    def __init__(self, start_ns: int, end_ns: int | None, seq: int | None) -> None:
        self.start_ns = start_ns
        self.end_ns = end_ns
        self.seq = seq


class Gap(Request):
    """A place in the FIFO for requests that went by uncaptured."""

    __slots__ = ()

    gap = True


_ROLE_DIRECTION = {"server": INGRESS, "client": EGRESS}

# How requests find their replies.
FIFO = "fifo"                    # replies come back in request order
BY_ID = "by id"                  # a reply names its request (a stream id, a message id)
ONE_AT_A_TIME = "one at a time"  # the client waits for each answer: the handler keeps the one
_NONE: Any = ()                  # the table a handler does not pair with: always empty


class Handler:
    """One connection of one request/reply protocol (see the module doc)."""

    name: ClassVar[str]                         # the span's ``protocol`` field, e.g. "redis"
    ROLE_FROM_FIRST_BYTES: ClassVar[bool] = True
    PAIRING: ClassVar[str] = FIFO               # FIFO, BY_ID, or ONE_AT_A_TIME (no pipelining)
    MAX_PENDING: ClassVar[int] = 1024           # requests waiting for replies (FIFO or by id)

    __slots__ = ("role", "request_direction", "context", "internal_errors", "orphan_replies",
                 "absorbed_replies", "rejected", "_readers", "_out", "_closed", "_stopped", "_pending",
                 "_open", "_held", "_skip_replies", "_replies_lost_at", "_confirmed", "_unconfirmed",
                 "_replied", "_now", "_second_start", "_second_left", "_last_texts", "_restarted")

    def __init__(self, role: str = "unknown", context: Context | None = None) -> None:
        if role not in ("server", "client", "unknown"):
            raise ValueError(f"role must be 'server', 'client' or 'unknown', not {role!r}")
        self.role = role
        self.request_direction: str | None = _ROLE_DIRECTION.get(role)
        self.context = context if context is not None else Context()
        self.internal_errors = 0       # exceptions caught in feed/close: parser bugs
        self.orphan_replies = 0        # replies with no request (joined mid-stream)
        self.absorbed_replies = 0      # replies to requests that went uncaptured
        self.rejected = 0              # messages refused as not this protocol (``_reject``)
        self._readers: dict[str, Any] = {}
        self._out: list[SpanFacts] = []
        self._closed = False
        self._stopped = False          # nothing more to parse (encrypted, opaque, given up)
        # Only the table the protocol pairs with is made: a connection costs memory.
        self._pending: deque[Request] = deque() if self.PAIRING == FIFO else _NONE
        self._open: dict[Any, Any] = {} if self.PAIRING == BY_ID else _NONE  # oldest first
        self._held: tuple[Any, Any] | None = None       # a reply we lost track of, paired
        self._skip_replies = 0         # replies owed to requests pushed out of a full FIFO
        self._replies_lost_at = 0
        # Since ``restart``, until the next request: a reply with no request is
        # one whose request was left out, not a span to describe.
        self._restarted = False
        self._confirmed = False        # a reply proved the connection speaks this protocol
        self._unconfirmed: list[SpanFacts] = []  # spans held until then
        self._replied = False          # the other side sent something meanwhile
        self._now = 0                  # the timestamp of the bytes being parsed
        self._second_start = -1_000_000_000  # spans per connection per second: this second's
        self._second_left = 0                 # start, and spans it may still make
        self._last_texts: tuple = ()   # the last span's name, message and values, made safe

    # --- what a protocol provides ---------------------------------------------------

    @staticmethod
    def detect(data: bytes, direction: str, hints: ConnectionHints) -> bool:
        """Cheap: does this first payload look like this protocol?"""
        raise NotImplementedError

    def looks_like_request(self, data: bytes) -> bool:
        """Do these bytes (a syscall's) start with a request?  For role and resync."""
        raise NotImplementedError

    def looks_like_reply(self, data: bytes) -> bool:
        """Do these bytes start with a reply?  For role and resync."""
        raise NotImplementedError

    def _new_reader(self, carries_requests: bool) -> Any:
        """The reader of one direction: ``feed(data, total, ts_ns, tcp_seq)``."""
        raise NotImplementedError

    def _end(self, ts_ns: int | None) -> None:
        """The connection ended: finish what the readers hold (before the tables are flushed)."""

    def _unanswered(self, request: Any, ts_ns: int | None) -> None:
        """A request no reply will come for: describe it (``ts_ns``: when the connection closed)."""
        raise NotImplementedError

    def _respond(self, request: Any, reply: Any, flag: str | None = None) -> None:
        """A request and its reply (or None) paired: describe them."""
        raise NotImplementedError

    # --- the interface the pipeline uses ------------------------------------------------

    @classmethod
    def recognises(cls, data: bytes, direction: str, hints: ConnectionHints,
                   context: Context) -> bool:
        """``detect`` behind the guard: a detector bug is counted and answers no."""
        try:
            return cls.detect(data, direction, hints)
        except Exception:  # noqa: BLE001 - the guard (see the module doc)
            context.internal_errors += 1
            return False

    def feed(self, direction: str, data: bytes, total_len: int | None = None, ts_ns: int = 0,
             tcp_seq: int | None = None) -> list[SpanFacts]:
        """One syscall's bytes; ``total_len`` is how many it moved (``data`` may be fewer)."""
        if self._stopped:
            return []
        if type(data) is not bytes:
            data = bytes(data)  # memoryview has no find(); a bytearray could change under us
        total = len(data) if total_len is None or total_len < len(data) else total_len
        try:
            try:
                reader = self._readers[direction]
            except KeyError:  # the first bytes of this direction
                reader = self._begin(direction, data)
                if reader is None:
                    return []
            if not self._confirmed and direction != self.request_direction is not None:
                self._replied = True  # the peer speaks: whatever it says must confirm the protocol
            self._now = ts_ns
            reader.feed(data, total, ts_ns, tcp_seq)
        except _GivenUp:
            pass  # not this protocol: counted already
        except Exception:  # noqa: BLE001 - the guard (see the module doc)
            self._bug()
        out = self._out
        if not out:
            return []
        self._out = []
        return out

    def close(self, ts_ns: int | None = None) -> list[SpanFacts]:
        """The connection closed (or is forgotten): flush what can be completed."""
        if self._closed:
            return []
        self._closed = True
        if ts_ns is not None:
            self._now = ts_ns
        try:
            if not self._stopped:
                self._end(ts_ns)
            self._release_held()
            pending = self._pending
            while pending:
                request = pending.popleft()
                if not request.gap:
                    self._unanswered(request, ts_ns)
            opened = self._open
            while opened:
                self._unanswered(opened.pop(next(iter(opened))), ts_ns)
            if not self._confirmed:
                if self._replied:
                    self._not_this_protocol()  # answered, but never in this protocol
                else:
                    self._confirm()  # no answer at all: the requests stand on their own
        except _GivenUp:
            pass  # not this protocol: counted already
        except Exception:  # noqa: BLE001 - the guard (see the module doc)
            self._bug()
        self._stopped = True
        out = self._out
        self._out = []
        return out

    def restart(self) -> int:
        """Bytes of the connection were left out up to here (shed on purpose,
        or lost): forget what was in flight, without a span, and read what
        comes next as the start of a message; replies before the next request
        are not described (their requests went by unseen).  What the protocol
        remembers across exchanges (tables, caches) stays.  Returns how many
        requests were dropped."""
        if self._closed:
            return 0
        dropped = sum(1 for request in self._pending if not request.gap) + len(self._open)
        if self._held is not None:
            dropped += 1
            self._held = None
        if self._pending:
            self._pending.clear()
        if self._open:
            self._open.clear()
        self._skip_replies = 0
        self._replies_lost_at = 0
        self._out = []
        self._restarted = True
        return dropped + self._restart_readers()

    def _restart_readers(self) -> int:
        """``restart`` for the readers: by default they are made afresh at the
        next bytes.  Returns the requests in flight they held (paired with a
        reply under way)."""
        if not self._stopped:
            self._readers = {}
        return 0

    def _bug(self) -> None:
        self.internal_errors += 1
        self.context.internal_errors += 1
        # The parser's state can no longer be trusted: nothing more from this connection.
        self._abandon()

    def _not_this_protocol(self) -> None:
        """Bytes this protocol cannot have sent, or replies that never confirmed it.

        The connection is given up: nothing more is parsed, and nothing it
        held (spans waiting for confirmation, requests waiting for replies)
        becomes a span.
        """
        context = self.context
        context.given_up += 1
        context.rejected += len(self._unconfirmed) + len(self._pending) + len(self._open)
        self._abandon()
        raise _GivenUp

    def _reject(self) -> None:
        """A message this protocol cannot have sent, skipped (it makes no span): counted."""
        self.rejected += 1
        self.context.rejected += 1

    def _abandon(self) -> None:
        self._stopped = self._closed = True
        self._readers = {}
        self._pending = self._open = _NONE
        self._held = None
        self._unconfirmed = []

    def _stop(self) -> None:
        """Nothing more to parse on this connection (encrypted, compressed, not this protocol)."""
        self._stopped = True
        self._readers = {}

    # --- direction ------------------------------------------------------------------------

    def _begin(self, direction: str, data: bytes) -> Any:
        """The first bytes of a direction with no reader yet: make the readers, or wait (None)."""
        if direction not in _OTHER:
            return None
        if self.request_direction is None:
            if not self.ROLE_FROM_FIRST_BYTES or not self._decide_role(direction, data):
                return None
        request_direction = self.request_direction
        self._readers = {request_direction: self._new_reader(True),
                         _OTHER[request_direction]: self._new_reader(False)}
        return self._readers[direction]

    def _decide_role(self, direction: str, data: bytes) -> bool:
        if self.looks_like_request(data):
            self._decide(direction)
        elif self.looks_like_reply(data):
            self._decide(_OTHER[direction])
        else:
            return False
        return True

    def _decide(self, request_direction: str) -> None:
        """``request_direction`` carries requests: the traced process's role follows."""
        self.request_direction = request_direction
        self.role = "server" if request_direction == INGRESS else "client"

    @property
    def server_side(self) -> bool:
        return self.role == "server"

    # --- for tests and stats ----------------------------------------------------------------

    @property
    def resyncs(self) -> int:
        """How often a reader lost its place and looked for the next message."""
        return sum(getattr(reader, "resyncs", 0) for reader in self._readers.values())

    @property
    def buffered_bytes(self) -> int:
        """Bytes held for messages or lines cut between syscalls."""
        return sum(len(getattr(reader, "buf", b"")) for reader in self._readers.values())

    # --- FIFO pairing -----------------------------------------------------------------------

    def _push(self, request: Request) -> None:
        """A request (or a gap) joins the FIFO; the oldest is given up past MAX_PENDING."""
        if self._held is not None:
            self._release_held()
        pending = self._pending
        pending.append(request)
        if len(pending) > self.MAX_PENDING:
            oldest = pending.popleft()
            if not oldest.gap:
                self._unanswered(oldest, None)
                if not oldest.no_reply and not oldest.quiet:
                    self._skip_replies += 1  # its reply is still to come: it must not shift the FIFO
        if pending[0].no_reply:
            self._drain_no_reply()

    def _drain_no_reply(self) -> None:
        """Requests at the head that get no reply end now."""
        pending = self._pending
        while pending and pending[0].no_reply:
            self._respond(pending.popleft(), None)

    def _next_request(self) -> Request | None:
        """The oldest request waiting, without taking it (None: none, or a gap)."""
        pending = self._pending
        if not pending or pending[0].gap:
            return None
        return pending[0]

    def _take(self, reply_start: int, may_answer: Callable[[Any], bool] | None = None,
              names: Callable[[Any], bool] | None = None) -> Any:
        """The request the reply starting at ``reply_start`` answers, or None.

        Past replies owed to requests pushed out, gaps (a gap swallows the
        replies that began before the next request seen, or, when ``names``
        says which request a reply answers, up to that one) and quiet requests
        that ``may_answer`` says cannot get this reply (they succeeded without a
        word).
        """
        if self._skip_replies:
            self._skip_replies -= 1
            return None
        pending = self._pending
        if pending:
            head = pending[0]
            if not (head.gap or head.no_reply or head.quiet):
                return pending.popleft()  # the usual case: the oldest request, plainly
        while pending:
            head = pending[0]
            if head.gap:
                after = pending[1] if len(pending) > 1 else None
                if after is not None and (reply_start >= after.start_ns if names is None
                                          else not after.gap and names(after)):
                    pending.popleft()
                    continue
                self.absorbed_replies += 1
                return None
            if head.no_reply or (head.quiet and (may_answer is None or not may_answer(head))):
                self._respond(pending.popleft(), None)
                continue
            return pending.popleft()
        self.orphan_replies += 1
        return None

    # --- pairing by id ----------------------------------------------------------------------

    def _open_request(self, key: Any, request: Any) -> None:
        """A request its reply will name by ``key``; the oldest is given up past MAX_PENDING."""
        opened = self._open
        opened[key] = request
        if len(opened) > self.MAX_PENDING:
            self._unanswered(opened.pop(next(iter(opened))), None)

    def _answer(self, key: Any) -> Any:
        """The request a reply naming ``key`` answers, or None."""
        return self._open.pop(key, None)

    # --- loss -------------------------------------------------------------------------------

    def _lost(self, carries_requests: bool, ts: int) -> None:
        """A reader lost its place at ``ts`` (FIFO protocols; others override)."""
        if carries_requests:
            self._push(Gap(ts, ts, None))
        else:
            self._replies_lost_at = ts
            self._skip_replies = 0

    def _hold(self, request: Any, reply: Any) -> None:
        """A reply we lost track of: it ends where the next reply starts (or at close)."""
        self._release_held()
        self._held = (request, reply)

    def _release_held(self) -> None:
        held = self._held
        if held is not None:
            self._held = None
            self._respond(held[0], held[1])

    def _replies_found(self) -> None:
        """The replies' reader may start over: requests already waiting when it lost
        its place had their replies (likely) in the bytes it could not follow.  (A
        request still coming in is not waiting yet: it stays.)"""
        pending = self._pending
        lost_at = self._replies_lost_at
        while pending and pending[0].start_ns < lost_at and pending[0].done:
            request = pending.popleft()
            if not request.gap:
                self._unanswered(request, None)

    def _may_resync(self, carries_requests: bool, data: bytes, ts: int) -> bool:
        """A lost reader's next syscall: start over at these bytes?"""
        if carries_requests:
            return self.looks_like_request(data)
        self._replies_found()
        pending = self._pending
        if pending and self.looks_like_reply(data):
            self._release_held()
            return True
        # Still lost: these bytes belong to the reply we lost track of.
        self._replies_lost_at = ts
        if self._held is not None:
            self._held[1].end_ns = ts
        return False

    # --- spans ------------------------------------------------------------------------------

    def _emit(self, facts: SpanFacts) -> None:
        """A span leaves the handler: checked, its text made safe, then released."""
        # The pipeline builds on these types without checking.
        if (type(facts.start_ns) is not int or type(facts.end_ns) is not int
                or type(facts.attributes) is not dict):
            raise TypeError(f"malformed span facts from {self.name}: {facts!r}")
        texts = (facts.name, facts.status_message, *facts.attributes.values())
        if texts != self._last_texts:  # equal: made safe with the last span (keep-alive repeats)
            for text in texts:
                if text.__class__ is str and not text.isprintable():
                    texts = _make_safe(facts)  # rare: only what a terminal would act on
                    break
            self._last_texts = texts
        self._release(facts)

    def _release(self, item: Any) -> None:
        """Out within the bounds (spans per event, per connection per second), or held
        while the peer has spoken but not yet in this protocol."""
        if not self._confirmed and self._replied:
            held = self._unconfirmed
            held.append(item)
            if len(held) > MAX_UNCONFIRMED:
                self._not_this_protocol()  # so many exchanges and never a reply of this protocol
            return
        context = self.context
        if self._second_left:
            self._second_left -= 1
        elif self._now - self._second_start >= 1_000_000_000:  # a second begins with this span
            self._second_start = self._now
            self._second_left = context.max_spans_per_second - 1
        else:
            context.over_limit += 1
            return
        out = self._out
        if len(out) >= context.max_spans_per_event:
            context.over_limit += 1
            return
        out.append(item)

    def _confirm(self) -> None:
        """A reply of this protocol came: the connection is trusted, what it held goes out.

        Each protocol calls it where its reader has accepted a reply by the
        protocol's own rules (the one thing only the protocol knows), once:
        ``if not self._confirmed: self._confirm()``.
        """
        self._confirmed = True
        held = self._unconfirmed
        if held:
            self._unconfirmed = []
            for item in held:
                self._release(item)
