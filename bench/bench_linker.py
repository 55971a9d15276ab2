"""The span linker's own cost: spans per second, and memory per held and per remembered span.

The workload is a generated live mix, in completion order (innermost first),
the shape the agent links:

  load (8 client threads) -> nginx-like relay (one event-loop thread, several
  requests in flight, 4 routes forwarded unchanged) -> service (a new thread
  per request) -> stock (a pool of 16 threads), every hop with a TCP sequence
  number (exact links); one request in ten also makes a UDP lookup without a
  sequence number (address-time link) from the service.  Every span carries
  the syscall-order evidence the agent's pipeline attaches (a linker that
  predates it ignores it); there is no runtime context (no loop waits, no
  tasks), as for a process the context object has nothing on.

Rows, best of ``--repeat`` runs of the same spans (CPU time of the process,
which a busy machine disturbs less than wall time; rows take turns):

  pass-through   publish(span) per span, nothing else: the floor
  linker @REV    the linker as committed at REV (``--against REV``)
  linker         agent/linker/ of this working tree

Throughput: ``add`` for every span with the clock following the spans' ends
(``tick`` once a second as the agent does, ``add`` doing its work every
50 ms), then ``flush``.  Memory (tracemalloc): bytes allocated while the
linker holds every span (decisions made, nothing released), beyond the span
messages themselves; then bytes still allocated once every span has been
released to a publish that keeps nothing (what remembering costs).

No privileges needed.  Usage:
    python bench/bench_linker.py [--requests N] [--repeat R] [--against REV]
"""

from __future__ import annotations

import argparse
import functools
import gc
import importlib
import operator
import os
import platform
import random
import subprocess
import sys
import tempfile
import time
import tracemalloc
from pathlib import Path
from types import ModuleType

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from agent._evidence import EVIDENCE_KEY, SpanEvidence  # noqa: E402
from wire import make_span  # noqa: E402

MS = 1_000_000
S = 1_000_000_000
T0 = 1_800_000_000 * S
ROUTES = ("/api/orders", "/api/users", "/ka/orders", "/ka/users")


def workload(requests: int, rate: float = 1000.0, seed: int = 1) -> list[dict]:
    """Spans of ``requests`` requests arriving at ``rate`` per second, sorted by end time."""
    rng = random.Random(seed)
    spans: list[dict] = []
    span_no = 0

    def add(kind: str, pid: int, tid: int, start: float, end: float, conn: tuple, seq: int | None,
            path: str, transport: str = "tcp", cause: tuple | None = None) -> None:
        nonlocal span_no
        span_no += 1
        (caddr, cport), (saddr, sport) = conn
        attrs = {"client.address": caddr, "client.port": cport, "server.address": saddr,
                 "server.port": sport, "network.transport": transport,
                 "http.request.method": "GET", "url.path": path}
        if seq is not None:
            attrs["sidetrace.tcp.request_seq"] = seq
        span = make_span(
            trace_id=rng.randbytes(16), span_id=span_no.to_bytes(8, "big"), parent_span_id=None,
            name=f"GET {path}", kind=kind, start_time_unix_nano=T0 + int(start * MS),
            end_time_unix_nano=T0 + int(end * MS), pid=pid, tid=tid, comm="app",
            protocol="http", status="unset", attributes=attrs)
        # What the agent's pipeline attaches (monotonic clock = span time here).
        evidence = SpanEvidence(cport << 16 | sport, tid, False, 0)
        if kind == "server":
            evidence.response, evidence.response_tid = T0 + int((end - 0.02) * MS), tid
        else:
            evidence.first = T0 + int(start * MS)
            if cause is not None:
                evidence.cause_conn, evidence.cause = cause
        span[EVIDENCE_KEY] = evidence
        spans.append(span)

    gap_ms = 1000.0 / rate
    for i in range(requests):
        t = i * gap_ms + rng.uniform(0, gap_ms / 2)
        path = ROUTES[i % len(ROUTES)]
        stock_work = rng.uniform(0.5, 3.0)
        service_work = rng.uniform(0.5, 3.0)
        port = 20000 + (3 * i) % 40000
        seq = rng.getrandbits(32)
        load_conn = (("127.0.0.1", port), ("127.0.0.1", 8080))
        svc_conn = (("127.0.0.1", port + 1), ("127.0.0.1", 7001))
        stock_conn = (("127.0.0.1", port + 2), ("127.0.0.1", 7002))
        # The service starts a thread per request (new thread ids, as Python's
        # ThreadingHTTPServer does); the stock service has a pool of 16.
        svc_tid, stock_tid = 100_000 + i, 41 + i % 16
        # Times in ms, from the load generator's write of the request.
        nginx_in = t + 0.05
        nginx_out = nginx_in + 0.04
        svc_in = nginx_out + 0.05
        call = svc_in + service_work / 2
        stock_in = call + 0.05
        stock_out = stock_in + stock_work
        call_end = stock_out + 0.05
        svc_out = call_end + service_work / 2
        if i % 10 == 0:   # a lookup without a sequence number
            dns_conn = (("127.0.0.1", 50000 + i % 10000), ("127.0.0.1", 53))
            add("server", 50, 50, call_end + 0.02, call_end + 0.08, dns_conn, None, "/dns", "udp")
            add("client", 30, svc_tid, call_end + 0.01, call_end + 0.1, dns_conn, None, "/dns",
                "udp")
            svc_out += 0.1
        nginx_back = svc_out + 0.05
        nginx_done = nginx_back + 0.04
        add("server", 40, stock_tid, stock_in, stock_out, stock_conn, seq + 2, "/stock")
        add("client", 30, svc_tid, call, call_end, stock_conn, seq + 2, "/stock")
        add("server", 30, svc_tid, svc_in, svc_out, svc_conn, seq + 1, path)
        add("client", 20, 20, nginx_out, nginx_back, svc_conn, seq + 1, path,
            cause=(port << 16 | 8080, T0 + int(nginx_in * MS)))
        add("server", 20, 20, nginx_in, nginx_done, load_conn, seq, path)
        add("client", 10, 11 + i % 8, t, nginx_done + 0.05, load_conn, seq, path)
    spans.sort(key=lambda s: s["end_time_unix_nano"])
    return spans


def feed(linker_cls, spans: list[dict]) -> tuple[float, list[dict], object]:
    """CPU seconds to link ``spans`` as the agent would, what was published, and the linker."""
    now = [T0]
    # A clock as cheap as the agent's time.time_ns: no Python frame per call.
    clock = functools.partial(operator.getitem, now, 0)
    published: list[dict] = []
    linker = linker_cls(published.append, clock=clock)
    add, tick = linker.add, linker.tick
    next_tick = T0 + S
    started = time.process_time()
    for s in spans:
        t = s["end_time_unix_nano"] + MS     # a millisecond through the pipeline
        if t > now[0]:
            now[0] = t
        if t >= next_tick:
            tick(t)
            next_tick = t + S
        add(s)
    linker.flush()
    elapsed = time.process_time() - started
    if len(published) != len(spans):
        raise AssertionError(f"{len(spans)} spans in, {len(published)} published")
    return elapsed, published, linker


def pass_through(spans: list[dict]) -> float:
    published: list[dict] = []
    publish = published.append

    def add(span: dict) -> None:
        publish(span)

    started = time.process_time()
    for s in spans:
        add(s)
    return time.process_time() - started


def memory(linker_cls, requests: int) -> tuple[float, float]:
    """(bytes per held span, bytes per remembered span) beyond the span messages."""
    gc.collect()
    tracemalloc.start()
    try:
        before = tracemalloc.get_traced_memory()[0]
        spans = workload(requests)
        count = len(spans)
        with_spans = tracemalloc.get_traced_memory()[0]
        now = [T0]
        clock = functools.partial(operator.getitem, now, 0)
        linker = linker_cls(lambda span: None, clock=clock, hold_ns=10_000 * S,
                            max_held=count + 1, max_remembered=count + 1,
                            remember_ns=100_000 * S)
        for s in spans:
            now[0] = max(now[0], s["end_time_unix_nano"] + MS)
            linker.add(s)
        now[0] += 2 * S
        linker.tick(now[0])             # every local decision made, nothing released
        if linker.held != count:
            raise AssertionError(f"held {linker.held} of {count}")
        del spans, s
        gc.collect()
        held = tracemalloc.get_traced_memory()[0] - with_spans
        now[0] += 20_000 * S
        linker.tick(now[0])             # all released; the messages are gone with them
        if linker.held != 0 or linker.stats()["remembered"] != count:
            raise AssertionError("not all released and remembered")
        gc.collect()
        remembered = tracemalloc.get_traced_memory()[0] - before
        del linker
    finally:
        tracemalloc.stop()
    return held / count, remembered / count


def linker_at(rev: str) -> ModuleType:
    """The linker as committed at ``rev``, imported as a package of its own: agent/linker/,
    or, in trees from before that package, agent/_linker*.py."""
    def ls(folder: str) -> list[str]:
        return subprocess.run(["git", "-C", str(ROOT), "ls-tree", "--name-only", rev, folder],
                              check=True, capture_output=True, text=True).stdout.split()

    names = [n for n in ls("agent/linker/") if n.endswith(".py") and not n.endswith("/__init__.py")]
    if not names:
        names = [n for n in ls("agent/") if os.path.basename(n).startswith("_linker")
                 and n.endswith(".py")]
    package = Path(tempfile.mkdtemp(prefix="linker-ref-")) / "linker_ref"
    package.mkdir()
    (package / "__init__.py").write_text("")
    for name in names:
        text = subprocess.run(["git", "-C", str(ROOT), "show", f"{rev}:{name}"], check=True,
                              capture_output=True, text=True).stdout
        (package / os.path.basename(name)).write_text(text)
    sys.path.insert(0, str(package.parent))
    return importlib.import_module("linker_ref._linker")


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--requests", type=int, default=12_000,
                    help="requests (6.1 spans each, 1,000 a second of span time) per run: "
                         "enough for spans to be forgotten too (default: %(default)s)")
    ap.add_argument("--memory-requests", type=int, default=3000,
                    help="requests held at once for the memory figures (default: %(default)s)")
    ap.add_argument("--repeat", type=int, default=5, help="runs; the best counts")
    ap.add_argument("--against", metavar="REV", help="also measure the linker as committed at REV")
    args = ap.parse_args(argv)

    from agent.linker import SpanLinker
    candidates = []
    if args.against:
        candidates.append((f"linker @{args.against}", linker_at(args.against).SpanLinker))
    candidates.append(("linker", SpanLinker))

    print(f"machine: {platform.node()} {platform.machine()} {os.cpu_count()} CPUs, "
          f"Python {platform.python_version()}, Linux {platform.release()}")
    count = len(workload(args.requests))
    print(f"workload: {args.requests} requests, {count} spans, 1,000 requests/s of span time; "
          f"CPU time, best of {args.repeat} (rows interleaved)")
    floor = min(pass_through(workload(args.requests)) for _ in range(args.repeat))
    best = [float("inf")] * len(candidates)
    for _ in range(args.repeat):
        for i, (_, cls) in enumerate(candidates):
            spans = workload(args.requests)
            gc.collect()
            elapsed, _, _ = feed(cls, spans)
            best[i] = min(best[i], elapsed)
    rows = []
    for (name, cls), elapsed in zip(candidates, best):
        held, remembered = memory(cls, args.memory_requests)
        rows.append((name, elapsed, held, remembered))

    reference = rows[0] if args.against else None
    print()
    print("| row | spans/s | us/span | x pass-through | B/held span | B/remembered span "
          + ("| speed-up | held ratio | remembered ratio |" if reference else "|"))
    print("|---|---:|---:|---:|---:|---:|" + ("---:|---:|---:|" if reference else ""))
    print(f"| pass-through | {count / floor:,.0f} | {floor / count * 1e6:.2f} | 1.0 | - | - |"
          + (" | | |" if reference else ""))
    for name, elapsed, held, remembered in rows:
        line = (f"| {name} | {count / elapsed:,.0f} | {elapsed / count * 1e6:.2f} | "
                f"{elapsed / floor:,.0f} | {held:,.0f} | {remembered:,.0f} |")
        if reference:
            line += (f" {reference[1] / elapsed:.2f}x | {held / reference[2]:.2f} | "
                     f"{remembered / reference[3]:.2f} |")
        print(line)
    return 0


if __name__ == "__main__":
    sys.exit(main())
