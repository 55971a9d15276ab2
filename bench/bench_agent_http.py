"""Agent cost under HTTP load: CPU per span, lost events, resident memory.

nginx (1 worker) serves a tiny response on 127.0.0.1; wrk drives it with
keep-alive connections.  Three runs of the same length:

  baseline   no agent
  traced     `sidetrace run --comm nginx` with one subscriber counting spans
  paced-N    the same with N wrk connections that each pause 1 ms between
             requests: a steady load (N = 10 and 20 by default: about 5 k and
             10 k req/s on a 2-core machine; the issue's goal is 10 k)

Agent CPU comes from /proc/<pid>/stat (user + system) over the load window,
divided by the spans built in that window (from the agent's stats).  Needs
root, nginx and wrk (`make bench` installs them).

Usage: python bench/bench_agent_http.py [--seconds 8]
"""

from __future__ import annotations

import argparse
import os
import re
import shutil
import signal
import socket
import subprocess
import sys
import tempfile
import threading
import time
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))

from wire import BlockingSubscriber  # noqa: E402

CLK_TCK = os.sysconf("SC_CLK_TCK")
NGINX_CONF = """
worker_processes 1;
pid {dir}/nginx.pid;
error_log {dir}/error.log warn;
events {{ worker_connections 1024; }}
http {{
  access_log off;
  client_body_temp_path {dir}/body;
  proxy_temp_path {dir}/proxy;
  fastcgi_temp_path {dir}/fastcgi;
  uwsgi_temp_path {dir}/uwsgi;
  scgi_temp_path {dir}/scgi;
  server {{
    listen 127.0.0.1:{port};
    location / {{ return 200 "ok\\n"; }}
  }}
}}
"""


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def cpu_seconds(pid: int) -> float:
    with open(f"/proc/{pid}/stat") as f:
        fields = f.read().rsplit(")", 1)[1].split()
    return (int(fields[11]) + int(fields[12])) / CLK_TCK


def memory_kib(pid: int) -> tuple[int, int]:
    rss = hwm = 0
    with open(f"/proc/{pid}/status") as f:
        for line in f:
            if line.startswith("VmRSS:"):
                rss = int(line.split()[1])
            elif line.startswith("VmHWM:"):
                hwm = int(line.split()[1])
    return rss, hwm


PACE_SCRIPT = "function delay() return 1 end\n"  # ms between requests, per connection


def wrk(port: int, seconds: float, connections: int, paced: Path | None = None, scheme: str = "http") -> float:
    cmd = ["wrk", "-t1", f"-c{connections}", f"-d{int(seconds)}s"]
    if paced is not None:
        cmd += ["-s", str(paced)]
    out = subprocess.run(cmd + [f"{scheme}://127.0.0.1:{port}/"],
                         capture_output=True, text=True, check=True).stdout
    return float(re.search(r"Requests/sec:\s+([\d.]+)", out).group(1))


def stop(proc: subprocess.Popen) -> None:
    if proc.poll() is None:
        proc.send_signal(signal.SIGTERM)
        try:
            proc.wait(10)
        except subprocess.TimeoutExpired:
            proc.kill()
            proc.wait()


class SpanCounter(threading.Thread):
    """A subscriber counting spans and keeping the latest stats."""

    def __init__(self, path: Path) -> None:
        super().__init__(daemon=True)
        self.sub = BlockingSubscriber(path, timeout=0.5)
        self.spans = 0
        self.stats: dict = {}
        self.running = True

    def run(self) -> None:
        while self.running:
            try:
                msg = self.sub.receive()
            except TimeoutError:
                continue
            except OSError:
                return
            if msg is None:
                return
            if msg["type"] == "span":
                self.spans += 1
            elif msg["type"] == "stats":
                self.stats = msg

    def close(self) -> None:
        self.running = False
        self.join(2)
        self.sub.close()


def start_agent(sock: Path, *args: str, timeout: float = 20) -> subprocess.Popen:
    """`sidetrace run --socket SOCK ARGS...`, once it serves (stderr kept for failures)."""
    agent = subprocess.Popen([sys.executable, "-m", "agent.cli", "run", "--socket", str(sock),
                              "--stats-interval", "0.5", *args],
                             cwd=REPO, stderr=subprocess.PIPE, text=True)
    deadline = time.monotonic() + timeout
    while not sock.exists():
        if agent.poll() is not None or time.monotonic() > deadline:
            stop(agent)
            raise SystemExit(f"agent did not start: {agent.stderr.read()}")
        time.sleep(0.05)
    return agent


def traced_run(port: int, seconds: float, connections: int, workdir: Path,
               paced: Path | None = None) -> dict:
    agent = start_agent(workdir / "agent.sock", "--comm", "nginx")
    try:
        counter = SpanCounter(workdir / "agent.sock")
        counter.start()
        time.sleep(1.0)
        idle_cpu0 = cpu_seconds(agent.pid)
        time.sleep(2.0)
        idle_cpu = (cpu_seconds(agent.pid) - idle_cpu0) / 2.0
        spans0 = counter.spans
        cpu0 = cpu_seconds(agent.pid)
        rate = wrk(port, seconds, connections, paced)
        cpu1 = cpu_seconds(agent.pid)
        time.sleep(1.5)  # let the last spans and a stats message arrive
        spans = counter.spans - spans0
        rss, hwm = memory_kib(agent.pid)
        stats = counter.stats
        counter.close()
        return {
            "rate": rate,
            "spans": spans,
            "cpu": cpu1 - cpu0,
            "idle_cpu_per_s": idle_cpu,
            "lost": sum(stats.get("lost_events", [])),
            "kernel_errors": stats.get("kernel_errors", {}),
            "rss_mib": rss / 1024,
            "hwm_mib": hwm / 1024,
        }
    finally:
        stop(agent)
        agent.stderr.close()


def main() -> int:
    parser = argparse.ArgumentParser()
    parser.add_argument("--seconds", type=float, default=8)
    parser.add_argument("--paced-connections", type=int, action="append", default=[],
                        help="connections of a paced run (repeatable; default 10 and 20)")
    args = parser.parse_args()
    if os.geteuid() != 0 or not shutil.which("nginx") or not shutil.which("wrk"):
        print("needs root, nginx and wrk (make bench installs them)")
        return 2
    paced_counts = args.paced_connections or [10, 20]
    with tempfile.TemporaryDirectory(prefix="sidetrace-bench-") as tmp:
        workdir = Path(tmp)
        port = free_port()
        (workdir / "nginx.conf").write_text(NGINX_CONF.format(dir=workdir, port=port))
        nginx = subprocess.Popen(["nginx", "-p", str(workdir), "-c", str(workdir / "nginx.conf"),
                                  "-g", "daemon off;"])
        try:
            time.sleep(0.5)
            pace = workdir / "pace.lua"
            pace.write_text(PACE_SCRIPT)
            base = wrk(port, args.seconds, 16)
            # Each connection waits 1 ms after a response.
            paced_bases = {n: wrk(port, args.seconds, n, pace) for n in paced_counts}
            traced = traced_run(port, args.seconds, 16, workdir)
            paced = {n: traced_run(port, args.seconds, n, workdir, pace) for n in paced_counts}
        finally:
            stop(nginx)

    print(f"{'run':<10} {'req/s':>9} {'vs base':>8} {'spans':>8} {'agent CPU':>10} "
          f"{'us/span':>8} {'lost':>6} {'RSS MiB':>8} {'peak MiB':>9}")
    print(f"{'baseline':<10} {base:>9.0f} {1.0:>8.2f}")
    for n, rate in paced_bases.items():
        print(f"{f'base-{n}':<10} {rate:>9.0f} {1.0:>8.2f}")
    runs = [("traced", traced, base)] + [(f"paced-{n}", paced[n], paced_bases[n]) for n in paced_counts]
    for name, r, ref in runs:
        per_span = r["cpu"] / r["spans"] * 1e6 if r["spans"] else float("nan")
        print(f"{name:<10} {r['rate']:>9.0f} {r['rate'] / ref:>8.2f} {r['spans']:>8} "
              f"{r['cpu']:>9.2f}s {per_span:>8.1f} {r['lost']:>6} {r['rss_mib']:>8.1f} "
              f"{r['hwm_mib']:>9.1f}")
    print(f"agent idle CPU: {traced['idle_cpu_per_s'] * 100:.1f}% of a core; "
          f"kernel errors: {paced[paced_counts[-1]]['kernel_errors']}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
