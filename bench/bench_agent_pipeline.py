"""User-space cost per HTTP span, stage by stage, on recorded-shape events.

Builds raw perf samples like the tracer's (nginx answering keep-alive GETs:
one read and one writev per request) and times, best of several runs:

  walk floor   cbor2.dumps of an empty map per span: the cheapest possible step
  decode       raw sample -> Event
  merge        CpuMerger push + release
  pipeline     Event -> span dict (connections, HTTP/1 parsing, span building)
  pipeline*    the same with a different request target every exchange
               (nothing learnt from one request line helps the next)
  link         SpanLinker.add of each span (server spans whose client end is
               not traced here, as nginx's behind wrk: each is a root at once)
  encode       cbor2.dumps of the span (what SpanServer does once per span)
  total        all of the above but pipeline*

Prints microseconds per span and each stage's share: CPU time of this process
(less disturbed by other load than wall time), garbage collector on as in the
agent.  ``--tree DIR`` runs the agent code of another checkout (e.g. a
``git worktree`` of an earlier commit) for a baseline.  No privileges needed.
"""

from __future__ import annotations

import argparse
import sys
import time
import timeit
from pathlib import Path

_args = argparse.ArgumentParser(description="agent CPU per HTTP span, stage by stage")
_args.add_argument("--tree", default=str(Path(__file__).resolve().parents[1]),
                   help="checkout whose agent package to time (default: this one)")
_args.add_argument("--repeat", type=int, default=15, help="runs per stage; the best counts")
ARGS = _args.parse_args()
sys.path.insert(0, str(Path(ARGS.tree).resolve()))

import cbor2  # noqa: E402

from agent._clock import WallClock  # noqa: E402
from agent._events import EVENT_HEADER, Direction, Kind, Role, decode_event  # noqa: E402
from agent._fastdecode import field_layout  # noqa: E402
try:   # a baseline tree from before agent/intake/
    from agent._merge import CpuMerger  # noqa: E402
except ImportError:
    from agent.intake import CpuMerger  # noqa: E402
from agent._pipeline import Pipeline  # noqa: E402
try:   # a baseline tree from before agent/linker/
    from agent.linker import SpanLinker  # noqa: E402
except ImportError:
    from agent._linker import SpanLinker  # noqa: E402

REQUEST = b"GET /api/items?id=7 HTTP/1.1\r\nHost: 127.0.0.1:8080\r\nUser-Agent: wrk\r\n\r\n"
RESPONSE = (b"HTTP/1.1 200 OK\r\nServer: nginx/1.22.1\r\nDate: Mon, 23 Nov 2026 15:40:00 GMT\r\n"
            b"Content-Type: application/json\r\nContent-Length: 3\r\nConnection: keep-alive\r\n\r\nok\n")
LOOPBACK = bytes(10) + b"\xff\xff\x7f\x00\x00\x01"
SPANS = 4000
CONNECTIONS = 16


def record(conn: int, ts: int, direction: int, payload: bytes, seq: int) -> bytes:
    fields = dict.fromkeys((f.name for f in field_layout(EVENT_HEADER)), 0)
    fields.update(kind=Kind.DATA, ts_ns=ts, conn_id=conn, ret=len(payload), tgid=100, tid=100,
                  fd=7, tcp_seq=seq, payload_len=len(payload), direction=direction,
                  role=Role.SERVER, family=2, sport=8080, dport=40000 + conn, l4_proto=6, flags=1,
                  saddr=LOOPBACK, daddr=LOOPBACK, comm=b"nginx".ljust(16, b"\0"))
    return EVENT_HEADER.build(fields) + payload + b"\0" * (-len(payload) % 8)


def make_records(distinct_targets: bool = False) -> list[memoryview]:
    out, ts = [], 1_000_000
    for i in range(SPANS):
        conn = i % CONNECTIONS
        request = REQUEST.replace(b"id=7", b"id=%d" % i) if distinct_targets else REQUEST
        out.append(memoryview(record(conn, ts, Direction.INGRESS, request, i * 97)))
        out.append(memoryview(record(conn, ts + 40_000, Direction.EGRESS, RESPONSE, i * 211)))
        ts += 50_000
    return out


def best(fn) -> float:
    """Best CPU time of ``fn`` in microseconds per span (timeit's setup turns the collector back on)."""
    times = timeit.repeat(fn, setup="import gc; gc.enable()", number=1, repeat=ARGS.repeat,
                          timer=time.process_time)
    return min(times) / SPANS * 1e6


def main() -> int:
    raws = make_records()
    events = [decode_event(r) for r in raws]
    distinct = [decode_event(r) for r in make_records(distinct_targets=True)]
    clock = WallClock()

    def decode():
        for r in raws:
            decode_event(r)

    def merge():
        m = CpuMerger([0])
        m.extend(events)
        m.mark_drained(0, 1 << 62)
        m.pop_ready()

    def pipeline(events=events):
        p = Pipeline(lambda span: None, clock=clock)
        for ev in events:
            p.handle(ev)

    spans: list = []
    p = Pipeline(spans.append, clock=clock)
    for ev in events:
        p.handle(ev)
    assert len(spans) == SPANS, len(spans)

    def encode():
        for s in spans:
            cbor2.dumps(s)

    def untraced_peer(address, port):
        return False

    def link():
        # Spans are published once; the linker writes ids and attributes into
        # them, so each run links fresh copies (the copies are made outside the
        # timed part's per-span work as far as possible: a shallow dict copy each).
        linker = SpanLinker(lambda span: None, peer_traced=untraced_peer)
        add = linker.add
        for s in fresh:
            add(s)

    fresh: list = []

    def linked_best():
        best_us = None
        for _ in range(ARGS.repeat):
            fresh[:] = [{**s, "attributes": dict(s["attributes"])} for s in spans]
            import gc
            gc.enable()
            t0 = time.process_time()
            link()
            t = (time.process_time() - t0) / SPANS * 1e6
            best_us = t if best_us is None else min(best_us, t)
        return best_us

    empty: dict = {}

    def floor():
        for _ in range(SPANS):
            cbor2.dumps(empty)

    def total():
        out = []
        linker = SpanLinker(out.append, peer_traced=untraced_peer)
        p = Pipeline(linker.add, clock=clock)
        m = CpuMerger([0])
        push = m.push
        for r in raws:
            push(decode_event(r))
        m.mark_drained(0, 1 << 62)
        for ev in m.pop_ready():
            p.handle(ev)
        for s in out:
            cbor2.dumps(s)

    rows = [("floor", best(floor)), ("decode", best(decode)), ("merge", best(merge)),
            ("pipeline", best(pipeline)), ("pipeline*", best(lambda: pipeline(distinct))),
            ("link", linked_best()), ("encode", best(encode)), ("total", best(total))]
    base = rows[0][1]
    tot = rows[-1][1]
    print(f"agent code: {Path(ARGS.tree).resolve()}")
    print(f"{'stage':<10} {'us/span':>8} {'x floor':>8} {'share':>6}")
    for name, us in rows:
        share = f"{us / tot * 100:5.0f}%" if name not in ("floor", "total", "pipeline*") else ""
        print(f"{name:<10} {us:>8.2f} {us / base:>8.1f} {share:>6}")
    print(f"({SPANS} spans, 2 events each; goal: total <= 10 us/span)")
    return 0


if __name__ == "__main__":
    sys.exit(main())
