"""DNS handler: real unbound answering dnspython over UDP and TCP, crafted messages, fuzz.

unbound runs as a subprocess on 127.0.0.1 with a static zone; dnspython asks
it through recording relays (UDP: every datagram; TCP: every recv() chunk),
and the recordings stand in for the syscalls of unbound's sockets (directions
flipped: of the client's).
"""

from __future__ import annotations

import select
import shutil
import socket
import subprocess
import sys
import threading
import time

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from agent.protocols import ConnectionHints
from agent.protocols.dns import DnsHandler, looks_like_dns, parse_message
from tests._recording import RecordingProxy
from tests._servers import wait_for_dns
from tests.conftest import IN_CI
from tests.kernel._procs import APPS, stop
from ._pipeline_fuzz import FUZZ, answered_in_another_protocol, check_garbage, check_mutated

try:
    import dns.edns
    import dns.flags
    import dns.message
    import dns.query
    import dns.rcode
    import dns.rrset
except ImportError:
    if IN_CI:
        raise  # in CI a missing test dependency fails the run
    pytest.skip("dnspython is not installed", allow_module_level=True)

IN, OUT = "ingress", "egress"
FUZZ = settings(max_examples=80, deadline=None, suppress_health_check=[HealthCheck.too_slow])
QUERIES = [("a.test", "A"), ("b.test", "AAAA"), ("nope.test", "A"), ("txt.test", "TXT"),
           ("mx.test", "MX")]
EXPECTED = {  # name -> (type, rcode, answer count, addresses)
    "a.test": ("A", "NOERROR", 2, "10.1.2.3,10.1.2.4"),
    "b.test": ("AAAA", "NOERROR", 1, "2001:db8::1"),
    "nope.test": ("A", "NXDOMAIN", 0, None),
    "txt.test": ("TXT", "NOERROR", 1, None),
    "mx.test": ("MX", "NOERROR", 1, None),
}


def udp_hints(port=40000):
    return ConnectionHints("udp", port, 50000, "unknown")


# --- unbound and the relays ------------------------------------------------------------


@pytest.fixture(scope="module")
def unbound(tmp_path_factory):
    if shutil.which("unbound") is None and not shutil.os.path.exists("/usr/sbin/unbound"):
        if IN_CI:
            pytest.fail("unbound is required in CI (tests/apt-packages.txt)")
        pytest.skip("unbound is not installed")
    directory = tmp_path_factory.mktemp("unbound")
    proc = subprocess.Popen([sys.executable, str(APPS / "dns_unbound.py"), str(directory)],
                            stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    try:
        port = int(proc.stdout.readline())
        wait_for_dns(port, proc)  # ready when it answers
        yield port
    finally:
        stop(proc)


class UdpRelay:
    """Relays datagrams to ``port``; records them as the server's socket sees them."""

    def __init__(self, port: int) -> None:
        self.upstream = ("127.0.0.1", port)
        self.sock = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
        self.sock.bind(("127.0.0.1", 0))
        self.port = self.sock.getsockname()[1]
        self.clients: dict[tuple, socket.socket] = {}
        self.record: list[tuple[str, bytes, int]] = []
        self.stopping = threading.Event()
        self.thread = threading.Thread(target=self._run, daemon=True)
        self.thread.start()

    def _run(self) -> None:
        while not self.stopping.is_set():
            ready, _, _ = select.select([self.sock, *self.clients.values()], [], [], 0.05)
            for sock in ready:
                data, addr = sock.recvfrom(65535)
                if sock is self.sock:
                    upstream = self.clients.get(addr)
                    if upstream is None:
                        upstream = self.clients[addr] = socket.socket(socket.AF_INET,
                                                                       socket.SOCK_DGRAM)
                    self.record.append((IN, data, time.monotonic_ns()))
                    upstream.sendto(data, self.upstream)
                else:
                    client = next(a for a, s in self.clients.items() if s is sock)
                    self.record.append((OUT, data, time.monotonic_ns()))
                    self.sock.sendto(data, client)

    def close(self) -> None:
        self.stopping.set()
        self.thread.join(5)
        for sock in [self.sock, *self.clients.values()]:
            sock.close()


@pytest.fixture(scope="module")
def udp_recording(unbound):
    relay = UdpRelay(unbound)
    try:
        answers = []
        for name, rdtype in QUERIES:
            answers.append(dns.query.udp(dns.message.make_query(name, rdtype), "127.0.0.1",
                                         port=relay.port, timeout=5))
        # Two in flight at once from one socket, answered in either order.
        with socket.socket(socket.AF_INET, socket.SOCK_DGRAM) as sock:
            first = dns.message.make_query("a.test", "A")
            second = dns.message.make_query("b.test", "AAAA")
            sock.sendto(first.to_wire(), ("127.0.0.1", relay.port))
            sock.sendto(second.to_wire(), ("127.0.0.1", relay.port))
            sock.settimeout(5)
            answers += [dns.message.from_wire(sock.recv(65535)) for _ in range(2)]
        time.sleep(0.1)
    finally:
        relay.close()
    return relay.record, answers


@pytest.fixture(scope="module")
def tcp_recording(unbound):
    recorder = RecordingProxy(unbound)
    try:
        with socket.create_connection(("127.0.0.1", recorder.port), timeout=5) as sock:
            answers = [dns.query.tcp(dns.message.make_query(name, rdtype), "127.0.0.1",
                                     port=recorder.port, sock=sock, timeout=5)
                       for name, rdtype in QUERIES]
        recorder.wait_idle(1)
    finally:
        recorder.close()
    (record,) = recorder.conversations
    return record, answers


def replay(chunks, flip=False, handler=None, seq=False, close_ns=None):
    handler = handler or DnsHandler("unknown")
    offsets = {IN: 7, OUT: 9_000}
    facts = []
    for direction, data, ts in chunks:
        tcp_seq = offsets[direction] if seq else None
        offsets[direction] += len(data)
        if flip:
            direction = OUT if direction == IN else IN
        facts += handler.feed(direction, data, len(data), ts, tcp_seq)
    facts += handler.close(close_ns)
    assert handler.internal_errors == 0
    return facts, handler


def check_against_unbound(facts, server_side):
    for fact in facts:
        attrs = fact.attributes
        name = attrs["dns.question.name"]
        rdtype, rcode, count, addresses = EXPECTED[name]
        assert fact.name == f"DNS {rdtype} {name}"
        assert fact.server_side == server_side
        assert attrs["dns.question.type"] == rdtype
        assert attrs["dns.response_code"] == rcode
        assert attrs["dns.answer_count"] == count
        listed = attrs.get("sidetrace.dns.answers")  # unbound rotates the order of records
        assert (sorted(listed.split(",")) if listed else None) == \
            (sorted(addresses.split(",")) if addresses else None)
        assert attrs["network.protocol.name"] == "dns"
        assert "sidetrace.dns.flags" not in attrs
        if rcode == "NOERROR":
            assert fact.status == "unset" and "error.type" not in attrs
        else:
            assert fact.status == "error"
            assert attrs["error.type"] == rcode == fact.status_message
        assert fact.start_ns <= fact.end_ns


# --- real unbound --------------------------------------------------------------------------


def test_udp_queries_on_the_servers_socket(udp_recording):
    chunks, answers = udp_recording
    assert [dns.rcode.to_text(a.rcode()) for a in answers[:5]] == \
        [EXPECTED[name][1] for name, _ in QUERIES]
    facts, handler = replay(chunks)
    assert handler.role == "server"
    assert len(facts) == len(QUERIES) + 2
    assert [f.attributes["dns.question.name"] for f in facts[:5]] == [n for n, _ in QUERIES]
    check_against_unbound(facts, server_side=True)
    assert all(f.request_seq is None for f in facts)


def test_udp_queries_on_the_clients_socket(udp_recording):
    chunks, _ = udp_recording
    facts, handler = replay(chunks, flip=True)
    assert handler.role == "client"
    check_against_unbound(facts, server_side=False)
    # The two queries in flight at once were paired by id and question, not by order.
    concurrent = facts[-2:]
    assert {f.attributes["dns.question.name"] for f in concurrent} == {"a.test", "b.test"}


def test_tcp_queries_on_one_connection(tcp_recording):
    chunks, answers = tcp_recording
    assert len(answers) == len(QUERIES)
    for flip in (False, True):
        facts, _ = replay(chunks, flip=flip, seq=True)
        assert [f.attributes["dns.question.name"] for f in facts] == [n for n, _ in QUERIES]
        check_against_unbound(facts, server_side=not flip)
        # The sequence number of each query's length prefix, from the recorded offsets.
        stream = b"".join(d for direction, d, _ in chunks if direction == IN)
        starts, pos = [], 0
        while pos < len(stream):
            starts.append(7 + pos)
            pos += 2 + int.from_bytes(stream[pos:pos + 2], "big")
        assert [f.request_seq for f in facts] == starts
        assert all(f.response_seq is not None for f in facts)


def test_tcp_length_prefix_read_by_an_earlier_syscall(tcp_recording):
    # unbound reads the 2-byte length, then the message: the agent detects the
    # protocol on the second read and the handler starts with a bare message.
    chunks, _ = tcp_recording
    stream = b"".join(d for direction, d, _ in chunks if direction == IN)
    reads = []
    pos = 0
    ts = chunks[0][2]
    while pos < len(stream):
        length = int.from_bytes(stream[pos:pos + 2], "big")
        reads += [(IN, stream[pos:pos + 2], ts), (IN, stream[pos + 2:pos + 2 + length], ts)]
        pos += 2 + length
    responses = [c for c in chunks if c[0] == OUT]
    assert len(responses) == len(QUERIES)
    conversation = []
    for i, response in enumerate(responses):
        conversation += reads[2 * i:2 * i + 2] + [response]
    assert not DnsHandler.detect(conversation[0][1], IN, ConnectionHints("tcp", 5353, 4, "server"))
    assert DnsHandler.detect(conversation[1][1], IN, ConnectionHints("tcp", 1234, 4, "server"))
    facts, _ = replay(conversation[1:], seq=True)
    assert [f.attributes["dns.question.name"] for f in facts] == [n for n, _ in QUERIES]
    check_against_unbound(facts, server_side=True)


def test_detection_on_real_bytes(udp_recording, tcp_recording):
    udp_chunks, _ = udp_recording
    tcp_chunks, _ = tcp_recording
    for direction, data, _ in udp_chunks:
        assert DnsHandler.detect(data, direction, udp_hints(port=31337))  # any port
    first_tcp = tcp_chunks[0][1]
    assert DnsHandler.detect(first_tcp, IN, ConnectionHints("tcp", 31337, 40000, "server"))
    assert not DnsHandler.detect(first_tcp, IN, udp_hints())


# --- crafted messages ------------------------------------------------------------------------


def wire(name="example.com", rdtype="A", response=False, rcode=0, answers=(), **kwargs) -> bytes:
    query = dns.message.make_query(name, rdtype, **kwargs)
    if not response:
        return query.to_wire()
    reply = dns.message.make_response(query)
    reply.set_rcode(rcode)
    if answers:
        reply.answer.append(dns.rrset.from_text_list(name + ".", 60, "IN", rdtype, list(answers)))
    return reply.to_wire()


def test_not_dns():
    hints = udp_hints()
    query = wire()
    assert DnsHandler.detect(query, IN, hints)
    two_questions = query[:4] + b"\x00\x02" + query[6:]
    z_bit = query[:3] + bytes([query[3] | 0x40]) + query[4:]
    bad_opcode = query[:2] + bytes([query[2] | 0x18]) + query[3:]  # opcode 3
    answers_in_a_query = query[:6] + b"\x00\x01" + query[8:]
    trailing_garbage = query + b"junk"
    for data in (two_questions, z_bit, bad_opcode, answers_in_a_query, trailing_garbage,
                 b"GET / HTTP/1.1\r\n\r\n", b"\x00" * 40, b"", query[:14]):
        assert not DnsHandler.detect(data, IN, hints), data
    # On port 53 a capture cut short is still DNS; elsewhere the whole message must parse.
    assert DnsHandler.detect(trailing_garbage, IN, udp_hints(port=53))
    with_edns = wire(use_edns=0)
    assert DnsHandler.detect(with_edns, IN, hints)
    assert DnsHandler.detect(with_edns[:-3], IN, udp_hints(port=53))
    assert not DnsHandler.detect(with_edns[:-3], IN, hints)


def test_compression_pointers_cannot_loop():
    header = b"\x12\x34\x81\x80\x00\x01\x00\x01\x00\x00\x00\x00"
    question = b"\x01a\x04test\x00\x00\x01\x00\x01"
    good_answer = b"\xc0\x0c\x00\x01\x00\x01\x00\x00\x00\x3c\x00\x04\x0a\x01\x02\x03"
    msg = parse_message(header + question + good_answer)
    assert msg.complete and msg.answers == ("10.1.2.3",)
    # The question's name pointing at itself, forward, into the header, or in a cycle.
    for name in (b"\xc0\x0c", b"\xc0\x20", b"\xc0\x02", b"\x01a\xc0\x0c"):
        assert parse_message(header + name + b"\x00\x01\x00\x01") is None, name
    # A chain of backward pointers longer than MAX_POINTERS.
    labels = b"\x01x\x00"
    chain = header + labels
    target = 12
    for _ in range(20):
        pointer_at = len(chain)
        chain += bytes([0xC0 | target >> 8, target & 0xFF])
        target = pointer_at
    msg = parse_message(chain[:12] + chain[len(header):])  # garbage in place of a question
    assert msg is None or msg.name is not None
    assert parse_message(header.replace(b"\x00\x01\x00\x01", b"\x00\x01\x00\x00", 1) +
                         b"\x3f" + b"a" * 63 + b"\x3f" + b"b" * 63 + b"\x3f" + b"c" * 63 +
                         b"\x3f" + b"d" * 63 + b"\x00\x00\x01\x00\x01") is None  # > 255 bytes


def test_names_are_escaped_as_opentelemetry_asks():
    query = dns.message.make_query(dns.name.Name([b"a.b", b"sp ace", b'q"\\\x01\x7f', b""]), "A")
    facts, _ = replay([(IN, query.to_wire(), 1)], close_ns=None)
    assert facts[0].attributes["dns.question.name"] == 'a\\.b.sp ace.q\\"\\\\\\001\\127'
    root = dns.message.make_query(".", "NS")
    facts, _ = replay([(OUT, root.to_wire(), 1)])
    assert facts[0].attributes["dns.question.name"] == "."
    assert facts[0].name == "DNS NS ."


def test_extended_rcode_class_opcode_and_unknown_type():
    query = dns.message.make_query("x.example", 65280, "CH", use_edns=0)
    reply = dns.message.make_response(query)
    reply.set_rcode(dns.rcode.BADVERS)
    facts, _ = replay([(IN, query.to_wire(), 10), (OUT, reply.to_wire(), 20)])
    attrs = facts[0].attributes
    assert attrs["dns.question.type"] == "TYPE65280"
    assert attrs["dns.question.class"] == "CH"
    assert attrs["dns.response_code"] == "BADVERS" and facts[0].status == "error"
    notify = dns.message.make_query("zone.example", "SOA")
    notify.set_opcode(dns.opcode.NOTIFY)
    facts, _ = replay([(IN, notify.to_wire(), 10)])
    assert facts[0].attributes["dns.opcode"] == "NOTIFY"


def test_unanswered_queries_on_close():
    query = wire("lost.example")
    client, _ = replay([(OUT, query, 100)], close_ns=5_000)
    assert client[0].status == "error" and client[0].attributes["error.type"] == "timeout"
    assert client[0].attributes["sidetrace.dns.flags"] == "response_missing"
    assert client[0].end_ns == 5_000
    server, _ = replay([(IN, query, 100)], close_ns=5_000)
    assert server[0].status == "unset" and server[0].server_side
    forgotten, _ = replay([(OUT, query, 100)], close_ns=None)
    assert forgotten[0].status == "unset" and forgotten[0].end_ns == 100


def test_response_without_query_and_retransmission():
    query = wire("again.example")
    response = dns.message.make_response(dns.message.from_wire(query)).to_wire()
    facts, _ = replay([(OUT, query, 1), (OUT, query, 50), (IN, response, 90), (IN, response, 95)])
    assert len(facts) == 2
    assert facts[0].start_ns == 1 and facts[0].end_ns == 90  # the first send counts
    assert facts[1].attributes["sidetrace.dns.flags"] == "request_missing"
    assert facts[1].start_ns == facts[1].end_ns == 95


def test_pending_queries_are_bounded():
    handler = DnsHandler("client")
    facts = []
    for i in range(300):
        facts += handler.feed(OUT, wire(f"n{i}.example"), 0, i, None)
    assert handler.pending_queries == 256
    assert len(facts) == 44


def test_truncated_capture_of_a_big_response():
    query = wire("big.example", "A")
    answers = [f"10.0.{i // 256}.{i % 256}" for i in range(300)]
    response = wire("big.example", "A", response=True, answers=answers)
    assert len(response) > 4096
    facts, _ = replay([(IN, query, 1)] + [(OUT, response[:4096], 2)])
    assert facts[0].attributes["dns.answer_count"] == 300
    assert facts[0].attributes["sidetrace.dns.answers"].count(",") == 7  # first 8 listed


# --- robustness ----------------------------------------------------------------------------------


def facts_key(facts):
    return [(f.name, f.start_ns, f.end_ns, f.status, sorted(f.attributes.items()), f.request_seq,
             f.response_seq, f.server_side) for f in facts]


@FUZZ
@given(st.data())
def test_random_splits_of_real_tcp_bytes_give_identical_facts(tcp_recording, data):
    chunks, _ = tcp_recording
    pieces = []
    for direction, chunk, ts in chunks:
        cuts = sorted(data.draw(st.lists(st.integers(1, max(1, len(chunk) - 1)), max_size=4)))
        at = 0
        for cut in cuts + [len(chunk)]:
            if cut > at:
                pieces.append((direction, chunk[at:cut], ts))
                at = cut
    expected, _ = replay(chunks, seq=True)
    got, _ = replay(pieces, seq=True)
    assert facts_key(got) == facts_key(expected)


@FUZZ
@given(st.lists(st.tuples(st.sampled_from([IN, OUT]), st.binary(max_size=120),
                          st.integers(0, 3000)), max_size=25), st.booleans())
def test_random_bytes_never_raise(chunks, tcp):
    handler = DnsHandler("unknown")
    for i, (direction, data, extra) in enumerate(chunks):
        handler.feed(direction, data, len(data) + extra, i, i * 13 if tcp else None)
    handler.close(len(chunks))
    assert handler.internal_errors == 0


@FUZZ
@given(st.binary(min_size=12, max_size=300), st.integers(0, 299), st.integers(0, 255))
def test_mutated_messages_never_raise(data, at, value):
    query = bytearray(wire("mutant.example", "AAAA", use_edns=0) + data)
    query[at % len(query)] = value
    msg = parse_message(bytes(query))
    looks_like_dns(bytes(query), udp_hints())
    assert msg is None or msg.qdcount >= 0
    replay([(IN, bytes(query), 1), (OUT, bytes(query), 2)])


# --- through the pipeline (see _pipeline_fuzz) ---------------------------------------------


@FUZZ
@given(data=st.data())
def test_mutated_captures_through_the_pipeline(tcp_recording, data):
    check_mutated("dns", [tcp_recording[0]], data)


@FUZZ
@given(data=st.data())
def test_random_bytes_through_the_pipeline(data):
    check_garbage("dns", data)


def test_replies_in_another_protocol_make_no_span(tcp_recording):
    for conversation in [tcp_recording[0]]:
        spans, _ = answered_in_another_protocol("dns", conversation)
        assert spans == []
