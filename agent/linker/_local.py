"""Finding a client span's parent inside its own process: threads, habits, rules.

The rules, and why they hold, are in ``_linker.py`` and
docs/trace-linking.md.  Here: the per-thread index of server and client spans
by start time, what the linker learns about each process (does it forward
requests unchanged, does it make about one call per request), and the choice.
"""

from __future__ import annotations

from bisect import bisect_left, bisect_right
from collections.abc import Hashable
from operator import attrgetter
from typing import Any

from ._node import (AMBIGUOUS, CONTENT, HEURISTIC, NONE, ONLY_CONTAINER, REQUEST_ORDER,
                    RESPONSE_ORDER, SAME_REQUEST, THREAD, _Node)

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


_start = attrgetter("start")


class _Thread:
    """The server and client spans of one thread, sorted by start, for containment queries.

    Forgotten spans stay in the lists (queries skip them) until they are a
    fair share, then ``compact`` drops them.  (A thread per request makes one
    of these per request: two lists, no more.)
    """

    __slots__ = ("servers", "clients", "longest", "stale", "proc", "tid", "responses",
                 "answered_here", "answered_elsewhere")

    def __init__(self, proc: _Process, tid: Any) -> None:
        self.servers: list[_Node] = []
        self.clients: list[_Node] = []
        self.longest = 0    # no server span here is longer: bounds the backward scan
        self.stale = 0
        self.proc = proc
        self.tid = tid
        # Server spans whose response this thread wrote, by the time it did
        # (``agent/linker/_around.py``).
        self.responses: list[_Node] = []
        # Of the server spans read here: how many had their response written
        # here, and elsewhere (a worker pool), as far as known.
        self.answered_here = 0
        self.answered_elsewhere = 0

    @staticmethod
    def insert(nodes: list[_Node], node: _Node) -> None:
        """Put ``node`` in ``nodes`` (``servers`` or ``clients``) in start order, after
        those with the same start.  (The linker appends those that come in order.)"""
        nodes.insert(bisect_right(nodes, node.start, key=_start), node)

    def open_servers(self, client: _Node) -> tuple[list[_Node], int]:
        """Server spans that started before ``client`` and ended after it, and how
        many server spans in all were open when ``client`` started."""
        servers = self.servers
        if not servers:
            return [], 0
        start, end = client.start, client.end
        earliest = start - self.longest
        containing = []
        open_at_start = 0
        i = bisect_right(servers, start, key=_start)
        while i > 0:
            i -= 1
            s = servers[i]
            if s.start < earliest:
                break
            if s.forgotten or s.end < start:
                continue
            open_at_start += 1
            if s.end >= end:
                containing.append(s)
        return containing, open_at_start

    def clients_within(self, server: _Node) -> list[_Node]:
        clients = self.clients
        out = []
        end = server.end
        i = bisect_left(clients, server.start, key=_start)
        n = len(clients)
        while i < n and clients[i].start <= end:
            c = clients[i]
            if c.end <= end and not c.forgotten:
                out.append(c)
            i += 1
        return out

    @property
    def handles_own_requests(self) -> bool:
        """Whether the requests read on this thread are answered on it too.

        Containment and timing on a thread assume that the thread that read
        a request runs its handler; where others answer (a reader thread
        handing requests to a worker pool), they must not be used.  Unknown
        (no response seen) counts as yes, as before evidence existed.
        """
        return self.answered_elsewhere * 100 <= self.answered_here

    def compact(self) -> None:
        self.servers = [n for n in self.servers if not n.forgotten]
        self.clients = [n for n in self.clients if not n.forgotten]
        self.responses = [n for n in self.responses if not n.forgotten]
        # Only the spans still here bound the scan (each is checked anyway).
        self.longest = max((n.end - n.start for n in self.servers), default=0)
        self.stale = 0


class _Process:
    __slots__ = ("threads", "servers", "agree", "disagree", "requests_seen", "calls_seen", "key",
                 "response_writes")

    def __init__(self, key: Hashable) -> None:
        self.threads: dict[Any, _Thread] = {}
        # (connection, time) of a write that started responses -> how many
        self.response_writes: dict[tuple[int, int], int] = {}
        self.servers = 0    # server spans indexed (held or remembered)
        self.agree = 0      # unambiguous links where the request was forwarded unchanged
        self.disagree = 0
        self.requests_seen = 0   # server spans and client spans of this process, halved
        self.calls_seen = 0      # now and then so that they follow changes
        self.key = key

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


def _unique_min(items: list[_Node], key) -> _Node | None:
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


def choose_local_parent(client: _Node, thread: _Thread, proc: _Process
                        ) -> tuple[_Node | None, str, str | None, int]:
    """The server span of ``client``'s own thread that caused it.

    Returns (parent or None, confidence, reason, number of candidates);
    (None, NONE, None, 0) means no candidate has been seen yet.
    """
    candidates, open_at_start = thread.open_servers(client)
    if not candidates or thread.answered_elsewhere * 100 > thread.answered_here:
        # (not thread.handles_own_requests: containment here says nothing)
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


def servers_elsewhere(client: _Node, thread: _Thread, proc: _Process) -> list[_Node]:
    """The server spans of the process open around ``client`` on other threads."""
    found: list[_Node] = []
    for other in proc.threads.values():
        if other is not thread:
            found += other.open_servers(client)[0]
    return found
