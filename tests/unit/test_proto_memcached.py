"""Memcached handler on bytes recorded from real memcached conversations.

A ``memcached`` on 127.0.0.1 (no UDP) answers pymemcache (text protocol;
meta commands through its ``raw_command``) and hand-built binary-protocol
packets (no binary client is packaged for Python) through the recording proxy
of ``tests._recording``; the proxy's recv() chunks stand in for the syscalls
the agent would capture on the server.
"""

from __future__ import annotations

import os
import socket
import struct

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from agent.protocols import REGISTRY, ConnectionHints
from agent.protocols.memcached import (MemcachedHandler, looks_like_binary,
                                       looks_like_text_command, query_text)

from tests._recording import RecordingProxy
from tests._servers import free_port, need_binary, running, unavailable

from ._replay import cut_lists, cut_short, keep_shares, pick, picks, resplit
from .test_proto_redis import Feeder, replay
from ._pipeline_fuzz import FUZZ, answered_in_another_protocol, check_garbage, check_mutated, conversations_of

try:
    from pymemcache.client.base import Client
    from pymemcache.exceptions import MemcacheClientError, MemcacheUnknownCommandError
except ImportError:  # the fixture that needs it says so (and fails in CI)
    Client = None

BIG = 500_000
IN, OUT = "ingress", "egress"


def summary(facts):
    return [(f.name, f.attributes["db.query.text"], f.attributes.get("db.response.status_code"),
             f.status) for f in facts]


# --- recorded conversations ---------------------------------------------------------------

def _text(port):
    c = Client(("127.0.0.1", port), default_noreply=False)
    c.set("user:1", "alice")
    assert c.get("user:1") == b"alice"
    assert c.get("missing") is None
    assert c.get_many(["user:1", "missing", "n"]) == {"user:1": b"alice"}
    c.set("n", "10", noreply=True)
    assert c.incr("n", 5) == 15
    with pytest.raises(MemcacheClientError):
        c.incr("user:1", 1)
    assert c.add("user:1", "bob") is False
    value, cas = c.gets("user:1")
    assert c.cas("user:1", "carol", cas) is True
    c.append("user:1", "!")
    c.set("big", b"B" * BIG)
    assert len(c.get("big")) == BIG
    c.touch("user:1", 100)
    assert c.delete("user:1") is True
    assert c.delete("user:1") is False
    assert c.version()
    assert c.stats()
    with pytest.raises(MemcacheUnknownCommandError):
        c.raw_command(b"bogus cmd", b"\r\n")
    c.close()


def _meta(port):
    c = Client(("127.0.0.1", port))
    # Every batch ends with "mn": its MN tells the client the batch is answered.
    c.raw_command(b"ms m1 5 T0\r\nhello\r\nmg m1 v t\r\nmg nokey v\r\nmd nokey\r\nma m1\r\nmn",
                  b"MN\r\n")
    c.raw_command(b"mg nokey v q\r\nmg m1 v q k O42\r\nms m2 2 q\r\nhi\r\nmd nokey q\r\nmd m2 q\r\nmn",
                  b"MN\r\n")
    c.close()


def _packet(opcode, key=b"", extras=b"", value=b"", opaque=0):
    body = extras + key + value
    return struct.pack(">BBHBBHIIQ", 0x80, opcode, len(key), len(extras), 0, 0, len(body),
                       opaque, 0) + body


BINARY_REQUESTS = [
    # (packets written together, responses expected before the next write)
    [_packet(0x01, b"bk", struct.pack(">II", 0, 0), b"binval", opaque=1)],      # set
    [_packet(0x00, b"bk", opaque=2)],                                            # get: hit
    [_packet(0x00, b"nokey", opaque=3)],                                         # get: miss
    [_packet(0x09, b"nokey", opaque=4), _packet(0x0d, b"bk", opaque=5),          # getq miss, getkq hit,
     _packet(0x11, b"q1", struct.pack(">II", 0, 0), b"v", opaque=6),             # setq,
     _packet(0x0a, opaque=7)],                                                   # noop
    [_packet(0x05, b"bk", struct.pack(">QQI", 1, 0, 0), opaque=8)],              # incr non-numeric
    [_packet(0x0b, opaque=9)],                                                   # version
    [_packet(0x10, opaque=10)],                                                  # stat: many packets
    [_packet(0x04, b"bk", opaque=11)],                                           # delete
]
BINARY_EXPECTED = [
    ("set", "set bk ?", None, "unset"),
    ("get", "get bk", None, "unset"),
    ("get", "get nokey", "KEY_ENOENT", "unset"),
    ("get", "get nokey", None, "unset"),          # getq miss: no response
    ("get", "get bk", None, "unset"),             # getkq hit
    ("set", "set q1 ?", None, "unset"),           # setq: no response
    ("noop", "noop", None, "unset"),
    ("incr", "incr bk ?", "DELTA_BADVAL", "error"),
    ("version", "version", None, "unset"),
    ("stats", "stats", None, "unset"),
    ("delete", "delete bk", None, "unset"),
]


def _binary(port):
    with socket.create_connection(("127.0.0.1", port)) as sock:
        sock.settimeout(5)
        for batch in BINARY_REQUESTS:
            sock.sendall(b"".join(batch))
            # Read until the batch is answered: the last request's opaque comes back
            # (stat: the empty packet that ends its list).
            want_opaque = struct.unpack_from(">I", batch[-1], 12)[0]
            data = b""
            while True:
                data += sock.recv(65536)
                done, at = False, 0
                while at + 24 <= len(data):
                    _, op, keylen, _, _, _, bodylen, opaque, _ = struct.unpack_from(">BBHBBHIIQ", data, at)
                    if at + 24 + bodylen > len(data):
                        break
                    done = opaque == want_opaque and (op != 0x10 or keylen == 0)
                    at += 24 + bodylen
                if done:
                    break


SCENARIOS = {"text": _text, "meta": _meta, "binary": _binary}


@pytest.fixture(scope="module")
def recorded(tmp_path_factory):
    if Client is None:
        unavailable("pymemcache is not installed (tests/requirements.txt)")
    binary = need_binary("memcached")
    workdir = tmp_path_factory.mktemp("memcached")
    port = free_port()
    args = [binary, "-l", "127.0.0.1", "-p", str(port), "-U", "0", "-m", "64"]
    if os.geteuid() == 0:
        args += ["-u", "root"]  # memcached refuses to run as root unless told which user to be
    conversations = {}
    with running(args, port, workdir):
        proxy = RecordingProxy(port)
        try:
            for name, scenario in SCENARIOS.items():
                before = len(proxy.conversations)
                scenario(proxy.port)
                proxy.settle(before + 1)
                # pymemcache reconnects after an error reply: one scenario, several connections.
                conversations[name] = proxy.conversations[before:]
        finally:
            proxy.close()
    return conversations


def parse(steps, role="server", **kwargs):
    return replay(MemcachedHandler(role), steps, **kwargs)


def parse_all(conversations, role="server", **kwargs):
    return [f for steps in conversations for f in parse(steps, role, **kwargs)]


TEXT_EXPECTED = [
    ("set", "set user:1 ? ? ?", "STORED", "unset"),
    ("get", "get user:1", None, "unset"),
    ("get", "get missing", None, "unset"),
    ("get", "get user:1 ? ?", None, "unset"),
    ("set", "set n ? ? ? noreply", None, "unset"),
    ("incr", "incr n ?", None, "unset"),
    ("incr", "incr user:1 ?", "CLIENT_ERROR", "error"),
    ("add", "add user:1 ? ? ?", "NOT_STORED", "unset"),
    ("gets", "gets user:1", None, "unset"),
    ("cas", "cas user:1 ? ? ? ?", "STORED", "unset"),
    ("append", "append user:1 ? ? ?", "STORED", "unset"),
    ("set", "set big ? ? ?", "STORED", "unset"),
    ("get", "get big", None, "unset"),
    ("touch", "touch user:1 ?", "TOUCHED", "unset"),
    ("delete", "delete user:1", "DELETED", "unset"),
    ("delete", "delete user:1", "NOT_FOUND", "unset"),
    ("version", "version", None, "unset"),
    ("stats", "stats", None, "unset"),
    ("bogus", "bogus ?", "ERROR", "error"),
]


def test_text_conversation(recorded):
    facts = parse_all(recorded["text"])
    assert summary(facts) == TEXT_EXPECTED
    by = {f.attributes["db.query.text"]: f for f in facts}
    multi = by["get user:1 ? ?"]
    assert multi.attributes["db.operation.batch.size"] == 3
    assert multi.attributes["db.response.returned_rows"] == 1
    assert by["get missing"].attributes["db.response.returned_rows"] == 0
    error = by["incr user:1 ?"]
    assert error.attributes["error.type"] == "CLIENT_ERROR"
    assert error.status_message == "cannot increment or decrement non-numeric value"
    assert by["bogus ?"].status_message == "ERROR" and by["bogus ?"].attributes["error.type"] == "ERROR"
    noreply = by["set n ? ? ? noreply"]
    assert noreply.response_seq is None and noreply.end_ns == noreply.start_ns
    assert noreply.attributes["sidetrace.memcached.flags"] == "no_reply"
    for f in facts:
        assert f.server_side and f.start_ns <= f.end_ns
        assert f.attributes["db.system.name"] == "memcached" == f.attributes["db.system"]
        assert f.attributes["db.operation.name"] == f.name
    assert not any("alice" in str(f.attributes) or "BBB" in str(f.attributes) for f in facts)


def test_sequence_numbers_point_at_commands_and_replies(recorded):
    steps = recorded["text"][-1]
    facts = parse(steps, seq0=(0xFFFFFFF0, 0xFFFFFF00))
    requests = b"".join(d for direction, d, _ in steps if direction == IN)
    replies = b"".join(d for direction, d, _ in steps if direction == OUT)
    for f in facts:
        at = (f.request_seq - 0xFFFFFFF0) & 0xFFFFFFFF
        assert requests[at:].startswith(f.name.encode() + b" ") or requests[at:].startswith(
            f.name.encode() + b"\r\n")
        if f.response_seq is not None:
            at = (f.response_seq - 0xFFFFFF00) & 0xFFFFFFFF
            word = replies[at:at + 12].split()[0]
            assert word in (b"STORED", b"VALUE", b"END", b"CLIENT_ERROR", b"NOT_STORED", b"TOUCHED",
                            b"DELETED", b"NOT_FOUND", b"VERSION", b"STAT", b"ERROR", b"15")


def test_meta_commands_and_quiet_mode(recorded):
    [steps] = recorded["meta"]
    facts = parse(steps)
    assert summary(facts) == [
        ("ms", "ms m1 ? ?", "HD", "unset"),
        ("mg", "mg m1 ? ?", None, "unset"),
        ("mg", "mg nokey ?", "EN", "unset"),
        ("md", "md nokey", "NF", "unset"),
        ("ma", "ma m1", "CLIENT_ERROR", "error"),
        ("mn", "mn", None, "unset"),
        ("mg", "mg nokey ? ?", None, "unset"),          # quiet miss: EN left out
        ("mg", "mg m1 ? ? ? ?", None, "unset"),         # quiet hit: answered
        ("ms", "ms m2 ? ?", None, "unset"),             # quiet success: HD left out
        ("md", "md nokey ?", "NF", "unset"),            # quiet, but a miss is said
        ("md", "md m2 ?", None, "unset"),               # quiet success
        ("mn", "mn", None, "unset"),
    ]
    quiet = [f.attributes.get("sidetrace.memcached.flags") for f in facts[6:]]
    assert quiet == ["quiet", None, "quiet", None, "quiet", None]
    replies = b"".join(d for direction, d, _ in steps if direction == OUT)
    hit = facts[7]
    assert replies[hit.response_seq - 9000:].startswith(b"VA 5 ")


def test_binary_protocol(recorded):
    [steps] = recorded["binary"]
    facts = parse(steps)
    assert summary(facts) == BINARY_EXPECTED
    incr = facts[7]
    assert incr.attributes["error.type"] == "DELTA_BADVAL"
    assert "non-numeric" in incr.status_message.lower()
    stats = facts[9]
    replies = b"".join(d for direction, d, _ in steps if direction == OUT)
    # The stat span ends with the empty packet that closes the list.
    assert stats.end_ns == [ts for direction, _, ts in steps if direction == OUT][-2]
    assert replies[stats.response_seq - 9000] == 0x81


@pytest.mark.parametrize("name", list(SCENARIOS))
def test_client_side_and_unknown_role_agree(recorded, name):
    for steps in recorded[name]:
        as_server = summary(parse(steps))
        client = parse(steps, "client", flip=True)
        assert summary(client) == as_server and not any(f.server_side for f in client)
        unknown = MemcachedHandler("unknown")
        assert summary(replay(unknown, steps)) == as_server and unknown.role == "server"


@pytest.mark.parametrize("capture", [4096, 256, 64])
def test_partial_captures_count_large_values(recorded, capture):
    steps = next(c for c in recorded["text"] if any(b"big" in d for _, d, _ in c))
    full = parse(steps)
    conn = MemcachedHandler("server")
    cut = replay(conn, steps, capture=capture)
    assert [(f.request_seq, f.response_seq, f.end_ns, f.status) for f in cut] == \
           [(f.request_seq, f.response_seq, f.end_ns, f.status) for f in full]
    flags = {f.attributes["db.query.text"]: f.attributes.get("sidetrace.memcached.flags") for f in cut}
    assert flags["set big ? ? ?"] == "request_truncated"
    assert flags["get big"] == "response_truncated"
    if capture >= 256:
        assert summary(cut) == summary(full)
    assert conn.buffered_bytes == 0


def test_detection_of_first_payloads(recorded):
    for name, conversations in recorded.items():
        direction, first, _ = conversations[0][0]
        hints = ConnectionHints("tcp", 40000, 50000, "server")
        claimed = next((h for h in REGISTRY if h.detect(first, direction, hints)), None)
        assert claimed is MemcachedHandler, (name, first[:40], claimed)


@settings(max_examples=60, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture])
@given(name=st.sampled_from(sorted(SCENARIOS)), which=picks, cuts=cut_lists)
def test_any_resplit_of_the_syscalls_gives_the_same_facts(recorded, name, which, cuts):
    steps = pick(recorded[name], which)
    assert parse(resplit(steps, cuts)) == parse(steps)


@settings(max_examples=60, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture])
@given(name=st.sampled_from(sorted(SCENARIOS)), which=picks, keeps=keep_shares)
def test_random_capture_losses_never_break_the_parser(recorded, name, which, keeps):
    steps = pick(recorded[name], which)
    full = parse(steps)
    conn = MemcachedHandler("server")
    out = []
    for direction, captured, moved, ts in cut_short(steps, keeps):
        out += conn.feed(direction, captured, moved, ts, None)
    out += conn.close(None)
    assert conn.internal_errors == 0
    assert len(out) <= len(full)


# --- hand-written bytes ----------------------------------------------------------------------

def test_query_text_rule():
    def text(line):
        return query_text(line.split())
    assert text(b"set k 0 0 5") == "set k ? ? ?"
    assert text(b"set k 0 0 5 noreply") == "set k ? ? ? noreply"
    assert text(b"get a b c") == "get a ? ?"
    assert text(b"gat 100 k1 k2") == "gat ? k1 ?"
    assert text(b"incr counter 5") == "incr counter ?"
    assert text(b"stats items") == "stats items"
    assert text(b"mg key v t O123") == "mg key ? ? ?"
    assert text(b"get " + b"a\x01b") == 'get "a\\x01b"'
    many = text(b"get " + b" ".join(b"k%d" % i for i in range(100)))
    assert many.startswith("get k0 ? ?") and many.endswith("? ...")


def test_detection_rules():
    other = ConnectionHints("tcp", 8080, 40000, "server")
    port = ConnectionHints("tcp", 11211, 40000, "server")
    for line in (b"get k\r\n", b"gets a b c\r\n", b"set k 0 0 5\r\n", b"set k 0 0 5 noreply\r\nhello\r\n",
                 b"cas k 0 0 1 99\r\n", b"delete k\r\n", b"incr k 1\r\n", b"touch k 10\r\n",
                 b"gat 10 k\r\n", b"stats\r\n", b"stats slabs\r\n", b"version\r\n", b"flush_all\r\n",
                 b"mg k v t\r\n", b"ms k 2 T0\r\nhi\r\n", b"md k q\r\n", b"ma k\r\n", b"mn\r\n"):
        assert MemcachedHandler.detect(line, IN, other), line
    for noise in (b"GET / HTTP/1.1\r\n", b"get\r\n", b"set k x 0 5\r\n", b"getaway now\r\n",
                  b"PING\r\n", b"quit\r\n", b"delete\r\n", b"get " + b"k" * 300 + b"\r\n",
                  b"*1\r\n$4\r\nPING\r\n", b"\x80\x00\x00\x02", b"hello world\r\n", b"STORED\r\n"):
        assert not MemcachedHandler.detect(noise, IN, other), noise
    assert MemcachedHandler.detect(b"STORED\r\n", OUT, port)
    assert MemcachedHandler.detect(_packet(0x00, b"k"), IN, other)
    assert not MemcachedHandler.detect(_packet(0x00, b"k")[:20], IN, other)
    assert not looks_like_binary(b"\x80\x00\x00\x01\x00\x07" + bytes(18) + b"k")  # data type 7
    assert looks_like_text_command(b"get k\n")


def test_noreply_and_quit_end_with_the_command():
    conn = MemcachedHandler("server")
    feed = Feeder(conn)
    out = feed([(IN, b"delete a noreply\r\nincr b 1 noreply\r\nget c\r\n")])
    assert [f.attributes["db.query.text"] for f in out] == ["delete a noreply", "incr b ? noreply"]
    out = feed([(OUT, b"END\r\n"), (IN, b"quit\r\n")])
    assert [(f.name, f.attributes.get("sidetrace.memcached.flags")) for f in out] == [
        ("get", None), ("quit", "no_reply")]
    assert conn.close(9) == []


def test_stats_subcommands_and_dumps():
    conn = MemcachedHandler("server")
    feed = Feeder(conn)
    out = feed([(IN, b"stats reset\r\nstats detail on\r\nstats items\r\nlru_crawler metadump all\r\nversion\r\n"),
                (OUT, b"RESET\r\nOK\r\nSTAT items:1:number 5\r\nSTAT items:1:age 9\r\nEND\r\n"
                      b"key=a exp=-1 la=1\r\nkey=b exp=-1 la=2\r\nEND\r\nVERSION 1.6.18\r\n")])
    assert [(f.attributes["db.query.text"], f.attributes.get("db.response.status_code")) for f in out] == [
        ("stats reset", "RESET"), ("stats detail ?", "OK"), ("stats items", None),
        ("lru_crawler metadump ?", None), ("version", None)]


def test_lost_lines_leave_a_gap_that_swallows_their_replies():
    conn = MemcachedHandler("server")
    feed = Feeder(conn)
    gets = b"".join(b"get key%03d\r\n" % i for i in range(300))   # 3600 bytes
    out = feed([(IN, (gets[:1000], len(gets)))])
    assert out == []
    replies = b"END\r\n" * 300
    out = feed([(OUT, replies)])
    # 83 whole lines were seen; the 84th was cut: no command, no span.
    assert len(out) == 1000 // 12 and conn.absorbed_replies == 300 - len(out)
    assert [f.attributes["db.query.text"] for f in out[-2:]] == ["get key081", "get key082"]
    out = feed([(IN, b"get after\r\n"), (OUT, b"VALUE after 0 1\r\nx\r\nEND\r\n")])
    assert [(f.attributes["db.query.text"], f.attributes["db.response.returned_rows"]) for f in out] == [
        ("get after", 1)]


def test_binary_quiet_commands_and_lost_headers():
    conn = MemcachedHandler("server")
    feed = Feeder(conn)
    def response(opcode, opaque, status=0, value=b""):
        return struct.pack(">BBHBBHIIQ", 0x81, opcode, 0, 0, 0, status, len(value), opaque, 0) + value
    out = feed([(IN, _packet(0x11, b"a", bytes(8), b"1", 1) + _packet(0x11, b"b", bytes(8), b"2", 2)
                 + _packet(0x09, b"c", opaque=3) + _packet(0x0a, opaque=4)),
                (OUT, response(0x11, 2, 0x0004, b"Invalid arguments") + response(0x0a, 4))])
    assert [(f.attributes["db.query.text"], f.status, f.attributes.get("sidetrace.memcached.flags"))
            for f in out] == [("set a ?", "unset", "quiet"), ("set b ?", "error", None),
                              ("get c", "unset", "quiet"), ("noop", "unset", None)]
    out = feed([(IN, (_packet(0x00, b"k", opaque=5)[:10], 25))])  # a header cut: lost
    assert conn.resyncs == 1 and out == []
    out = feed([(IN, _packet(0x0b, opaque=6)), (OUT, response(0x00, 5, 1) + response(0x0b, 6, 0, b"1.6"))])
    assert [f.name for f in out] == ["version"]
    assert conn.absorbed_replies == 1


@settings(max_examples=300, deadline=None)
@given(st.lists(st.tuples(st.booleans(), st.binary(max_size=200), st.integers(0, 300)), max_size=12),
       st.sampled_from(["server", "client", "unknown"]), st.sampled_from([b"", b"get k\r\n", b"\x80"]))
def test_random_bytes_never_raise(chunks, role, lead):
    conn = MemcachedHandler(role)
    for i, (ingress, data, extra) in enumerate(chunks):
        data = (lead + data) if i == 0 else data
        conn.feed(IN if ingress else OUT, data, len(data) + extra, i, i * 1000)
        assert conn.buffered_bytes <= 2 * 64 * 1024
    conn.close(None)
    assert conn.internal_errors == 0


@settings(max_examples=300, deadline=None)
@given(st.lists(st.tuples(st.booleans(), st.lists(st.sampled_from([
    b"get", b"gets", b"set", b"mg", b"ms", b"md", b"mn", b"stats", b" ", b"k", b"0", b"5", b"-1",
    b"noreply", b"q", b"O1", b"\r\n", b"VALUE", b"VA", b"END", b"STAT", b"HD", b"EN", b"MN",
    b"STORED", b"ERROR", b"CLIENT_ERROR", b"hello", b"99999999999"]), max_size=30)), max_size=10))
def test_text_shaped_noise_never_raises(chunks):
    conn = MemcachedHandler("server")
    conn.feed(IN, b"version\r\n", 9, 0, None)
    for i, (ingress, pieces) in enumerate(chunks):
        data = b"".join(pieces)
        conn.feed(IN if ingress else OUT, data, len(data), i + 1, None)
        assert conn.pending_commands <= 1024
    conn.close(None)
    assert conn.internal_errors == 0


# --- through the pipeline (see _pipeline_fuzz) ---------------------------------------------


@FUZZ
@given(data=st.data())
def test_mutated_captures_through_the_pipeline(recorded, data):
    check_mutated("memcached", conversations_of(recorded), data)


@FUZZ
@given(data=st.data())
def test_random_bytes_through_the_pipeline(data):
    check_garbage("memcached", data)


def test_replies_in_another_protocol_make_no_span(recorded):
    for conversation in conversations_of(recorded):
        spans, _ = answered_in_another_protocol("memcached", conversation)
        assert spans == []
