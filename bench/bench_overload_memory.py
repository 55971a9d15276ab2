"""Agent memory through repeated overload: does it stay bounded and come back?

nginx (1 worker) on 127.0.0.1, traced by `sidetrace run --pid`; two
subscribers: one that connects and never reads (stalled) and one in its
own process that reads everything (healthy).  Then ``--runs`` unpaced wrk
runs of ``--seconds`` each, back to back, then ``--idle`` seconds of quiet.

Printed: the agent's RSS when idle before the load, after each run and at
the end of the quiet time (and its peak), its CPU share during each run,
and what the healthy subscriber received against what the agent built and
what its stats say it dropped.  Needs root, nginx and wrk.

Usage: python bench/bench_overload_memory.py [--runs 8] [--seconds 6] [--idle 20] [--max-memory MIB]
"""

from __future__ import annotations

import argparse
import os
import shutil
import socket
import subprocess
import sys
import tempfile
import time
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO / "bench"))

from bench_agent_http import (NGINX_CONF, UNIQUE_SCRIPT, children, cpu_seconds, free_port,  # noqa: E402
                              memory_kib, start_agent, stop, wrk)

# The healthy subscriber: its own process, reads every message, reports counts on SIGTERM.
HEALTHY = r"""
import signal, sys, json
sys.path.insert(0, sys.argv[2])
from wire import BlockingSubscriber
spans = 0
stats = {}
def done(*_):
    print(json.dumps({"spans": spans, "dropped": stats.get("dropped", 0), "built": stats.get("spans", 0)}),
          flush=True)
    sys.exit(0)
signal.signal(signal.SIGTERM, done)
sub = BlockingSubscriber(sys.argv[1], timeout=0.5)
print("ready", flush=True)
while True:
    try:
        msg = sub.receive()
    except TimeoutError:
        continue
    if msg is None:
        done()
    if msg["type"] == "span":
        spans += 1
    elif msg["type"] == "stats":
        stats = msg
"""


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--runs", type=int, default=8)
    ap.add_argument("--seconds", type=int, default=6)
    ap.add_argument("--idle", type=float, default=20.0)
    ap.add_argument("--max-memory", type=int, default=None, help="the agent's --max-memory (MiB)")
    args = ap.parse_args()
    if os.geteuid() != 0 or not shutil.which("nginx") or not shutil.which("wrk"):
        print("needs root, nginx and wrk (make bench installs them)")
        return 2
    with tempfile.TemporaryDirectory(prefix="sidetrace-bench-") as tmp:
        workdir = Path(tmp)
        port = free_port()
        (workdir / "nginx.conf").write_text(NGINX_CONF.format(dir=workdir, port=port))
        unique = workdir / "unique.lua"
        unique.write_text(UNIQUE_SCRIPT)
        nginx = subprocess.Popen(["nginx", "-p", str(workdir), "-c", str(workdir / "nginx.conf"),
                                  "-g", "daemon off;"])
        agent = healthy = None
        stalled = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
        try:
            time.sleep(0.5)
            sock = workdir / "agent.sock"
            extra = []
            for pid in [nginx.pid, *children(nginx.pid)]:
                extra += ["--pid", str(pid)]
            if args.max_memory is not None:
                extra += ["--max-memory", str(args.max_memory)]
            agent = start_agent(sock, *extra)
            stalled.connect(str(sock))             # never reads
            healthy = subprocess.Popen([sys.executable, "-c", HEALTHY, str(sock), str(REPO)],
                                       stdout=subprocess.PIPE, text=True)
            assert healthy.stdout.readline().strip() == "ready"
            # Past the first metrics poll (every 5 s by default): the network
            # counters' library (pyroute2, about 12 MiB) is imported there.
            time.sleep(7.0)
            idle_before = memory_kib(agent.pid)[0] / 1024
            print(f"agent idle before the load: {idle_before:.1f} MiB RSS")
            print(f"{'run':>4} {'req/s':>9} {'cores':>6} {'RSS MiB':>8}")
            for n in range(1, args.runs + 1):
                cpu0, t0 = cpu_seconds(agent.pid), time.monotonic()
                rate = wrk(port, args.seconds, 16, unique)
                share = (cpu_seconds(agent.pid) - cpu0) / (time.monotonic() - t0)
                print(f"{n:>4} {rate:>9.0f} {share:>6.2f} {memory_kib(agent.pid)[0] / 1024:>8.1f}", flush=True)
            time.sleep(args.idle)
            rss, hwm = memory_kib(agent.pid)
            print(f"after {args.idle:g} s idle: {rss / 1024:.1f} MiB RSS (idle before: {idle_before:.1f}); "
                  f"peak {hwm / 1024:.1f} MiB")
            healthy.terminate()
            counts = healthy.communicate(timeout=10)[0].strip().splitlines()[-1]
            print(f"healthy subscriber (received, its dropped, agent built): {counts}")
        finally:
            stalled.close()
            if healthy is not None and healthy.poll() is None:
                healthy.kill()
                healthy.wait()
            if agent is not None:
                stop(agent)
                agent.stderr.close()
            stop(nginx)
    return 0


if __name__ == "__main__":
    sys.exit(main())
