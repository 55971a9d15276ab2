"""HTTP/1 parser on bytes recorded from real conversations on 127.0.0.1.

A Python ``http.server`` answers ``http.client`` and ``urllib`` through a
recording proxy; the proxy's recv() chunks, in order, stand in for the
syscalls the agent would capture on the server.
"""

from __future__ import annotations

import http.client
import http.server
import threading
import urllib.request

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from agent.protocols.http1 import ExchangeFlags, Http1Connection
from tests._recording import RecordingProxy

from ._pipeline_fuzz import FUZZ, answered_in_another_protocol, check_garbage, check_mutated, conversations_of
from ._replay import cut_lists, resplit

F = ExchangeFlags
BIG = 300_000
POST_BODY = b"p" * 10_000
CHUNKS = [b"first chunk ", b"x" * 5000, b"last"]


class Handler(http.server.BaseHTTPRequestHandler):
    protocol_version = "HTTP/1.1"

    def log_message(self, *args):  # keep test output clean
        pass

    def _send(self, status, body=b"", headers=()):
        self.send_response(status)
        for name, value in headers:
            self.send_header(name, value)
        if status not in (204, 304):
            self.send_header("Content-Length", str(len(body)))
        self.end_headers()
        if self.command != "HEAD":
            self.wfile.write(body)

    def do_GET(self):
        if self.path == "/hello" or self.path.startswith("/hello?"):
            self._send(200, b"hello world", [("Content-Type", "text/plain")])
        elif self.path == "/big":
            self._send(200, b"B" * BIG)
        elif self.path == "/empty":
            self._send(204)
        elif self.path == "/cached":
            self._send(304)
        elif self.path == "/missing":
            self._send(404, b"no such thing")
        elif self.path == "/chunked":
            self.send_response(200)
            self.send_header("Transfer-Encoding", "chunked")
            self.end_headers()
            for chunk in CHUNKS:  # separate writes, as a streaming server would
                self.wfile.write(b"%x\r\n%s\r\n" % (len(chunk), chunk))
                self.wfile.flush()
            self.wfile.write(b"0\r\n\r\n")
        elif self.path == "/until-close":
            self.send_response(200)
            self.send_header("Connection", "close")
            self.end_headers()
            self.wfile.write(b"streamed until the connection closes")
            self.close_connection = True
        else:
            self._send(500, b"?")

    do_HEAD = do_GET

    def do_POST(self):
        body = self.rfile.read(int(self.headers["Content-Length"]))
        self._send(200, b"%d" % len(body))

    def do_PUT(self):  # reached after the automatic 100 Continue
        body = self.rfile.read(int(self.headers["Content-Length"]))
        self._send(201, b"stored %d" % len(body))


# (method, path, status, request body size, response body size) per exchange.
KEEP_ALIVE_EXPECTED = [
    ("GET", "/hello", 200, 0, 11),
    ("HEAD", "/hello", 200, 0, 0),
    ("POST", "/echo", 200, len(POST_BODY), 5),
    ("GET", "/chunked", 200, 0, sum(map(len, CHUNKS))),
    ("GET", "/big", 200, 0, BIG),
    ("GET", "/empty", 204, 0, 0),
    ("GET", "/cached", 304, 0, 0),
    ("GET", "/missing", 404, 0, 13),
    ("PUT", "/continue", 201, 4000, 11),
    ("GET", "/until-close", 200, 0, 36),
]
URLLIB_EXPECTED = [("GET", "/hello", 200, 0, 11)]


def _client_conversation(port):
    conn = http.client.HTTPConnection("127.0.0.1", port, timeout=10)
    try:
        for method, path, body, headers in [
            ("GET", "/hello", None, {}), ("HEAD", "/hello", None, {}),
            ("POST", "/echo", POST_BODY, {}), ("GET", "/chunked", None, {}),
            ("GET", "/big", None, {}), ("GET", "/empty", None, {}),
            ("GET", "/cached", None, {}), ("GET", "/missing", None, {}),
            ("PUT", "/continue", b"c" * 4000, {"Expect": "100-continue"}),
            ("GET", "/until-close", None, {}),
        ]:
            conn.request(method, path, body=body, headers=headers)
            conn.getresponse().read()
    finally:
        conn.close()


@pytest.fixture(scope="module")
def recorded():
    server = http.server.ThreadingHTTPServer(("127.0.0.1", 0), Handler)
    server_thread = threading.Thread(target=server.serve_forever, kwargs={"poll_interval": 0.05},
                                     daemon=True)
    server_thread.start()
    proxy = RecordingProxy(server.server_address)
    try:
        _client_conversation(proxy.port)
        with urllib.request.urlopen(f"http://127.0.0.1:{proxy.port}/hello", timeout=10) as r:
            assert r.read() == b"hello world"
        proxy.wait_idle(2)
    finally:
        proxy.close()
        server.shutdown()
        server.server_close()
        server_thread.join(5)
    keep_alive, one_shot = proxy.conversations
    return keep_alive, one_shot


def summary(exchanges):
    return [(e.method, e.path, e.status_code, e.request_body_size, e.response_body_size)
            for e in exchanges]


def parse(steps, role="server", *, capture=None, flip=False):
    conn = Http1Connection(role)
    out = []
    seq = {"ingress": 1000, "egress": 9000}
    for direction, data, ts in steps:
        total = len(data)
        if flip:
            direction = "egress" if direction == "ingress" else "ingress"
        out += conn.feed(direction, data[:capture] if capture else data, total, ts, seq[direction])
        seq[direction] += total
    out += conn.close()
    assert conn.internal_errors == 0
    return out


def test_keep_alive_conversation(recorded):
    keep_alive, _ = recorded
    exchanges = parse(keep_alive)
    assert summary(exchanges) == KEEP_ALIVE_EXPECTED
    flags = {e.path: e.flags for e in exchanges}
    assert flags["/continue"] == F.INTERIM
    assert flags["/until-close"] == F.ENDED_BY_CLOSE
    assert all(f == F.NONE for p, f in flags.items() if p not in ("/continue", "/until-close"))
    hello = exchanges[0]
    assert hello.request_headers["host"] == f"127.0.0.1:{hello.request_headers['host'].split(':')[1]}"
    assert hello.response_headers["content-type"] == "text/plain"
    assert hello.response_headers["server"].startswith("BaseHTTP")
    assert hello.reason == "OK" and hello.version == "1.1"


def test_exchange_times_and_sequence_numbers(recorded):
    keep_alive, _ = recorded
    exchanges = parse(keep_alive)
    for prev, ex in zip(exchanges, exchanges[1:]):
        assert prev.end_ns <= ex.start_ns
    for ex in exchanges:
        assert ex.start_ns <= ex.request_end_ns <= ex.response_start_ns <= ex.end_ns
    # Sequence numbers advance by each message's size on the wire.
    for prev, ex in zip(exchanges, exchanges[1:]):
        assert ex.request_seq == prev.request_seq + prev.request_size
    interim_response = len(b"HTTP/1.1 100 Continue\r\n\r\n")
    for prev, ex in zip(exchanges, exchanges[1:]):
        skipped = interim_response if ex.path == "/continue" else 0
        assert ex.response_seq == prev.response_seq + prev.response_size + skipped


def test_urllib_conversation(recorded):
    _, one_shot = recorded
    exchanges = parse(one_shot)
    assert summary(exchanges) == URLLIB_EXPECTED
    assert exchanges[0].request_headers["connection"] == "close"
    assert exchanges[0].request_headers["user-agent"].startswith("Python-urllib")


def test_roles_client_and_unknown_agree(recorded):
    keep_alive, _ = recorded
    as_server = summary(parse(keep_alive))
    assert summary(parse(keep_alive, "client", flip=True)) == as_server
    unknown = Http1Connection("unknown")
    out = []
    for direction, data, ts in keep_alive:
        out += unknown.feed(direction, data, len(data), ts)
    out += unknown.close()
    assert unknown.role == "server"
    assert summary(out) == as_server


@pytest.mark.parametrize("capture", [4096, 512, 100])
def test_truncated_captures_keep_every_exchange(recorded, capture):
    keep_alive, _ = recorded
    exchanges = parse(keep_alive, capture=capture)
    got = summary(exchanges)
    assert [g[:3] for g in got] == [e[:3] for e in KEEP_ALIVE_EXPECTED]
    big = next(e for e in exchanges if e.path == "/big")
    assert big.flags & F.RESPONSE_TRUNCATED
    assert not big.flags & (F.REQUEST_MISSING | F.RESPONSE_MISSING)
    sizes = {g[1]: g[3:] for g in got}
    if capture >= 512:
        # Heads fit: bodies delimited by Content-Length are counted, captured or not.
        assert sizes["/big"] == (0, BIG)
        assert sizes["/echo"] == (len(POST_BODY), 5)
        assert big.flags == F.RESPONSE_TRUNCATED
    else:
        # The head itself was cut: the body's length is unknown, and said so.
        assert big.flags & F.RESPONSE_UNPARSED


@settings(max_examples=40, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture])
@given(kept_alive=st.booleans(), cuts=cut_lists)
def test_any_resplit_of_the_syscalls_gives_the_same_exchanges(recorded, kept_alive, cuts):
    keep_alive, one_shot = recorded
    steps = keep_alive if kept_alive else one_shot
    # Pieces of one syscall keep its timestamp; sequence numbers follow.
    assert [e.as_dict() for e in parse(resplit(steps, cuts))] == [e.as_dict() for e in parse(steps)]


# --- through the pipeline (see _pipeline_fuzz) ---------------------------------------------


@FUZZ
@given(data=st.data())
def test_mutated_captures_through_the_pipeline(recorded, data):
    check_mutated("http", conversations_of(recorded), data)


@FUZZ
@given(data=st.data())
def test_random_bytes_through_the_pipeline(data):
    check_garbage("http", data)


def test_replies_in_another_protocol_make_no_span(recorded):
    for conversation in conversations_of(recorded):
        spans, _ = answered_in_another_protocol("http", conversation)
        assert spans == []
