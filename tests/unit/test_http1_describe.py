"""The handler's description of exchanges, with its memory of the last head, against ``describe``.

Every corpus is parsed twice: once through ``Http1Handler`` as the pipeline
feeds it (Host and User-Agent remembered for a repeated head), once through
``Http1Connection`` with each exchange given to ``describe`` afresh.  The
SpanFacts must be equal, feed by feed.
"""

from __future__ import annotations

import pytest
from hypothesis import example, given, settings
from hypothesis import strategies as st

from agent.protocols import SpanFacts, http1
from agent.protocols.http1 import Http1Connection, Http1Handler, describe

from .test_http1_fastpath import GET, OK, TRICKY, as_steps, messages
from .test_http1_fuzz import conversation_steps, conversations

IN, OUT = "ingress", "egress"


def both_ways(steps, role="server"):
    handler = Http1Handler(role)
    reference = Http1Connection(role)
    for ts, (direction, data, total, seq) in enumerate(steps):
        got = handler.feed(direction, data, total, ts, seq)
        want = [describe(ex, reference.role == "server")
                for ex in reference.feed(direction, data, total, ts, seq)]
        assert got == want
    got = handler.close(len(steps))
    assert got == [describe(ex, reference.role == "server") for ex in reference.close(len(steps))]


# Same header fields again, other Host or User-Agent, client side errors,
# absolute-form targets, versions, no query, empty query.
CORPUS = [
    [(IN, GET), (OUT, OK), (IN, GET), (OUT, OK)],
    [(IN, b"GET /x HTTP/1.0\r\nHost: a\r\nUser-Agent: u/1\r\n\r\n"), (OUT, OK),
     (IN, b"GET /x HTTP/1.0\r\nHost: b\r\nUser-Agent: u/1\r\n\r\n"), (OUT, OK),
     (IN, b"GET /x HTTP/1.0\r\nhost: b\r\n\r\n"), (OUT, OK),
     (IN, b"GET /x HTTP/1.0\r\nHOST:  c \r\nUser-agent: \r\n\r\n"), (OUT, OK)],
    [(IN, b"GET http://proxy.test/p/q?r=1 HTTP/1.1\r\n\r\n"), (OUT, OK),
     (IN, b"GET http://proxy.test HTTP/1.1\r\n\r\n"), (OUT, OK),
     (IN, b"GET /e? HTTP/1.1\r\n\r\n"), (OUT, OK)],
    [(OUT, GET), (IN, b"HTTP/1.1 404 Not Found\r\nContent-Length: 0\r\n\r\n"),
     (OUT, GET), (IN, b"HTTP/1.1 503 Busy\r\nContent-Length: 0\r\n\r\n"),
     (OUT, GET), (IN, b"HTTP/1.1 302 Found\r\nContent-Length: 0\r\n\r\n")],
    [(IN, GET), (OUT, b"HTTP/1.1 404 Not Found\r\nContent-Length: 0\r\n\r\n"),
     (IN, GET), (OUT, b"HTTP/1.1 500 Oops\r\nContent-Length: 0\r\n\r\n")],
    [(IN, b"GET / HTTP/1.1\r\nHost: h\r\n\r\n"), (IN, b"GET /2 HTTP/1.1\r\nHost: h\r\n\r\n"),
     (OUT, OK + OK)],
]


@pytest.mark.parametrize("pieces", CORPUS + TRICKY)
@pytest.mark.parametrize("role", ["server", "client", "unknown"])
def test_corpora_describe_the_same(pieces, role):
    if role == "client":
        pieces = [(OUT if d == IN else IN, *rest) for d, *rest in pieces]
    both_ways(as_steps(pieces), role)


@settings(max_examples=150, deadline=None)
@given(conversations, st.booleans(), st.sampled_from(["server", "client", "unknown"]))
def test_generated_conversations_describe_the_same(conversation, pipelined, role):
    steps = conversation_steps(conversation, pipelined)
    if role == "client":
        steps = [(OUT if d == IN else IN, data) for d, data in steps]
    both_ways(as_steps(steps), role)


@settings(max_examples=200, deadline=None)
@given(st.lists(st.tuples(st.sampled_from([IN, OUT]), st.lists(messages(), min_size=1, max_size=3),
                          st.sampled_from([0, 0, 0, 1, 100_000])), min_size=1, max_size=8),
       st.sampled_from(["server", "client", "unknown"]))
# A request whose body never comes, while the replies' reader is lost.
@example([(IN, [b"GET / HTTP/1.1\r\n\r\n", b"GET / HTTP/1.1\r\nContent-Length: 3\r\n\r\n"], 0),
          (OUT, [b"GET / HTTP/1.1\r\n\r\n"], 0), (OUT, [b"HTTP/1.1 200 OK\n\r\n"], 0)], "server")
def test_odd_heads_describe_the_same(syscalls, role):
    both_ways(as_steps([(d, b"".join(msgs), extra) for d, msgs, extra in syscalls]), role)


def test_a_repeated_head_is_described_without_looking_its_fields_up_again(monkeypatch):
    def no(*args):
        raise AssertionError("header fields looked up again")

    handler = Http1Handler("server")
    out = []
    steps = as_steps([(IN, GET), (OUT, OK)] * 3)
    for direction, data, total, seq in steps[:2]:
        out += handler.feed(direction, data, total, 7, seq)
    monkeypatch.setattr(http1.Exchange, "request_header", no)
    for direction, data, total, seq in steps[2:]:
        out += handler.feed(direction, data, total, 7, seq)
    assert len(out) == 3 and all(isinstance(f, SpanFacts) for f in out)
    assert out[2].name == "GET /a" and out[2].attributes["url.query"] == "b=?"
    assert out[2].attributes["http.request.header.host"] == "h"
