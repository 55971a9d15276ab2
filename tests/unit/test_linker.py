"""The span linker on synthetic spans: keys, threads, event loops, holding, memory, assembly."""

from __future__ import annotations

import argparse
import itertools
import os
import random
import shutil
import tempfile
from time import time_ns

import pytest
import trio
from hypothesis import given, settings
from hypothesis import strategies as st

from agent import _assemble
from agent.linker import (ADDRESS_TIME, AMBIGUOUS, CANDIDATES_ATTR, CONFIDENCE_ATTR, CONTENT,
                           EXACT, HEURISTIC, MEMORY_BOUND, NO_CLIENT_SPAN, NO_SERVER_SPAN, NONE,
                           ONLY_CONTAINER, OTHER_THREAD, REASON_ATTR, RELAY_MIN_REQUESTS,
                           REQUEST_ORDER, RESPONSE_ORDER, THREAD, SpanLinker)
from wire import SpanServer, make_span, open_subscriber, validate

MS = 1_000_000
S = 1_000_000_000
T0 = 1_800_000_000 * S
_ids = itertools.count(1)


def span(kind: str, pid: int, start_ms: float, end_ms: float, *, tid: int | None = None,
         client: tuple[str, int] | None = None, server: tuple[str, int] = ("10.0.0.2", 80),
         seq: int | None = None, path: str | None = "/x", method: str = "GET",
         transport: str = "tcp", parent: dict | None = None) -> dict:
    n = next(_ids)
    if client is None:  # a connection of its own unless the test says otherwise
        client = ("10.0.0.1", 10000 + n)
    attrs = {"server.address": server[0], "server.port": server[1],
             "client.address": client[0], "client.port": client[1],
             "network.transport": transport, "http.request.method": method}
    if path is not None:
        attrs["url.path"] = path
    if seq is not None:
        attrs["sidetrace.tcp.request_seq"] = seq
    return make_span(
        trace_id=(parent["trace_id"] if parent else n.to_bytes(16, "big")),
        span_id=n.to_bytes(8, "big"), parent_span_id=parent["span_id"] if parent else None,
        name=f"{method} {path}", kind=kind, start_time_unix_nano=T0 + int(start_ms * MS),
        end_time_unix_nano=T0 + int(end_ms * MS), pid=pid, tid=tid if tid is not None else pid,
        comm="app", protocol="http", status="unset", attributes=attrs)


class Clock:
    def __init__(self) -> None:
        self.now = T0

    def __call__(self) -> int:
        return self.now


class Harness:
    """A linker with a hand-driven clock and the list of what it published."""

    def __init__(self, **options) -> None:
        self.clock = Clock()
        self.out: list[dict] = []
        self.linker = SpanLinker(self.out.append, clock=self.clock, **options)

    def add(self, *spans: dict, source=None) -> None:
        for s in spans:
            self.clock.now = max(self.clock.now, s["end_time_unix_nano"])
            self.linker.add(s, source=source)

    def run_for(self, seconds: float) -> None:
        end = self.clock.now + int(seconds * S)
        while self.clock.now < end:
            self.clock.now = min(end, self.clock.now + S // 4)
            self.linker.tick(self.clock.now)

    def by_id(self) -> dict[bytes, dict]:
        return {s["span_id"]: s for s in self.out}


def parent_of(h: Harness, child: dict) -> dict | None:
    published = h.by_id()[child["span_id"]]
    return published["parent_span_id"]


def conf(s: dict) -> str:
    return s["attributes"][CONFIDENCE_ATTR]


# -- across processes: the TCP link key ------------------------------------------------


CONN = dict(client=("10.0.0.1", 40000), server=("10.0.0.2", 80))


def test_server_span_is_child_of_the_client_span_with_the_same_connection_and_sequence():
    h = Harness()
    client = span("client", 1, 0, 10, seq=7777, **CONN)
    server = span("server", 2, 1, 9, seq=7777, **CONN)
    h.add(server, client)          # inside-out: the server's exchange completes first
    assert h.out == [] and h.linker.held == 2
    h.run_for(3)
    assert h.linker.held == 0 and len(h.out) == 2
    assert server["parent_span_id"] == client["span_id"]
    assert server["trace_id"] == client["trace_id"]
    assert conf(server) == EXACT
    assert client["parent_span_id"] is None
    assert conf(client) == NONE and client["attributes"][REASON_ATTR] == NO_SERVER_SPAN
    for s in h.out:
        validate(s)


def test_exact_join_does_not_care_which_end_arrives_first():
    h = Harness()
    client = span("client", 1, 0, 10, seq=5, **CONN)
    server = span("server", 2, 1, 9, seq=5, **CONN)
    h.add(client, server)
    h.run_for(3)
    assert server["parent_span_id"] == client["span_id"] and conf(server) == EXACT


def test_v4_mapped_and_plain_addresses_are_the_same_endpoint():
    h = Harness()
    client = span("client", 1, 0, 10, seq=9, client=("::ffff:127.0.0.1", 5000),
                  server=("::ffff:127.0.0.1", 80))
    server = span("server", 2, 1, 9, seq=9, client=("127.0.0.1", 5000), server=("127.0.0.1", 80))
    h.add(server, client)
    h.run_for(3)
    assert server["parent_span_id"] == client["span_id"]


@pytest.mark.parametrize("change", [
    {"seq": 10}, {"client": ("10.0.0.1", 40001)}, {"server": ("10.0.0.3", 80)},
    {"server": ("10.0.0.2", 81)},
])
def test_a_different_sequence_number_or_endpoint_is_not_a_link(change):
    h = Harness()
    client = span("client", 1, 0, 10, seq=9, **CONN)
    server = span("server", 2, 1, 9, **{"seq": 9, **CONN, **change})
    h.add(server, client)
    h.run_for(3)
    assert server["parent_span_id"] is None
    assert conf(server) == NONE and server["attributes"][REASON_ATTR] == NO_CLIENT_SPAN


def test_one_client_span_is_the_parent_of_one_server_span_only():
    h = Harness()
    client = span("client", 1, 0, 10, seq=9, **CONN)
    first = span("server", 2, 1, 9, seq=9, **CONN)
    duplicate = span("server", 3, 1, 9, seq=9, **CONN)
    h.add(first, duplicate, client)
    h.run_for(3)
    linked = [s for s in (first, duplicate) if s["parent_span_id"] == client["span_id"]]
    assert len(linked) == 1


# -- without sequence numbers: addresses and time ----------------------------------------


def test_udp_falls_back_to_addresses_and_time():
    h = Harness()
    client = span("client", 1, 0, 10, transport="udp", **CONN)
    inside = span("server", 2, 2, 4, transport="udp", **CONN)
    h.add(inside, client)
    h.run_for(3)
    assert inside["parent_span_id"] == client["span_id"] and conf(inside) == ADDRESS_TIME


def test_udp_server_outside_the_client_exchange_is_not_linked():
    h = Harness()
    client = span("client", 1, 0, 10, transport="udp", **CONN)
    later = span("server", 2, 20, 22, transport="udp", **CONN)
    h.add(client, later)
    h.run_for(3)
    assert later["parent_span_id"] is None


def test_udp_picks_the_server_exchange_closest_to_each_client_exchange():
    h = Harness()
    first = span("client", 1, 0, 10, transport="udp", **CONN)
    second = span("client", 1, 8, 20, transport="udp", **CONN)
    s1 = span("server", 2, 1, 9, transport="udp", **CONN)
    s2 = span("server", 2, 9, 19, transport="udp", **CONN)
    h.add(s1, first, s2, second)
    h.run_for(3)
    assert s1["parent_span_id"] == first["span_id"]
    assert s2["parent_span_id"] == second["span_id"]


def test_udp_client_seeing_its_own_address_as_the_wildcard_still_links():
    h = Harness()
    client = span("client", 1, 0, 10, transport="udp", client=("0.0.0.0", 5353),
                  server=("127.0.0.53", 53), seq=None)
    server = span("server", 2, 1, 9, transport="udp", client=("127.0.0.1", 5353),
                  server=("127.0.0.53", 53))
    h.add(server, client)
    h.run_for(3)
    assert server["parent_span_id"] == client["span_id"] and conf(server) == ADDRESS_TIME


def test_udp_with_the_same_ports_but_other_addresses_is_not_linked():
    h = Harness()
    client = span("client", 1, 0, 10, transport="udp", client=("10.0.0.7", 5353),
                  server=("10.0.0.53", 53))
    server = span("server", 2, 1, 9, transport="udp", client=("10.0.0.8", 5353),
                  server=("10.0.0.53", 53))
    h.add(server, client)
    h.run_for(3)
    assert server["parent_span_id"] is None


def test_a_side_without_sequence_number_falls_back_to_time_on_tcp_too():
    h = Harness()
    client = span("client", 1, 0, 10, seq=None, **CONN)
    server = span("server", 2, 1, 9, seq=1234, **CONN)
    h.add(server, client)
    h.run_for(3)
    assert server["parent_span_id"] == client["span_id"] and conf(server) == ADDRESS_TIME


# -- inside a process: threads --------------------------------------------------------------


def test_client_span_on_the_server_spans_thread_is_its_child():
    h = Harness()
    handler = span("server", 2, 0, 20, tid=21, path="/orders")
    other = span("server", 2, 1, 19, tid=22, path="/orders")   # another request, another thread
    call = span("client", 2, 5, 10, tid=21, path="/stock")
    h.add(call, other, handler)
    h.run_for(3)
    assert call["parent_span_id"] == handler["span_id"] and conf(call) == THREAD
    assert call["trace_id"] == handler["trace_id"]


def test_client_span_outside_the_server_span_in_time_is_not_its_child():
    h = Harness()
    handler = span("server", 2, 0, 20, tid=21)
    after = span("client", 2, 25, 30, tid=21)
    h.add(handler, after)
    h.run_for(3)
    assert after["parent_span_id"] is None and after["attributes"][REASON_ATTR] == NO_SERVER_SPAN


def test_parent_arriving_after_the_settle_time_still_adopts_its_child():
    h = Harness(settle_ns=100 * MS, hold_ns=3 * S)
    call = span("client", 2, 0, 10, tid=21)
    h.add(call)
    h.run_for(1)                       # decided nothing: no candidate yet
    handler = span("server", 2, -5, 1500, tid=21)
    h.add(handler)
    h.run_for(5)
    assert call["parent_span_id"] == handler["span_id"]


def test_only_server_span_on_another_thread_is_a_labelled_guess_at_the_deadline():
    h = Harness()
    handler = span("server", 2, 0, 20, tid=21)
    pooled = span("client", 2, 5, 10, tid=99)
    h.add(pooled, handler)
    h.run_for(0.5)
    assert h.out == []               # not before the deadline: the thread's own parent may come
    h.run_for(3)
    assert pooled["parent_span_id"] == handler["span_id"]
    assert conf(pooled) == HEURISTIC and pooled["attributes"][REASON_ATTR] == OTHER_THREAD


def test_two_server_spans_on_other_threads_leave_the_client_span_a_root():
    h = Harness()
    a = span("server", 2, 0, 20, tid=21)
    b = span("server", 2, 1, 20, tid=22)
    pooled = span("client", 2, 5, 10, tid=99)
    h.add(pooled, a, b)
    h.run_for(3)
    assert pooled["parent_span_id"] is None and conf(pooled) == NONE
    # Requests were open: not "no server span", but which one is not known.
    assert pooled["attributes"][REASON_ATTR] == AMBIGUOUS
    assert pooled["attributes"][CANDIDATES_ATTR] == 2


# -- inside a process: event loops ------------------------------------------------------------


def _warm_up(h: Harness, pid: int, tid: int, calls_per_request: int = 1) -> None:
    """Lone requests long before the test's, making ``calls_per_request`` calls each
    (to another path: content is not what this teaches)."""
    for i in range(RELAY_MIN_REQUESTS):
        base = -10_000 + 50 * i
        spans = [span("server", pid, base, base + 40, tid=tid, path=f"/warm/{i}")]
        for k in range(calls_per_request):
            spans.append(span("client", pid, base + 1 + 10 * k, base + 9 + 10 * k, tid=tid,
                              path="/up", seq=10_000 + 10 * i + k))
        h.add(*reversed(spans))
    h.run_for(1)


def test_event_loop_pairs_by_response_order():
    """One thread, two requests open; each relays its own backend call."""
    h = Harness()
    _warm_up(h, 3, 3)
    s1 = span("server", 3, 0.0, 10.05, tid=3, path="/a")
    s2 = span("server", 3, 0.1, 12.05, tid=3, path="/a")
    c1 = span("client", 3, 0.3, 10.0, tid=3, path="/a", seq=1)
    c2 = span("client", 3, 0.2, 12.0, tid=3, path="/a", seq=2)   # written first, answered later
    h.add(c1, s1, c2, s2)
    h.run_for(3)
    assert c1["parent_span_id"] == s1["span_id"]
    assert conf(c1) == HEURISTIC and c1["attributes"][REASON_ATTR] == RESPONSE_ORDER
    assert c1["attributes"][CANDIDATES_ATTR] == 2
    # s1 ended before c2's response came: s2 is the only container, but two
    # requests were in flight when c2 was written, so it is not "thread".
    assert c2["parent_span_id"] == s2["span_id"]
    assert conf(c2) == HEURISTIC and c2["attributes"][REASON_ATTR] == ONLY_CONTAINER


def test_event_loop_falls_back_to_request_order_when_response_order_is_not_mutual():
    """s1 makes two calls: the first is paired by when s1 read its request."""
    h = Harness()
    _warm_up(h, 3, 3)
    s2 = span("server", 3, 0.0, 10.1, tid=3)
    s1 = span("server", 3, 0.04, 30.0, tid=3)
    first = span("client", 3, 0.05, 9.0, tid=3, seq=1)      # s1's first call
    relay = span("client", 3, 0.6, 10.0, tid=3, seq=2)      # s2's only call
    last = span("client", 3, 9.1, 29.9, tid=3, seq=3)       # s1's second call
    h.add(first, relay, s2, last, s1)
    h.run_for(3)
    assert relay["parent_span_id"] == s2["span_id"]
    assert last["parent_span_id"] == s1["span_id"]
    assert first["parent_span_id"] == s1["span_id"]
    assert first["attributes"][REASON_ATTR] == REQUEST_ORDER


def test_event_loop_ambiguity_leaves_a_root_that_says_so():
    """Same start, same end gap: nothing observable tells the two requests apart."""
    h = Harness()
    _warm_up(h, 3, 3)
    s1 = span("server", 3, 0.0, 10.0, tid=3)
    s2 = span("server", 3, 0.0, 10.0, tid=3)
    c = span("client", 3, 1.0, 9.0, tid=3, seq=1)
    h.add(c, s1, s2)
    h.run_for(3)
    assert c["parent_span_id"] is None
    assert conf(c) == NONE and c["attributes"][REASON_ATTR] == AMBIGUOUS
    assert c["attributes"][CANDIDATES_ATTR] == 2


def test_pipelined_requests_on_one_thread_pair_by_response_order():
    h = Harness()
    _warm_up(h, 2, 21)
    s1 = span("server", 2, 0.0, 5.1, tid=21)
    s2 = span("server", 2, 0.0, 9.1, tid=21)   # read in the same syscall as s1
    c1 = span("client", 2, 0.2, 5.0, tid=21, seq=1)
    c2 = span("client", 2, 5.2, 9.0, tid=21, seq=2)
    h.add(c1, s1, c2, s2)
    h.run_for(3)
    assert c1["parent_span_id"] == s1["span_id"]
    assert c2["parent_span_id"] == s2["span_id"]


def test_event_loop_making_several_calls_per_request_gets_no_timing_guesses():
    """Where requests fan out, timing pairings mislead: roots that say so instead."""
    h = Harness()
    _warm_up(h, 3, 3, calls_per_request=2)
    s1 = span("server", 3, 0.0, 10.05, tid=3, path="/a")
    s2 = span("server", 3, 0.1, 12.05, tid=3, path="/a")
    c1 = span("client", 3, 0.3, 10.0, tid=3, path="/b", seq=1)
    c2 = span("client", 3, 0.2, 12.0, tid=3, path="/b", seq=2)
    h.add(c1, s1, c2, s2)
    h.run_for(3)
    assert c1["parent_span_id"] is None
    assert conf(c1) == NONE and c1["attributes"][REASON_ATTR] == AMBIGUOUS
    # Still linked: the only request in flight left open (no timing pairing needed).
    assert c2["parent_span_id"] == s2["span_id"]
    assert c2["attributes"][REASON_ATTR] == ONLY_CONTAINER


def test_a_new_event_loop_gets_no_timing_guesses_before_it_has_shown_its_habits():
    h = Harness()
    s1 = span("server", 3, 0.0, 10.05, tid=3, path="/a")
    s2 = span("server", 3, 0.1, 12.05, tid=3, path="/a")
    c1 = span("client", 3, 0.3, 10.0, tid=3, path="/b", seq=1)
    h.add(c1, s1, s2)
    h.run_for(3)
    assert c1["parent_span_id"] is None and c1["attributes"][REASON_ATTR] == AMBIGUOUS


def _teach_forwarding(h: Harness, pid: int, path_out: str | None = None) -> None:
    """Three lone requests whose backend call carries the same (or another) path."""
    for i in range(3):
        base = 100 + 20 * i
        h.add(span("client", pid, base + 1, base + 9, tid=pid, path=path_out or f"/learn/{i}",
                   seq=100 + i),
              span("server", pid, base, base + 10, tid=pid, path=f"/learn/{i}"))
    h.run_for(1)


def test_a_proxy_that_forwards_paths_is_disambiguated_by_content():
    h = Harness()
    _teach_forwarding(h, 3)
    start = 1000
    s_users = span("server", 3, start, start + 10.2, tid=3, path="/users")
    s_orders = span("server", 3, start + 0.1, start + 10.05, tid=3, path="/orders")
    # Timing alone would pick s_orders (response written right after); content says /users.
    c = span("client", 3, start + 0.2, start + 10.0, tid=3, path="/users", seq=1)
    h.add(c, s_orders, s_users)
    h.run_for(3)
    assert c["parent_span_id"] == s_users["span_id"]
    assert conf(c) == CONTENT


def test_content_is_ignored_where_the_process_does_not_forward_it():
    h = Harness()
    _warm_up(h, 3, 3)
    _teach_forwarding(h, 3, path_out="/backend")
    start = 1000
    s_backend = span("server", 3, start, start + 10.2, tid=3, path="/backend")
    s_other = span("server", 3, start + 0.1, start + 10.05, tid=3, path="/other")
    c = span("client", 3, start + 0.2, start + 10.0, tid=3, path="/backend", seq=1)
    h.add(c, s_backend, s_other)
    h.run_for(3)
    assert c["parent_span_id"] == s_other["span_id"]
    assert conf(c) == HEURISTIC


# -- holding, order, memory -----------------------------------------------------------------------


def three_tier(base_ms: float = 0, port: int = 50000, seq: int = 1000) -> list[dict]:
    """load -> proxy (event loop) -> service (threads) -> stock, in completion order."""
    b = base_ms
    stock_conn = dict(client=("127.0.0.1", port + 2), server=("127.0.0.1", 7002))
    svc_conn = dict(client=("127.0.0.1", port + 1), server=("127.0.0.1", 7001))
    proxy_conn = dict(client=("127.0.0.1", port), server=("127.0.0.1", 7000))
    return [
        span("server", 40, b + 4, b + 6, tid=41, seq=seq + 2, path="/stock", **stock_conn),
        span("client", 30, b + 3.9, b + 6.1, tid=31, seq=seq + 2, path="/stock", **stock_conn),
        span("server", 30, b + 2, b + 8, tid=31, seq=seq + 1, path="/api", **svc_conn),
        span("client", 20, b + 1.9, b + 8.1, tid=20, seq=seq + 1, path="/api", **svc_conn),
        span("server", 20, b + 1, b + 8.2, tid=20, seq=seq, path="/api", **proxy_conn),
        span("client", 10, b + 0.9, b + 8.3, tid=11, seq=seq, path="/api", **proxy_conn),
    ]


def assert_one_chain(chain: list[dict]) -> None:
    stock, svc_call, svc, proxy_call, proxy, load = chain
    assert len({s["trace_id"] for s in chain}) == 1
    assert load["parent_span_id"] is None
    for child, parent in [(stock, svc_call), (svc_call, svc), (svc, proxy_call),
                          (proxy_call, proxy), (proxy, load)]:
        assert child["parent_span_id"] == parent["span_id"]


def test_a_whole_trace_completing_inside_out_is_held_then_released_as_one():
    h = Harness()
    chain = three_tier()
    h.add(*chain)
    h.run_for(1)
    assert h.out == [] and h.linker.held == 6   # the root may still get a parent
    h.run_for(2)
    assert len(h.out) == 6 and h.linker.held == 0
    assert_one_chain(chain)


@pytest.mark.parametrize("seed", range(8))
def test_arrival_order_does_not_matter(seed):
    h = Harness()
    chain = three_tier()
    shuffled = chain[:]
    random.Random(seed).shuffle(shuffled)
    h.add(*shuffled)
    h.run_for(3)
    assert_one_chain(chain)


def test_a_server_span_whose_client_span_was_already_released_is_published_at_once():
    h = Harness(remember_ns=5 * S)
    client = span("client", 1, 0, 10, seq=55, **CONN)
    h.add(client)
    h.run_for(3)
    assert [s["span_id"] for s in h.out] == [client["span_id"]]
    late = span("server", 2, 1, 9, seq=55, **CONN)
    h.linker.add(late)
    assert h.out[-1] is late
    assert late["parent_span_id"] == client["span_id"] and late["trace_id"] == client["trace_id"]


def test_remembered_spans_are_forgotten_after_a_while():
    h = Harness(remember_ns=5 * S)
    client = span("client", 1, 0, 10, seq=55, **CONN)
    h.add(client)
    h.run_for(10)
    assert h.linker.stats()["remembered"] == 0
    late = span("server", 2, 1, 9, seq=55, **CONN)
    h.add(late)
    h.run_for(3)
    assert late["parent_span_id"] is None and late in h.out


def test_memory_bound_releases_the_oldest_first_as_roots_that_say_why():
    h = Harness(max_held=3)
    spans = [span("server", 2, i, i + 1, seq=i) for i in range(5)]
    h.add(*spans)
    assert h.linker.held == 3
    assert [s["span_id"] for s in h.out] == [spans[0]["span_id"], spans[1]["span_id"]]
    assert all(s["attributes"][REASON_ATTR] == MEMORY_BOUND for s in h.out)
    h.linker.flush()
    assert len(h.out) == 5


def test_memory_bound_releases_a_held_chain_whole_from_its_top():
    h = Harness(max_held=6)
    chain = three_tier()
    h.add(*chain)
    h.run_for(0.5)                             # local links decided, root still held
    assert h.out == []
    h.add(span("server", 99, 50, 51, seq=1))   # one too many: the chain's oldest goes
    assert len(h.out) == 6
    stock, svc_call, svc, proxy_call, proxy, load = chain
    assert stock["parent_span_id"] == svc_call["span_id"]        # links already made survive
    assert load["attributes"][REASON_ATTR] == MEMORY_BOUND
    assert len({s["trace_id"] for s in chain}) == 1


def test_flush_releases_everything_deciding_with_what_it_has():
    h = Harness()
    chain = three_tier()
    h.add(*chain)
    h.linker.flush()
    assert h.linker.held == 0 and len(h.out) == 6
    assert_one_chain(chain)


def test_a_span_without_ids_or_times_is_passed_on_not_dropped():
    h = Harness()
    odd = {"type": "span", "name": "odd"}
    h.linker.add(odd)
    assert h.out == [odd] and h.linker.errors == 1


# -- assembling what several agents linked -------------------------------------------------------


def test_assembly_joins_two_hosts_and_rewrites_the_server_side_trace_id():
    h = Harness(local_inference=False)
    conn = dict(client=("10.200.0.1", 41000), server=("10.200.0.2", 8080))
    # Host A saw only the client; host B the server and the call it made (already linked by B).
    client_a = span("client", 100, 0, 20, seq=31337, **conn)
    server_b = span("server", 100, 1, 19, seq=31337, **conn)
    call_b = span("client", 100, 2, 18, parent=server_b)
    backend_b = span("server", 101, 3, 17, parent=call_b)
    for s in (server_b, call_b, backend_b):
        s["attributes"][CONFIDENCE_ATTR] = THREAD
    server_b["attributes"][CONFIDENCE_ATTR] = NONE
    server_b["attributes"][REASON_ATTR] = NO_CLIENT_SPAN
    h.add(backend_b, call_b, server_b, source="b")
    h.add(client_a, source="a")
    h.run_for(3)
    assert len(h.out) == 4
    assert server_b["parent_span_id"] == client_a["span_id"]
    assert conf(server_b) == EXACT and REASON_ATTR not in server_b["attributes"]
    assert call_b["parent_span_id"] == server_b["span_id"]
    assert backend_b["parent_span_id"] == call_b["span_id"]
    assert {s["trace_id"] for s in h.out} == {client_a["trace_id"]}
    assert conf(call_b) == THREAD   # the agent's own decision is kept


def test_assembly_joins_a_server_span_to_a_client_span_that_already_had_its_parent():
    """A -> B -> A: the last hop's client span was linked by agent B, its server end is on A."""
    h = Harness(local_inference=False)
    first_hop = dict(client=("10.200.0.1", 41000), server=("10.200.0.2", 8080))
    second_hop = dict(client=("10.200.0.2", 42000), server=("10.200.0.1", 9090))
    load_a = span("client", 100, 0, 20, seq=1, **first_hop)
    stock_a = span("server", 101, 3, 17, seq=2, **second_hop)
    service_b = span("server", 100, 1, 19, seq=1, **first_hop)
    call_b = span("client", 100, 2, 18, seq=2, parent=service_b, **second_hop)
    h.add(stock_a, source="a")          # arrives first: waits on its key
    h.add(service_b, call_b, source="b")
    h.add(load_a, source="a")
    h.run_for(4)
    assert stock_a["parent_span_id"] == call_b["span_id"] and conf(stock_a) == EXACT
    assert service_b["parent_span_id"] == load_a["span_id"]
    assert {s["trace_id"] for s in h.out} == {load_a["trace_id"]}


def test_assembly_keeps_a_given_parent_it_never_sees():
    h = Harness(local_inference=False)
    orphan = span("server", 5, 0, 1)
    orphan["parent_span_id"] = b"\x01" * 8
    original_trace = orphan["trace_id"]
    h.add(orphan)
    h.run_for(3)
    assert h.out == [orphan]
    assert orphan["parent_span_id"] == b"\x01" * 8 and orphan["trace_id"] == original_trace


def test_assembly_does_not_guess_inside_processes():
    h = Harness(local_inference=False)
    handler = span("server", 2, 0, 20, tid=21)
    call = span("client", 2, 5, 10, tid=21)
    h.add(call, handler)
    h.run_for(3)
    assert call["parent_span_id"] is None


def test_same_pid_on_two_hosts_is_two_processes():
    h = Harness()
    handler = span("server", 2, 0, 20, tid=21)
    call = span("client", 2, 5, 10, tid=21)
    h.add(handler, source="host-a")
    h.add(call, source="host-b")
    h.run_for(3)
    assert call["parent_span_id"] is None


# -- invariants on random input ---------------------------------------------------------------------


@st.composite
def workloads(draw):
    spans = []
    for i in range(draw(st.integers(1, 6))):
        spans += three_tier(base_ms=draw(st.integers(0, 40)), port=50000 + 10 * i, seq=1000 * i)
    for j in range(draw(st.integers(0, 6))):
        start = draw(st.integers(0, 60))
        spans.append(span(draw(st.sampled_from(["server", "client"])), draw(st.sampled_from([10, 20, 30, 40])),
                          start, start + draw(st.integers(0, 20)), tid=draw(st.sampled_from([11, 20, 31, 41])),
                          seq=draw(st.one_of(st.none(), st.integers(0, 5))),
                          transport=draw(st.sampled_from(["tcp", "udp"]))))
    order = draw(st.permutations(range(len(spans))))
    ticks = draw(st.lists(st.integers(0, len(spans)), max_size=4))
    return spans, order, ticks, draw(st.integers(2, 40))


@settings(max_examples=150, deadline=None)
@given(workloads())
def test_every_span_is_published_once_with_a_consistent_trace(work):
    spans, order, ticks, max_held = work
    h = Harness(max_held=max_held)
    for position, index in enumerate(order):
        if position in ticks:
            h.run_for(0.5)
        h.add(spans[index])
        assert h.linker.held <= max_held
    h.run_for(4)
    h.linker.flush()
    assert sorted(s["span_id"] for s in h.out) == sorted(s["span_id"] for s in spans)
    published = h.by_id()
    for s in h.out:
        validate(s)
        assert s["attributes"][CONFIDENCE_ATTR] in (EXACT, ADDRESS_TIME, THREAD, CONTENT, HEURISTIC, NONE)
        parent_id = s["parent_span_id"]
        if parent_id is None:
            assert conf(s) == NONE
        else:
            parent = published[parent_id]
            assert parent["trace_id"] == s["trace_id"]
            assert parent["kind"] != s["kind"]   # server -> client -> server ...


# -- sidetrace assemble over real sockets ---------------------------------------------------------


@pytest.fixture
def sock_dir():
    path = tempfile.mkdtemp(prefix="st-asm-", dir="/tmp")  # short Unix socket paths
    yield path
    shutil.rmtree(path, ignore_errors=True)


async def test_assemble_joins_two_agents_streams_and_waits_for_a_late_agent(sock_dir):
    path_a, path_b, path_out = (os.path.join(sock_dir, n) for n in ("a.sock", "b.sock", "out.sock"))
    args = argparse.Namespace(connect=[path_a, path_b], socket=path_out, hold=0.3, stats_interval=0.2)
    conn = dict(client=("10.200.0.1", 41000), server=("10.200.0.2", 8080))
    now_ms = (time_ns() - T0) / MS
    client_a = span("client", 7, now_ms, now_ms + 20, seq=99, **conn)
    server_b = span("server", 7, now_ms + 1, now_ms + 19, seq=99, **conn)   # same pid, other host
    server_b["attributes"][CONFIDENCE_ATTR] = NONE
    agent_a, agent_b = SpanServer(path_a), SpanServer(path_b)
    async with trio.open_nursery() as nursery:
        await nursery.start(agent_a.serve)
        assembler = await nursery.start(_assemble.serve, args)   # agent b is not there yet
        async with open_subscriber(path_out) as sub:
            with trio.fail_after(10):
                while not assembler.upstreams[0].connected:
                    await trio.sleep(0.01)
            await trio.sleep(0.3)
            await nursery.start(agent_b.serve)
            with trio.fail_after(10):
                while not assembler.upstreams[1].connected:
                    await trio.sleep(0.01)
            agent_b.publish(server_b)
            agent_a.publish(client_a)
            got = {}
            stats = None
            with trio.fail_after(10):
                async for msg in sub:
                    if msg["type"] == "span":
                        got[msg["span_id"]] = msg
                    elif msg["type"] == "stats":
                        stats = msg
                    if len(got) == 2 and stats is not None:
                        break
        nursery.cancel_scope.cancel()
    joined_server, joined_client = got[server_b["span_id"]], got[client_a["span_id"]]
    for s in got.values():
        validate(s)
    assert joined_server["parent_span_id"] == client_a["span_id"]
    assert joined_server["trace_id"] == client_a["trace_id"]
    assert joined_server["attributes"][CONFIDENCE_ATTR] == EXACT
    assert joined_client["parent_span_id"] is None
    validate(stats)
    assert [u["spans"] for u in stats["upstreams"]] == [1, 1]
    assert assembler.upstreams[1].connections == 1


def test_assemble_refuses_to_serve_on_a_socket_it_reads(sock_dir, capsys):
    path = os.path.join(sock_dir, "a.sock")
    args = argparse.Namespace(connect=[path], socket=path, hold=1.0, stats_interval=5.0,
                              verbose=False)
    assert _assemble.run_assemble(args) == 2
    assert "must differ" in capsys.readouterr().err


# -- a client end this agent does not trace ---------------------------------------------


def test_server_span_of_an_untraced_client_is_a_root_at_once():
    asked = []

    def peer_traced(address, port):
        asked.append((address, port))
        return False

    h = Harness(peer_traced=peer_traced)
    server = span("server", 2, 0, 9, seq=11, client=("10.0.0.1", 40001))
    h.add(server)
    assert asked == [("10.0.0.1", 40001)]
    assert h.out == [server] and h.linker.held == 0
    assert server["parent_span_id"] is None
    assert conf(server) == NONE and server["attributes"][REASON_ATTR] == NO_CLIENT_SPAN


def test_server_span_of_a_traced_client_waits_for_its_client_span():
    h = Harness(peer_traced=lambda address, port: True)
    server = span("server", 2, 1, 9, seq=12, **CONN)
    h.add(server)
    assert h.out == [] and h.linker.held == 1
    client = span("client", 1, 0, 10, seq=12, **CONN)
    h.add(client)
    h.run_for(3)
    assert server["parent_span_id"] == client["span_id"] and conf(server) == EXACT


def test_calls_made_by_a_server_span_released_at_once_still_join_it():
    h = Harness(peer_traced=lambda address, port: False)
    handler = span("server", 2, 0, 20, tid=21, seq=13, path="/orders")
    h.add(handler)
    assert h.out == [handler]
    call = span("client", 2, 5, 10, tid=21, path="/stock")
    h.add(call)
    h.run_for(3)
    assert call["parent_span_id"] == handler["span_id"] and conf(call) == THREAD
    assert call["trace_id"] == handler["trace_id"]


def test_server_span_without_a_sequence_number_still_waits():
    # UDP and sides without sequence numbers join by address and time, which
    # needs the hold.
    h = Harness(peer_traced=lambda address, port: False)
    server = span("server", 2, 0, 9, transport="udp")
    h.add(server)
    assert h.out == [] and h.linker.held == 1
