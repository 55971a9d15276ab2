"""Agent CPU per span for the resource attributes, against one map lookup syscall per span.

The per-span stage (agent/_span_resources.py) reads the monitor's two
mmapped arrays: a server span costs one thread-slot probe and two binary
searches among its checkpoints, a TCP span one connection-slot check (and
a scan of its retransmission marks only after a retransmission).  The
alternative it replaces is a BPF map lookup per span (a bpf() syscall
through ctypes).  Rows, timed in the same run over the same spans:

  thread+tcp      a server TCP span: thread times, RTT, no retransmission
  thread+tcp+rtx  the same after a retransmission on the connection
  tcp only        a client TCP span (no thread times)
  map lookup      one BPF_MAP_LOOKUP_ELEM of a 40-byte key (hit), the cost
                  of keeping the connection table in a hash map instead

Usage: python bench/bench_span_resources.py [--spans N]   (the map row needs root)
"""

from __future__ import annotations

import argparse
import os
import platform
import socket
import statistics
import struct
import sys
import time
from pathlib import Path

REPO = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(REPO))

from agent import _span_resources as res  # noqa: E402
from agent._span_resources import SpanResources, TcpSlots, ThreadMarks, tcp_key  # noqa: E402

THREAD_STRIDE = 24 + res.MARKS * 32
TCP_STRIDE = res._TCP.size
OFFSET = 10**18


class Clock:
    offset = OFFSET


def thread_array(tid: int) -> bytearray:
    buf = bytearray((1 << res.THREAD_BITS) * THREAD_STRIDE)
    off = res.thread_slot_hash(tid) * THREAD_STRIDE
    struct.pack_into("<IIIIQ", buf, off, tid, tid, 2, 3 * res.MARKS, 0)
    for n in range(res.MARKS):
        struct.pack_into("<QQQQ", buf, off + 24 + n * 32, 1000 * (n + 1), 500 * n, 100 * n, 0)
    return buf


def tcp_array(key: bytes, retransmitted_at: int) -> tuple[bytearray, bytes]:
    buf = bytearray((1 << res.TCP_BITS) * TCP_STRIDE)
    marks = [retransmitted_at] + [0] * (res.RETRANS_MARKS - 1)
    segs = [3] + [0] * (res.RETRANS_MARKS - 1)
    res._TCP.pack_into(buf, res.tcp_slot_hash(key) * TCP_STRIDE, key, 1, 120, 2, 1, 3, 0, *marks, *segs)
    return buf, struct.pack("<QQ", retransmitted_at, 3)


def span(kind: str) -> dict:
    server, client = ("10.0.0.2", 8080), ("10.0.0.1", 40000)
    return {"kind": kind, "tid": 4242, "conn_id": 7,
            "start_time_unix_nano": OFFSET + 20_500, "end_time_unix_nano": OFFSET + 50_200,
            "attributes": {"server.address": server[0], "server.port": server[1],
                           "client.address": client[0], "client.port": client[1],
                           "network.transport": "tcp"}}


def per_span_us(stage, kind: str, n: int) -> float:
    spans = [span(kind) for _ in range(n)]
    start = time.process_time_ns()
    for s in spans:
        stage(s)
    return (time.process_time_ns() - start) / n / 1000


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--spans", type=int, default=100_000)
    ap.add_argument("--reps", type=int, default=5)
    args = ap.parse_args()
    key = tcp_key(socket.AF_INET, socket.inet_aton("10.0.0.2"), 8080, socket.inet_aton("10.0.0.1"), 40000)
    threads = ThreadMarks(thread_array(4242), THREAD_STRIDE, 1 << res.THREAD_BITS)
    quiet_tcp, quiet_shared = tcp_array(key, 0)
    lossy_tcp, lossy_shared = tcp_array(key, 30_000)
    quiet = SpanResources(Clock(), threads, TcpSlots(quiet_tcp, TCP_STRIDE, 1 << res.TCP_BITS, quiet_shared))
    lossy = SpanResources(Clock(), threads, TcpSlots(lossy_tcp, TCP_STRIDE, 1 << res.TCP_BITS, lossy_shared))
    probe = span("server")
    quiet(probe)
    lossy(probe)  # check the attributes come out, once
    assert probe["attributes"]["sidetrace.tcp.retransmits"] == 3, probe["attributes"]
    rows = {"thread+tcp": [], "thread+tcp+rtx": [], "tcp only": [], "map lookup": []}
    bpf_map = None
    if os.geteuid() == 0:
        from bpfobj import Map
        from bpfobj._consts import MapType

        bpf_map = Map.create(MapType.LRU_HASH, 40, 64, 1024, name="bench")
        bpf_map.update(key, bytes(64))
    for _ in range(args.reps):
        rows["thread+tcp"].append(per_span_us(quiet, "server", args.spans))
        rows["thread+tcp+rtx"].append(per_span_us(lossy, "server", args.spans))
        rows["tcp only"].append(per_span_us(quiet, "client", args.spans))
        if bpf_map is not None:
            start = time.process_time_ns()
            for _ in range(args.spans):
                bpf_map.lookup(key)
            rows["map lookup"].append((time.process_time_ns() - start) / args.spans / 1000)
    if bpf_map is not None:
        bpf_map.close()
    print(f"# bench_span_resources: {platform.node()} Linux {platform.release()}, Python "
          f"{platform.python_version()}, {time.strftime('%Y-%m-%d')}; {args.reps} reps x {args.spans} spans, "
          "median of CPU time per span")
    print(f"{'row':<16} {'us/span':>8}")
    for name, values in rows.items():
        if values:
            print(f"{name:<16} {statistics.median(values):8.2f}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
