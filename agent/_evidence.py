"""What the order of a thread's socket calls says about a span, for the linker.

Where one thread serves many requests (an event loop), the request that
caused a call is in the order of the thread's syscalls: a handler that calls
another service does so right after reading its request, or right after
reading the reply of an earlier call of the same request, in the same
iteration of the loop.  While the pipeline feeds events in timestamp order,
:class:`SyscallOrder` remembers, per thread, the last read (connection and
time) and, per connection, where the thread started to send (the first
write after a read: a new request or response) and where it connected.
When a span completes it gets a :class:`SpanEvidence`:

* a client span: the thread and time of its request's first syscall (the
  connect of a connection made for it, else the first write) and the read
  the thread made last before it (``cause``);
* a server span: the thread and time of its response's first write, and of
  the accept that made its connection (where a runtime gives the
  connection's context ids right after it).

The linker (``agent/linker/_around.py``) decides what that is worth, with
what the runtime-context object says of the loop's iterations
(``agent/_contexts.py``).  Times are the kernel's monotonic clock.
"""

from __future__ import annotations

from typing import Any

# The key under which a span dict carries its SpanEvidence from the pipeline
# to the linker, which takes it off (it never reaches the wire).
EVIDENCE_KEY = "_evidence"

# Protocols that carry several exchanges at once on one connection: a read or
# write of such a connection cannot be tied to one exchange.
MULTIPLEXED = frozenset({"http2"})

# A thread's last read is forgotten after this long without reads (threads
# come and go: a thread per request leaves one entry each).
READ_MEMORY_NS = 60_000_000_000


class SpanEvidence:
    """The syscall-order facts of one span (see the module docstring)."""

    __slots__ = ("conn", "tid", "first", "cause_conn", "cause", "reused", "multiplexed",
                 "response_tid", "response", "opened_tid", "opened", "offset")

    def __init__(self, conn: int, tid: int, multiplexed: bool, offset: int) -> None:
        self.offset = offset          # wall-clock ns = monotonic ns + offset
        self.conn = conn
        self.tid = tid                # client: thread of the first syscall
        self.first: int | None = None   # client: time of the request's first syscall
        self.cause_conn: int | None = None  # client: the thread's last read before it
        self.cause: int | None = None
        self.reused = False           # client: the connection carried exchanges before
        self.multiplexed = multiplexed
        self.response_tid: int | None = None   # server: thread of the response's first write
        self.response: int | None = None       # ... and its time
        self.opened_tid: int | None = None     # server: thread of its connection's accept
        self.opened: int | None = None         # ... and its time

    def __repr__(self) -> str:
        return " ".join(f"{name}={getattr(self, name)}" for name in self.__slots__)


class _Order:
    """A connection's turns: where its thread last started sending, and its connect."""

    __slots__ = ("sending", "turn_ts", "turn_tid", "turn_cause", "opened_ts", "opened_tid",
                 "opened_cause", "exchanges")

    def __init__(self) -> None:
        self.sending = False
        self.turn_ts = -1
        self.turn_tid = 0
        self.turn_cause: tuple[int, int] | None = None
        self.opened_ts = -1
        self.opened_tid = 0
        self.opened_cause: tuple[int, int] | None = None
        self.exchanges = 0


class SyscallOrder:
    """Per-thread last reads and per-connection turns, fed in timestamp order."""

    def __init__(self) -> None:
        # tid -> [connection id, time] of its last read (of a connection that
        # carries one exchange at a time; a multiplexed one clears it)
        self._reads: dict[int, list] = {}

    def _last_read(self, tid: int) -> tuple[int, int] | None:
        read = self._reads.get(tid)
        if read is None or read[0] is None:
            return None
        return read[0], read[1]

    def data(self, conn: Any, egress: bool, ts: int, tid: int) -> None:
        """One data syscall of ``conn`` (a pipeline Connection) with bytes."""
        order = conn.order
        if order is None:
            order = conn.order = _Order()
        if egress:
            if not order.sending:
                order.sending = True
                order.turn_ts = ts
                order.turn_tid = tid
                order.turn_cause = self._last_read(tid)
            return
        order.sending = False
        read = self._reads.get(tid)
        conn_id = None if conn.protocol in MULTIPLEXED else conn.conn_id
        if read is None:
            self._reads[tid] = [conn_id, ts]
        else:
            read[0] = conn_id
            read[1] = ts

    def opened(self, conn: Any, ts: int, tid: int) -> None:
        """``conn`` was made by connect() or accept() on ``tid``."""
        order = conn.order
        if order is None:
            order = conn.order = _Order()
        order.opened_ts = ts
        order.opened_tid = tid
        order.opened_cause = self._last_read(tid)

    def evidence(self, conn: Any, server_side: bool, start: int, response_start: int | None,
                 tid: int, offset: int) -> SpanEvidence:
        """The evidence of a span of ``conn`` completed now (``tid``: the span's thread;
        ``offset``: wall clock minus monotonic clock)."""
        order = conn.order
        found = SpanEvidence(conn.conn_id, tid, conn.protocol in MULTIPLEXED, offset)
        if order is None:
            return found
        exchanges = order.exchanges
        order.exchanges = exchanges + 1
        if server_side:
            if order.opened_ts >= 0:
                found.opened, found.opened_tid = order.opened_ts, order.opened_tid
            if response_start is not None:
                found.response = response_start
                found.response_tid = conn.tid_at(response_start, tid)
            elif order.turn_ts >= start:
                found.response = order.turn_ts
                found.response_tid = order.turn_tid
            return found
        found.reused = exchanges > 0
        # (A multiplexed connection is made for all its exchanges, not the first.)
        if exchanges == 0 and 0 <= order.opened_ts <= start and not found.multiplexed:
            found.first, found.tid, cause = order.opened_ts, order.opened_tid, order.opened_cause
        elif order.turn_ts == start:
            found.first, found.tid, cause = order.turn_ts, order.turn_tid, order.turn_cause
        else:
            return found
        if cause is not None:
            found.cause_conn, found.cause = cause
        return found

    def forget(self, before: int) -> int:
        """Forget the last reads of threads that read nothing since ``before``."""
        stale = [tid for tid, read in self._reads.items() if read[1] < before]
        for tid in stale:
            del self._reads[tid]
        return len(stale)
