"""CPU cost of the Redis and memcached handlers per message (command + reply = one span).

Run: .venv/bin/python bench/bench_protocols_redis_memcached.py [--quick]

Conversations are recorded first from a real redis-server and memcached on
127.0.0.1 (redis-py, pymemcache, hand-built binary packets) through the
recording proxy of the unit tests; each is then replayed syscall by syscall,
as the agent feeds a handler, many times over.  The table gives the best of
several runs in nanoseconds of wall time per span (time.perf_counter_ns).
Without the servers or clients installed it says so and exits 0.
"""

from __future__ import annotations

import argparse
import os
import shutil
import struct
import sys
import tempfile
import time
from pathlib import Path

sys.path.insert(0, os.path.join(os.path.dirname(os.path.abspath(__file__)), ".."))

from agent.protocols.memcached import MemcachedHandler  # noqa: E402
from agent.protocols.redis import RedisHandler  # noqa: E402

CAPTURE = 4096   # bytes the agent captures per syscall


def _record(server_args, port, scenarios):
    """name -> the recorded syscalls (direction, bytes) of each scenario's first connection."""
    from tests.unit.test_proto_redis import RecordingProxy, running
    out = {}
    with tempfile.TemporaryDirectory() as tmp, running(server_args, port, Path(tmp)):
        proxy = RecordingProxy(port)
        try:
            for name, scenario in scenarios.items():
                before = len(proxy.conversations)
                scenario(proxy.port)
                proxy.settle(before + 1)
                out[name] = [(d, data) for d, data, _ in proxy.conversations[before]]
        finally:
            proxy.close()
    return out


def redis_scenarios():
    import redis

    def small(port):
        r = redis.Redis(port=port, protocol=2)
        for i in range(50):
            r.set(f"k{i}", f"v{i}")
            r.get(f"k{i}")
        r.close()

    def pipeline(port):
        r = redis.Redis(port=port, protocol=2)
        with r.pipeline(transaction=False) as pipe:
            for i in range(100):
                pipe.set(f"p{i}", "x" * 20)
            pipe.execute()
        r.close()

    def hash_map(port):
        r = redis.Redis(port=port, protocol=3)
        r.hset("h", mapping={f"f{i}": f"v{i}" for i in range(100)})
        for _ in range(20):
            r.hgetall("h")
        r.close()

    def lrange(port):
        r = redis.Redis(port=port, protocol=2)
        r.rpush("l", *[f"item{i}" for i in range(1000)])
        for _ in range(5):
            r.lrange("l", 0, -1)
        r.close()

    def big(port):
        r = redis.Redis(port=port, protocol=2)
        r.set("big", b"B" * 300_000)
        for _ in range(5):
            r.get("big")
        r.close()

    return {
        "SET+GET 50x, one per round trip": small,
        "pipeline of 100 SET": pipeline,
        "HGETALL 100 fields (RESP3 map)": hash_map,
        "LRANGE 1000 items (4 KiB captured)": lrange,
        "GET 300 KB (4 KiB captured)": big,
    }


def memcached_scenarios():
    from pymemcache.client.base import Client

    def small(port):
        c = Client(("127.0.0.1", port), default_noreply=False)
        for i in range(50):
            c.set(f"k{i}", f"v{i}")
            c.get(f"k{i}")
        c.close()

    def multi(port):
        c = Client(("127.0.0.1", port), default_noreply=False)
        c.set_many({f"m{i}": "x" * 20 for i in range(50)})
        for _ in range(20):
            c.get_many([f"m{i}" for i in range(50)])
        c.close()

    def big(port):
        c = Client(("127.0.0.1", port), default_noreply=False)
        c.set("big", b"B" * 500_000)
        for _ in range(5):
            c.get("big")
        c.close()

    def meta_quiet(port):
        c = Client(("127.0.0.1", port))
        batch = b"".join(b"mg q%d v q k O%d\r\n" % (i, i) for i in range(50)) + b"mn"
        for _ in range(10):
            c.raw_command(batch, b"MN\r\n")
        c.close()

    def binary(port):
        import socket
        with socket.create_connection(("127.0.0.1", port)) as sock:
            for i in range(50):
                key = b"b%d" % i
                for op, extras, value in ((0x01, struct.pack(">II", 0, 0), b"value"), (0x00, b"", b"")):
                    body = extras + key + value
                    sock.sendall(struct.pack(">BBHBBHIIQ", 0x80, op, len(key), len(extras), 0, 0,
                                             len(body), i, 0) + body)
                    header = sock.recv(24, socket.MSG_WAITALL)
                    length = struct.unpack_from(">I", header, 8)[0]
                    if length:
                        sock.recv(length, socket.MSG_WAITALL)

    return {
        "set+get 50x, one per round trip": small,
        "get_many 50 keys x20": multi,
        "get 500 KB (4 KiB captured)": big,
        "mg quiet batch of 50 + mn": meta_quiet,
        "binary set+get 50x": binary,
    }


def measure(factory, steps, rounds):
    """Best-case ns per span over ``rounds`` replays of ``steps`` (each on a new connection)."""
    prepared = [(d, data[:CAPTURE], len(data)) for d, data in steps]
    spans = 0
    start = time.perf_counter_ns()
    for _ in range(rounds):
        conn = factory("server")
        feed = conn.feed
        for ts, (direction, data, total) in enumerate(prepared):
            spans += len(feed(direction, data, total, ts, ts))
        spans += len(conn.close(None))
    elapsed = time.perf_counter_ns() - start
    if not spans:
        raise SystemExit("benchmark broken: no spans")
    return elapsed / spans, spans // rounds


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--quick", action="store_true", help="fewer rounds (for CI smoke runs)")
    args = parser.parse_args()
    repeats = 3 if args.quick else 5
    budget_spans = 2_000 if args.quick else 20_000
    from tests.unit.test_proto_redis import free_port
    tables = []
    redis_bin, memcached_bin = shutil.which("redis-server"), shutil.which("memcached")
    try:
        import pymemcache  # noqa: F401
        import redis  # noqa: F401
    except ImportError as e:
        print(f"skipped: {e.name} is not installed (tests/requirements.txt)")
        return
    if redis_bin is None or memcached_bin is None:
        print("skipped: redis-server and memcached are needed (tests/apt-packages.txt)")
        return
    port = free_port()
    tables.append(("redis", RedisHandler, _record(
        [redis_bin, "--port", str(port), "--bind", "127.0.0.1", "--save", "", "--appendonly", "no"],
        port, redis_scenarios())))
    port = free_port()
    mc_args = [memcached_bin, "-l", "127.0.0.1", "-p", str(port), "-U", "0"]
    if os.geteuid() == 0:
        mc_args += ["-u", "root"]
    tables.append(("memcached", MemcachedHandler, _record(mc_args, port, memcached_scenarios())))

    print(f"Redis and memcached handlers, wall time per span (best of {repeats}), "
          f"{CAPTURE} bytes captured per syscall, Python {sys.version.split()[0]}")
    print(f"{'protocol':10} {'conversation':38} {'spans':>6} {'ns/span':>9} {'us/span':>8}")
    print("-" * 75)
    for protocol, factory, conversations in tables:
        for name, steps in conversations.items():
            _, per_round = measure(factory, steps, 1)
            rounds = max(1, budget_spans // max(per_round, 1))
            best = min(measure(factory, steps, rounds)[0] for _ in range(repeats))
            print(f"{protocol:10} {name:38} {per_round:6d} {best:9.0f} {best / 1000:8.2f}")


if __name__ == "__main__":
    main()
