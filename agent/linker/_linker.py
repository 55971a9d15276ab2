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
``runtime``, ``order``, ``handoff``
    Several were open; what the thread did around the call names one: the
    runtime's own context (an asyncio task and its creators, Node.js async
    ids), the order of the thread's syscalls in one loop iteration, or a
    worker thread's calls and the responses written for it
    (``agent/linker/_around.py``).
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
    ``no-server-span`` (no request of the process was open around the call),
    ``ambiguous`` (requests were open, none could be told apart: their number
    in ``sidetrace.link.candidates``), ``memory-bound`` (evicted to stay
    within ``max_held``).

Containment and timing on a thread are used only where that thread answers
the requests it reads (not a reader handing requests to a worker pool).

Spans that arrive with a ``parent_span_id`` (``sidetrace assemble`` re-linking
what agents already linked) keep it; they adopt the final trace id of that
parent once it is seen, and are released unchanged if it never is.

A server span whose client end is not traced by this agent (``peer_traced``
says so: another host, or an untraced process here) cannot get a client span
from this agent and is a root at once (``no-client-span``); ``sidetrace
assemble`` still joins it to another agent's client span by its link key.

Holding is bounded: a span whose parent has not been found ``hold_ns`` after
its end (and at least ``min_wait_ns`` after it arrived) is released as a root;
at most ``max_held`` spans are held, the oldest released first.  Released
spans are remembered (ids and times only) for ``remember_ns`` so that a late
child still gets its parent.  No span is ever dropped.

What it costs (docs/trace-linking.md, bench/bench_linker.py): each span is
one ``_Node`` (``_node.py``), indexed by id, by link key and
connection only until its other end is found or it is released, and by
thread for the rules inside a process (``_local.py``).  Spans
come in end-time order, so the deadline and decision queues are mostly
appends to a deque; nothing is scanned per span beyond its own candidates.
"""

from __future__ import annotations

import itertools
import time
from collections import deque
from collections.abc import Callable, Hashable
from typing import Any

from ._due import DueQueue
from ._around import WAIT, choose_by_evidence, forget_evidence, index_evidence, open_in_process
from ._local import CALL_RATIO_WINDOW, _Process, _Thread, choose_local_parent, servers_elsewhere
from ._node import (ADDRESS_TIME, AMBIGUOUS, CANDIDATES_ATTR, CONFIDENCE_ATTR, CONFIDENCES, EXACT,
                    HEURISTIC, MEMORY_BOUND, NO_CLIENT_SPAN, NO_SERVER_SPAN, NONE, ONLY_CONTAINER,
                    OTHER_THREAD, REASON_ATTR, THREAD, _Node, same_endpoints)

__all__ = ["ADVANCE_EVERY_NS", "RETRY_NS", "SpanLinker"]

_MS = 1_000_000
_S = 1_000_000_000

# ``add`` also does ``tick``'s work this often, so that releases follow the
# spans' deadlines closely instead of coming in one burst per housekeeping
# tick (subscriber queues are bounded).
ADVANCE_EVERY_NS = 50 * _MS
# A client span with no candidate parent yet is looked at again this often.
RETRY_NS = 250 * _MS


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
                 remember_ns: int = 2 * _S, max_held: int = 30_000,
                 max_remembered: int = 50_000, clock_skew_ns: int = 2 * _MS,
                 local_inference: bool = True,
                 peer_traced: Callable[[str, int], bool] | None = None,
                 contexts: Any = None,
                 clock: Callable[[], int] = time.time_ns,
                 read_until: Callable[[], int] | None = None) -> None:
        self.publish = publish
        self.hold_ns = hold_ns
        self.settle_ns = settle_ns
        self.min_wait_ns = min_wait_ns
        self.remember_ns = remember_ns
        self.max_held = max_held
        self.max_remembered = max_remembered
        self.clock_skew_ns = clock_skew_ns
        self.local_inference = local_inference
        # (client address, client port) -> whether that TCP end is traced by
        # this agent.  When it is not, a server span's client span can never
        # arrive here, so the span is a root at once instead of after hold_ns.
        self.peer_traced = peer_traced
        # What traced threads did between their calls (agent/_contexts.py's
        # RuntimeContexts), or None: the loop-order and task rules need it.
        self.contexts = contexts
        self._clock = clock
        # Where the clock may run ahead of what has been read (the agent caps
        # how far behind the wall clock it falls): the time up to which the
        # spans, and the context the rules read, are all in.  A call whose
        # surroundings are not all in by its deadline is left ambiguous.
        self._read_until = read_until
        self._order = itertools.count()
        self._held: deque[_Node] = deque()    # in arrival order, released ones dropped lazily
        self._held_count = 0
        self._by_id: dict[bytes, _Node] = {}   # held and remembered
        # Until its other end is found: spans by link key, and every span
        # with addresses by connection, oldest first (the fallback join for
        # spans without sequence numbers), one node or a deque of them.
        # Keyed by ports: an unconnected UDP socket may see its own address
        # as the wildcard while the other end sees it.
        self._clients_by_key: dict[tuple, _Node] = {}
        self._servers_by_key: dict[tuple, _Node] = {}
        self._clients_by_pair: dict[Hashable, Any] = {}
        self._servers_by_pair: dict[Hashable, Any] = {}
        self._awaiting_parent: dict[bytes, list[_Node]] = {}
        self._procs: dict[Hashable, _Process] = {}
        self._pending = DueQueue(settle_ns)      # clients to decide, at end + settle_ns
        self._deadlines = DueQueue(None)
        self._remembered: deque[_Node] = deque()   # in release order; deadline = forget at
        self._stale_threads: set[_Thread] = set()
        self._contents: dict[tuple, tuple] = {}    # one tuple per (method, path, query)
        self._next_advance = 0
        self.counts: dict[str, int] = {c: 0 for c in CONFIDENCES}
        self.reasons: dict[str, int] = {}
        self.errors = 0

    # -- public ---------------------------------------------------------------

    @property
    def held(self) -> int:
        return self._held_count

    def stats(self) -> dict[str, Any]:
        return {"held": self._held_count, "remembered": len(self._remembered),
                "links": dict(self.counts), "roots": dict(self.reasons), "errors": self.errors}

    def add(self, span: dict[str, Any], source: Hashable = None) -> None:
        try:
            node = _Node(span, next(self._order), self._contents)
        except (KeyError, TypeError):
            # Not linkable (a span without ids or times); still never dropped.
            self.errors += 1
            self.publish(span)
            return
        span_id = node.span_id
        if self._by_id.setdefault(span_id, node) is not node:
            self.errors += 1   # a span seen twice: pass it on untouched
            self.publish(span)
            return
        now = self._clock()
        deadline = node.end + self.hold_ns
        earliest = now + self.min_wait_ns
        if earliest > deadline:
            deadline = earliest
        node.deadline = deadline
        self._held.append(node)
        self._held_count += 1
        self._deadlines.push(node, deadline)
        given_parent = node.given_parent
        if given_parent:
            self._adopt_given_parent(node)
        if node.server:
            if not given_parent:
                self._link_server(node)
        else:
            # A client span is the other end for some server span, whatever its own parent.
            self._link_client(node)
        if not given_parent and self.local_inference:
            self._index_locally(node, span, source)
        if self._awaiting_parent:
            for child in self._awaiting_parent.pop(span_id, ()):
                if not child.released:
                    self._attach(child, node, None, None, 0)
        if (node.server and node.parent is None and not given_parent and node.seq_key is not None
                and self.peer_traced is not None):
            attrs = span["attributes"]
            if not self.peer_traced(attrs["client.address"], attrs["client.port"]):
                self._settle_as_root(node)
        while self._held_count > self.max_held:
            self._evict_oldest()
        if now >= self._next_advance:
            self.tick(now)

    def tick(self, now_unix_ns: int) -> None:
        """Decide what waited for time to pass; release what is due (about once a second)."""
        self._next_advance = now_unix_ns + ADVANCE_EVERY_NS
        pending = self._pending
        retry = []
        read_until = self._read_until() if self._read_until is not None else None
        for client in pending.take_due(now_unix_ns):
            if client.decided:
                continue
            final = client.deadline <= now_unix_ns
            if read_until is not None and client.end + self.settle_ns > read_until:
                decided = self._unread_around(client, final)
            else:
                decided = self._decide_client(client, final)
            if not decided and not final:
                retry.append(client)
        for client in retry:
            # A process with no server span yet: look again at the deadline only.
            deadline = client.deadline
            later = now_unix_ns + RETRY_NS if client.thread.proc.servers else deadline
            pending.push_at(client, later if later < deadline else deadline)
        for node in self._deadlines.take_due(now_unix_ns):
            if node.released or node.decided and node.parent is not None:
                continue
            self._settle_as_root(node)
        held = self._held
        while held and held[0].released:
            held.popleft()
        if len(held) > 2 * self._held_count + 1024:   # an old span holds up the front
            self._held = deque(n for n in held if not n.released)
        self._forget(now_unix_ns)

    def flush(self) -> None:
        """Release everything held, deciding with what is known now (shutdown)."""
        for client in self._pending.take_due(None):
            if not client.decided:
                self._decide_client(client, final=True)
        for node in list(self._held):
            if not node.released:
                self._settle_as_root(self._top(node))
        self._held.clear()
        self._deadlines.clear()

    # -- linking ---------------------------------------------------------------

    def _adopt_given_parent(self, node: _Node) -> None:
        parent = self._by_id.get(node.parent_span_id)
        if parent is not None:
            self._attach(node, parent, None, None, 0)
        else:
            self._awaiting_parent.setdefault(node.parent_span_id, []).append(node)

    def _link_server(self, server: _Node) -> None:
        pair = server.pair
        if pair is None:
            return
        key = server.seq_key
        if key is not None:
            client = self._clients_by_key.get(key)
            if (client is not None and not client.has_server_child
                    and self._attach(server, client, EXACT, None, 1)):
                client.has_server_child = True
                if client.indexed:
                    self._unindex(client)
                server.pair = server.seq_key = server.ports = None
                return
            self._servers_by_key[key] = server
        else:
            # No sequence number on this side: addresses, ports and time.
            client = None
            group = self._clients_by_pair.get(server.ports)
            if group is not None:
                skew = self.clock_skew_ns
                start, end = server.start, server.end
                best = None
                for c in (group,) if group.__class__ is _Node else group:
                    if (c.has_server_child or c.forgotten or start + skew < c.start
                            or end > c.end + skew or not same_endpoints(c.pair, pair)):
                        continue
                    gap = abs(start - c.start) + abs(c.end - end)
                    if best is None or gap < best:
                        best, client = gap, c
            if client is not None and self._attach(server, client, ADDRESS_TIME, None, 1):
                client.has_server_child = True
                if client.indexed:
                    self._unindex(client)
                server.pair = server.seq_key = server.ports = None
                return
        _index_by_ports(self._servers_by_pair, server)

    def _link_client(self, client: _Node) -> None:
        pair = client.pair
        if pair is None:
            return
        key = client.seq_key
        if key is not None:
            server = self._servers_by_key.get(key)
            if (server is not None and not server.decided
                    and self._attach(server, client, EXACT, None, 1)):
                if server.indexed:   # (not if this client came released, and released it)
                    server.indexed = False
                    del self._servers_by_key[key]
                    index = self._servers_by_pair
                    if index.get(server.ports) is server:
                        del index[server.ports]
                        server.pair = server.seq_key = server.ports = None
                    else:
                        self._unindex(server)
                client.has_server_child = True
                # An older client span with this key is passed over for good,
                # as when this one replaced it.
                self._clients_by_key.pop(key, None)
                client.pair = client.seq_key = client.ports = None
                return
            self._clients_by_key[key] = client
        # A server span without a sequence number, or this client without one.
        server = None
        group = self._servers_by_pair.get(client.ports)
        if group is not None:
            skew = self.clock_skew_ns
            start, end = client.start, client.end
            best = None
            for s in (group,) if group.__class__ is _Node else group:
                if (s.decided or s.forgotten or key is not None and s.seq_key is not None
                        or s.start + skew < start or s.end > end + skew
                        or not same_endpoints(pair, s.pair)):
                    continue
                gap = abs(s.start - start) + abs(end - s.end)
                if best is None or gap < best:
                    best, server = gap, s
        if server is not None and self._attach(server, client, ADDRESS_TIME, None, 1):
            client.has_server_child = True
            if server.seq_key is not None:
                self._servers_by_key.pop(server.seq_key, None)
            if server.indexed:
                self._unindex(server)
            if key is not None and self._clients_by_key.get(key) is client:
                del self._clients_by_key[key]
            client.pair = client.seq_key = client.ports = None
            return
        _index_by_ports(self._clients_by_pair, client)

    def _unindex(self, node: _Node) -> None:
        """Take ``node`` out of the key and connection indexes (nothing will join it now)."""
        node.indexed = False
        server = node.server
        key = node.seq_key
        if key is not None:
            index = self._servers_by_key if server else self._clients_by_key
            if index.get(key) is node:
                del index[key]
        index = self._servers_by_pair if server else self._clients_by_pair
        ports = node.ports
        group = index.get(ports)
        if group is node:
            del index[ports]
        elif group is not None and group.__class__ is not _Node:
            # One connection's exchanges, oldest first: drop those done with
            # from the front (the others are skipped by the joins).
            while group and (group[0].forgotten or (group[0].decided if server
                                                    else group[0].has_server_child)):
                group.popleft()
            if not group:
                del index[ports]
        node.pair = node.seq_key = node.ports = None

    def _index_locally(self, node: _Node, span: dict[str, Any], source: Hashable) -> None:
        key = (source, span.get("pid"))
        proc = self._procs.get(key)
        if proc is None:
            proc = self._procs[key] = _Process(key)
        tid = span.get("tid")
        thread = proc.threads.get(tid)
        if thread is None:
            thread = proc.threads[tid] = _Thread(proc, tid)
        node.thread = thread
        start = node.start
        if node.server:
            proc.requests_seen += 1
            proc.servers += 1
            if node.end - start > thread.longest:
                thread.longest = node.end - start
            nodes = thread.servers
            evidence = node.evidence
            if evidence is not None and evidence.response is not None:
                if evidence.response_tid == thread.tid:
                    thread.answered_here += 1      # (the usual case, inline)
                else:
                    index_evidence(node, thread, proc)
        else:
            proc.calls_seen += 1
            nodes = thread.clients
            if not node.decided:
                self._pending.push(node, node.end + self.settle_ns)
        if not nodes or nodes[-1].start <= start:     # spans mostly come in start order
            nodes.append(node)
        else:
            thread.insert(nodes, node)
        if proc.requests_seen + proc.calls_seen > CALL_RATIO_WINDOW:
            proc.requests_seen //= 2
            proc.calls_seen //= 2

    def _unread_around(self, client: _Node, final: bool) -> bool:
        """``client`` is due, but what happened around it is not all read: the
        requests that contain it and the runtime context of its thread may be
        missing, and any rule could name the wrong one.  Wait, and at the
        deadline leave it an ambiguous root."""
        if not final:
            return False
        self._settle_as_root(client, AMBIGUOUS, len(open_in_process(client, client.thread.proc)))
        return True

    def _decide_client(self, client: _Node, final: bool) -> bool:
        """Find ``client``'s parent in its own process; True once decided."""
        thread = client.thread
        proc = thread.proc
        if not proc.servers:     # none indexed in the whole process: nothing to choose from
            return False
        parent, confidence, reason, count = choose_local_parent(client, thread, proc)
        if confidence == THREAD and self._attach(client, parent, confidence, reason, count):
            return True
        # Without runtime context only the worker-pool rules may apply: on a
        # thread that reads no requests, or whose requests others answer
        # (not thread.handles_own_requests, inline: this runs for every call).
        if client.evidence is not None and (
                self.contexts is not None or not thread.servers
                or thread.answered_elsewhere * 100 > thread.answered_here):
            found = choose_by_evidence(client, thread, proc, self.contexts, proc.key[1])
            if found == WAIT:
                if not final:
                    return False
            elif found is not None and self._attach(client, *found):
                return True
        if parent is not None and self._attach(client, parent, confidence, reason, count):
            return True
        if reason == AMBIGUOUS:
            self._settle_as_root(client, AMBIGUOUS, count)
            return True
        if final:
            # The only request open in the whole process must be the one.
            others = servers_elsewhere(client, thread, proc)
            here = thread.open_servers(client)[0]
            if len(others) + len(here) == 1:
                reason = OTHER_THREAD if others else ONLY_CONTAINER
                if self._attach(client, (others or here)[0], HEURISTIC, reason, 1):
                    return True
            others += here
            if others:
                # Requests were open, on threads that handed this call to
                # none of them that could be told: ambiguous, not "no server span".
                self._settle_as_root(client, AMBIGUOUS, len(others))
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
            span = child.span
            if span is not None:
                attrs = span.get("attributes")
                if attrs is None:
                    attrs = span["attributes"] = {}
                attrs[CONFIDENCE_ATTR] = confidence
                if reason is not None:
                    attrs[REASON_ATTR] = reason
                elif REASON_ATTR in attrs:
                    del attrs[REASON_ATTR]
                if candidates > 1:
                    attrs[CANDIDATES_ATTR] = candidates
                elif CANDIDATES_ATTR in attrs:
                    del attrs[CANDIDATES_ATTR]
        if parent.released:
            self._release_tree(child)
        else:
            children = parent.children
            if children is None:
                parent.children = child    # the usual one child, without a list
            elif children.__class__ is _Node:
                parent.children = [children, child]
            else:
                children.append(child)
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
            span = node.span
            if span is not None:
                attrs = span.get("attributes")
                if attrs is None:
                    attrs = span["attributes"] = {}
                if not node.given_parent:
                    attrs[CONFIDENCE_ATTR] = NONE
                    attrs[REASON_ATTR] = reason
                    if candidates > 1:
                        attrs[CANDIDATES_ATTR] = candidates
        node.decided = True
        self._release_tree(node)

    def _release_tree(self, top: _Node) -> None:
        forget_at = self._clock() + self.remember_ns
        remembered = self._remembered
        publish = self.publish
        stack = [top]
        while stack:
            node = stack.pop()
            if node.released:
                continue
            parent = node.parent
            if parent is not None:
                node.trace_id = parent.trace_id
                node.parent_span_id = parent.span_id
            span = node.span
            node.released = True
            node.span = None
            self._held_count -= 1
            node.deadline = forget_at
            node.order = 0          # queues drop released nodes without comparing them
            remembered.append(node)
            if node.given_parent:
                waiting = self._awaiting_parent.get(node.parent_span_id)
                if waiting is not None and node in waiting:
                    waiting.remove(node)
                    if not waiting:
                        del self._awaiting_parent[node.parent_span_id]
            if node.server:   # decided: no client span will be joined to it
                if node.indexed:
                    self._unindex(node)
                else:
                    node.pair = node.seq_key = node.ports = None
            else:
                # A released call is asked nothing more of what its thread did
                # (a server span stays a candidate parent, with its evidence).
                node.evidence = None
            if span is not None:
                span["trace_id"] = node.trace_id
                span["parent_span_id"] = node.parent_span_id
                publish(span)
            children = node.children
            if children is not None:
                if children.__class__ is _Node:
                    stack.append(children)
                else:
                    stack.extend(children)
                node.children = None

    def _top(self, node: _Node) -> _Node:
        while node.parent is not None and not node.parent.released:
            node = node.parent
        return node

    def _evict_oldest(self) -> None:
        held = self._held
        while held[0].released:
            held.popleft()
        self._settle_as_root(self._top(held[0]), MEMORY_BOUND)

    # -- forgetting ---------------------------------------------------------------

    def _forget(self, now: int) -> None:
        remembered = self._remembered
        by_id = self._by_id
        stale = self._stale_threads
        while remembered and (remembered[0].deadline <= now
                              or len(remembered) > self.max_remembered):
            node = remembered.popleft()
            node.forgotten = True
            node.parent = None   # ancestors need not outlive their descendants' release
            # Only the first span with an id is indexed by it, until it is forgotten.
            del by_id[node.span_id]
            if node.indexed:
                self._unindex(node)
            thread = node.thread
            if thread is not None:
                node.thread = None
                evidence = node.evidence
                if evidence is not None and evidence.response_tid != thread.tid:
                    forget_evidence(node, thread)
                if node.server:
                    thread.proc.servers -= 1
                # Forgotten spans are skipped by queries; compact once they are
                # a fair share of the thread's spans.
                thread.stale += 1
                if thread.stale * 4 >= len(thread.servers) + len(thread.clients):
                    stale.add(thread)
        if self._stale_threads:
            for thread in self._stale_threads:
                thread.compact()
                if not (thread.servers or thread.clients):
                    proc = thread.proc
                    if proc.threads.get(thread.tid) is thread:
                        del proc.threads[thread.tid]
                    if not proc.threads and self._procs.get(proc.key) is proc:
                        del self._procs[proc.key]
            self._stale_threads.clear()


def _index_by_ports(index: dict[Hashable, Any], node: _Node) -> None:
    """Add ``node`` to its connection's spans in ``index``, oldest first: the
    usual one node alone, a deque once there are more."""
    node.indexed = True
    ports = node.ports
    group = index.get(ports)
    if group is None:
        index[ports] = node
    elif group.__class__ is _Node:
        index[ports] = deque((group, node))
    else:
        group.append(node)
