"""The linker's decisions on generated span streams, against a record of them.

Each stream mixes what the linker meets live (exact TCP links, a relay with
several requests in flight, thread-per-request services, UDP without sequence
numbers, kept-alive connections reusing ports, thread pools, event loops with
several calls per request, background calls, spans arriving out of order,
duplicates and unreadable spans), or what ``sidetrace assemble`` meets (spans
that already have parents, from two sources).  The outcome, in publish order
(which span, its parent, its trace, confidence, reason, candidates), is hashed
and compared with the hash recorded when these rules were last changed on
purpose; the link counters are compared too, so that a change shows where.
A change in the rules must re-record these values, knowingly.
"""

from __future__ import annotations

import hashlib
import random

import pytest

from agent.linker import CANDIDATES_ATTR, CONFIDENCE_ATTR, REASON_ATTR, SpanLinker
from wire import make_span

MS = 1_000_000
S = 1_000_000_000
T0 = 1_800_000_000 * S
ROUTES = ("/api/orders", "/api/users", "/ka/orders", "/ka/users")


class _Stream:
    def __init__(self, seed: int) -> None:
        self.rng = random.Random(seed)
        self.spans: list[dict] = []

    def add(self, kind: str, pid: int, tid: int, start: float, end: float, conn: tuple | None,
            seq: int | None, path: str | None = "/x", transport: str = "tcp",
            parent: dict | None = None) -> dict:
        n = len(self.spans) + 1
        attrs: dict = {"network.transport": transport, "http.request.method": "GET"}
        if conn is not None:
            (caddr, cport), (saddr, sport) = conn
            attrs.update({"client.address": caddr, "client.port": cport,
                          "server.address": saddr, "server.port": sport})
        if path is not None:
            attrs["url.path"] = path
        if seq is not None:
            attrs["sidetrace.tcp.request_seq"] = seq
        span = make_span(
            trace_id=parent["trace_id"] if parent else self.rng.randbytes(16),
            span_id=n.to_bytes(8, "big"), parent_span_id=parent["span_id"] if parent else None,
            name=f"GET {path}", kind=kind, start_time_unix_nano=T0 + int(start * MS),
            end_time_unix_nano=T0 + int(end * MS), pid=pid, tid=tid, comm="app",
            protocol="http", status="unset", attributes=attrs)
        self.spans.append(span)
        return span


def live_stream(seed: int, requests: int = 300) -> list[dict]:
    """Spans of a traced system, roughly in completion order."""
    st = _Stream(seed)
    rng = st.rng
    keepalive = [(("127.0.0.1", 30000 + k), ("127.0.0.1", 7001)) for k in range(3)]
    for i in range(requests):
        t = i * 0.6 + rng.uniform(0, 0.4)
        path = rng.choice(ROUTES)
        seq = rng.getrandbits(32)
        port = 20000 + 3 * i
        load = (("127.0.0.1", port), ("127.0.0.1", 8080))
        svc = rng.choice(keepalive) if path.startswith("/ka") else (("::ffff:127.0.0.1", port + 1),
                                                                    ("127.0.0.1", 7001))
        stock = (("127.0.0.1", port + 2), ("127.0.0.1", 7002))
        work, stock_work = rng.uniform(0.3, 4), rng.uniform(0.1, 3)
        svc_tid = 31 + rng.randrange(6)
        ngx_in = t + 0.05
        ngx_out = ngx_in + rng.choice((0.02, 0.04, 0.3))
        svc_in = ngx_out + 0.05
        call = svc_in + work / 2
        stock_in, stock_out = call + 0.05, call + 0.05 + stock_work
        call_end = stock_out + 0.05
        svc_out = call_end + work / 2
        roll = rng.random()
        if roll < 0.1:     # a lookup without sequence numbers
            dns = (("0.0.0.0" if rng.random() < 0.5 else "127.0.0.1", 50000 + i), ("127.0.0.53", 53))
            st.add("server", 50, 50, call_end + 0.02, call_end + 0.06, dns, None, None, "udp")
            st.add("client", 30, svc_tid, call_end + 0.01, call_end + 0.08, dns, None, None, "udp")
            svc_out += 0.1
        elif roll < 0.15:  # handed to a pool thread
            pool = (("127.0.0.1", port + 3), ("127.0.0.1", 7003))
            st.add("client", 30, 90 + rng.randrange(2), call_end + 0.01, call_end + 0.05, pool,
                   seq + 3, "/pool")
        elif roll < 0.2:   # an asyncio-like process making two calls per request
            a_in = t + 0.01
            for k in range(2):
                c = (("127.0.0.1", port + 4 + k), ("127.0.0.1", 7004))
                st.add("client", 60, 60, a_in + 0.1 + k * rng.uniform(0, 1), a_in + 2 + k, c,
                       seq + 4 + k, "/b")
            st.add("server", 60, 60, a_in, a_in + 3.5, (("127.0.0.1", port + 6), ("127.0.0.1", 7005)),
                   seq + 6, "/a")
        elif roll < 0.23:  # a background call, in no request
            st.add("client", 30, svc_tid, svc_out + 5, svc_out + 6,
                   (("127.0.0.1", port + 7), ("127.0.0.1", 7009)), seq + 7, "/health")
        ngx_back = svc_out + 0.05
        ngx_done = ngx_back + rng.choice((0.02, 0.04))
        drop = rng.random()
        if drop > 0.03:
            st.add("server", 40, 41 + rng.randrange(4), stock_in, stock_out, stock, seq + 2, "/stock")
        st.add("client", 30, svc_tid, call, call_end, stock, seq + 2, "/stock")
        st.add("server", 30, svc_tid, svc_in, svc_out, svc, seq + 1, path)
        st.add("client", 20, 20, ngx_out, ngx_back, svc,
               None if rng.random() < 0.05 else seq + 1, path)
        st.add("server", 20, 20, ngx_in, ngx_done, load, seq, path)
        if drop > 0.1:
            st.add("client", 10, 11 + i % 8, t, ngx_done + 0.05, load, seq, path)
        if rng.random() < 0.01:
            st.spans.append(dict(st.spans[-1]))                 # seen twice
        if rng.random() < 0.01:
            st.spans.append({"type": "span", "name": "unreadable"})
    spans = st.spans
    spans.sort(key=lambda s: s.get("end_time_unix_nano", T0) + rng.randrange(2 * MS))
    return spans


def assembled_stream(seed: int, requests: int = 200) -> list[tuple[dict, str]]:
    """What two agents publish: hops within an agent already linked, hops between not."""
    st = _Stream(seed)
    rng = st.rng
    out = []
    for i in range(requests):
        t = i * 0.8
        seq = rng.getrandbits(32)
        hop = (("10.200.0.1", 40000 + i), ("10.200.0.2", 8080))
        back = (("10.200.0.2", 45000 + i), ("10.200.0.1", 9090))
        load = st.add("client", 100, 101, t, t + 10, hop, seq)
        server = st.add("server", 100, 100, t + 1, t + 9, hop, seq if rng.random() > 0.05 else None)
        call = st.add("client", 100, 100, t + 2, t + 8, back, seq + 1, parent=server)
        backend = st.add("server", 101, 101, t + 3, t + 7, back, seq + 1)
        inner = st.add("client", 101, 101, t + 4, t + 6, None, None, parent=backend)
        if rng.random() < 0.05:
            inner["parent_span_id"] = rng.randbytes(8)           # a parent never seen
        late = rng.random() < 0.1
        out += [(backend, "a"), (inner, "a"), (call, "b"), (server, "b")]
        out.append((load, "a") if not late else (load, "late"))
    body = [x for x in out if x[1] != "late"]
    rng.shuffle(body)
    body.sort(key=lambda x: x[0]["end_time_unix_nano"] // (4 * MS))
    return body + [(s, "a") for s, src in out if src == "late"]


def run(stream: list[tuple[dict, str | None]], seed: int, **options) -> tuple[str, dict]:
    rng = random.Random(seed)
    clock = [T0]
    out: list[dict] = []
    linker = SpanLinker(out.append, clock=lambda: clock[0], **options)
    index = {id(s): n for n, (s, _) in enumerate(stream)}
    for span, source in stream:
        end = span.get("end_time_unix_nano", clock[0])
        clock[0] = max(clock[0], end + rng.randrange(3 * MS))
        if rng.random() < 0.02:
            clock[0] += rng.randrange(S)
            linker.tick(clock[0])
        linker.add(span, source=source)
    for _ in range(4):
        clock[0] += S
        linker.tick(clock[0])
    linker.flush()
    assert len(out) == len(stream)
    by_span_id: dict = {}
    for n, (s, _) in enumerate(stream):
        by_span_id.setdefault(s.get("span_id"), n)
    digest = hashlib.sha256()
    for s in out:
        attrs = s.get("attributes") or {}
        parent = s.get("parent_span_id")
        digest.update(repr((
            index[id(s)], by_span_id.get(parent, parent), by_span_id.get(s.get("trace_id")),
            s.get("trace_id"), attrs.get(CONFIDENCE_ATTR), attrs.get(REASON_ATTR),
            attrs.get(CANDIDATES_ATTR))).encode())
    stats = linker.stats()
    del stats["held"], stats["remembered"]
    return digest.hexdigest()[:24], stats


RECORDED = {
    'live-1': ('1317b017ebff4570de69dab0', {
        'links': {'exact': 826, 'address-time': 26, 'thread': 156, 'content': 92, 'runtime': 0, 'order': 0, 'handoff': 0, 'heuristic': 368, 'none': 434},
        'roots': {'ambiguous': 58, 'no-server-span': 293, 'no-client-span': 83},
        'errors': 5}),
    'live-2': ('b3e5c493831cf61c7ef0f865', {
        'links': {'exact': 798, 'address-time': 45, 'thread': 160, 'content': 89, 'runtime': 0, 'order': 0, 'handoff': 0, 'heuristic': 328, 'none': 481},
        'roots': {'ambiguous': 77, 'no-server-span': 301, 'no-client-span': 103},
        'errors': 5}),
    'live-3-small-bounds': ('38b8d26b37f584ec26a47376', {
        'links': {'exact': 807, 'address-time': 29, 'thread': 68, 'content': 37, 'runtime': 0, 'order': 0, 'handoff': 0, 'heuristic': 160, 'none': 769},
        'roots': {'memory-bound': 592, 'ambiguous': 27, 'no-server-span': 97, 'no-client-span': 53},
        'errors': 6}),
    'live-4-short-memory': ('65dbe910b21480ab838f53bb', {
        'links': {'exact': 825, 'address-time': 35, 'thread': 160, 'content': 79, 'runtime': 0, 'order': 0, 'handoff': 0, 'heuristic': 371, 'none': 425},
        'roots': {'ambiguous': 58, 'no-server-span': 288, 'no-client-span': 79},
        'errors': 7}),
    'assembled-5': ('6f03336b730e79bccef02573', {
        'links': {'exact': 300, 'address-time': 7, 'thread': 0, 'content': 0, 'runtime': 0, 'order': 0, 'handoff': 0, 'heuristic': 0, 'none': 293},
        'roots': {'no-server-span': 200, 'no-client-span': 93},
        'errors': 0}),
    'assembled-6-small-bounds': ('b9eed48178716e445768fdcd', {
        'links': {'exact': 238, 'address-time': 6, 'thread': 0, 'content': 0, 'runtime': 0, 'order': 0, 'handoff': 0, 'heuristic': 0, 'none': 415},
        'roots': {'memory-bound': 319, 'no-server-span': 53, 'no-client-span': 43},
        'errors': 0}),
}


@pytest.mark.parametrize("case", sorted(RECORDED))
def test_decisions_on_a_recorded_stream_are_unchanged(case):
    kind, seed, options = CASES[case]
    if kind == "live":
        stream = [(s, None) for s in live_stream(seed)]
    else:
        stream = assembled_stream(seed)
    digest, stats = run(stream, seed, **options)
    want_digest, want_stats = RECORDED[case]
    assert stats == want_stats
    assert digest == want_digest


@pytest.mark.parametrize("kind", ["live", "assembled"])
def test_once_everything_is_forgotten_nothing_is_left_indexed(kind):
    """Memory follows the bounds: no index keeps a span past remembering it."""
    if kind == "live":
        stream, options = [(s, None) for s in live_stream(7)], {}
    else:
        stream, options = assembled_stream(7), {"local_inference": False}
    clock = [T0]
    out: list[dict] = []
    linker = SpanLinker(out.append, clock=lambda: clock[0], remember_ns=S, **options)
    for span, source in stream:
        clock[0] = max(clock[0], span.get("end_time_unix_nano", T0))
        linker.add(span, source=source)
    assert linker.stats()["held"] > 0
    for _ in range(8):
        clock[0] += S
        linker.tick(clock[0])
    assert len(out) == len(stream)
    assert linker.stats()["held"] == 0 and linker.stats()["remembered"] == 0
    for index in (linker._by_id, linker._clients_by_key, linker._servers_by_key,
                  linker._clients_by_pair, linker._servers_by_pair, linker._awaiting_parent,
                  linker._procs):
        assert not index
    assert not linker._held and not linker._pending and not linker._deadlines


CASES = {
    "live-1": ("live", 1, {}),
    "live-2": ("live", 2, {}),
    "live-3-small-bounds": ("live", 3, {"max_held": 40, "max_remembered": 200}),
    "live-4-short-memory": ("live", 4, {"remember_ns": 3 * MS, "settle_ns": 5 * MS}),
    "assembled-5": ("assembled", 5, {"local_inference": False, "min_wait_ns": 20 * MS}),
    "assembled-6-small-bounds": ("assembled", 6, {"local_inference": False, "max_held": 15}),
}


if __name__ == "__main__":   # prints RECORDED for the rules as they are now
    print("RECORDED = {")
    for name, (kind, seed, options) in CASES.items():
        stream = ([(s, None) for s in live_stream(seed)] if kind == "live"
                  else assembled_stream(seed))
        digest, stats = run(stream, seed, **options)
        print(f"    {name!r}: ({digest!r}, {{")
        print(f"        'links': {stats['links']!r},")
        print(f"        'roots': {stats['roots']!r},")
        print(f"        'errors': {stats['errors']!r}}}),")
    print("}")
