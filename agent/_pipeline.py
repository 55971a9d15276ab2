"""From decoded events to spans: connections, protocol detection, parsing.

Pure and synchronous: the intake hands it events in timestamp order (see
``agent.intake``), it keeps one bounded table of connections and publishes a
span for every completed exchange.  It never raises because of traffic: protocol
code runs behind the handlers' one guard (``protocols._base``), which counts
a parser bug in the shared ``Context`` and gives that connection up.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

from ._clock import WallClock
from ._endpoints import TracedEndpoints
from ._events import (IPPROTO_TCP, TLS_VERSIONS, AppProto, Direction, Event, Flag, Kind, Role,
                      Syscall, XFlag, address_text, comm_text)
from ._evidence import EVIDENCE_KEY, READ_MEMORY_NS, SyscallOrder
from ._lru import BoundedTable
from ._spans import build_span
from .protocols import EGRESS, INGRESS, REGISTRY, ConnectionHints, Context, Handler, SpanFacts

# Data events inspected before giving up on recognising a connection's protocol.
DETECT_ATTEMPTS = 4
# Connections idle this long are forgotten (their parser flushed first).
IDLE_TIMEOUT_NS = 300 * 1_000_000_000
# Per connection: the (timestamp, tid) of recent data events where the thread
# changed, to name the thread that handled an exchange.
TID_HISTORY = 64
# A connection's place in the table is refreshed at most this often: exact
# recency costs a table update per event, and eviction and the idle timeout
# need it to the second at most.
TOUCH_NS = 1_000_000_000

# The kernel's protocol guess (st_event.app_proto) -> the handler's ``name``.
HINT_NAMES = {
    AppProto.HTTP1: "http",
    AppProto.HTTP2: "http2",
    AppProto.REDIS: "redis",
    AppProto.POSTGRES: "postgresql",
    AppProto.MYSQL: "mysql",
    AppProto.DNS: "dns",
    AppProto.MEMCACHED: "memcached",
    AppProto.MONGODB: "mongodb",
    AppProto.KAFKA: "kafka",
    AppProto.MQTT: "mqtt",
    AppProto.AMQP: "amqp",
}
_OPAQUE = int(AppProto.OPAQUE)
_F_OPAQUE = int(Flag.OPAQUE)
# Plain ints: IntFlag's `&` runs Python code, on every event.
_F_PEER_FROM_ARG = int(Flag.PEER_FROM_ARG)
_F_SEQ_VALID = int(Flag.SEQ_VALID)
_F_PEEK = int(Flag.PEEK)
_F_MULTI_MSG = int(Flag.MULTI_MSG)
_INGRESS_DIR, _EGRESS_DIR = int(Direction.INGRESS), int(Direction.EGRESS)
_DATA, _CONN_OPEN, _CONN_CLOSE = int(Kind.DATA), int(Kind.CONN_OPEN), int(Kind.CONN_CLOSE)
_X_RESUMED, _X_SHED_START, _X_SHED = int(XFlag.RESUMED), int(XFlag.SHED_START), int(XFlag.SHED)
_SERVER = int(Role.SERVER)
_OPENING = frozenset({int(Syscall.CONNECT), int(Syscall.ACCEPT), int(Syscall.ACCEPT4)})

_DIRECTION_NAME = {int(Direction.INGRESS): INGRESS, int(Direction.EGRESS): EGRESS}
_ROLE_NAME = {Role.CLIENT: "client", Role.SERVER: "server", Role.UNKNOWN: "unknown"}


class Connection:
    """What the agent knows of one traced socket."""

    __slots__ = (
        "conn_id", "tgid", "comm", "family", "l4_proto", "role",
        "local_address", "local_port", "remote_address", "remote_port",
        "protocol", "parser", "detect_left", "tids", "tid", "tid_since", "touched", "events",
        "net_attrs", "_remote_raw", "tls", "rx_next", "tx_next", "unseen", "order",
    )

    def __init__(self, ev: Event) -> None:
        self.conn_id = ev.conn_id
        self.tgid = ev.tgid
        self.comm = comm_text(ev.comm)
        self.family = ev.family
        self.l4_proto = ev.l4_proto
        self.role = ev.role
        self.local_address = address_text(ev.saddr, ev.family)
        self.local_port = ev.sport
        self.remote_address = address_text(ev.daddr, ev.family)
        self.remote_port = ev.dport
        self._remote_raw = ev.daddr
        self.protocol: str | None = None
        self.parser: Handler | None = None
        self.detect_left = DETECT_ATTEMPTS
        # timestamp -> tid of the data events where the thread changed, oldest
        # first (insertion order); ``tid`` is the latest event's thread.
        self.tids: dict[int, int] = {}
        self.tid: int | None = None
        self.tid_since = -1  # timestamp of the first event of ``tid`` (-1: none yet)
        self.touched = ev.ts_ns  # when its place in the table was last refreshed
        self.events = 0
        # network attributes for (server side, client side) spans, built once.
        self.net_attrs: dict[bool, dict[str, Any]] = {}
        # Seen through its TLS library: the version ("1.3"; "" if unknown); None: not TLS.
        self.tls: str | None = None
        # The stream offsets (the kernel's bytes_rx / bytes_tx) the next
        # event of each direction starts at: a TCP event that finds more bytes
        # before it than the events so far carried follows lost ones.
        self.rx_next = ev.bytes_rx
        self.tx_next = ev.bytes_tx
        self.unseen = ev.bytes_rx + ev.bytes_tx > 0 and ev.l4_proto == IPPROTO_TCP
        self.order = None   # its turns, for the linker's evidence (see _evidence)

    def set_peer(self, ev: Event) -> None:
        """An unconnected UDP socket: the peer is per datagram (sendto/recvfrom).

        Spans are emitted on the reply, whose peer is the requester, so the
        latest datagram's peer is the right one for the span being completed.
        """
        if ev.dport != self.remote_port or ev.daddr != self._remote_raw:
            self._remote_raw = ev.daddr
            self.remote_address = address_text(ev.daddr, ev.family)
            self.remote_port = ev.dport
            self.net_attrs = {}

    def note_tid(self, ts_ns: int, tid: int) -> None:
        if tid != self.tid:
            self.tid = tid
            self.tid_since = ts_ns
            tids = self.tids
            tids[ts_ns] = tid
            if len(tids) > TID_HISTORY:
                del tids[next(iter(tids))]

    def tid_at(self, ts_ns: int | None, default: int) -> int:
        """The thread of the data event at ``ts_ns``, or ``default`` if it is too old or unknown."""
        if ts_ns is None or self.tid is None:
            return default
        if ts_ns >= self.tid_since:
            return self.tid  # the usual case: no thread change since
        for at, tid in reversed(self.tids.items()):
            if at <= ts_ns:
                return tid
        return default

    def last_tid(self) -> int:
        return self.tid if self.tid is not None else self.tgid


class Pipeline:
    """Feeds events to per-connection parsers and publishes spans.

    ``publish(span_dict)`` is called for every span; it must not block.
    ``endpoints`` is kept up to date with the client ends of the traced TCP
    connections (for whoever else reads it: the linker).
    ``keep_query_values``: URL query values reach spans as sent instead of ``?``.
    With ``evidence``, each span also carries the order of its thread's
    syscalls around it (``span[EVIDENCE_KEY]``, a ``SpanEvidence`` for the
    linker, which removes it).
    """

    def __init__(self, publish: Callable[[dict[str, Any]], None], *,
                 clock: WallClock | None = None, max_connections: int = 65536,
                 protocols: tuple[type[Handler], ...] = REGISTRY,
                 endpoints: TracedEndpoints | None = None,
                 keep_query_values: bool = False,
                 evidence: bool = False) -> None:
        self.publish = publish
        self.order = SyscallOrder() if evidence else None
        self.protocols = protocols
        # app_proto value -> the handler to try first (only those in `protocols`)
        by_name = {handler.name: handler for handler in protocols}
        self.hinted = {int(value): by_name[name] for value, name in HINT_NAMES.items() if name in by_name}
        self.clock = clock or WallClock()
        self.connections: BoundedTable[int, Connection] = BoundedTable(max_connections)
        self._peek = self.connections.peek
        self.endpoints = endpoints if endpoints is not None else TracedEndpoints()
        # Shared by every handler: the options they follow, counters they add to.
        self.context = Context(keep_query_values=keep_query_values)
        self.events = 0
        self.spans = 0
        self.unrecognised = 0
        # kernel protocol hints: confirmed by the hinted handler / not confirmed
        self.hints_confirmed = 0
        self.hints_refuted = 0
        # DATA events of connections the kernel gave up on (OPAQUE: header only)
        self.opaque_events = 0
        # connections the kernel gave up on after the agent had recognised them
        self.opaque_conflicts = 0
        # connections whose plaintext came through their TLS library
        self.tls_connections = 0
        # Load shedding (the kernel left whole units out): exchanges shed as the
        # resumed connections reported them, connections shed mid-stream, and
        # requests in flight at a shed boundary, dropped without a span.
        self.shed_exchanges = 0
        self.shed_midstream = 0
        self.shed_dropped = 0
        # TCP events that did not start where their direction's last one
        # ended (events lost in between), and requests dropped because of it.
        self.stream_gaps = 0
        self.gap_dropped = 0

    # -- events --------------------------------------------------------------

    @property
    def parse_errors(self) -> int:
        """Parser bugs caught (each gave its connection up)."""
        return self.context.internal_errors

    def input_stats(self) -> dict[str, int]:
        """What the handlers refused of the traffic (see ``protocols._base``: trust, spans)."""
        context = self.context
        return {
            "rejected_exchanges": context.rejected,     # not the protocol, or never confirmed by a reply
            "given_up_connections": context.given_up,   # not (or no longer) their protocol
            "spans_over_limit": context.over_limit,     # past the per-event or per-second bound
        }

    def handle(self, ev: Event) -> None:
        self.events += 1
        kind = ev.kind
        if kind == _DATA:
            flags = ev.flags
            if flags & _F_OPAQUE:
                # The kernel gave up on this connection: no payload, nothing to parse.
                self.opaque_events += 1
                return
            conn = self._peek(ev.conn_id)
            ts = ev.ts_ns
            last = False
            if (conn is not None and conn.parser is not None and not flags & _F_PEER_FROM_ARG
                    and ev.app_proto != _OPAQUE and ev.ret > 0 and not ev.xflags
                    and (not ev.tls or conn.tls is not None)):
                # The usual event: bytes of a connection already being parsed.
                if ts - conn.touched > TOUCH_NS:
                    self.connections.get(ev.conn_id, ts)
                    conn.touched = ts
                conn.events += 1
                if ev.bytes_rx > conn.rx_next or ev.bytes_tx > conn.tx_next:
                    self._gap(conn, ev)
                if ev.direction == _INGRESS_DIR:
                    if not flags & _F_PEEK:
                        conn.rx_next = ev.bytes_rx + ev.ret
                else:
                    conn.tx_next = ev.bytes_tx + ev.ret
            else:
                conn = self._prepare(ev, conn)
                if conn is None:
                    return
                # This payload made the kernel give up: parse it, then flush.
                last = ev.app_proto == _OPAQUE
            tid = ev.tid
            if tid != conn.tid:
                conn.note_tid(ts, tid)
            direction = _DIRECTION_NAME.get(ev.direction)
            if direction is None:
                return
            order = self.order
            if order is not None:
                order.data(conn, ev.direction == _EGRESS_DIR, ts, tid)
            for facts in conn.parser.feed(direction, ev.payload, ev.ret, ts,
                                          ev.tcp_seq if flags & _F_SEQ_VALID else None):
                self._emit(conn, facts, tid)
            if last:
                self._flush(conn, ts)
                conn.parser = None
                conn.protocol = "opaque"
        elif kind == _CONN_OPEN:
            conn = self._connection(ev)
            if self.order is not None and ev.syscall in _OPENING:
                self.order.opened(conn, ev.ts_ns, ev.tid)
        elif kind == _CONN_CLOSE:
            conn = self.connections.pop(ev.conn_id)
            if conn is not None:
                self._unindex(conn)
                if ev.xflags & _X_SHED and conn.parser is not None:
                    # Closed while shed: what it held is incomplete.
                    self.shed_dropped += conn.parser.restart()
                self._flush(conn, ev.ts_ns)

    def _gap(self, conn: Connection, ev: Event) -> None:
        """The connection's stream offsets in ``ev`` (the kernel's byte counts
        of each direction before it) are past what its events so far carried:
        events in between were lost (a full ring).  What was in flight is
        dropped without a span, and parsing starts over here.  (Only more
        bytes than seen count: two threads' calls on one socket may see each
        other's count a little late.)"""
        if (conn.l4_proto == IPPROTO_TCP and conn.parser is not None and not ev.xflags & _X_RESUMED
                and not ev.flags & _F_MULTI_MSG):
            self.stream_gaps += 1
            self.gap_dropped += conn.parser.restart()
        # Both directions go on from here (the caller moves past the event's own bytes).
        if ev.bytes_rx > conn.rx_next:
            conn.rx_next = ev.bytes_rx
        if ev.bytes_tx > conn.tx_next:
            conn.tx_next = ev.bytes_tx

    def _follow(self, conn: Connection, ev: Event) -> None:
        """The stream offsets of a DATA event off the usual way: check, then move past it."""
        if ev.bytes_rx > conn.rx_next or ev.bytes_tx > conn.tx_next:
            self._gap(conn, ev)
        if ev.ret > 0:
            if ev.direction == _INGRESS_DIR:
                if not ev.flags & _F_PEEK:
                    conn.rx_next = max(conn.rx_next, ev.bytes_rx + ev.ret)
            elif ev.direction == _EGRESS_DIR:
                conn.tx_next = max(conn.tx_next, ev.bytes_tx + ev.ret)

    def _connection(self, ev: Event) -> Connection:
        conn = self.connections.get(ev.conn_id, ev.ts_ns)
        if conn is not None:
            conn.touched = ev.ts_ns
        else:
            conn = Connection(ev)
            # Accepted sockets all share their listener's port: only the ends
            # that may be a client's are indexed.
            if conn.l4_proto == IPPROTO_TCP and conn.role != _SERVER:
                self.endpoints.add(conn.local_address, conn.local_port, conn.conn_id)
            for _, old in self.connections.put(ev.conn_id, conn, ev.ts_ns):
                self._unindex(old)
                self._flush(old, None)
        return conn

    def _unindex(self, conn: Connection) -> None:
        self.endpoints.discard(conn.local_address, conn.local_port, conn.conn_id)

    def _prepare(self, ev: Event, conn: Connection | None) -> Connection | None:
        """A DATA event off the usual way: its connection, ready to parse it, or None."""
        if conn is None:
            conn = self._connection(ev)
        conn.events += 1
        xflags = ev.xflags
        if xflags:
            if xflags & _X_SHED_START:
                # Shed from here until it closes: what it held is incomplete.
                self.shed_midstream += 1
                if conn.parser is not None:
                    self.shed_dropped += conn.parser.restart()
                    conn.parser = None
                return None
            if xflags & _X_RESUMED:
                # Whole exchanges were left out before this one.
                self.shed_exchanges += ev.shed
                if conn.parser is not None:
                    self.shed_dropped += conn.parser.restart()
        if ev.tls and conn.tls is None:
            self._tls_started(conn, ev)
        self._follow(conn, ev)
        if ev.flags & _F_PEER_FROM_ARG:
            conn.set_peer(ev)
        if ev.app_proto == _OPAQUE and conn.protocol != "opaque":
            # This payload made the kernel give up: no later one will come.
            if conn.parser is None:
                if conn.protocol is None:
                    self.unrecognised += 1
                conn.protocol = "opaque"
                return None
            # The agent recognised what the kernel did not: this last payload is parsed.
            self.opaque_conflicts += 1
        if conn.parser is None and (conn.protocol is not None or not self._detect(conn, ev)):
            return None
        if ev.ret <= 0:
            conn.note_tid(ev.ts_ns, ev.tid)
            return None
        return conn

    def _tls_started(self, conn: Connection, ev: Event) -> None:
        """The connection's first plaintext seen through its TLS library.

        What its bytes gave so far is done: nothing (the ciphertext made it
        opaque) or a plaintext prelude (PostgreSQL's SSLRequest, STARTTLS).
        The plaintext is a stream of its own, detected afresh.
        """
        self._flush(conn, ev.ts_ns)
        conn.tls = TLS_VERSIONS.get(ev.tls_version, "")
        conn.parser = None
        conn.protocol = None
        conn.detect_left = DETECT_ATTEMPTS
        conn.net_attrs = {}
        conn.rx_next = ev.bytes_rx   # plaintext offsets from here
        conn.tx_next = ev.bytes_tx
        conn.unseen = ev.bytes_rx + ev.bytes_tx > 0
        self.tls_connections += 1

    def _detect(self, conn: Connection, ev: Event) -> bool:
        payload = ev.payload
        if not payload or ev.ret <= 0:
            return False
        direction = _DIRECTION_NAME.get(ev.direction, INGRESS)
        hints = ConnectionHints(
            l4="tcp" if conn.l4_proto == IPPROTO_TCP else "udp",
            local_port=conn.local_port, remote_port=conn.remote_port,
            role=_ROLE_NAME.get(conn.role, "unknown"),
        )
        # The kernel's guess first, confirmed by that handler's own detect;
        # then every handler in registry order.
        hinted = self.hinted.get(ev.app_proto)
        if hinted is not None:
            if self._try(hinted, conn, payload, direction, hints):
                self.hints_confirmed += 1
                return True
            self.hints_refuted += 1
        for handler in self.protocols:
            if handler is not hinted and self._try(handler, conn, payload, direction, hints):
                return True
        conn.detect_left -= 1
        if conn.detect_left <= 0:
            conn.protocol = "unknown"
            self.unrecognised += 1
        return False

    def _try(self, handler: type[Handler], conn: Connection, payload: bytes, direction: str,
             hints: ConnectionHints) -> bool:
        matched = handler.recognises(payload, direction, hints, self.context)
        if matched:
            conn.protocol = handler.name
            conn.parser = handler(hints.role, self.context)
            if conn.unseen:
                # The kernel counted bytes of it before any event the agent got:
                # those events were lost, so a reply now answers an unseen request.
                conn.parser.restart()
        return matched

    def _emit(self, conn: Connection, facts: SpanFacts, fallback_tid: int) -> None:
        start = facts.start_ns
        tid = conn.tid if start >= conn.tid_since >= 0 else conn.tid_at(start, fallback_tid)
        span = build_span(facts, conn, conn.protocol or "unknown", tid, self.clock)
        if self.order is not None:
            span[EVIDENCE_KEY] = self.order.evidence(conn, facts.server_side, start,
                                                     facts.response_start_ns, tid,
                                                     self.clock.offset)
        self.spans += 1
        self.publish(span)

    def _flush(self, conn: Connection, ts_ns: int | None) -> None:
        if conn.parser is None:
            return
        for facts in conn.parser.close(ts_ns):
            self._emit(conn, facts, conn.last_tid())

    # -- housekeeping -----------------------------------------------------------

    def expire_idle(self, now_ns: int) -> int:
        """Forget connections idle for IDLE_TIMEOUT_NS, flushing what they hold."""
        if self.order is not None:
            self.order.forget(now_ns - READ_MEMORY_NS)
        gone = self.connections.expire(now_ns - IDLE_TIMEOUT_NS)
        for _, conn in gone:
            self._unindex(conn)
            self._flush(conn, None)
        return len(gone)

    def close(self) -> None:
        """Flush every connection (agent shutdown)."""
        for conn in self.connections.values():
            self._flush(conn, None)
