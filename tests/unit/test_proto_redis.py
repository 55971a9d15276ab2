"""Redis handler on bytes recorded from real redis-server conversations with redis-py.

A ``redis-server`` on 127.0.0.1 (no persistence, in a temporary directory)
answers redis-py through a recording proxy; the proxy's recv() chunks, in
order, stand in for the syscalls the agent would capture on the server.
Hand-written bytes cover what redis-py does not send (inline commands,
RESP3 attributes and streamed types, CLIENT REPLY, lost captures).
"""

from __future__ import annotations

import time

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from agent.protocols import REGISTRY, ConnectionHints
from agent.protocols.redis import RedisHandler, looks_like_command, query_text
from tests._recording import RecordingProxy
from tests._servers import free_port, need_binary, running, unavailable
from ._pipeline_fuzz import FUZZ, answered_in_another_protocol, check_garbage, check_mutated, conversations_of

from ._replay import cut_lists, cut_short, keep_shares, pick, picks, resplit

BIG = 300_000


def replay(conn, steps, *, capture=None, flip=False, seq0=(1000, 9000)):
    """Feed recorded chunks as syscalls (optionally cut to ``capture`` bytes), then close."""
    seq = {"ingress": seq0[0], "egress": seq0[1]}
    out = []
    for direction, data, ts in steps:
        total = len(data)
        if flip:
            direction = "egress" if direction == "ingress" else "ingress"
        out += conn.feed(direction, data[:capture] if capture else data, total, ts, seq[direction])
        seq[direction] = (seq[direction] + total) & 0xFFFFFFFF
    out += conn.close(steps[-1][2] + 1 if steps else None)
    assert conn.internal_errors == 0
    return out


def summary(facts):
    return [(f.name, f.attributes["db.query.text"], f.status, f.attributes.get("error.type"))
            for f in facts]


# --- recorded conversations ---------------------------------------------------------------

try:
    import redis
except ImportError:  # the fixtures that need it say so (and fail in CI)
    redis = None

PIPELINED = 200


def _basic(port):
    # RESP2: redis-py announces itself with CLIENT SETINFO (redis 7.0 answers with errors).
    r = redis.Redis(port=port, protocol=2)
    r.set("user:1", "alice")
    assert r.get("user:1") == b"alice"
    assert r.get("missing") is None
    r.incr("counter")
    with pytest.raises(redis.ResponseError):
        r.incr("user:1")
    with pytest.raises(redis.ResponseError):
        r.lpush("user:1", "x")
    r.hset("h", mapping={"f1": "v1", "f2": "v2"})
    assert r.hgetall("h") == {b"f1": b"v1", b"f2": b"v2"}
    r.set("big", b"B" * BIG)
    assert len(r.get("big")) == BIG
    r.mget(["user:1", "counter", "missing"])
    r.execute_command("SELECT", "2")
    r.set("in2", "x")
    with r.pipeline(transaction=True) as tx:
        tx.set("k", "v").incr("k").get("k")
        with pytest.raises(redis.ResponseError):
            tx.execute()
    r.delete("user:1", "counter")
    r.close()


def _pipelined(port):
    r = redis.Redis(port=port, protocol=2)
    r.set("before", "1")
    with r.pipeline(transaction=False) as pipe:
        for i in range(PIPELINED):
            pipe.set(f"p:{i}", f"value-{i}")
        pipe.execute()  # every command in one write, every reply in one read
    assert r.get("before") == b"1"
    assert r.incr("before") == 2
    assert r.get("nope") is None
    r.close()


def _resp3(port):
    r = redis.Redis(port=port, protocol=3)
    r.hset("h3", mapping={"f": "v", "g": "w"})
    assert r.hgetall("h3") == {b"f": b"v", b"g": b"w"}   # a RESP3 map
    r.sadd("s3", "x")
    assert r.smembers("s3") == {b"x"}                     # a set
    r.zadd("z3", {"m": 1.5})
    assert r.zscore("z3", "m") == 1.5                     # a double
    assert r.get("nothing") is None                       # "_" null
    r.execute_command("CLIENT", "INFO")                   # a verbatim string
    r.execute_command("CLIENT", "TRACKING", "ON")
    r.get("tracked")
    other = redis.Redis(port=port, protocol=2)
    other.set("tracked", "changed")                       # pushes "invalidate" to r
    other.close()
    time.sleep(0.1)
    assert r.ping()                                       # must pair with +PONG, not the push
    r.close()


def _pubsub(port, protocol):
    r = redis.Redis(port=port, protocol=2)
    sub = redis.Redis(port=port, protocol=protocol)
    p = sub.pubsub()
    p.subscribe("ch1", "ch2")
    for i in range(3):
        r.publish("ch1", f"hello {i}")
    r.publish("ch2", "x")
    deadline = time.monotonic() + 5
    got = 0
    while got < 4 and time.monotonic() < deadline:
        msg = p.get_message(timeout=0.1)
        if msg and msg["type"] == "message":
            got += 1
    assert got == 4
    p.psubscribe("pat*")
    p.unsubscribe()
    p.punsubscribe()
    while p.get_message(timeout=0.2):
        pass
    p.close()
    sub.close()
    r.close()


SCENARIOS = {
    "basic": (_basic, 1),
    "pipelined": (_pipelined, 1),
    "resp3": (_resp3, 2),
    "pubsub2": (lambda port: _pubsub(port, 2), 2),
    "pubsub3": (lambda port: _pubsub(port, 3), 2),
}


@pytest.fixture(scope="module")
def recorded(tmp_path_factory):
    if redis is None:
        unavailable("redis-py is not installed (tests/requirements.txt)")
    binary = need_binary("redis-server")
    workdir = tmp_path_factory.mktemp("redis")
    port = free_port()
    args = [binary, "--port", str(port), "--bind", "127.0.0.1", "--save", "", "--appendonly", "no",
            "--dir", str(workdir), "--daemonize", "no"]
    conversations = {}
    with running(args, port, workdir):
        proxy = RecordingProxy(port)
        try:
            for name, (scenario, connections) in SCENARIOS.items():
                before = len(proxy.conversations)
                scenario(proxy.port)
                proxy.settle(before + connections)
                conversations[name] = proxy.conversations[before:]
        finally:
            proxy.close()
    return conversations


def parse(steps, role="server", **kwargs):
    return replay(RedisHandler(role), steps, **kwargs)


HANDSHAKE_2 = [
    ("CLIENT", "CLIENT SETINFO LIB-NAME ?", "error", "ERR"),
    ("CLIENT", "CLIENT SETINFO LIB-VER ?", "error", "ERR"),
]


def _after_handshake(facts):
    """Drop redis-py's connection set-up (HELLO, CLIENT ...), which varies with its version."""
    at = 0
    while at < len(facts) and facts[at].name in ("HELLO", "CLIENT") and facts[at].attributes[
            "db.query.text"].split()[1:2] != ["INFO"]:
        at += 1
    return facts[at:]


def test_basic_conversation(recorded):
    [steps] = recorded["basic"]
    facts = parse(steps)
    assert summary(facts) == HANDSHAKE_2 + [
        ("SET", "SET user:1 ?", "unset", None),
        ("GET", "GET user:1", "unset", None),
        ("GET", "GET missing", "unset", None),
        ("INCRBY", "INCRBY counter ?", "unset", None),
        ("INCRBY", "INCRBY user:1 ?", "error", "ERR"),
        ("LPUSH", "LPUSH user:1 ?", "error", "WRONGTYPE"),
        ("HSET", "HSET h ? ? ? ?", "unset", None),
        ("HGETALL", "HGETALL h", "unset", None),
        ("SET", "SET big ?", "unset", None),
        ("GET", "GET big", "unset", None),
        ("MGET", "MGET user:1 ? ?", "unset", None),
        ("SELECT", "SELECT 2", "unset", None),
        ("SET", "SET in2 ?", "unset", None),
        ("MULTI", "MULTI", "unset", None),
        ("SET", "SET k ?", "unset", None),
        ("INCRBY", "INCRBY k ?", "unset", None),
        ("GET", "GET k", "unset", None),
        ("EXEC", "EXEC", "unset", None),
        ("DEL", "DEL user:1 ?", "unset", None),
    ]
    by_text = {f.attributes["db.query.text"]: f for f in facts}
    wrong = by_text["LPUSH user:1 ?"]
    assert wrong.status_message.startswith("WRONGTYPE Operation against a key holding the wrong kind")
    assert wrong.attributes["db.response.status_code"] == "WRONGTYPE"
    assert by_text["INCRBY user:1 ?"].status_message == "ERR value is not an integer or out of range"
    for f in facts:
        assert f.server_side
        assert f.attributes["db.system.name"] == "redis" and f.attributes["db.system"] == "redis"
        assert f.attributes["db.operation.name"] == f.name
        assert "sidetrace.redis.flags" not in f.attributes
        assert f.start_ns <= f.end_ns
    # db.namespace from SELECT on: the SELECT itself and what follows it.
    names = [f.attributes.get("db.namespace") for f in facts]
    select_at = [f.name for f in facts].index("SELECT")
    assert names[:select_at] == [None] * select_at
    assert set(names[select_at:]) == {"2"}
    # Commands queued by MULTI are marked; their results come with EXEC.
    queued = [f.attributes["db.query.text"] for f in facts if f.attributes.get("sidetrace.redis.queued")]
    assert queued == ["SET k ?", "INCRBY k ?", "GET k"]
    # Values are never in the attributes.
    assert not any("alice" in str(f.attributes) or "BBBB" in str(f.attributes) for f in facts)


def test_sequence_numbers_follow_the_bytes(recorded):
    [steps] = recorded["basic"]
    facts = parse(steps, seq0=(0xFFFFFF00, 0xFFFFFFF0))  # both directions wrap around
    requests = b"".join(d for direction, d, _ in steps if direction == "ingress")
    replies = b"".join(d for direction, d, _ in steps if direction == "egress")
    for f in facts:
        req_at = (f.request_seq - 0xFFFFFF00) & 0xFFFFFFFF
        resp_at = (f.response_seq - 0xFFFFFFF0) & 0xFFFFFFFF
        assert requests[req_at:req_at + 1] == b"*"
        name = f.name.encode()
        assert requests[req_at:req_at + 40].split(b"\r\n")[2].upper() == name
        assert replies[resp_at:resp_at + 1] in (b"+", b"-", b"$", b":", b"*")
    big = next(f for f in facts if f.attributes["db.query.text"] == "GET big")
    at = (big.response_seq - 0xFFFFFFF0) & 0xFFFFFFFF
    assert replies[at:at + 9] == b"$%d\r\n" % BIG


def test_pipelined_commands_and_replies(recorded):
    [steps] = recorded["pipelined"]
    facts = _after_handshake(parse(steps))
    texts = [f.attributes["db.query.text"] for f in facts]
    assert texts == (["SET before ?"] + [f"SET p:{i} ?" for i in range(PIPELINED)]
                     + ["GET before", "INCRBY before ?", "GET nope"])
    pipeline = facts[1:1 + PIPELINED]
    # A few writes and reads carry them all: commands share start times, replies end times.
    writes = [d for direction, d, _ in steps if direction == "ingress" and d.count(b"SET\r\n") > 1]
    assert len({f.start_ns for f in pipeline}) == len(writes) < PIPELINED / 10
    assert len({f.end_ns for f in pipeline}) < PIPELINED / 10
    seqs = [f.response_seq for f in pipeline]
    assert all(b - a == len(b"+OK\r\n") for a, b in zip(seqs, seqs[1:]))


def test_truncated_pipeline_keeps_later_commands_paired(recorded):
    """A 4 KiB capture of the pipeline's first write loses commands.

    The commands before the loss keep their replies; the commands after the
    pipeline (the client waited for its replies) too: the replies to the lost
    commands do not shift them.
    """
    [steps] = recorded["pipelined"]
    conn = RedisHandler("server")
    full = _after_handshake(parse(steps))
    cut = _after_handshake(replay(conn, steps, capture=4096))
    assert conn.resyncs >= 1
    tail = lambda facts: [(f.attributes["db.query.text"], f.response_seq, f.end_ns)  # noqa: E731
                          for f in facts[-3:]]
    assert tail(cut) == tail(full)
    first_write = next(d for direction, d, _ in steps if direction == "ingress" and len(d) > 4096)
    whole = first_write[:4096].count(b"*3\r\n$3\r\nSET") - 1   # the last one is cut
    seen = cut[1:1 + whole + 1]
    assert [f.attributes["db.query.text"] for f in seen] == [f"SET p:{i} ?" for i in range(whole + 1)]
    assert [f.response_seq for f in seen[:whole]] == [f.response_seq for f in full[1:1 + whole]]
    assert seen[-1].attributes["sidetrace.redis.flags"] == "request_truncated"
    assert len(cut) < len(full)


def test_resp3_types_and_push_messages(recorded):
    tracked, other = recorded["resp3"]
    facts = parse(tracked)
    assert facts[0].name == "HELLO" and facts[0].attributes["db.query.text"] == "HELLO 3"
    assert summary(_after_handshake(facts)) == [
        ("HSET", "HSET h3 ? ? ? ?", "unset", None),
        ("HGETALL", "HGETALL h3", "unset", None),
        ("SADD", "SADD s3 ?", "unset", None),
        ("SMEMBERS", "SMEMBERS s3", "unset", None),
        ("ZADD", "ZADD z3 ? ?", "unset", None),
        ("ZSCORE", "ZSCORE z3 ?", "unset", None),
        ("GET", "GET nothing", "unset", None),
        ("CLIENT", "CLIENT INFO", "unset", None),
        ("CLIENT", "CLIENT TRACKING ON", "unset", None),
        ("GET", "GET tracked", "unset", None),
        ("PING", "PING", "unset", None),
    ]
    # The invalidation push came between GET and PING: PING's reply is the +PONG after it.
    replies = b"".join(d for direction, d, _ in tracked if direction == "egress")
    ping = facts[-1]
    at = ping.response_seq - 9000
    assert replies[at:at + 7] == b"+PONG\r\n"
    assert b">2\r\n$10\r\ninvalidate" in replies[:at]
    assert [f.name for f in parse(other)][-1] == "SET"


@pytest.mark.parametrize("protocol", [2, 3])
def test_pubsub_makes_one_span_per_subscribe_command(recorded, protocol):
    subscriber, publisher = recorded[f"pubsub{protocol}"]
    facts = _after_handshake(parse(subscriber))
    assert summary(facts) == [
        ("SUBSCRIBE", "SUBSCRIBE ch1 ?", "unset", None),
        ("PSUBSCRIBE", "PSUBSCRIBE pat*", "unset", None),
        ("UNSUBSCRIBE", "UNSUBSCRIBE", "unset", None),
        ("PUNSUBSCRIBE", "PUNSUBSCRIBE", "unset", None),
    ]
    replies = b"".join(d for direction, d, _ in subscriber if direction == "egress")
    assert replies.count(b"message\r\n") == 4  # pushed messages: no spans
    # SUBSCRIBE ch1 ch2 ends with its second confirmation.
    sub = facts[0]
    at = sub.response_seq - 9000
    assert replies[at:].split(b"\r\n")[2] == b"subscribe"
    assert [f.name for f in _after_handshake(parse(publisher))] == ["PUBLISH"] * 4


@pytest.mark.parametrize("name", list(SCENARIOS))
def test_client_side_and_unknown_role_agree(recorded, name):
    for steps in recorded[name]:
        as_server = summary(parse(steps))
        client = parse(steps, "client", flip=True)
        assert summary(client) == as_server
        assert not any(f.server_side for f in client)
        unknown = RedisHandler("unknown")
        assert summary(replay(unknown, steps)) == as_server
        assert unknown.role == "server"


@pytest.mark.parametrize("capture", [4096, 512, 100])
def test_partial_captures_count_large_values(recorded, capture):
    [steps] = recorded["basic"]
    full = parse(steps)
    conn = RedisHandler("server")
    cut = replay(conn, steps, capture=capture)
    # Every command keeps its span, its place and its reply: values are counted, not needed.
    assert [(f.request_seq, f.response_seq, f.end_ns, f.status) for f in cut] == \
           [(f.request_seq, f.response_seq, f.end_ns, f.status) for f in full]
    flags = {f.attributes["db.query.text"]: f.attributes.get("sidetrace.redis.flags") for f in cut}
    assert flags["SET big ?"] == "request_truncated"
    assert flags["GET big"] == "response_truncated"
    assert conn.resyncs == 0 and conn.buffered_bytes == 0
    for got, want in zip(cut, full):
        if "request_truncated" in got.attributes.get("sidetrace.redis.flags", ""):
            # A command cut inside its name is not given a wrong one.
            assert got.name in (want.name, "UNKNOWN")
        else:
            assert summary([got]) == summary([want])
    if capture == 100:  # MULTI ... EXEC went in one 106-byte write
        assert [f.name for f in cut if f.name == "UNKNOWN"] == ["UNKNOWN"]


def test_detection_of_first_payloads(recorded):
    for name, conversations in recorded.items():
        for steps in conversations:
            direction, first, _ = steps[0]
            hints = ConnectionHints("tcp", 40000, 50000, "server")
            claimed = next((h for h in REGISTRY if h.detect(first, direction, hints)), None)
            assert claimed is RedisHandler, (name, first[:40], claimed)


@settings(max_examples=60, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture])
@given(name=st.sampled_from(sorted(SCENARIOS)), which=picks, cuts=cut_lists)
def test_any_resplit_of_the_syscalls_gives_the_same_facts(recorded, name, which, cuts):
    steps = pick(recorded[name], which)
    assert parse(resplit(steps, cuts)) == parse(steps)


@settings(max_examples=60, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture])
@given(name=st.sampled_from(sorted(SCENARIOS)), which=picks, keeps=keep_shares)
def test_random_capture_losses_never_break_the_parser(recorded, name, which, keeps):
    steps = pick(recorded[name], which)
    conn = RedisHandler("server")
    out = []
    commands = 0
    for (direction, chunk, _), (_, captured, moved, ts) in zip(steps, cut_short(steps, keeps)):
        out += conn.feed(direction, captured, moved, ts, None)
        if direction == "ingress":
            commands += chunk.count(b"\r\n*")  + (chunk[:1] == b"*")
    out += conn.close(None)
    assert conn.internal_errors == 0
    assert len(out) <= commands


# --- hand-written bytes ----------------------------------------------------------------------

class Feeder:
    """Feeds (direction, bytes or (captured bytes, total length)) steps; ts and seq go on."""

    def __init__(self, conn):
        self.conn = conn
        self.ts = 0
        self.seq = {"ingress": 0, "egress": 50_000}

    def __call__(self, steps):
        out = []
        for direction, data in steps:
            payload, total = (data, len(data)) if isinstance(data, bytes) else data
            self.ts += 1
            out += self.conn.feed(direction, payload, total, self.ts, self.seq[direction])
            self.seq[direction] += total
        return out


def cmd(*words: bytes) -> bytes:
    return b"*%d\r\n" % len(words) + b"".join(b"$%d\r\n%s\r\n" % (len(w), w) for w in words)


IN, OUT = "ingress", "egress"


def test_query_text_rule():
    def text(*words):
        return query_text(words[0].decode(), list(words[:3]), len(words))
    assert text(b"SET", b"user:42", b"secret") == "SET user:42 ?"
    assert text(b"GET", b"user:42") == "GET user:42"
    assert text(b"HSET", b"h", b"f", b"v") == "HSET h ? ?"
    assert text(b"AUTH", b"user", b"password") == "AUTH ? ?"
    assert text(b"AUTH", b"password") == "AUTH ?"
    assert text(b"ECHO", b"hello") == "ECHO ?"
    assert text(b"EVAL", b"return redis.call('get', KEYS[1])", b"1", b"k") == "EVAL ? ? ?"
    assert text(b"CONFIG", b"set", b"requirepass", b"hunter2") == "CONFIG SET requirepass ?"
    assert text(b"SCRIPT", b"LOAD", b"return 1") == "SCRIPT LOAD ?"
    assert text(b"HELLO", b"3", b"AUTH", b"u", b"p") == "HELLO 3 ? ? ?"
    assert text(b"GET", b"has space") == 'GET "has space"'
    assert text(b"GET", b"bin\x00\xff") == 'GET "bin\\x00\\xff"'
    assert text(b"GET", b"k" * 300).endswith('..."') and len(text(b"GET", b"k" * 300)) < 150
    many = query_text("MSET", [b"MSET", b"a", b"1"], 1001)
    assert many.startswith("MSET a ? ?") and many.endswith("? ...") and many.count("?") == 32


def test_inline_commands_and_detection():
    hints = ConnectionHints("tcp", 6379, 40000, "server")
    other = ConnectionHints("tcp", 8080, 40000, "server")
    assert RedisHandler.detect(b"PING\r\n", IN, other)
    assert RedisHandler.detect(b"SET k v\r\n", IN, other)
    assert RedisHandler.detect(cmd(b"get", b"k"), IN, other)
    assert RedisHandler.detect(cmd(b"JSON.SET", b"k", b"$", b"{}"), IN, other)
    # A name redis does not know, in RESP framing: redis until its reply says otherwise.
    assert RedisHandler.detect(cmd(b"NOTACOMMAND", b"x"), IN, other)
    for noise in (b"GET / HTTP/1.1\r\nHost: x\r\n\r\n", b"GET /\r\n", b"QUIT\r\n", b"TYPE I\r\n",
                  b"AUTH LOGIN\r\n", b"PING :irc.example\r\n", b"get k\r\n", b"EHLO x\r\n",
                  b"\x16\x03\x01\x02\x00",
                  b"+OK\r\n", b"$5\r\nhello\r\n"):
        assert not RedisHandler.detect(noise, IN, other), noise
    # A reply first (joined mid-stream) only on a redis port.
    assert RedisHandler.detect(b"+OK\r\n", OUT, hints)
    assert not RedisHandler.detect(b"+OK\r\n", OUT, ConnectionHints("udp", 6379, 1, "server"))
    conn = RedisHandler("server")
    feed_all = Feeder(conn)
    out = feed_all([(IN, b"PING\r\n\r\nSET k \"v\"\r\n"), (OUT, b"+PONG\r\n+OK\r\n")])
    assert summary(out) == [("PING", "PING", "unset", None), ("SET", "SET k ?", "unset", None)]
    assert looks_like_command(b"PING\r\n") and not looks_like_command(b"")


def test_resp3_attributes_streamed_values_and_big_numbers():
    conn = RedisHandler("server")
    feed_all = Feeder(conn)
    replies = (b"|1\r\n+key-popularity\r\n%1\r\n$1\r\na\r\n,0.19\r\n*2\r\n:1\r\n:2\r\n"  # attribute, then array
               b"*?\r\n:1\r\n*1\r\n#t\r\n.\r\n"                                        # streamed array
               b"$?\r\n;4\r\nHell\r\n;1\r\no\r\n;0\r\n"                                # streamed string
               b"(3492890328409238509324850943850943825024385\r\n"                     # big number
               b"!21\r\nSYNTAX invalid syntax\r\n"                                     # bulk error
               b"=15\r\ntxt:Some string\r\n"                                           # verbatim
               b">3\r\n$7\r\nmessage\r\n$1\r\nc\r\n$1\r\nx\r\n"                        # push: not a reply
               b"_\r\n")
    requests = b"".join(cmd(b"LRANGE", b"a", b"0", b"1") for _ in range(7))
    out = feed_all([(IN, requests), (OUT, replies)])
    assert len(out) == 7 and conn.pending_commands == 0
    assert [f.status for f in out] == ["unset"] * 4 + ["error"] + ["unset"] * 2
    assert out[4].attributes["error.type"] == "SYNTAX"
    assert out[4].status_message == "SYNTAX invalid syntax"
    assert conn.resyncs == 0


def test_client_reply_off_skip_and_monitor():
    conn = RedisHandler("server")
    feed_all = Feeder(conn)
    out = feed_all([
        (IN, cmd(b"CLIENT", b"REPLY", b"SKIP") + cmd(b"SET", b"a", b"1") + cmd(b"GET", b"a")),
        (OUT, b"$1\r\n1\r\n"),
        (IN, cmd(b"CLIENT", b"REPLY", b"OFF") + cmd(b"SET", b"b", b"2") + cmd(b"CLIENT", b"REPLY", b"ON")),
        (OUT, b"+OK\r\n"),
        (IN, cmd(b"MONITOR")),
        (OUT, b"+OK\r\n+1700000000.1 [0 127.0.0.1:1] \"GET\" \"a\"\r\n"),
    ])
    out += conn.close(99)
    assert [(f.attributes["db.query.text"], f.attributes.get("sidetrace.redis.flags"),
             f.response_seq is not None) for f in out] == [
        ("CLIENT REPLY SKIP", "no_reply", False),
        ("SET a ?", "no_reply", False),
        ("GET a", None, True),
        ("CLIENT REPLY OFF", "no_reply", False),
        ("SET b ?", "no_reply", False),
        ("CLIENT REPLY ON", None, True),
        ("MONITOR", None, True),
    ]


def test_lost_reply_ends_when_the_next_reply_starts():
    conn = RedisHandler("server")
    feed_all = Feeder(conn)
    big = b"*3000\r\n" + b"$5\r\nvalue\r\n" * 3000
    out = feed_all([
        (IN, cmd(b"LRANGE", b"l", b"0", b"-1")),
        (OUT, (big[:4096], len(big) - 1000)),  # a header line went uncaptured
        (OUT, big[-1000:]),                    # the rest: no reply starts here
    ])
    assert out == []
    out = feed_all([(IN, cmd(b"GET", b"x"))])
    assert [(f.name, f.end_ns, f.attributes["sidetrace.redis.flags"]) for f in out] == [
        ("LRANGE", 3, "response_truncated")]
    out = feed_all([(OUT, b"$2\r\nok\r\n")])
    assert [f.attributes["db.query.text"] for f in out] == ["GET x"]
    assert conn.resyncs == 1


def test_replies_lost_with_commands_waiting():
    conn = RedisHandler("server")
    feed_all = Feeder(conn)
    gets = b"".join(cmd(b"GET", b"k%d" % i) for i in range(10))
    reply = b"$2000\r\n" + b"v" * 2000 + b"\r\n"
    steps = [(IN, gets), (OUT, (reply * 2 + b"$20", len(reply) * 10))]
    out = feed_all(steps)
    assert len(out) == 2  # the two replies seen
    out = feed_all([(IN, cmd(b"PING")), (OUT, b"+PONG\r\n")])
    texts = [(f.attributes["db.query.text"], f.attributes.get("sidetrace.redis.flags")) for f in out]
    assert texts == [("GET k2", "response_truncated")] + [
        (f"GET k{i}", "response_missing") for i in range(3, 10)] + [("PING", None)]


def test_close_flushes_waiting_and_cut_commands():
    conn = RedisHandler("server")
    feed_all = Feeder(conn)
    feed_all([(IN, cmd(b"BLPOP", b"q", b"0") + b"*2\r\n$3\r\nGET\r\n$1\r\nk")])
    out = conn.close(50)
    assert [(f.name, f.attributes.get("sidetrace.redis.flags")) for f in out] == [
        ("BLPOP", "response_missing"), ("GET", "request_truncated,response_missing")]
    assert conn.close(60) == [] and conn.feed(IN, cmd(b"PING"), 14, 70, None) == []


def test_bounded_buffers_and_queue():
    conn = RedisHandler("server")
    feed_all = Feeder(conn)
    conn.feed(IN, b"*1\r\n$4\r\nPING\r\n", 14, 1, None)
    conn.feed(OUT, b"+" + b"x" * 70_000, 70_001, 2, None)  # a line longer than any header
    assert conn.buffered_bytes == 0 and conn.resyncs == 1
    conn = RedisHandler("server")
    feed_all = Feeder(conn)
    out = conn.feed(IN, cmd(b"PING") * 1500, 14 * 1500, 1, None)
    assert conn.pending_commands == 1024 and len(out) == 1500 - 1024
    out = conn.feed(OUT, b"+PONG\r\n" * 1500, 7 * 1500, 2, None)
    assert len(out) == 1024 and all(f.response_seq is None for f in out[:0])
    assert conn.pending_commands == 0


@settings(max_examples=300, deadline=None)
@given(st.lists(st.tuples(st.booleans(), st.binary(max_size=200), st.integers(0, 300)), max_size=12),
       st.sampled_from(["server", "client", "unknown"]))
def test_random_bytes_never_raise(chunks, role):
    conn = RedisHandler(role)
    for i, (ingress, data, extra) in enumerate(chunks):
        conn.feed(IN if ingress else OUT, data, len(data) + extra, i, i * 1000)
        assert conn.buffered_bytes <= 2 * 64 * 1024
    conn.close(None)
    assert conn.internal_errors == 0


@settings(max_examples=300, deadline=None)
@given(st.lists(st.tuples(st.booleans(), st.lists(st.sampled_from([
    b"*", b"$", b"%", b"~", b">", b"|", b"+OK", b"-ERR x", b":1", b"_", b"#t", b",1.5", b"(1",
    b"!3\r\nERR", b"=5\r\ntxt:a", b"*?", b"$?", b";2\r\nab", b";0", b".", b"3", b"-1", b"\r\n",
    b"\r\n", b"SUBSCRIBE", b"message", b"subscribe", b"PING", b"GET"]), max_size=30)), max_size=10))
def test_resp_shaped_noise_never_raises(chunks):
    conn = RedisHandler("server")
    feed_all = Feeder(conn)
    for i, (ingress, pieces) in enumerate(chunks):
        data = b"".join(pieces)
        conn.feed(IN if ingress else OUT, data, len(data), i, None)
    conn.close(None)
    assert conn.internal_errors == 0


# --- through the pipeline (see _pipeline_fuzz) ---------------------------------------------


@FUZZ
@given(data=st.data())
def test_mutated_captures_through_the_pipeline(recorded, data):
    check_mutated("redis", conversations_of(recorded), data)


@FUZZ
@given(data=st.data())
def test_random_bytes_through_the_pipeline(data):
    check_garbage("redis", data)


def test_replies_in_another_protocol_make_no_span(recorded):
    for conversation in conversations_of(recorded):
        spans, _ = answered_in_another_protocol("redis", conversation)
        assert spans == []
