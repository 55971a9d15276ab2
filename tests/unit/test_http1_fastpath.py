"""The parser's fast path (whole heads at the start of a syscall) against the general one.

Every input is parsed twice, with ``http1._FAST_PATH`` on and off, and the two
runs must agree on everything observable: the exchanges each feed returns
(all fields, flags, sizes, timestamps, sequence numbers, headers) and the
connection's counters after every feed.
"""

from __future__ import annotations

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from agent.protocols import http1
from agent.protocols.http1 import ExchangeFlags, Http1Connection

from .test_http1_fuzz import conversation_steps, conversations

F = ExchangeFlags
IN, OUT = "ingress", "egress"


def observe(steps, role="server", fast=True):
    """Everything a caller can see, feed by feed."""
    saved = http1._FAST_PATH
    http1._FAST_PATH = fast
    try:
        conn = Http1Connection(role)
        seen = []
        for ts, (direction, data, total, seq) in enumerate(steps):
            out = conn.feed(direction, data, total, ts, seq)
            seen.append(([_everything(e) for e in out], conn.role, conn.pending_requests,
                         conn.buffered_bytes, conn.resyncs))
        seen.append(([_everything(e) for e in conn.close(len(steps))], conn.internal_errors))
        return seen
    finally:
        http1._FAST_PATH = saved


def _everything(ex):
    fields = ex.as_dict()
    fields["flag_names"] = ex.flag_names
    fields["lookups"] = [ex.request_header(n) for n in ("Host", "content-length", "x-a")]
    fields["response_lookups"] = [ex.response_header(n) for n in ("Content-Length", "x-a")]
    fields["headers_again"] = (ex.request_headers, ex.response_headers)
    return fields


def same_both_ways(steps, role="server"):
    fast = observe(steps, role, fast=True)
    general = observe(steps, role, fast=False)
    assert fast == general
    assert fast[-1][1] == 0  # no internal errors
    return fast


def as_steps(pieces):
    """(direction, bytes[, extra uncaptured bytes]) -> feed arguments with TCP sequence numbers."""
    seq = {IN: 1000, OUT: 0xFFFFFFF0}
    steps = []
    for direction, data, *extra in pieces:
        total = len(data) + (extra[0] if extra else 0)
        steps.append((direction, data, total, seq[direction]))
        seq[direction] += total  # past 2**32 too: the parser wraps them
    return steps


GET = b"GET /a?b=c HTTP/1.1\r\nHost: h\r\nX-A: 1\r\n\r\n"
OK = b"HTTP/1.1 200 OK\r\nContent-Length: 2\r\nX-A: 2\r\n\r\nok"

# Heads the fast path must either take exactly as the general path does or leave to it.
TRICKY = [
    [(IN, GET), (OUT, OK)],
    [(IN, b"GET / HTTP/1.1\r\n\r\n"), (OUT, b"HTTP/1.1 204 No Content\r\n\r\n")],
    [(IN, b"GET / HTTP/1.1\n\r\n"), (OUT, OK)],                       # bare LF start line
    [(IN, b"GET / HTTP/1.1\r\nA: b\n\r\n"), (OUT, OK)],              # "\n\r\n" after a bare LF
    [(IN, b"GET / HTTP/1.1\r\nA: b\n\nGET /2 HTTP/1.1\r\n\r\n"), (OUT, OK + OK)],
    [(IN, b"GET / HTTP/1.1\r\nA: b\r\n\n\r\n\r\n"), (OUT, OK)],
    [(IN, b"POST / HTTP/1.1\r\ncontent-LENGTH:\t3 \r\n\r\nabc"), (OUT, OK)],
    [(IN, b"POST / HTTP/1.1\r\nContent-Length : 3\r\n\r\nabc"), (OUT, OK)],  # not a CL field
    [(IN, b"POST / HTTP/1.1\r\nContent-Length: 3, 3\r\n\r\nabc"), (OUT, OK)],
    [(IN, b"POST / HTTP/1.1\r\nContent-Length: 3\r\nContent-Length: 3\r\n\r\nabc"), (OUT, OK)],
    [(IN, b"POST / HTTP/1.1\r\nContent-Length: 3\r\nContent-Length: 4\r\n\r\nabcd"), (OUT, OK)],
    [(IN, b"POST / HTTP/1.1\r\nContent-Length: 3 4\r\n\r\nabc"), (OUT, OK)],
    [(IN, b"POST / HTTP/1.1\r\nContent-Length: \r\n\r\nabc"), (OUT, OK)],
    [(IN, b"POST / HTTP/1.1\r\nContent-Length: 0000000000000000003\r\n\r\nabc"), (OUT, OK)],
    [(IN, b"POST / HTTP/1.1\r\nContent-Length: 000000000000000003\r\n\r\nabc"), (OUT, OK)],
    [(IN, b"POST / HTTP/1.1\r\nContent-Length: +3\r\n\r\nabc"), (OUT, OK)],
    [(IN, b"POST / HTTP/1.1\r\nContent-Length:\x0b3\x0c\r\n\r\nabc"), (OUT, OK)],
    [(IN, b"POST / HTTP/1.1\r\nTransfer-Encoding: chunked\r\n\r\n3\r\nabc\r\n0\r\n\r\n"), (OUT, OK)],
    [(IN, b"POST / HTTP/1.1\r\nTransfer-Encoding: gzip\r\n\r\nabc"), (OUT, OK)],
    [(IN, b"POST / HTTP/1.1\r\nContent-Length: 9\r\nTransfer-Encoding: chunked\r\n\r\n"
          b"1\r\na\r\n0\r\n\r\n"), (OUT, OK)],
    [(IN, GET), (OUT, b"HTTP/1.1 200 OK\r\nTransfer-Encoding: chunked\r\n\r\n2\r\nok\r\n0\r\n\r\n")],
    [(IN, GET), (OUT, b"HTTP/1.1 200 OK\r\nTransfer-Encoding: chunked\r\n\r\n2\r\no"),
     (OUT, b"k\r\n0\r\n\r\n")],
    [(IN, GET), (OUT, b"HTTP/1.1 200 OK\r\nTransfer-Encoding: br\r\n\r\nabc"), (OUT, b"more")],
    [(IN, GET), (OUT, b"HTTP/1.0 200 OK\r\nServer: x\r\n\r\nuntil close")],
    [(IN, b"HEAD / HTTP/1.1\r\n\r\n"), (OUT, b"HTTP/1.1 200 OK\r\nContent-Length: 99\r\n\r\n")],
    [(IN, b"HEAD / HTTP/1.1\r\n\r\n"), (OUT, b"HTTP/1.1 200 OK\r\nContent-Length: x\r\n\r\n")],
    [(IN, GET), (OUT, b"HTTP/1.1 304 Not Modified\r\nContent-Length: 99\r\n\r\n"), (IN, GET), (OUT, OK)],
    [(IN, GET), (OUT, b"HTTP/1.1 100 Continue\r\n\r\n"), (OUT, OK), (IN, GET), (OUT, OK)],
    [(IN, GET), (OUT, b"HTTP/1.1 100 Continue\r\n\r\n" + OK)],
    [(IN, GET), (OUT, b"HTTP/1.1 101 Switching Protocols\r\n\r\n\x81\x00"), (IN, GET), (OUT, OK)],
    [(OUT, b"CONNECT h:443 HTTP/1.1\r\n\r\n"), (IN, b"HTTP/1.1 200 OK\r\n\r\n\x16\x03")],
    [(OUT, b"CONNECT h:443 HTTP/1.1\r\n\r\n"),
     (IN, b"HTTP/1.1 200 OK\r\nContent-Length: 0\r\n\r\n"), (OUT, GET), (IN, OK)],
    [(IN, b"CONNECT h:443 HTTP/1.1\r\n\r\n"), (OUT, b"HTTP/1.1 407 Auth\r\nContent-Length: 0\r\n\r\n")],
    [(IN, GET + GET + GET), (OUT, OK), (OUT, OK + OK)],
    [(IN, GET), (IN, GET), (OUT, OK + OK[:5]), (OUT, OK[5:])],
    [(IN, GET), (OUT, OK, 100), (IN, GET), (OUT, OK)],                # uncaptured bytes after
    [(IN, b"POST / HTTP/1.1\r\nContent-Length: 5000\r\n\r\nabc", 4997), (OUT, OK)],
    [(IN, b"POST / HTTP/1.1\r\nContent-Length: 10\r\n\r\nabc"), (IN, b"defghij"), (OUT, OK)],
    [(OUT, OK), (IN, GET), (OUT, OK)],                                # response first
    [(IN, b"\r\n" + GET), (OUT, OK)],
    [(IN, b"garbage\r\n\r\n" + GET), (OUT, b"junk\n" + OK)],
    [(IN, GET), (OUT, b"HTTP/1.1 200 OK\r\nContent-Length: 2\r\n\r\nokHTTP/1.1 200 OK\r\n\r\n")],
    [(IN, GET), (OUT, b"HTTP/1.1 200\r\nContent-Length: 2\r\n\r\nok")],
    [(IN, GET), (OUT, b"HTTP/1.1 200 \r\nContent-Length: 2\r\n\r\nok")],
    [(IN, GET), (OUT, b"HTTP/1.1 200 O\rK\r\nContent-Length: 2\r\n\r\nok")],
    [(IN, GET), (OUT, b"HTTP/1.1 200 OK\nContent-Length: 2\n\nok")],
    [(IN, b"GET /" + b"x" * (http1.MAX_HEAD_BYTES - 20) + b" HTTP/1.1\r\n\r\n"), (IN, GET), (OUT, OK)],
    [(IN, b"GET / HTTP/1.1\r\nX: " + b"f" * (http1.MAX_HEAD_BYTES - 24) + b"\r\n\r\n"), (OUT, OK)],
    [(IN, b"GET / HTTP/1.1\r\nX: " + b"f" * (http1.MAX_HEAD_BYTES - 25) + b"\r\n\r\n"), (OUT, OK)],
    [(IN, b"GET / HTTP/1.1\r\nX: " + b"f" * (http1.MAX_HEAD_BYTES - 26) + b"\r\n\r\n"), (OUT, OK)],
    [(IN, GET[:10], 30), (IN, GET), (OUT, OK)],
]


@pytest.mark.parametrize("pieces", TRICKY)
@pytest.mark.parametrize("role", ["server", "unknown"])
def test_tricky_heads_agree(pieces, role):
    same_both_ways(as_steps(pieces), role)


def test_too_many_pending_requests_agree():
    same_both_ways(as_steps([(IN, GET)] * 70 + [(OUT, OK)] * 3))


def test_request_after_a_lost_response_agrees():
    lost = b"HTTP/1.1 200 OK\r\nContent-Length: 5, 6\r\n\r\nhello"
    same_both_ways(as_steps([(IN, GET), (OUT, lost), (IN, GET), (OUT, OK)]))


def test_the_usual_exchanges_never_reach_the_general_head_parser(monkeypatch):
    def no(*args):
        raise AssertionError("general path taken")

    monkeypatch.setattr(http1._Parser, "_head", no)
    monkeypatch.setattr(http1._Parser, "_after_head", no)
    chunked = b"HTTP/1.1 200 OK\r\nTransfer-Encoding: chunked\r\n\r\n2\r\nok\r\n0\r\n\r\n"
    post = b"POST /p HTTP/1.1\r\nHost: h\r\nContent-Length: 3\r\n\r\nabc"
    pieces = [(IN, GET), (OUT, OK), (IN, post), (OUT, chunked), (IN, GET), (OUT, chunked[:50]),
              (OUT, chunked[50:]), (IN, post[:-2], 2), (OUT, OK)]
    out = []
    conn = Http1Connection("server")
    for direction, data, total, seq in as_steps(pieces):
        out += conn.feed(direction, data, total, 1, seq)
    assert conn.internal_errors == 0
    assert [(e.method, e.status_code, e.request_body_size, e.response_body_size) for e in out] == [
        ("GET", 200, 0, 2), ("POST", 200, 3, 2), ("GET", 200, 0, 2), ("POST", 200, 3, 2)]
    assert [e.flags for e in out] == [F.NONE, F.NONE, F.NONE, F.REQUEST_TRUNCATED]


@settings(max_examples=150, deadline=None)
@given(conversations, st.booleans(), st.data())
def test_generated_conversations_agree(conversation, pipelined, data):
    pieces = conversation_steps(conversation, pipelined)
    # Some syscalls split, some partly captured.
    resplit = []
    for direction, chunk in pieces:
        if data.draw(st.booleans()):
            resplit.append((direction, chunk))
            continue
        cuts = sorted(data.draw(st.lists(st.integers(0, len(chunk)), max_size=3)))
        bounds = [0, *cuts, len(chunk)]
        for a, b in zip(bounds, bounds[1:]):
            if b > a:
                captured = data.draw(st.integers(0, b - a))
                resplit.append((direction, chunk[a:a + captured], b - a - captured))
    role = data.draw(st.sampled_from(["server", "client", "unknown"]))
    if role == "client":
        resplit = [(OUT if d == IN else IN, *rest) for d, *rest in resplit]
    same_both_ways(as_steps(resplit), role)


_start_lines = st.sampled_from([
    b"GET / HTTP/1.1", b"HEAD /h HTTP/1.1", b"POST /p?q HTTP/1.0", b"CONNECT h:1 HTTP/1.1",
    b"PUT /x HTTP/1.1", b"get / HTTP/1.1", b"GET  / HTTP/1.1", b"GET / HTTP/2.0",
    b"HTTP/1.1 200 OK", b"HTTP/1.1 204", b"HTTP/1.0 304 Not Modified", b"HTTP/1.1 100 Continue",
    b"HTTP/1.1 101 Switching", b"HTTP/1.1 404 Not Found", b"HTTP/1.1 2000 X", b"junk",
])
_fields = st.sampled_from([
    b"Host: h", b"X-A: 1", b"x-a:2", b"Content-Length: 3", b"content-length:0", b"CONTENT-LENGTH: 12",
    b"Content-Length: 3, 3", b"Content-Length: 3,4", b"Content-Length:  7 ", b"Content-Length: x",
    b"Content-Length : 3", b"Content-Length:\t0\t", b"Content-Length:\x0c3\x0b",
    b"Content-Length: 99999999999999999999",
    b"Transfer-Encoding: chunked", b"transfer-encoding: gzip, chunked", b"Transfer-Encoding: gzip",
    b"TRANSFER-ENCODING:chunked", b"Connection: close", b" folded", b"", b"\r",
])
_eols = st.sampled_from([b"\r\n", b"\r\n", b"\r\n", b"\n"])


@st.composite
def messages(draw):
    head = draw(_start_lines) + draw(_eols)
    for field in draw(st.lists(_fields, max_size=5)):
        head += field + draw(_eols)
    head += draw(_eols)
    body = draw(st.sampled_from([b"", b"abc", b"0123456789ab", b"3\r\nabc\r\n0\r\n\r\n",
                                 b"c\r\nhello world!\r\n0\r\nT: 1\r\n\r\n", b"\r\n"]))
    return head + body


@settings(max_examples=400, deadline=None)
@given(st.lists(st.tuples(st.sampled_from([IN, OUT]), st.lists(messages(), min_size=1, max_size=3),
                          st.sampled_from([0, 0, 0, 1, 5, 100_000])), min_size=1, max_size=8),
       st.sampled_from(["server", "client", "unknown"]))
def test_odd_heads_agree(syscalls, role):
    pieces = [(direction, b"".join(msgs), extra) for direction, msgs, extra in syscalls]
    same_both_ways(as_steps(pieces), role)
