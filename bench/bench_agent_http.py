"""Agent cost under HTTP load: CPU per span, lost events, resident memory, overload.

nginx (1 worker) serves a tiny response on 127.0.0.1; wrk drives it with
keep-alive connections; the agent traces that nginx (its pid).  Runs of the same length:

  baseline   no agent
  traced     `sidetrace run --pid <nginx> --pid <worker>` with one subscriber counting spans
  paced-N    the same with N wrk connections that each pause 1 ms between
             requests: a steady load (N = 10 and 20 by default: about 5 k and
             10 k req/s on a 2-core machine; the issue's goal is 10 k)
  overload   nginx unpaced, every request to its own path (/a/, /b/ or /c/
             and a number, answered 200, 404 and 201): the agent must stay
             within --max-cpu by shedding, and every span it emits must be a
             request wrk sent, with that request's status; shed rate reported

Agent CPU comes from /proc/<pid>/stat (user + system) over the load window,
divided by the spans built in that window (from the agent's stats); `recv`
is the share of built spans the subscriber received.  Needs root, nginx
and wrk (`make bench` installs them).

Usage: python bench/bench_agent_http.py [--seconds 8] [--max-cpu 0.5]
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
    location /a/ {{ return 200 "a\\n"; }}
    location /b/ {{ return 404; }}
    location /c/ {{ return 201 "c\\n"; }}
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


def children(pid: int) -> list[int]:
    """The processes whose parent is ``pid`` (nginx's workers)."""
    out = []
    for entry in os.listdir("/proc"):
        if entry.isdigit():
            try:
                with open(f"/proc/{entry}/stat") as f:
                    if int(f.read().rsplit(")", 1)[1].split()[1]) == pid:
                        out.append(int(entry))
            except (OSError, ValueError, IndexError):
                pass
    return out


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
# Every request to a path of its own: /a/N (200), /b/N (404), /c/N (201).
UNIQUE_SCRIPT = """
local n = 0
local classes = {"a", "b", "c"}
request = function()
  n = n + 1
  return wrk.format("GET", "/" .. classes[n % 3 + 1] .. "/" .. n)
end
"""
STATUS_OF = {"a": 200, "b": 404, "c": 201}


def wrk(port: int, seconds: float, connections: int, paced: Path | None = None, scheme: str = "http",
        *, total: bool = False) -> float | tuple[float, int]:
    cmd = ["wrk", "-t1", f"-c{connections}", f"-d{int(seconds)}s"]
    if paced is not None:
        cmd += ["-s", str(paced)]
    out = subprocess.run(cmd + [f"{scheme}://127.0.0.1:{port}/"],
                         capture_output=True, text=True, check=True).stdout
    rate = float(re.search(r"Requests/sec:\s+([\d.]+)", out).group(1))
    if total:
        return rate, int(re.search(r"(\d+) requests in", out).group(1))
    return rate


def stop(proc: subprocess.Popen) -> None:
    if proc.poll() is None:
        proc.send_signal(signal.SIGTERM)
        try:
            proc.wait(10)
        except subprocess.TimeoutExpired:
            proc.kill()
            proc.wait()


class SpanCounter(threading.Thread):
    """A subscriber counting spans and keeping the latest stats (``keep``: and
    each span's kind, method, path and status)."""

    def __init__(self, path: Path, keep: bool = False) -> None:
        super().__init__(daemon=True)
        self.sub = BlockingSubscriber(path, timeout=0.5)
        self.spans = 0
        self.kept: list[tuple] = []
        self.keep = keep
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
                if self.keep:
                    attrs = msg["attributes"]
                    self.kept.append((msg["kind"], attrs.get("http.request.method"), attrs.get("url.path"),
                                      attrs.get("http.response.status_code")))
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


def traced_run(port: int, seconds: float, connections: int, workdir: Path, nginx_pid: int,
               paced: Path | None = None, max_cpu: float | None = None, check: bool = False) -> dict:
    extra = ["--max-cpu", str(max_cpu)] if max_cpu is not None else []
    # This nginx and its worker only (others may run on the machine).
    for pid in [nginx_pid, *children(nginx_pid)]:
        extra += ["--pid", str(pid)]
    agent = start_agent(workdir / "agent.sock", *extra)
    try:
        counter = SpanCounter(workdir / "agent.sock", keep=check)
        counter.start()
        time.sleep(1.0)
        idle_cpu0 = cpu_seconds(agent.pid)
        time.sleep(2.0)
        idle_cpu = (cpu_seconds(agent.pid) - idle_cpu0) / 2.0
        spans0 = counter.spans
        built0 = counter.stats.get("spans", 0)
        cpu0 = cpu_seconds(agent.pid)
        t0 = time.monotonic()
        rate, sent = wrk(port, seconds, connections, paced, total=True)
        wall = time.monotonic() - t0
        cpu1 = cpu_seconds(agent.pid)
        time.sleep(1.5)  # let the last spans and a stats message arrive
        spans = counter.spans - spans0
        rss, hwm = memory_kib(agent.pid)
        stats = counter.stats
        counter.close()
        shed = stats.get("shed", {})
        out = {
            "rate": rate,
            "sent": sent,
            "spans": spans,
            "built": stats.get("spans", 0) - built0,
            "dropped": stats.get("dropped", 0),
            "cpu": cpu1 - cpu0,
            "cpu_share": (cpu1 - cpu0) / wall,
            "idle_cpu_per_s": idle_cpu,
            "lost": sum(stats.get("lost_events", [])),
            "kernel_errors": stats.get("kernel_errors", {}),
            "shed_exchanges": shed.get("exchanges", 0),
            "shed_connections": shed.get("connections", 0),
            "shed_in_flight": shed.get("in_flight_dropped", 0),
            "rss_mib": rss / 1024,
            "hwm_mib": hwm / 1024,
        }
        if check:
            out["wrong"], out["checked"] = check_spans(counter.kept)
        return out
    finally:
        stop(agent)
        agent.stderr.close()


def check_spans(kept: list[tuple]) -> tuple[list[tuple], int]:
    """The server spans that are not a request wrk sent with its own status, and
    how many were checked.  Every request has a path of its own, so a path seen
    twice is a wrong span too."""
    wrong, seen, checked = [], set(), 0
    for kind, method, path, status in kept:
        if kind != "server":
            continue
        checked += 1
        parts = (path or "").split("/")
        ok = (method == "GET" and len(parts) == 3 and parts[0] == "" and parts[1] in STATUS_OF
              and parts[2].isdigit() and status == STATUS_OF[parts[1]] and path not in seen)
        seen.add(path)
        if not ok:
            wrong.append((method, path, status))
    return wrong, checked


def main() -> int:
    parser = argparse.ArgumentParser()
    parser.add_argument("--seconds", type=float, default=8)
    parser.add_argument("--paced-connections", type=int, action="append", default=[],
                        help="connections of a paced run (repeatable; default 10 and 20)")
    parser.add_argument("--max-cpu", type=float, default=0.5,
                        help="the agent's --max-cpu in the overload run (default: %(default)s)")
    parser.add_argument("--only", choices=("traced", "paced", "overload"), action="append", default=[],
                        help="run only these rows (repeatable; default: all)")
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
        rows = set(args.only or ("traced", "paced", "overload"))
        runs = []
        try:
            time.sleep(0.5)
            pace = workdir / "pace.lua"
            pace.write_text(PACE_SCRIPT)
            unique = workdir / "unique.lua"
            unique.write_text(UNIQUE_SCRIPT)
            base = wrk(port, args.seconds, 16)
            if "paced" in rows:
                # Each connection waits 1 ms after a response.
                paced_bases = {n: wrk(port, args.seconds, n, pace) for n in paced_counts}
            if "traced" in rows:
                runs.append(("traced", traced_run(port, args.seconds, 16, workdir, nginx.pid), base))
            if "paced" in rows:
                runs += [(f"paced-{n}", traced_run(port, args.seconds, n, workdir, nginx.pid, pace),
                          paced_bases[n]) for n in paced_counts]
            if "overload" in rows:
                over_base = wrk(port, args.seconds, 16, unique)
                runs.append(("overload", traced_run(port, args.seconds, 16, workdir, nginx.pid, unique,
                                                    max_cpu=args.max_cpu, check=True), over_base))
        finally:
            stop(nginx)

    print(f"{'run':<10} {'req/s':>9} {'vs base':>8} {'spans':>8} {'recv':>6} {'agent CPU':>10} "
          f"{'cores':>6} {'us/span':>8} {'lost':>6} {'shed':>6} {'RSS MiB':>8} {'peak MiB':>9}")
    print(f"{'baseline':<10} {base:>9.0f} {1.0:>8.2f}")
    for name, r, ref in runs:
        per_span = r["cpu"] / r["built"] * 1e6 if r["built"] else float("nan")
        recv = r["spans"] / r["built"] if r["built"] else float("nan")
        offered = r["built"] + r["shed_exchanges"]
        shed = r["shed_exchanges"] / offered if offered else 0.0
        print(f"{name:<10} {r['rate']:>9.0f} {r['rate'] / ref:>8.2f} {r['built']:>8} {recv:>6.1%} "
              f"{r['cpu']:>9.2f}s {r['cpu_share']:>6.2f} {per_span:>8.1f} {r['lost']:>6} {shed:>6.1%} "
              f"{r['rss_mib']:>8.1f} {r['hwm_mib']:>9.1f}")
    for name, r, _ in runs:
        if "wrong" in r:
            within = "within" if r["cpu_share"] <= args.max_cpu else "OVER"
            print(f"{name}: {r['checked']} server spans checked against the requests wrk sent "
                  f"({r['sent']} sent): {len(r['wrong'])} wrong {r['wrong'][:5]}; agent at "
                  f"{r['cpu_share']:.2f} of a core, {within} --max-cpu {args.max_cpu}; "
                  f"shed {r['shed_exchanges']} exchanges and {r['shed_connections']} connections, "
                  f"{r['shed_in_flight']} requests in flight dropped at shed boundaries; "
                  f"subscriber dropped {r['dropped']}")
    for name, r, _ in runs:
        if name == "traced":
            print(f"agent idle CPU: {r['idle_cpu_per_s'] * 100:.1f}% of a core")
    if runs:
        print(f"kernel errors ({runs[-1][0]}): {runs[-1][1]['kernel_errors']}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
