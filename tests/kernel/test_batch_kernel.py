"""Per-CPU event batching in the tracer object, on the real kernel.

The tracer is loaded as the agent loads it: batching on, this process as the
agent (agent_tgid), the agent's flushers (agent._app.CpuFlushers) pinned to
every CPU.  A traced child process exchanges messages over TCP loopback;
nobody but the flushers makes the kernel send its batches.
"""

from __future__ import annotations

import os
import struct
import subprocess
import sys
import textwrap
import time
from collections import defaultdict
from pathlib import Path

import pytest

from agent._app import BATCH_MAX_AGE_NS, KERNEL_COUNTER_NAMES, CpuFlushers, batching_constants
from agent.intake import FlushReason, split_batch
from agent._events import Direction, Kind
from bpfobj import Collection, PerfEventArray, arch_object, load_object_spec, online_cpus

pytestmark = pytest.mark.kernel

OBJ = arch_object(Path(__file__).resolve().parents[2] / "bpfobj" / "bpf" / "sidetrace.bpf.o")

MESSAGES = 300
CHILD = textwrap.dedent(f"""
    import os, socket, sys
    print(os.getpid(), flush=True)
    sys.stdin.readline()
    ls = socket.socket(); ls.bind(("127.0.0.1", 0)); ls.listen()
    cli = socket.create_connection(ls.getsockname()); srv, _ = ls.accept()
    for i in range({MESSAGES}):
        cli.sendall(b"GET /%05d HTTP/1.1\\r\\n" % i)
        want = 21
        while want:
            want -= len(srv.recv(want))
    print(cli.getsockname()[1], flush=True)
    sys.stdin.readline()
""")


def counter(coll: Collection, name: str) -> int:
    values = coll.maps["counters"].lookup(struct.pack("<I", KERNEL_COUNTER_NAMES.index(name)))
    return sum(struct.unpack("<Q", v)[0] for v in values)


def test_batches_reach_the_rings_through_the_agents_flushers() -> None:
    cpus = online_cpus()
    with CpuFlushers(cpus) as flushers:
        assert flushers.start()
        constants = batching_constants(flushers)
        assert constants == {"batching": 1, "batch_max_age_ns": BATCH_MAX_AGE_NS}
        spec = load_object_spec(OBJ).with_constants(agent_tgid=os.getpid(), **constants)
        with Collection(spec) as coll, PerfEventArray(coll.maps["events"], pages=256) as rings:
            coll.attach_all()
            batches: dict[int, list] = defaultdict(list)

            def read() -> None:
                for ring in rings:
                    for sample in ring.read().samples:
                        batches[ring.cpu].append(split_batch(sample))

            child = subprocess.Popen([sys.executable, "-c", CHILD], stdin=subprocess.PIPE,
                                     stdout=subprocess.PIPE, text=True)
            try:
                pid = int(child.stdout.readline())
                coll.maps["pids"][struct.pack("<I", pid)] = struct.pack("<I", 1)
                child.stdin.write("go\n")
                child.stdin.flush()
                cport = int(child.stdout.readline())
                sent_ns = time.monotonic_ns()
                # The child is idle now, waiting on stdin: only the flushers
                # can send what its last syscalls left in the batches.
                deadline = time.monotonic() + 30
                while True:
                    read()
                    mine = [e for bs in batches.values() for b in bs for e in b.events
                            if e.tgid == pid and e.kind == Kind.DATA
                            and cport in (e.sport, e.dport)]
                    # what is asserted below: every CPU sent an empty batch
                    # (a heartbeat) on the flushers' call after the child's last event
                    heard_after = all(any(not b.events and b.reason == FlushReason.AGENT
                                          and b.flush_ns > sent_ns for b in batches[cpu])
                                      for cpu in cpus)
                    if (len(mine) >= 2 * MESSAGES and heard_after) or time.monotonic() > deadline:
                        break
                    time.sleep(0.01)
            finally:
                child.stdin.close()
                child.wait(10)
                child.stdout.close()
            lost = counter(coll, "lost_events")
            sent_batches, heartbeats = counter(coll, "batches"), counter(coll, "heartbeats")
    assert not flushers.running and flushers.stopped == []

    assert lost == 0
    egress = [e for e in mine if e.direction == Direction.EGRESS]
    ingress = [e for e in mine if e.direction == Direction.INGRESS]
    assert len(egress) == len(ingress) == MESSAGES
    assert sorted(e.payload for e in egress) == [b"GET /%05d HTTP/1.1\r\n" % i for i in range(MESSAGES)]
    # every CPU sent heartbeats after the child's last event (the merge horizon moves on everywhere)
    assert heard_after
    # events were batched: some batch carried many of them
    assert max(len(b.events) for bs in batches.values() for b in bs) > 1
    assert sent_batches > 0 and heartbeats > 0
    # the horizon guarantee, per CPU ring: a batch's events are stamped at or
    # before its flush_ns and after the previous batch's flush_ns
    for cpu, bs in batches.items():
        previous = 0
        for b in bs:
            assert b.flush_ns > previous
            assert all(previous < e.ts_ns <= b.flush_ns for e in b.events), cpu
            assert [e.ts_ns for e in b.events] == sorted(e.ts_ns for e in b.events)
            previous = b.flush_ns


def test_without_flushers_the_agent_loads_the_tracer_with_batching_off() -> None:
    missing = max(online_cpus()) + 4096
    with CpuFlushers([missing]) as flushers:
        assert not flushers.start()
        constants = batching_constants(flushers)
    assert constants["batching"] == 0
    spec = load_object_spec(OBJ).with_constants(agent_tgid=os.getpid(), **constants)
    with Collection(spec) as coll, PerfEventArray(coll.maps["events"], pages=16) as rings:
        coll.attach_all()
        with open(os.devnull, "wb", buffering=0) as null:
            null.write(b"")  # the flush call does nothing with batching off
        assert [split_batch(s) for s in rings.read_all().samples] == []
