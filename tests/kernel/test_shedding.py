"""Load shedding in the kernel: whole units left out at the rate the `budget` map allows.

The test process traces itself (both ends of loopback connections, as in
test_tracer_kernel) and drives the budget by hand: a budget whose interval is
far longer than the test admits exactly two units each time it is written
(its burst is one interval), one per end of an exchange, so writing it before
an exchange keeps that exchange and leaving it spent sheds the next ones.
What is checked is what the agent relies on: a kept exchange arrives whole
(request and response), a shed one not at all, the first event after shed
exchanges says how many, and the counters and the per-process map agree.
"""

from __future__ import annotations

import os
import socket
import struct

import pytest

from agent import _event_layout as layout
from agent._app import KERNEL_COUNTER_NAMES
from agent._events import XFlag

from .test_tracer_kernel import EV_CLOSE, EV_DATA, Tracer, of_ports, tcp_pair, tracer, wait_queued  # noqa: F401

pytestmark = pytest.mark.kernel

BUDGET = struct.Struct(layout.BUDGET_FORMAT)
SHED_PROC = struct.Struct(layout.SHED_PROC_FORMAT)
LEVEL_OFF, LEVEL_NEW, LEVEL_HARD = 0, 1, 2
FOREVER_NS = 10**15   # one unit per ~12 days: a freshly written budget gives its burst and no more


def set_budget(t: Tracer, level: int) -> None:
    interval = FOREVER_NS if level else 0
    t.coll.maps["budget"][struct.pack("<I", 0)] = BUDGET.pack(interval, interval, level, 0, 0, 0)


def counter(t: Tracer, name: str) -> int:
    return t.counter(KERNEL_COUNTER_NAMES.index(name))


def shed_of_this_process(t: Tracer) -> tuple[int, int]:
    value = t.coll.maps["shed_procs"].lookup(struct.pack("<I", os.getpid()))
    return SHED_PROC.unpack(value) if value is not None else (0, 0)


def request(n: int) -> bytes:
    return b"GET /r/%d HTTP/1.1\r\nHost: x\r\n\r\n" % n


def response(n: int) -> bytes:
    body = b"%d" % n
    return b"HTTP/1.1 200 OK\r\nContent-Length: %d\r\n\r\n%s" % (len(body), body)


def recv_exactly(sock: socket.socket, n: int) -> bytes:
    data = b""
    while len(data) < n:
        chunk = sock.recv(n - len(data))
        assert chunk, "connection closed early"
        data += chunk
    return data


def exchange(cli: socket.socket, srv: socket.socket, n: int) -> None:
    cli.sendall(request(n))
    assert recv_exactly(srv, len(request(n))) == request(n)
    srv.sendall(response(n))
    assert recv_exactly(cli, len(response(n))) == response(n)


def data_events(events, port: int, role_port: str):
    """DATA events of one end: the server's (sport == port) or the client's (dport == port)."""
    return [e for e in events if e.kind == EV_DATA and getattr(e, role_port) == port]


@pytest.fixture
def budget_reset(tracer: Tracer):  # noqa: F811
    yield
    set_budget(tracer, LEVEL_OFF)


def test_exchanges_are_shed_whole_and_the_next_kept_one_says_how_many(tracer: Tracer, budget_reset) -> None:  # noqa: F811
    ls, cli, srv = tcp_pair(socket.AF_INET, "127.0.0.1")
    port = ls.getsockname()[1]
    before = {name: counter(tracer, name) for name in ("shed_exchanges", "resumed")}
    proc_before = shed_of_this_process(tracer)
    tracer.drain()
    keep = {0, 1, 5, 6, 9, 15}
    for n in range(20):
        if n in keep:
            set_budget(tracer, LEVEL_NEW)
        exchange(cli, srv, n)
    set_budget(tracer, LEVEL_OFF)      # no budget: the next request resumes
    exchange(cli, srv, 20)
    events = of_ports(tracer.drain(), port)
    for side in ("sport", "dport"):    # the server's end, then the client's
        evs = data_events(events, port, side)
        paths = [e.payload.split(b" ")[1].decode() for e in evs if e.payload.startswith(b"GET ")]
        assert paths == [f"/r/{n}" for n in sorted(keep | {20})]
        # Each kept request is followed by its own response, before the next request.
        pairs = [(a.payload, b.payload) for a, b in zip(evs[::2], evs[1::2])]
        assert len(evs) == 2 * len(paths)
        for (req, resp), n in zip(pairs, sorted(keep | {20})):
            assert req == request(n) and resp.endswith(b"\r\n\r\n%d" % n)
        # The first request after shed ones carries the count; no other event a flag.
        resumed = {e.payload.split(b" ")[1].decode(): e.shed for e in evs if e.xflags & XFlag.RESUMED}
        assert resumed == {"/r/5": 3, "/r/9": 2, "/r/15": 5, "/r/20": 4}
        assert all(e.xflags in (0, XFlag.RESUMED) for e in evs)
    shed = 20 - len(keep)
    assert counter(tracer, "shed_exchanges") - before["shed_exchanges"] == 2 * shed
    assert counter(tracer, "resumed") - before["resumed"] == 2 * 4
    assert shed_of_this_process(tracer)[0] - proc_before[0] == 2 * shed
    for s in (cli, srv, ls):
        s.close()


def test_a_connection_closed_while_shed_says_so(tracer: Tracer, budget_reset) -> None:  # noqa: F811
    ls, cli, srv = tcp_pair(socket.AF_INET, "127.0.0.1")
    port = ls.getsockname()[1]
    set_budget(tracer, LEVEL_NEW)
    exchange(cli, srv, 0)
    exchange(cli, srv, 1)               # budget spent: shed
    tracer.drain()
    cli.close()
    srv.close()
    closes = [e for e in of_ports(tracer.drain(), port) if e.kind == EV_CLOSE]
    assert len(closes) == 2 and all(e.xflags == XFlag.SHED for e in closes)
    ls.close()


def test_pipelined_requests_make_a_connection_that_is_never_shed_by_the_exchange(
        tracer: Tracer, budget_reset) -> None:  # noqa: F811
    ls, cli, srv = tcp_pair(socket.AF_INET, "127.0.0.1")
    port = ls.getsockname()[1]
    exchange(cli, srv, 0)
    # Two requests in one write, read at once; two responses written apart:
    # the server's end sees a response start with no request waiting.
    cli.sendall(request(1) + request(2))
    recv_exactly(srv, len(request(1)) + len(request(2)))
    srv.sendall(response(1))
    srv.sendall(response(2))
    # ... and the client's end reads both at once: one response start for its one request start.
    wait_queued(cli, len(response(1)) + len(response(2)))
    recv_exactly(cli, len(response(1)) + len(response(2)))
    tracer.drain()
    set_budget(tracer, LEVEL_NEW)
    for n in range(3, 8):
        exchange(cli, srv, n)
    events = of_ports(tracer.drain(), port)
    server_side = data_events(events, port, "sport")
    served = [e.payload.split(b" ")[1].decode() for e in server_side if e.payload.startswith(b"GET ")]
    assert served == [f"/r/{n}" for n in range(3, 8)]    # kept: its boundaries cannot be trusted
    client_side = data_events(events, port, "dport")
    sent = [e.payload.split(b" ")[1].decode() for e in client_side if e.payload.startswith(b"GET ")]
    assert sent == ["/r/3", "/r/4"]                      # the budget's two units went to this end
    for s in (cli, srv, ls):
        s.close()


RESP_PING, RESP_PONG = b"*1\r\n$4\r\nPING\r\n", b"+PONG\r\n"


def ping(cli: socket.socket, srv: socket.socket) -> None:
    cli.sendall(RESP_PING)
    assert recv_exactly(srv, len(RESP_PING)) == RESP_PING
    srv.sendall(RESP_PONG)
    assert recv_exactly(cli, len(RESP_PONG)) == RESP_PONG


def test_other_protocols_are_shed_by_the_connection(tracer: Tracer, budget_reset) -> None:  # noqa: F811
    before = counter(tracer, "shed_connections")
    set_budget(tracer, LEVEL_NEW)
    # The budget's two units go to this HTTP/1 exchange.
    ls0, cli0, srv0 = tcp_pair(socket.AF_INET, "127.0.0.1")
    exchange(cli0, srv0, 0)
    # A Redis connection opened now is shed from its first bytes to its close.
    ls, cli, srv = tcp_pair(socket.AF_INET, "127.0.0.1")
    port = ls.getsockname()[1]
    for _ in range(3):
        ping(cli, srv)
    cli.close()
    srv.close()
    events = of_ports(tracer.drain(), port)
    assert [e for e in events if e.kind == EV_DATA] == []
    assert [e.xflags for e in events if e.kind == EV_CLOSE] == [XFlag.SHED, XFlag.SHED]
    assert counter(tracer, "shed_connections") - before == 2
    for s in (cli0, srv0, ls0, ls):
        s.close()


def test_at_level_hard_a_traced_connection_is_shed_at_a_turn_and_says_so(
        tracer: Tracer, budget_reset) -> None:  # noqa: F811
    ls, cli, srv = tcp_pair(socket.AF_INET, "127.0.0.1")
    port = ls.getsockname()[1]
    ping(cli, srv)                      # traced: no budget yet
    tracer.drain()
    set_budget(tracer, LEVEL_HARD)
    for _ in range(4):
        ping(cli, srv)
    events = [e for e in of_ports(tracer.drain(), port) if e.kind == EV_DATA]
    # Each end: traced until its budget ran out at a turn of direction, the
    # event of that syscall marked (the agent drops what it holds), then nothing.
    for side in ("sport", "dport"):
        evs = data_events(events, port, side)
        marks = [e for e in evs if e.xflags & XFlag.SHED_START]
        assert len(marks) == 1 and evs[-1] is marks[0]
        assert all(e.xflags == 0 for e in evs[:-1])
        assert len(evs) < 8                  # four pings: four sends and four receives
    for s in (cli, srv, ls):
        s.close()
