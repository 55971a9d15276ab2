"""CPU: on-CPU time per process against /proc/PID/stat, and run-queue wait on a span."""

from __future__ import annotations

import time
import urllib.request
from pathlib import Path

import pytest

from wire import BlockingSubscriber

from ._monitor_rig import cpu_seconds, monitor, python, trace, wait_for
from ._procs import APPS, agent, wait_for_socket

pytestmark = pytest.mark.kernel

CPU = 0
BUSY = "import sys\nsys.stdout.write('up\\n'); sys.stdout.flush()\nwhile True: pass\n"


def test_on_cpu_time_of_two_busy_processes_on_one_cpu_matches_proc_stat():
    with monitor("cpu") as mon, python(BUSY, cpu=CPU) as a, python(BUSY, cpu=CPU) as b:
        assert a.stdout.readline() == b.stdout.readline() == "up\n"
        trace(mon, a.pid, b.pid)
        wait_for("both processes accounted", lambda: all(
            mon.read().procs.get(p, {}).get("oncpu_ns") for p in (a.pid, b.pid)))
        before = mon.read().procs
        truth_before = {p: cpu_seconds(p) for p in (a.pid, b.pid)}
        wait_for("a second of CPU each", lambda: all(
            cpu_seconds(p) - truth_before[p] >= 1.0 for p in (a.pid, b.pid)), timeout=60, every=0.2)
        after = mon.read().procs
        truth = {p: cpu_seconds(p) - truth_before[p] for p in (a.pid, b.pid)}
    for pid, other in ((a.pid, b.pid), (b.pid, a.pid)):
        measured = (after[pid]["oncpu_ns"] - before[pid]["oncpu_ns"]) / 1e9
        assert measured == pytest.approx(truth[pid], rel=0.10), (pid, measured, truth)
        # Sharing one CPU, each waits at least while the other runs.
        waited = (after[pid]["wait_ns"] - before[pid]["wait_ns"]) / 1e9
        assert waited >= 0.5 * truth[other], (pid, waited, truth)
        assert sum(after[pid]["wait_hist"]) > sum(before[pid]["wait_hist"])
        assert after[pid]["involuntary"] > before[pid]["involuntary"]


def test_a_request_served_by_a_thread_that_competes_for_its_cpu_shows_its_run_queue_wait(tmp_path: Path):
    sock = tmp_path / "st.sock"
    serve = f"import runpy\nrunpy.run_path({str(APPS / 'monitor_server.py')!r}, run_name='__main__')\n"
    with python(serve, cpu=CPU) as server:
        port = int(server.stdout.readline())
        with agent(sock, "--pid", str(server.pid), "--metrics", "cpu") as proc:
            wait_for_socket(sock, proc)
            with BlockingSubscriber(sock, timeout=0.5) as sub, python(BUSY, cpu=CPU) as busy:
                assert busy.stdout.readline() == "up\n"
                truths = []
                for _ in range(3):
                    with urllib.request.urlopen(f"http://127.0.0.1:{port}/burn?ms=40", timeout=30) as r:
                        oncpu, wait = (int(v) for v in r.read().split())
                    truths.append((oncpu, wait))
                spans = []
                deadline = time.monotonic() + 30
                while len(spans) < 3 and time.monotonic() < deadline:
                    try:
                        msg = sub.receive()
                    except TimeoutError:
                        continue
                    if msg and msg["type"] == "span" and msg["name"] == "GET /burn":
                        spans.append(msg)
    assert len(spans) == 3
    for span, (true_cpu, true_wait) in zip(spans, truths):
        attrs = span["attributes"]
        duration = span["end_time_unix_nano"] - span["start_time_unix_nano"]
        cpu, wait = attrs["sidetrace.thread.cpu_time_ns"], attrs["sidetrace.thread.runqueue_wait_ns"]
        # The span holds the server's own measurement window plus parsing and replying.
        assert true_cpu * 0.97 <= cpu <= true_cpu + 10_000_000, (cpu, true_cpu)
        assert wait >= 10_000_000, "a thread sharing its CPU with a busy loop waits for it"
        assert true_wait * 0.9 - 1_000_000 <= wait <= true_wait * 1.5 + 15_000_000, (wait, true_wait)
        assert cpu + wait <= duration * 1.01 + 100_000
        assert attrs["sidetrace.thread.block_io_wait_ns"] >= 0
