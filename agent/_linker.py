"""Linking spans into traces: parents and trace ids, with nothing added to the traced programs.

Spans reach this stage when their exchange completes, so the innermost come
first: a backend's server span before the client span that called it, a
handler's client span before the server span that caused it.  Each span is
held until its parent is known and every ancestor up to the trace's root is
settled; then it is published with its trace's id and its parent's span id.

How a parent is found, strongest evidence first (``sidetrace.link.confidence``
on the child says which):

``exact``
    A server span's parent is the client span at the other end of its TCP
    connection: the same client address and port, server address and port,
    and TCP sequence number of the request's first byte (the client's
    ``write_seq`` when it wrote it is the server's ``copied_seq`` when it read
    it).  Both ends compute this key from what each sees, on one host or two.
``address-time``
    Without sequence numbers (UDP, or a side that did not capture them): the
    same addresses and ports, and the server's exchange inside the client's
    in time, give or take ``clock_skew_ns``.
``thread``
    A client span's parent is the server span of its process that was open on
    the same thread from before the client's request to after its response,
    when it was the only server span open on that thread when the client's
    request was written (thread-per-request servers, or an event loop with a
    single request in flight).
``content``
    Several server spans were open on that thread (an event loop); exactly one
    has the same method, path and query as the client span, and this process
    has been seen to forward requests unchanged (reverse proxies).
``heuristic``
    Several were open, in a process that makes about one call per request
    (a relay); the chosen one wrote its response first after the client's
    response was read (``sidetrace.link.reason`` =
    ``response-order``), or read its request last before the client's request
    was written (``request-order``), and the pairing is mutual: no other
    client span of that server is closer.  Also: the only one of several
    requests in flight on the thread that was still open when the client's
    response came (``only-container``), and the only server span of the
    process open around the client span, on another thread (``other-thread``).
``none``
    A root.  ``sidetrace.link.reason`` says why: ``no-client-span``,
    ``no-server-span``, ``ambiguous`` (candidates too close to call),
    ``memory-bound`` (evicted to stay within ``max_held``).

Spans that arrive with a ``parent_span_id`` (``sidetrace assemble`` re-linking
what agents already linked) keep it; they adopt the final trace id of that
parent once it is seen, and are released unchanged if it never is.

Holding is bounded: a span whose parent has not been found ``hold_ns`` after
its end (and at least ``min_wait_ns`` after it arrived) is released as a root;
at most ``max_held`` spans are held, the oldest released first.  Released
spans are remembered (ids and times only) for ``remember_ns`` so that a late
child still gets its parent.  No span is ever dropped.
"""

from __future__ import annotations

import heapq
import itertools
import time
from bisect import bisect_left, bisect_right
from collections import deque
from collections.abc import Callable, Hashable
from typing import Any

CONFIDENCE_ATTR = "sidetrace.link.confidence"
REASON_ATTR = "sidetrace.link.reason"
CANDIDATES_ATTR = "sidetrace.link.candidates"

EXACT = "exact"
ADDRESS_TIME = "address-time"
THREAD = "thread"
CONTENT = "content"
HEURISTIC = "heuristic"
NONE = "none"
CONFIDENCES = (EXACT, ADDRESS_TIME, THREAD, CONTENT, HEURISTIC, NONE)

NO_CLIENT_SPAN = "no-client-span"
NO_SERVER_SPAN = "no-server-span"
AMBIGUOUS = "ambiguous"
MEMORY_BOUND = "memory-bound"
RESPONSE_ORDER = "response-order"
REQUEST_ORDER = "request-order"
OTHER_THREAD = "other-thread"
ONLY_CONTAINER = "only-container"
SAME_REQUEST = "same-request"

_MS = 1_000_000
_S = 1_000_000_000

# ``add`` also does ``tick``'s work this often, so that releases follow the
# spans' deadlines closely instead of coming in one burst per housekeeping
# tick (subscriber queues are bounded).
ADVANCE_EVERY_NS = 50 * _MS
# A client span with no candidate parent yet is looked at again this often.
RETRY_NS = 250 * _MS

# Timing pairs calls with requests in event loops that make at most about
# one call per request (seen over the last CALL_RATIO_WINDOW spans, and at
# least RELAY_MIN_REQUESTS requests).
RELAY_MAX_CALLS_PER_REQUEST = 1.2
RELAY_MIN_REQUESTS = 8
CALL_RATIO_WINDOW = 4096

# A process "forwards content" once this many unambiguous links agreed on
# method+path+query, and at most one in this many disagreed.
FORWARDING_MIN_AGREE = 3
FORWARDING_MAX_DISAGREE_RATIO = 10


def normal_address(address: Any) -> Any:
    """127.0.0.1 for ::ffff:127.0.0.1: one end may see the v4-mapped form, the other not."""
    if isinstance(address, str) and address.startswith("::ffff:") and "." in address:
        return address[7:]
    return address


class _Node:
    """One span, held or (after release) remembered by its ids and times."""

    __slots__ = (
        "span", "span_id", "trace_id", "parent_span_id", "server", "proc", "tid", "start", "end",
        "content", "seq_key", "pair", "parent", "children", "decided", "released", "forgotten",
        "deadline", "given_parent", "has_server_child", "order", "local",
    )

    def __init__(self, span: dict[str, Any], proc: Hashable, order: int) -> None:
        attrs = span.get("attributes") or {}
        self.span: dict[str, Any] | None = span
        self.span_id: bytes = span["span_id"]
        self.trace_id: bytes = span["trace_id"]
        self.parent_span_id: bytes | None = span.get("parent_span_id")
        self.server = span.get("kind") == "server"
        self.proc = proc
        self.tid = span.get("tid")
        self.start: int = span["start_time_unix_nano"]
        self.end: int = max(span["end_time_unix_nano"], self.start)
        method, path = attrs.get("http.request.method"), attrs.get("url.path")
        self.content = (method, path, attrs.get("url.query")) if path is not None else None
        self.pair = (normal_address(attrs.get("client.address")), attrs.get("client.port"),
                     normal_address(attrs.get("server.address")), attrs.get("server.port"))
        if None in self.pair:
            self.pair = None
        seq = attrs.get("sidetrace.tcp.request_seq")
        self.seq_key = (*self.pair, seq) if self.pair is not None and seq is not None else None
        self.parent: _Node | None = None
        self.children: list[_Node] = []
        self.decided = False        # the parent (or rootness) is final
        self.released = False
        self.forgotten = False
        self.deadline = 0
        self.given_parent = self.parent_span_id is not None
        self.has_server_child = False
        self.order = order
        self.local = False          # in its process's thread index


WILDCARDS = frozenset({"0.0.0.0", "::", ""})


def _ports(node: _Node) -> tuple:
    return node.pair[1], node.pair[3]


def _same_endpoints(a: tuple, b: tuple) -> bool:
    """Same ports, and the same addresses where both ends know them."""
    if a[1] != b[1] or a[3] != b[3]:
        return False
    for i in (0, 2):
        if a[i] != b[i] and a[i] not in WILDCARDS and b[i] not in WILDCARDS:
            return False
    return True


class _Thread:
    """The server and client spans of one thread, sorted by start, for containment queries.

    The start times are kept in lists of their own so that bisect compares
    plain ints.
    """

    __slots__ = ("servers", "server_starts", "clients", "client_starts", "longest", "stale")

    def __init__(self) -> None:
        self.servers: list[_Node] = []
        self.server_starts: list[int] = []
        self.clients: list[_Node] = []
        self.client_starts: list[int] = []
        self.longest = 0
        self.stale = 0

    def add(self, node: _Node) -> None:
        if node.server:
            nodes, starts = self.servers, self.server_starts
            self.longest = max(self.longest, node.end - node.start)
        else:
            nodes, starts = self.clients, self.client_starts
        i = bisect_right(starts, node.start)
        starts.insert(i, node.start)
        nodes.insert(i, node)

    def open_servers(self, client: _Node) -> tuple[list[_Node], int]:
        """Server spans that started before ``client`` and ended after it, and how
        many server spans in all were open when ``client`` started."""
        servers = self.servers
        earliest = client.start - self.longest
        containing = []
        open_at_start = 0
        i = bisect_right(self.server_starts, client.start)
        while i > 0:
            i -= 1
            s = servers[i]
            if s.start < earliest:
                break
            if s.forgotten or s.end < client.start:
                continue
            open_at_start += 1
            if s.end >= client.end:
                containing.append(s)
        return containing, open_at_start

    def clients_within(self, server: _Node) -> list[_Node]:
        clients = self.clients
        out = []
        i = bisect_left(self.client_starts, server.start)
        while i < len(clients) and clients[i].start <= server.end:
            c = clients[i]
            if c.end <= server.end and not c.forgotten:
                out.append(c)
            i += 1
        return out

    def compact(self) -> None:
        self.servers = [n for n in self.servers if not n.forgotten]
        self.server_starts = [n.start for n in self.servers]
        self.clients = [n for n in self.clients if not n.forgotten]
        self.client_starts = [n.start for n in self.clients]
        self.stale = 0


class _Process:
    __slots__ = ("threads", "servers", "agree", "disagree", "requests_seen", "calls_seen")

    def __init__(self) -> None:
        self.threads: dict[Any, _Thread] = {}
        self.servers = 0    # server spans indexed (held or remembered)
        self.agree = 0      # unambiguous links where the request was forwarded unchanged
        self.disagree = 0
        self.requests_seen = 0   # server spans and client spans of this process, halved
        self.calls_seen = 0      # now and then so that they follow changes

    def count(self, server: bool) -> None:
        if server:
            self.requests_seen += 1
        else:
            self.calls_seen += 1
        if self.requests_seen + self.calls_seen > CALL_RATIO_WINDOW:
            self.requests_seen //= 2
            self.calls_seen //= 2

    @property
    def forwards_content(self) -> bool:
        return (self.agree >= FORWARDING_MIN_AGREE
                and self.disagree * FORWARDING_MAX_DISAGREE_RATIO <= self.agree)

    @property
    def relays(self) -> bool:
        """At most about one call per request: timing pairs calls with requests.

        Where a request makes several calls (or several at once), an event
        loop interleaves their steps with other requests' and the first or
        last event of a request no longer sits next to its call; measured on
        an asyncio service with two calls per request, timing pairings were
        wrong more often than right.  Such processes get no timing guesses.
        """
        return (self.requests_seen >= RELAY_MIN_REQUESTS
                and self.calls_seen <= RELAY_MAX_CALLS_PER_REQUEST * self.requests_seen)


def _unique_min(items: list[_Node], key: Callable[[_Node], int]) -> _Node | None:
    """The item with the smallest key, or None on a tie for smallest."""
    best = second = None
    for item in items:
        k = key(item)
        if best is None or k < best[0]:
            best, second = (k, item), best
        elif second is None or k < second[0]:
            second = (k, item)
    if best is None or (second is not None and second[0] == best[0]):
        return None
    return best[1]


def choose_local_parent(client: _Node, thread: _Thread | None, proc: _Process
                        ) -> tuple[_Node | None, str, str | None, int]:
    """The server span of ``client``'s own thread that caused it.

    Returns (parent or None, confidence, reason, number of candidates);
    (None, NONE, None, 0) means no candidate has been seen yet.
    """
    if thread is None:
        return None, NONE, None, 0
    candidates, open_at_start = thread.open_servers(client)
    if not candidates:
        return None, NONE, None, 0
    count = len(candidates)
    if count == 1:
        parent = candidates[0]
        if client.content is not None and parent.content is not None:
            if client.content == parent.content:
                proc.agree += 1
            else:
                proc.disagree += 1
        if open_at_start > 1:
            # Other requests were in flight on this thread (an event loop) but
            # ended before this call did.
            return parent, HEURISTIC, ONLY_CONTAINER, open_at_start
        return parent, THREAD, None, 1
    pool = candidates
    if proc.forwards_content and client.content is not None:
        same = [s for s in candidates if s.content == client.content]
        if len(same) == 1:
            return same[0], CONTENT, SAME_REQUEST, count
        if same:
            pool = same
    if not proc.relays:
        return None, NONE, AMBIGUOUS, count
    # An event loop relays: it writes a request's response right after reading
    # the response it was waiting for, and writes the upstream request right
    # after reading the request that needs it.  Trust either pairing only
    # when it is mutual.
    by_response = _unique_min(pool, lambda s: s.end - client.end)
    if by_response is not None and _unique_min(
            thread.clients_within(by_response), lambda c: by_response.end - c.end) is client:
        return by_response, HEURISTIC, RESPONSE_ORDER, count
    by_request = _unique_min(pool, lambda s: client.start - s.start)
    if by_request is not None and _unique_min(
            thread.clients_within(by_request), lambda c: c.start - by_request.start) is client:
        return by_request, HEURISTIC, REQUEST_ORDER, count
    return None, NONE, AMBIGUOUS, count


class SpanLinker:
    """Assigns trace ids and parents, then calls ``publish(span)``.

    ``add(span, source=None)`` takes a span as the pipeline makes it (or as
    an agent sent it; ``source`` then tells apart processes of different
    hosts that share a pid).  ``tick(now_unix_ns)`` makes the decisions that
    waited for time to pass and releases what is due; ``flush()`` releases
    everything.  ``local_inference=False`` keeps to exact/address-time joins
    (``sidetrace assemble``: each agent already linked its own processes).
    """

    def __init__(self, publish: Callable[[dict[str, Any]], None], *,
                 hold_ns: int = 2 * _S, settle_ns: int = 500 * _MS, min_wait_ns: int = 500 * _MS,
                 remember_ns: int = 5 * _S, max_held: int = 30_000,
                 max_remembered: int = 50_000, clock_skew_ns: int = 2 * _MS,
                 local_inference: bool = True,
                 clock: Callable[[], int] = time.time_ns) -> None:
        self.publish = publish
        self.hold_ns = hold_ns
        self.settle_ns = settle_ns
        self.min_wait_ns = min_wait_ns
        self.remember_ns = remember_ns
        self.max_held = max_held
        self.max_remembered = max_remembered
        self.clock_skew_ns = clock_skew_ns
        self.local_inference = local_inference
        self._clock = clock
        self._order = itertools.count()
        self._held: dict[bytes, _Node] = {}            # insertion order = age
        self._by_id: dict[bytes, _Node] = {}           # held and remembered
        self._clients_by_key: dict[tuple, _Node] = {}
        self._servers_by_key: dict[tuple, _Node] = {}  # waiting for their client span
        # Every span with addresses, by connection, oldest first: the fallback
        # join for spans without sequence numbers.
        # Keyed by (client port, server port): an unconnected UDP socket may
        # see its own address as the wildcard while the other end sees it.
        self._clients_by_pair: dict[tuple, deque[_Node]] = {}
        self._servers_by_pair: dict[tuple, deque[_Node]] = {}
        self._awaiting_parent: dict[bytes, list[_Node]] = {}
        self._procs: dict[Hashable, _Process] = {}
        self._pending: list[tuple[int, int, _Node]] = []    # (decide at, order, client)
        self._deadlines: list[tuple[int, int, _Node]] = []  # (deadline, order, node)
        self._remembered: deque[tuple[int, _Node]] = deque()  # (forget at, node), release order
        self._stale_threads: set[_Thread] = set()
        self._next_advance = 0
        self.counts: dict[str, int] = {c: 0 for c in CONFIDENCES}
        self.reasons: dict[str, int] = {}
        self.errors = 0

    # -- public ---------------------------------------------------------------

    @property
    def held(self) -> int:
        return len(self._held)

    def stats(self) -> dict[str, Any]:
        return {"held": len(self._held), "remembered": len(self._remembered),
                "links": dict(self.counts), "roots": dict(self.reasons), "errors": self.errors}

    def add(self, span: dict[str, Any], source: Hashable = None) -> None:
        try:
            node = _Node(span, (source, span.get("pid")), next(self._order))
        except (KeyError, TypeError):
            # Not linkable (a span without ids or times); still never dropped.
            self.errors += 1
            self.publish(span)
            return
        if node.span_id in self._by_id:
            self.errors += 1   # a span seen twice: pass it on untouched
            self.publish(span)
            return
        now = self._clock()
        node.deadline = max(node.end + self.hold_ns, now + self.min_wait_ns)
        self._held[node.span_id] = node
        self._by_id[node.span_id] = node
        heapq.heappush(self._deadlines, (node.deadline, node.order, node))
        if node.given_parent:
            self._adopt_given_parent(node)
        if node.server:
            if not node.given_parent:
                self._link_server(node)
        else:
            # A client span is the other end for some server span, whatever its own parent.
            self._link_client(node)
        if self.local_inference and not node.given_parent:
            self._index_locally(node)
        for child in self._awaiting_parent.pop(node.span_id, ()):
            if not child.released:
                self._attach(child, node, None, None, 0)
        while len(self._held) > self.max_held:
            self._evict_oldest()
        if now >= self._next_advance:
            self.tick(now)

    def tick(self, now_unix_ns: int) -> None:
        """Decide what waited for time to pass; release what is due (about once a second)."""
        self._next_advance = now_unix_ns + ADVANCE_EVERY_NS
        pending = self._pending
        retry = []
        while pending and pending[0][0] <= now_unix_ns:
            _, _, client = heapq.heappop(pending)
            if client.decided:
                continue
            final = client.deadline <= now_unix_ns
            if not self._decide_client(client, final) and not final:
                retry.append(client)
        for client in retry:
            # A process with no server span yet: look again at the deadline only.
            proc = self._procs.get(client.proc)
            later = now_unix_ns + RETRY_NS if proc is not None and proc.servers else client.deadline
            heapq.heappush(pending, (min(later, client.deadline), client.order, client))
        deadlines = self._deadlines
        while deadlines and deadlines[0][0] <= now_unix_ns:
            _, _, node = heapq.heappop(deadlines)
            if node.released or node.decided and node.parent is not None:
                continue
            self._settle_as_root(node)
        self._forget(now_unix_ns)

    def flush(self) -> None:
        """Release everything held, deciding with what is known now (shutdown)."""
        while self._pending:
            _, _, client = heapq.heappop(self._pending)
            if not client.decided:
                self._decide_client(client, final=True)
        for node in list(self._held.values()):
            if not node.released:
                top = self._top(node)
                self._settle_as_root(top)
        self._deadlines.clear()

    # -- linking ---------------------------------------------------------------

    def _adopt_given_parent(self, node: _Node) -> None:
        parent = self._by_id.get(node.parent_span_id)
        if parent is not None:
            self._attach(node, parent, None, None, 0)
        else:
            self._awaiting_parent.setdefault(node.parent_span_id, []).append(node)

    def _link_server(self, server: _Node) -> None:
        key = server.seq_key
        if server.pair is not None:
            self._servers_by_pair.setdefault(_ports(server), deque()).append(server)
        if key is not None:
            client = self._clients_by_key.get(key)
            if (client is not None and not client.has_server_child
                    and self._attach(server, client, EXACT, None, 1)):
                client.has_server_child = True
                return
            self._servers_by_key[key] = server
        elif server.pair is not None:
            # No sequence number on this side: addresses, ports and time.
            clients = [c for c in self._clients_by_pair.get(_ports(server), ())
                       if not c.has_server_child and not c.forgotten
                       and _same_endpoints(c.pair, server.pair)]
            client = self._closest_in_time(server, clients, as_server=True)
            if client is not None and self._attach(server, client, ADDRESS_TIME, None, 1):
                client.has_server_child = True

    def _link_client(self, client: _Node) -> None:
        key = client.seq_key
        if key is not None:
            self._clients_by_key[key] = client
            server = self._servers_by_key.get(key)
            if (server is not None and not server.decided
                    and self._attach(server, client, EXACT, None, 1)):
                del self._servers_by_key[key]
                client.has_server_child = True
        if client.pair is None:
            return
        self._clients_by_pair.setdefault(_ports(client), deque()).append(client)
        if not client.has_server_child:
            # A server span without a sequence number, or this client without one.
            waiting = [s for s in self._servers_by_pair.get(_ports(client), ())
                       if not s.decided and not s.forgotten and (key is None or s.seq_key is None)
                       and _same_endpoints(client.pair, s.pair)]
            server = self._closest_in_time(client, waiting, as_server=False)
            if server is not None and self._attach(server, client, ADDRESS_TIME, None, 1):
                client.has_server_child = True
                if server.seq_key is not None:
                    self._servers_by_key.pop(server.seq_key, None)

    def _closest_in_time(self, node: _Node, others: Any, *, as_server: bool) -> _Node | None:
        """The other end whose exchange contains (or is contained in) ``node``'s, closest first."""
        skew = self.clock_skew_ns
        best = None
        for other in others:
            server, client = (node, other) if as_server else (other, node)
            if server.start + skew < client.start or server.end > client.end + skew:
                continue
            gap = abs(server.start - client.start) + abs(client.end - server.end)
            if best is None or gap < best[0]:
                best = (gap, other)
        return best[1] if best else None

    def _index_locally(self, node: _Node) -> None:
        proc = self._procs.get(node.proc)
        if proc is None:
            proc = self._procs[node.proc] = _Process()
        thread = proc.threads.get(node.tid)
        if thread is None:
            thread = proc.threads[node.tid] = _Thread()
        thread.add(node)
        proc.count(node.server)
        node.local = True
        if node.server:
            proc.servers += 1
        elif not node.decided:
            heapq.heappush(self._pending, (node.end + self.settle_ns, node.order, node))

    def _decide_client(self, client: _Node, final: bool) -> bool:
        """Find ``client``'s parent in its own process; True once decided."""
        proc = self._procs.get(client.proc)
        if proc is None:
            return False
        thread = proc.threads.get(client.tid)
        parent, confidence, reason, count = choose_local_parent(client, thread, proc)
        if parent is not None and self._attach(client, parent, confidence, reason, count):
            return True
        if reason == AMBIGUOUS:
            self._settle_as_root(client, AMBIGUOUS, count)
            return True
        if final:
            others = [s for t in proc.threads.values() if t is not thread
                      for s in t.open_servers(client)[0]]
            if len(others) == 1 and self._attach(client, others[0], HEURISTIC, OTHER_THREAD, 1):
                return True
        return False

    # -- attaching and releasing -------------------------------------------------

    def _attach(self, child: _Node, parent: _Node, confidence: str | None, reason: str | None,
                candidates: int) -> bool:
        """Make ``parent`` the parent of ``child``; False (and nothing done) if that made a cycle."""
        ancestor = parent
        while ancestor is not None and not ancestor.released:
            if ancestor is child:
                self.errors += 1
                return False
            ancestor = ancestor.parent
        child.parent = parent
        child.decided = True
        if confidence is not None:
            self.counts[confidence] += 1
            if child.span is not None:
                attrs = child.span.setdefault("attributes", {})
                attrs[CONFIDENCE_ATTR] = confidence
                attrs.pop(REASON_ATTR, None)
                attrs.pop(CANDIDATES_ATTR, None)
                if reason is not None:
                    attrs[REASON_ATTR] = reason
                if candidates > 1:
                    attrs[CANDIDATES_ATTR] = candidates
        if parent.released:
            self._release_tree(child)
        else:
            parent.children.append(child)
        return True

    def _settle_as_root(self, node: _Node, reason: str | None = None, candidates: int = 0) -> None:
        """``node`` has no parent (or keeps the one it came with); release it and its subtree."""
        if node.released:
            return
        if not node.given_parent or reason == MEMORY_BOUND:
            node.parent = None
            if reason is None:
                reason = NO_CLIENT_SPAN if node.server else NO_SERVER_SPAN
            self.counts[NONE] += 1
            self.reasons[reason] = self.reasons.get(reason, 0) + 1
            if node.span is not None:
                attrs = node.span.setdefault("attributes", {})
                if not node.given_parent:
                    attrs[CONFIDENCE_ATTR] = NONE
                    attrs[REASON_ATTR] = reason
                    if candidates > 1:
                        attrs[CANDIDATES_ATTR] = candidates
        node.decided = True
        self._release_tree(node)

    def _release_tree(self, top: _Node) -> None:
        now = self._clock()
        stack = [top]
        while stack:
            node = stack.pop()
            parent = node.parent
            if parent is not None:
                node.trace_id = parent.trace_id
                node.parent_span_id = parent.span_id
            span = node.span
            node.released = True
            node.span = None
            self._held.pop(node.span_id, None)
            self._remembered.append((now + self.remember_ns, node))
            if node.given_parent:
                waiting = self._awaiting_parent.get(node.parent_span_id)
                if waiting is not None and node in waiting:
                    waiting.remove(node)
                    if not waiting:
                        del self._awaiting_parent[node.parent_span_id]
            if span is not None:
                span["trace_id"] = node.trace_id
                span["parent_span_id"] = node.parent_span_id
                self.publish(span)
            stack.extend(node.children)
            node.children = []

    def _top(self, node: _Node) -> _Node:
        while node.parent is not None and not node.parent.released:
            node = node.parent
        return node

    def _evict_oldest(self) -> None:
        oldest = next(iter(self._held.values()))
        top = self._top(oldest)
        self._settle_as_root(top, MEMORY_BOUND)

    # -- forgetting ---------------------------------------------------------------

    def _forget(self, now: int) -> None:
        remembered = self._remembered
        while remembered and (remembered[0][0] <= now or len(remembered) > self.max_remembered):
            _, node = remembered.popleft()
            self._drop_indexes(node)
        emptied = False
        for thread in self._stale_threads:
            thread.compact()
            emptied = emptied or not (thread.servers or thread.clients)
        self._stale_threads.clear()
        if emptied:
            for key, proc in list(self._procs.items()):
                proc.threads = {tid: t for tid, t in proc.threads.items() if t.servers or t.clients}
                if not proc.threads:
                    del self._procs[key]

    def _drop_indexes(self, node: _Node) -> None:
        node.forgotten = True
        node.children = []
        node.parent = None   # ancestors need not outlive their descendants' release
        if self._by_id.get(node.span_id) is node:
            del self._by_id[node.span_id]
        key = node.seq_key
        if key is not None:
            index = self._servers_by_key if node.server else self._clients_by_key
            if index.get(key) is node:
                del index[key]
        if node.pair is not None:
            index = self._servers_by_pair if node.server else self._clients_by_pair
            group = index.get(_ports(node))
            if group is not None:
                # Forgetting goes roughly in arrival order: trim from the front.
                while group and group[0].forgotten:
                    group.popleft()
                if not group:
                    del index[_ports(node)]
        proc = self._procs.get(node.proc) if node.local else None
        if proc is not None:
            if node.server:
                proc.servers -= 1
            thread = proc.threads.get(node.tid)
            if thread is not None:
                # Forgotten spans are skipped by queries; compact once they are
                # a fair share of the thread's spans.
                thread.stale += 1
                if thread.stale * 4 >= len(thread.servers) + len(thread.clients):
                    self._stale_threads.add(thread)
