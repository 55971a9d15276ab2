"""HTTP/2 and gRPC handler: real conversations, synthetic ones from the h2 library, HPACK, fuzz.

Real bytes come from a grpcio server and client, and from h2-library and
curl clients of an h2-library server, all subprocesses on 127.0.0.1 talking
through a recording proxy; its recv() chunks stand in for the syscalls the
agent would capture on the server (directions flipped: on the client).
"""

from __future__ import annotations

import random
import shutil
import subprocess
import sys
import time

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from agent.protocols import ConnectionHints, Context
from agent.protocols.http2 import (MAX_OPEN_STREAMS, PREFACE, STATIC_TABLE, HeaderDecoder,
                                   Http2Handler, looks_like_http2)
from tests._recording import RecordingProxy
from tests.conftest import IN_CI
from tests.kernel._procs import APPS, stop
from ._pipeline_fuzz import FUZZ, answered_in_another_protocol, check_garbage, check_mutated

try:
    import h2.config
    import h2.connection
    import h2.errors
    import h2.events
    import h2.settings
    import hpack
except ImportError:
    if IN_CI:
        raise  # in CI a missing test dependency fails the run
    pytest.skip("the h2 and hpack libraries are not installed", allow_module_level=True)

IN, OUT = "ingress", "egress"
TCP = ConnectionHints("tcp", 50051, 40000, "server")
FUZZ = settings(max_examples=60, deadline=None, suppress_health_check=[HealthCheck.too_slow])


def require(module: str) -> None:
    """Skip without ``module``; in CI a missing test dependency is a failure."""
    try:
        __import__(module)
    except ImportError:
        if IN_CI:
            pytest.fail(f"{module} is required in CI (tests/requirements.txt)")
        pytest.skip(f"{module} is not installed")


# --- recording real conversations ---------------------------------------------------


def record(server_app: str, client_args) -> tuple[list[list[tuple[str, bytes, int]]], str]:
    """Run ``server_app``; run the client command made by ``client_args(port)`` through a RecordingProxy."""
    server = subprocess.Popen([sys.executable, str(APPS / f"{server_app}.py")],
                              stdout=subprocess.PIPE, text=True)
    try:
        port = int(server.stdout.readline())
        with RecordingProxy(port) as rec:
            client = subprocess.run(client_args(rec.port), capture_output=True, text=True,
                                    timeout=60)
            assert client.returncode == 0, client.stderr
            time.sleep(0.2)  # let the last chunks reach the record
        return rec.conversations, client.stdout
    finally:
        stop(server)


@pytest.fixture(scope="module")
def grpc_recording():
    require("grpc")
    conversations, stdout = record(
        "h2_grpc_server", lambda port: [sys.executable, str(APPS / "h2_grpc_client.py"), str(port)])
    assert len(conversations) == 1, "a gRPC channel should use one connection"
    results = [line.split() for line in stdout.splitlines() if line != "done"]
    return conversations[0], [(label, path, int(code)) for label, path, code in results]


@pytest.fixture(scope="module")
def plain_recording():
    require("h2")
    conversations, stdout = record(
        "h2_plain_server", lambda port: [sys.executable, str(APPS / "h2_plain_client.py"), str(port)])
    results = [line.split() for line in stdout.splitlines() if line != "done"]
    return conversations[0], [(method, path, int(status)) for method, path, status in results]


def replay(chunks, role="server", cap=None, seq=False, handler=None):
    """Feed recorded chunks (server's view) to a handler playing ``role``; facts by stream id."""
    handler = handler or Http2Handler(role)
    flip = role == "client"
    offsets = {IN: 1000, OUT: 5_000_000}
    facts = []
    for direction, data, ts in chunks:
        # Both ends see the same sequence numbers for the same bytes.
        tcp_seq = offsets[direction] & 0xFFFFFFFF if seq else None
        offsets[direction] += len(data)
        if flip:
            direction = OUT if direction == IN else IN
        captured = data if cap is None else data[:cap]
        facts += handler.feed(direction, captured, len(data), ts, tcp_seq)
    facts += handler.close(None)
    assert handler.internal_errors == 0
    return facts, handler


def by_stream(facts):
    return {f.attributes["sidetrace.http2.stream_id"]: f for f in facts}


# --- real gRPC ----------------------------------------------------------------------


@pytest.mark.parametrize("role", ["server", "client"])
def test_grpc_calls_become_one_span_each_with_rpc_attributes(grpc_recording, role):
    chunks, results = grpc_recording
    facts, handler = replay(chunks, role)
    assert handler.role == role
    assert handler.headers_complete(IN) and handler.headers_complete(OUT)
    assert len(facts) == len(results)
    assert [f.attributes["url.path"] for f in facts if not f.name.endswith("Slow")] == \
        [path for label, path, code in results if not label.startswith("concurrent")]
    for fact in facts:
        attrs = fact.attributes
        path = attrs["url.path"]
        service, method = path[1:].split("/")
        assert fact.name == f"{service}/{method}"
        assert fact.server_side == (role == "server")
        assert attrs["rpc.system"] == "grpc"
        assert attrs["rpc.service"] == "demo.Echo" and attrs["rpc.method"] == method
        assert attrs["http.request.method"] == "POST"
        assert attrs["http.response.status_code"] == 200
        assert attrs["network.protocol.name"] == "http" and attrs["network.protocol.version"] == "2"
        assert "sidetrace.http.flags" not in attrs
        assert fact.start_ns < fact.end_ns
    codes = sorted(f.attributes["rpc.grpc.status_code"] for f in facts)
    assert codes == sorted(code for _, _, code in results)
    # Stream ids are the client's odd ids, in the order the calls were made.
    assert sorted(by_stream(facts)) == list(range(1, 2 * len(results), 2))


def test_grpc_error_status_and_message(grpc_recording):
    chunks, _ = grpc_recording
    facts, _ = replay(chunks)
    failed = [f for f in facts if f.attributes["rpc.grpc.status_code"] == 5]
    assert len(failed) == 1
    fact = failed[0]
    assert fact.status == "error"
    assert fact.status_message == "no such thing: ünïcode 100% here"  # percent-decoded UTF-8
    assert fact.attributes["error.type"] == "NOT_FOUND"
    assert "http.response.body.size" not in fact.attributes
    ok = [f for f in facts if f.attributes["rpc.grpc.status_code"] == 0]
    assert all(f.status == "unset" and f.status_message is None for f in ok)


def test_grpc_trailers_only_response(grpc_recording):
    chunks, _ = grpc_recording
    facts, _ = replay(chunks)
    (fact,) = [f for f in facts if f.attributes["url.path"] == "/demo.Echo/Nope"]
    # UNIMPLEMENTED comes as a single HEADERS frame: :status, grpc-status, END_STREAM.
    assert fact.attributes["rpc.grpc.status_code"] == 12
    assert fact.attributes["error.type"] == "UNIMPLEMENTED"
    assert fact.status == "error"
    assert "http.response.body.size" not in fact.attributes


def test_grpc_streaming_and_concurrent_calls(grpc_recording):
    chunks, _ = grpc_recording
    facts, _ = replay(chunks)
    (server_stream,) = [f for f in facts if f.attributes["rpc.method"] == "ServerStream"]
    (client_stream,) = [f for f in facts if f.attributes["rpc.method"] == "ClientStream"]
    # gRPC messages: 5-byte prefix + "part i of x" (11 bytes) five times; three 1-byte requests.
    assert server_stream.attributes["http.response.body.size"] == 5 * (5 + 11)
    assert client_stream.attributes["http.request.body.size"] == 3 * (5 + 1)
    slow = sorted((f for f in facts if f.attributes["rpc.method"] == "Slow"),
                  key=lambda f: f.start_ns)
    assert len(slow) == 4
    # Multiplexed on one connection: every slow call started before the first one ended.
    assert max(f.start_ns for f in slow) < min(f.end_ns for f in slow)
    assert all(f.end_ns - f.start_ns >= 150_000_000 for f in slow)


def test_grpc_big_message_counted_not_held(grpc_recording):
    chunks, _ = grpc_recording
    facts, handler = replay(chunks)
    big = [f for f in facts if f.attributes.get("http.request.body.size", 0) > 100_000]
    assert len(big) == 1
    assert big[0].attributes["http.request.body.size"] == 100_000 + 5
    assert big[0].attributes["http.response.body.size"] == 100_000 + 10  # "echo:" + prefix


def test_request_seq_is_the_first_request_frame(grpc_recording):
    chunks, _ = grpc_recording
    facts, _ = replay(chunks, seq=True)
    server_facts, _ = replay(chunks, "client", seq=True)
    # Sequence numbers were made from stream offsets: recompute where each stream's
    # HEADERS frame starts by walking the frames of the request direction.
    stream = b"".join(data for direction, data, _ in chunks if direction == IN)
    starts = {}
    pos = len(PREFACE)
    while pos + 9 <= len(stream):
        length = int.from_bytes(stream[pos:pos + 3], "big")
        kind, sid = stream[pos + 3], int.from_bytes(stream[pos + 5:pos + 9], "big")
        if kind == 1 and sid not in starts:
            starts[sid] = 1000 + pos
        pos += 9 + length
    for fact in facts:
        assert fact.request_seq == starts[fact.attributes["sidetrace.http2.stream_id"]]
    assert {f.request_seq for f in facts} != {None}
    assert all(f.response_seq is not None for f in facts)
    assert [f.request_seq for f in facts] == [f.request_seq for f in server_facts]


def test_captures_cut_at_4k_still_give_every_call(grpc_recording):
    chunks, results = grpc_recording
    full, _ = replay(chunks)
    cut, handler = replay(chunks, cap=4096)
    assert len(cut) == len(full) == len(results)
    full_by, cut_by = by_stream(full), by_stream(cut)
    for sid, fact in cut_by.items():
        truth = full_by[sid]
        # Never a wrong value: what was decoded is what the full capture decoded.
        for key, value in fact.attributes.items():
            if key not in ("sidetrace.http.flags",):
                assert truth.attributes.get(key) == value, (sid, key)
        assert fact.start_ns == truth.start_ns
        assert fact.end_ns == truth.end_ns
    # Calls before the big one are untouched by it.
    big_sid = next(s for s, f in full_by.items()
                   if f.attributes.get("http.request.body.size", 0) > 100_000)
    for sid in full_by:
        if sid < big_sid:
            assert cut_by[sid].attributes == full_by[sid].attributes


def test_header_block_cut_mid_way_gives_its_captured_start(grpc_recording):
    # The tracer gathers a vectored write from its first iovecs only: grpc-c writes
    # the first request's HEADERS in ~20 pieces, so only its start is captured.
    chunks, _ = grpc_recording
    full, _ = replay(chunks, "client")
    first_request = next(i for i, (d, data, _) in enumerate(chunks)
                         if d == IN and b"/demo.Echo/Unary" in data)
    data = chunks[first_request][1]
    header_at = data.index(b"/demo.Echo/Unary") + len(b"/demo.Echo/Unary") + 40
    assert header_at < len(data) - 60  # well inside the header block
    handler = Http2Handler("client")
    facts = []
    for i, (direction, data, ts) in enumerate(chunks):
        d = OUT if direction == IN else IN
        captured = data[:header_at] if i == first_request else data
        facts += handler.feed(d, captured, len(data), ts, None)
    facts += handler.close(None)
    assert not handler.headers_complete(OUT) and handler.headers_complete(IN)
    first = facts[0]
    assert first.name == "demo.Echo/Unary"  # :path came before the cut
    assert first.attributes["sidetrace.http.flags"] == "headers_partial"
    assert first.attributes["rpc.grpc.status_code"] == 0
    truth = by_stream(full)
    for fact in facts:
        for key, value in fact.attributes.items():
            if key != "sidetrace.http.flags":
                assert truth[fact.attributes["sidetrace.http2.stream_id"]].attributes[key] == value


def test_joined_mid_connection_reports_only_what_is_certain(grpc_recording):
    chunks, _ = grpc_recording
    full, _ = replay(chunks)
    full_by = by_stream(full)
    # Start at the first chunk after the first call's response, with no role hint.
    first_end = next(i for i, (d, _, ts) in enumerate(chunks) if ts >= full[0].end_ns)
    later = chunks[first_end + 1:]
    handler = Http2Handler("unknown")
    facts = []
    for direction, data, ts in later:
        if not facts and handler.role == "unknown" and not looks_like_http2(data):
            continue  # the pipeline would wait for a chunk it recognises
        facts += handler.feed(direction, data, len(data), ts, None)
    facts += handler.close(None)
    assert handler.role == "server"
    assert not handler.headers_complete(IN)
    assert facts
    for fact in facts:
        truth = full_by[fact.attributes["sidetrace.http2.stream_id"]]
        for key, value in fact.attributes.items():
            if key != "sidetrace.http.flags":
                assert truth.attributes.get(key) == value, key
        assert fact.server_side


# --- real plain HTTP/2 ------------------------------------------------------------------


def test_plain_http2_from_an_h2_client(plain_recording):
    chunks, results = plain_recording
    for role in ("server", "client"):
        facts, _ = replay(chunks, role, handler=Http2Handler(role, Context(keep_query_values=True)))
        assert len(facts) == len(results)
        seen = {(f.attributes["http.request.method"],
                 f.attributes["url.path"] + ("?" + f.attributes["url.query"]
                                             if "url.query" in f.attributes else ""),
                 f.attributes["http.response.status_code"]) for f in facts}
        assert seen == {tuple(r) for r in results}
        for fact in facts:
            attrs = fact.attributes
            assert "rpc.system" not in attrs
            assert fact.name == f"{attrs['http.request.method']} {attrs['url.path']}"
            status = attrs["http.response.status_code"]
            bad = status >= 500 or (role == "client" and status >= 400)
            assert fact.status == ("error" if bad else "unset")
            assert attrs["user_agent.original"] == "h2-test-client"
        by_path = {f.attributes["url.path"]: f for f in facts}
        assert by_path["/hello"].attributes["url.query"] == "name=h2"
        assert by_path["/big"].attributes["http.response.body.size"] == 50_000
        assert by_path["/upload"].attributes["http.request.body.size"] == 3000  # padding excluded
        assert by_path["/hello/large-header"].attributes["http.response.status_code"] == 200


def test_plain_http2_from_curl(plain_recording):
    curl = shutil.which("curl")
    if curl is None:
        if IN_CI:
            pytest.fail("curl is required in CI (tests/apt-packages.txt)")
        pytest.skip("curl is not installed")
    conversations, out = record("h2_plain_server", lambda port: [
        curl, "-s", "-o", "/dev/null", "-w", "%{http_code}", "--http2-prior-knowledge",
        f"http://127.0.0.1:{port}/boom"])
    assert out == "500"
    facts, _ = replay(conversations[0])
    assert len(facts) == 1
    (fact,) = facts
    assert fact.name == "GET /boom"
    assert fact.attributes["http.response.status_code"] == 500
    assert fact.attributes["user_agent.original"].startswith("curl/")
    assert fact.status == "error"


def test_query_values_are_redacted_by_default(plain_recording):
    chunks, _ = plain_recording
    facts, _ = replay(chunks)
    hello = next(f for f in facts if f.attributes["url.path"] == "/hello")
    assert hello.attributes["url.query"] == "name=?" and hello.name == "GET /hello"
    assert all("h2" not in f.attributes.get("url.query", "") for f in facts)


# --- synthetic conversations from the h2 library ------------------------------------------


class Conversation:
    """An in-memory h2 client and server; ``chunks`` is what the server's syscalls would see."""

    def __init__(self, server_settings=None) -> None:
        self.client = h2.connection.H2Connection(h2.config.H2Configuration(client_side=True))
        self.server = h2.connection.H2Connection(h2.config.H2Configuration(client_side=False))
        self.chunks: list[tuple[str, bytes, int]] = []
        self.ts = 1_000_000
        self.client.initiate_connection()
        self.server.initiate_connection()
        if server_settings:
            self.server.update_settings(server_settings)
        self.flush()

    def flush(self) -> None:
        while True:
            moved = False
            for direction, src, dst in ((IN, self.client, self.server),
                                        (OUT, self.server, self.client)):
                if data := src.data_to_send():
                    self._chunk(direction, data)
                    for event in dst.receive_data(data):
                        if isinstance(event, h2.events.DataReceived):  # reopen the window
                            dst.acknowledge_received_data(event.flow_controlled_length,
                                                          event.stream_id)
                    moved = True
            if not moved:
                return

    def send_data(self, conn, sid, body: bytes, end_stream: bool, pad) -> None:
        """Whole DATA frames within the peer's frame size and flow-control window."""
        room = 0 if pad is None else pad + 1
        while body:
            size = min(len(body), conn.max_outbound_frame_size - room,
                       conn.local_flow_control_window(sid) - room)
            if size <= 0:
                self.flush()
                continue
            conn.send_data(sid, body[:size], end_stream=end_stream and size == len(body),
                           pad_length=pad)
            body = body[size:]
            self.flush()

    def _chunk(self, direction: str, data: bytes) -> None:
        self.ts += 1000
        self.chunks.append((direction, data, self.ts))

    def request(self, method="GET", path="/", headers=(), body=b"", pad=None, **options) -> int:
        sid = self.client.get_next_available_stream_id()
        self.client.send_headers(sid, [(":method", method), (":path", path), (":scheme", "http"),
                                       (":authority", "example")] + list(headers),
                                 end_stream=not body, **options)
        self.flush()
        if body:
            self.send_data(self.client, sid, body, True, pad)
        return sid

    def respond(self, sid, status=200, body=b"", headers=(), trailers=None, pad=None) -> None:
        self.server.send_headers(sid, [(":status", str(status))] + list(headers),
                                 end_stream=not body and not trailers)
        self.flush()
        if body:
            self.send_data(self.server, sid, body, not trailers, pad)
        if trailers:
            self.server.send_headers(sid, list(trailers), end_stream=True)
        self.flush()


def test_resets_and_goaway():
    conv = Conversation()
    cancelled = conv.request(path="/cancelled")
    conv.client.reset_stream(cancelled, h2.errors.ErrorCodes.CANCEL)
    conv.flush()
    refused_by_server = conv.request(path="/refused-by-server")
    conv.server.reset_stream(refused_by_server, h2.errors.ErrorCodes.REFUSED_STREAM)
    conv.flush()
    answered = conv.request(path="/answered")
    unprocessed = conv.request(path="/unprocessed")
    conv.respond(answered, 200, b"ok")
    conv.server.close_connection(last_stream_id=answered)
    conv.flush()
    facts = by_stream(replay(conv.chunks)[0])
    assert facts[cancelled].status == "error"
    assert facts[cancelled].attributes["sidetrace.http2.error_code"] == "CANCEL"
    assert facts[cancelled].attributes["sidetrace.http.flags"] == "reset_by_client"
    assert facts[cancelled].status_message == "stream reset by the client: CANCEL"
    assert facts[refused_by_server].attributes["sidetrace.http.flags"] == "reset_by_server"
    assert facts[answered].status == "unset"
    assert facts[answered].attributes["http.response.status_code"] == 200
    assert facts[unprocessed].status == "error"
    assert facts[unprocessed].attributes["sidetrace.http.flags"] == "refused"


def test_reset_after_a_complete_response_changes_nothing():
    conv = Conversation()
    sid = conv.request(path="/x", body=b"still uploading")
    conv.respond(sid, 200, b"done early")
    facts = replay(conv.chunks)[0]
    assert len(facts) == 1 and facts[0].status == "unset"


def test_server_push_keeps_hpack_in_step():
    conv = Conversation()
    sid = conv.request(path="/page")
    pushed = conv.server.get_next_available_stream_id()
    conv.server.push_stream(sid, pushed, [(":method", "GET"), (":path", "/style.css"),
                                          (":scheme", "http"), (":authority", "example"),
                                          ("x-pushed", "yes")])
    conv.respond(pushed, 200, b"css")
    conv.respond(sid, 200, b"page", headers=[("x-pushed", "yes")])
    second = conv.request(path="/next", headers=[("x-pushed", "yes")])
    conv.respond(second, 204, headers=[("x-pushed", "yes")])
    facts, handler = replay(conv.chunks)
    assert [f.attributes["url.path"] for f in facts] == ["/page", "/next"]
    assert [f.attributes["http.response.status_code"] for f in facts] == [200, 204]
    assert handler.headers_complete(IN) and handler.headers_complete(OUT)


def test_trailers_and_informational_responses():
    conv = Conversation()
    sid = conv.request("POST", "/pkg.Svc/Call", headers=[("content-type", "application/grpc+proto")],
                       body=b"\0\0\0\0\1x")
    conv.server.send_headers(sid, [(":status", "100")])
    conv.respond(sid, 200, b"\0\0\0\0\1y", headers=[("content-type", "application/grpc")],
                 trailers=[("grpc-status", "14"), ("grpc-message", "try%20later")])
    (fact,) = replay(conv.chunks)[0]
    assert fact.name == "pkg.Svc/Call"
    assert fact.attributes["http.response.status_code"] == 200
    assert fact.attributes["rpc.grpc.status_code"] == 14
    assert fact.status_message == "try later"
    assert fact.attributes["error.type"] == "UNAVAILABLE"


def test_open_streams_are_bounded_and_flushed_on_close():
    conv = Conversation(server_settings={h2.settings.SettingCodes.MAX_CONCURRENT_STREAMS: 1000})
    for i in range(MAX_OPEN_STREAMS + 20):
        conv.request(path=f"/{i}")
    handler = Http2Handler("server")
    facts = []
    for direction, data, ts in conv.chunks:
        facts += handler.feed(direction, data, len(data), ts, None)
        assert handler.open_streams <= MAX_OPEN_STREAMS
    assert len(facts) == 20  # the oldest, flushed without a response
    facts += handler.close(2_000_000_000)
    assert len(facts) == MAX_OPEN_STREAMS + 20
    assert all(f.attributes["sidetrace.http.flags"] == "response_missing" for f in facts)
    assert all(f.status == "unset" for f in facts)
    assert facts[-1].end_ns == 2_000_000_000


def test_lost_event_inside_data_is_counted_through_sequence_numbers():
    conv = Conversation()
    sid = conv.request("POST", "/upload", body=b"a" * 30_000)
    conv.respond(sid, 200, b"ok")
    second = conv.request(path="/after")
    conv.respond(second, 200, b"ok")
    # Re-cut the client's bytes into 1000-byte syscalls and lose one in the middle of the body.
    chunks = []
    offset = 0
    for direction, data, ts in conv.chunks:
        if direction == OUT:
            chunks.append((direction, data, ts, None))
            continue
        for at in range(0, len(data), 1000):
            chunks.append((direction, data[at:at + 1000], ts, offset + at))
        offset += len(data)
    handler = Http2Handler("server")
    facts = []
    dropped = 0
    for direction, data, ts, off in chunks:
        if off is not None and 10_000 <= off < 11_000:
            dropped += 1
            continue  # the perf ring lost this event
        facts += handler.feed(direction, data, len(data), ts, off)
    facts += handler.close(None)
    assert dropped == 1
    assert [f.attributes["url.path"] for f in facts] == ["/upload", "/after"]
    assert handler.headers_complete(IN)
    assert facts[0].attributes["http.request.body.size"] == 30_000


# --- detection ------------------------------------------------------------------------------


def test_detection(grpc_recording):
    chunks, _ = grpc_recording
    first_in = next(d for direction, d, _ in chunks if direction == IN)
    first_out = next(d for direction, d, _ in chunks if direction == OUT)
    assert Http2Handler.detect(first_in, IN, TCP)          # the client preface
    assert Http2Handler.detect(PREFACE[:16], OUT, TCP)     # a preface cut short
    assert Http2Handler.detect(first_out, OUT, TCP)        # the server's SETTINGS
    conv = Conversation()
    conv.request(path="/a")
    conv.request(path="/b")
    mid = b"".join(d for direction, d, _ in conv.chunks[-2:] if direction == IN)
    assert Http2Handler.detect(mid, IN, TCP)               # frames joined mid-stream
    not_h2 = [
        b"GET / HTTP/1.1\r\nHost: x\r\n\r\n",
        b"HTTP/1.1 200 OK\r\n\r\n",
        bytes.fromhex("160301020001"),                      # TLS ClientHello
        bytes.fromhex("0000000804d2162f"),                  # PostgreSQL SSLRequest
        bytes.fromhex("001d12340100000100000000000001610474657374000001"),  # DNS over TCP
        b"\x00\x00\x04\x08\x00\x00\x00\x00\x00",            # one WINDOW_UPDATE header alone
        b"*1\r\n$4\r\nPING\r\n",
        b"",
    ]
    for data in not_h2:
        assert not Http2Handler.detect(data, IN, TCP), data
    assert not Http2Handler.detect(first_in, IN, ConnectionHints("udp", 1, 2, "unknown"))


@FUZZ
@given(st.binary(min_size=9, max_size=200))
def test_detection_of_random_bytes_needs_two_real_frame_headers(data):
    if looks_like_http2(data) and not data.startswith(b"P"):
        # Accepted: then the first frame header must be one a peer could send.
        kind, flags = data[3], data[4]
        assert kind <= 9 and not data[5] & 0x80


# --- HPACK ------------------------------------------------------------------------------------


def test_static_table_matches_the_hpack_library():
    from hpack.table import HeaderTable
    assert STATIC_TABLE == tuple(HeaderTable.STATIC_TABLE)


header_lists = st.lists(
    st.lists(st.tuples(st.sampled_from(["content-type", "x-a", "x-b", ":path", "grpc-status",
                                        "user-agent", "x-" + "c" * 40]),
                       st.text(alphabet="abcxyz0129 /%", max_size=30)), min_size=1, max_size=6),
    min_size=1, max_size=12)


@FUZZ
@given(header_lists, st.booleans(), st.sampled_from([4096, 256, 100]))
def test_hpack_decoder_matches_the_library_encoder(blocks, huffman, table_size):
    encoder = hpack.Encoder()
    encoder.header_table_size = table_size
    decoder = HeaderDecoder()
    for headers in blocks:
        block = encoder.encode(headers, huffman=huffman)
        fields, certain = decoder.decode(block)
        assert certain
        assert [(n.decode(), v.decode()) for n, v in fields] == headers


@FUZZ
@given(header_lists, st.data())
def test_hpack_after_a_lost_block_never_decodes_a_wrong_field(blocks, data):
    encoder = hpack.Encoder()
    decoder = HeaderDecoder()
    lost = data.draw(st.integers(0, len(blocks) - 1))
    for i, headers in enumerate(blocks):
        block = encoder.encode(headers)
        if i == lost:
            decoder.forget()
            continue
        fields, _ = decoder.decode(block)
        assert len(fields) == len(headers)
        for (name, value), (true_name, true_value) in zip(fields, headers):
            if name is not None:
                assert name.decode() == true_name
            if value is not None and name is not None:
                assert value.decode() == true_value


def test_hpack_garbage_is_contained():
    decoder = HeaderDecoder()
    fields, certain = decoder.decode(b"\xff\xff\xff\xff\xff\xff\xff")  # an endless integer
    assert not certain and not decoder.complete
    fields, certain = decoder.decode(b"\xbe")  # index 62 of an unknown table: unknown, not an error
    assert fields == [(None, None)] and not certain


# --- robustness --------------------------------------------------------------------------------


def resplit(chunks, cuts):
    out = []
    for (direction, data, ts), cut in zip(chunks, cuts):
        at = 0
        for piece in cut:
            size = max(1, piece % (len(data) + 1))
            if at >= len(data):
                break
            out.append((direction, data[at:at + size], ts))
            at += size
        if at < len(data):
            out.append((direction, data[at:], ts))
    return out


def facts_key(facts):
    return [(f.name, f.start_ns, f.end_ns, f.status, f.status_message, sorted(f.attributes.items()),
             f.request_seq, f.response_seq) for f in facts]


@FUZZ
# Drawn for chunk i % len(cuts): a recording's number of chunks must not shape the draws.
@given(cuts=st.lists(st.lists(st.integers(0, 10_000), max_size=4), min_size=1, max_size=64))
def test_random_splits_of_real_grpc_bytes_give_identical_facts(grpc_recording, cuts):
    chunks, _ = grpc_recording
    pieces = resplit(chunks, [cuts[i % len(cuts)] for i in range(len(chunks))])
    expected, _ = replay(chunks)
    got, _ = replay(pieces)
    assert facts_key(got) == facts_key(expected)


@FUZZ
@given(st.lists(st.tuples(st.sampled_from(["GET", "POST"]), st.integers(0, 3),
                          st.integers(100, 599), st.integers(0, 40_000), st.booleans(),
                          st.one_of(st.none(), st.integers(0, 255))), min_size=1, max_size=6),
       st.data())
def test_random_splits_of_synthetic_conversations_give_identical_facts(requests, data):
    conv = Conversation()
    truth = {}
    for method, path_n, status, size, grpc, pad in requests:
        path = f"/svc.S/M{path_n}" if grpc else f"/p{path_n}"
        headers = [("content-type", "application/grpc")] if grpc else []
        sid = conv.request(method, path, headers=headers, body=b"q" * (size % 5000), pad=pad)
        status = 200 if grpc else max(status, 200)
        trailers = [("grpc-status", str(size % 17))] if grpc else None
        conv.respond(sid, status, b"r" * size, trailers=trailers, pad=pad)
        truth[sid] = (path, status, size % 17 if grpc else None)
    expected, _ = replay(conv.chunks, seq=True)
    assert {sid: (f.attributes["url.path"], f.attributes["http.response.status_code"],
                  f.attributes.get("rpc.grpc.status_code")) for sid, f in by_stream(expected).items()} \
        == truth
    cuts = [data.draw(st.lists(st.integers(0, 100_000), max_size=5)) for _ in conv.chunks]
    got, _ = replay(resplit(conv.chunks, cuts), seq=True)
    assert facts_key(got) == facts_key(expected)


@FUZZ
@given(st.lists(st.tuples(st.sampled_from([IN, OUT]), st.binary(max_size=300),
                          st.integers(0, 5000)), max_size=20), st.booleans())
def test_random_bytes_never_raise(chunks, with_preface):
    handler = Http2Handler("unknown")
    if with_preface:
        handler.feed(IN, PREFACE, len(PREFACE), 1, None)
    for i, (direction, data, extra) in enumerate(chunks):
        handler.feed(direction, data, len(data) + extra, i, i * 7 if extra % 3 else None)
    handler.close(None)
    assert handler.internal_errors == 0


@FUZZ
@given(st.data())
def test_mutated_real_bytes_never_raise(grpc_recording, data):
    chunks, _ = grpc_recording
    rng = random.Random(data.draw(st.integers(0, 2**32)))
    handler = Http2Handler("server")
    for direction, chunk, ts in chunks:
        chunk = bytearray(chunk)
        for _ in range(rng.randrange(4)):
            if chunk:
                chunk[rng.randrange(len(chunk))] = rng.randrange(256)
        handler.feed(direction, bytes(chunk), len(chunk) + rng.choice([0, 0, 5, 70_000]), ts, None)
    handler.close(None)
    assert handler.internal_errors == 0


# --- through the pipeline (see _pipeline_fuzz) ---------------------------------------------


@FUZZ
@given(data=st.data())
def test_mutated_captures_through_the_pipeline(grpc_recording, plain_recording, data):
    check_mutated("http2", [grpc_recording[0], plain_recording[0]], data)


@FUZZ
@given(data=st.data())
def test_random_bytes_through_the_pipeline(data):
    check_garbage("http2", data)


def test_replies_in_another_protocol_make_no_span(grpc_recording, plain_recording):
    for conversation in [grpc_recording[0], plain_recording[0]]:
        spans, _ = answered_in_another_protocol("http2", conversation)
        assert spans == []
