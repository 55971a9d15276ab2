"""Agent resident memory: idle after attach and under a steady HTTP load.

For each source tree (this repository, or the trees given with ``--tree
LABEL=DIR``, e.g. two commits unpacked with ``git archive``, so a before/after
comparison comes from one run on one machine):

  idle    `sidetrace run --pid <server>` attached and quiet, one subscriber
  load    the same after ``--seconds`` of paced HTTP/1.1 requests to the
          traced server (keep-alive, a new connection every
          ``REQUESTS_PER_CONNECTION`` requests), measured while the load runs
  after   two seconds after the load stopped

and, in the same run, two baselines: the interpreter alone and the
interpreter with trio imported (the agent's event loop), both sleeping.

Reported per process, from /proc/<pid>/smaps (KiB summed, shown in MiB):
RSS, PSS, USS (private pages), and RSS split into the malloc brk heap,
other anonymous mappings (Python's 1 MiB object arenas and large malloc
blocks), the perf ring mmaps, the interpreter and C extensions / shared
libraries (file-backed, mostly shared), stacks and the rest.  The perf
rings' mapped size is printed too: on Linux 6.18 their pages are mapped
without being counted in RSS, whatever the load.

Then, per tree: which imports cost what (RSS after each import step in one
fresh process, and the slowest imports from ``-X importtime``), and a
tracemalloc view of the agent run in-process: Python allocations after the
imports, at the peak (kernel BTF parsed) and after attach, grouped by package.

Needs root (the agent loads BPF programs).  Every process started here is
stopped by pid.

Usage: python bench/bench_memory.py [--seconds 10] [--rate 300] [--tree LABEL=DIR]...
"""

from __future__ import annotations

import argparse
import http.client
import os
import re
import subprocess
import sys
import tempfile
import threading
import time
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))

from bench_agent_http import SpanCounter, stop  # noqa: E402  (same directory)

REQUESTS_PER_CONNECTION = 20
CLIENT_THREADS = 4

SERVER = r"""
import http.server, sys
class Handler(http.server.BaseHTTPRequestHandler):
    protocol_version = "HTTP/1.1"
    def do_GET(self):
        body = b"ok\n"
        self.send_response(200)
        self.send_header("Content-Type", "text/plain")
        self.send_header("Content-Length", str(len(body)))
        self.end_headers()
        self.wfile.write(body)
    def log_message(self, *args):
        pass
server = http.server.ThreadingHTTPServer(("127.0.0.1", 0), Handler)
print(server.server_address[1], flush=True)
server.serve_forever()
"""

SLEEPER = "import sys, time\n{imports}\nprint('ready', flush=True)\nsys.stdin.readline()\n"

IMPORT_STEPS = ("ssl", "trio", "cbor2", "bpfobj", "wire", "agent.protocols", "agent._app")
WATCHED_MODULES = ("ssl", "construct", "hpack", "ipaddress", "ctypes", "argparse")

IMPORT_STEPS_CHILD = r"""
import importlib, json, sys
def rss():
    with open("/proc/self/smaps_rollup") as f:
        for line in f:
            if line.startswith("Rss:"):
                return int(line.split()[1])
steps = [("interpreter", rss())]
for name in sys.argv[1].split(","):
    importlib.import_module(name)
    steps.append((name, rss()))
print(json.dumps({"steps": steps, "modules": len(sys.modules),
                  "loaded": [m for m in sys.argv[2].split(",") if m in sys.modules]}))
"""

TRACEMALLOC_CHILD = r"""
import json, os, sys, tracemalloc
tracemalloc.start(1)
import trio
from agent._app import serve
from agent.cli import _build_parser
imports = tracemalloc.get_traced_memory()[0]
tracemalloc.reset_peak()
args = _build_parser().parse_args(["run", "--socket", sys.argv[1], "--pid", sys.argv[2]])

def group(filename):
    parts = filename.split(os.sep)
    if "site-packages" in parts:
        return parts[parts.index("site-packages") + 1].split(".")[0]
    for top in ("agent", "bpfobj", "wire"):
        if top in parts:
            i = len(parts) - 1 - parts[::-1].index(top)
            return ".".join(p for p in parts[i:-1])
    if filename.startswith("<"):
        return "<frozen>"
    return "stdlib"

async def main():
    async with trio.open_nursery() as nursery:
        await nursery.start(serve, args)
        current, peak = tracemalloc.get_traced_memory()
        by_group = {}
        for stat in tracemalloc.take_snapshot().statistics("filename"):
            g = group(stat.traceback[0].filename)
            by_group[g] = by_group.get(g, 0) + stat.size
        print(json.dumps({"imports": imports, "peak": peak, "attached": current,
                          "groups": sorted(by_group.items(), key=lambda kv: -kv[1])}), flush=True)
        nursery.cancel_scope.cancel()

trio.run(main)
"""


# -- /proc -------------------------------------------------------------------

CATEGORIES = ("heap", "anon", "perf", "python", "libs", "stack", "other")


def _category(name: str, python_paths: tuple[str, ...]) -> str:
    if name == "[heap]":
        return "heap"
    if name == "":
        return "anon"
    if "perf_event" in name:
        return "perf"
    if name.startswith("[stack"):
        return "stack"
    if name.startswith("/"):
        if name in python_paths or "libpython" in name:
            return "python"
        return "libs"
    return "other"


def smaps(pid: int) -> dict[str, float]:
    """RSS, PSS, USS and RSS per mapping category, in MiB."""
    exe = os.path.realpath(f"/proc/{pid}/exe")
    python_paths = (exe,)
    totals = dict.fromkeys(("rss", "pss", "uss", "perf_mapped", *CATEGORIES), 0)
    category = "other"
    with open(f"/proc/{pid}/smaps") as f:
        for line in f:
            first, _, rest = line.partition(" ")
            if not first.endswith(":"):  # a mapping header: range perms offset dev inode [name]
                fields = line.split(None, 5)
                category = _category(fields[5].strip() if len(fields) > 5 else "", python_paths)
                continue
            if first == "Size:" and category == "perf":
                totals["perf_mapped"] += int(rest.split()[0])
            elif first == "Rss:":
                kib = int(rest.split()[0])
                totals["rss"] += kib
                totals[category] += kib
            elif first == "Pss:":
                totals["pss"] += int(rest.split()[0])
            elif first in ("Private_Clean:", "Private_Dirty:"):
                totals["uss"] += int(rest.split()[0])
    return {k: v / 1024 for k, v in totals.items()}


def peak_rss_mib(pid: int) -> float:
    with open(f"/proc/{pid}/status") as f:
        for line in f:
            if line.startswith("VmHWM:"):
                return int(line.split()[1]) / 1024
    return float("nan")


# -- processes ---------------------------------------------------------------

def baseline(imports: str) -> dict[str, float]:
    proc = subprocess.Popen([sys.executable, "-c", SLEEPER.format(imports=imports)], cwd=REPO,
                            stdin=subprocess.PIPE, stdout=subprocess.PIPE, text=True)
    try:
        if proc.stdout.readline().strip() != "ready":
            raise SystemExit(f"baseline {imports!r} failed")
        time.sleep(0.3)
        return smaps(proc.pid)
    finally:
        proc.stdin.close()
        proc.stdout.close()
        stop(proc)


class Client(threading.Thread):
    """Paced GETs on keep-alive connections, reconnecting now and then."""

    def __init__(self, port: int, rate: float, stop_at: float) -> None:
        super().__init__(daemon=True)
        self.port, self.interval, self.stop_at = port, 1.0 / rate, stop_at
        self.done = 0

    def run(self) -> None:
        conn = None
        due = time.monotonic()
        while due < self.stop_at:
            if conn is None or self.done % REQUESTS_PER_CONNECTION == 0:
                if conn is not None:
                    conn.close()
                conn = http.client.HTTPConnection("127.0.0.1", self.port, timeout=5)
            conn.request("GET", f"/item/{self.done}?q=memory")
            conn.getresponse().read()
            self.done += 1
            due += self.interval
            time.sleep(max(0.0, due - time.monotonic()))
        if conn is not None:
            conn.close()


def agent_run(tree: Path, server_pid: int, port: int, workdir: Path, seconds: float,
              rate: float) -> dict:
    sock = workdir / "agent.sock"
    agent = subprocess.Popen([sys.executable, "-m", "agent.cli", "run", "--socket", str(sock),
                              "--pid", str(server_pid), "--stats-interval", "1"],
                             cwd=tree, stderr=subprocess.PIPE, text=True)
    try:
        deadline = time.monotonic() + 30
        while not sock.exists():
            if agent.poll() is not None or time.monotonic() > deadline:
                raise SystemExit(f"agent did not start: {agent.stderr.read()}")
            time.sleep(0.05)
        subscriber = SpanCounter(sock)
        subscriber.start()
        try:
            time.sleep(2.0)
            out = {"idle": smaps(agent.pid)}
            stop_at = time.monotonic() + seconds
            clients = [Client(port, rate / CLIENT_THREADS, stop_at) for _ in range(CLIENT_THREADS)]
            for c in clients:
                c.start()
            time.sleep(max(0.0, seconds - 1.0))
            out["load"] = smaps(agent.pid)
            for c in clients:
                c.join()
            time.sleep(2.0)
            out["after"] = smaps(agent.pid)
            out["peak"] = peak_rss_mib(agent.pid)
            out["requests"] = sum(c.done for c in clients)
            out["spans"] = subscriber.spans
        finally:
            subscriber.close()
        return out
    finally:
        stop(agent)
        agent.stderr.close()


def import_steps(tree: Path) -> dict:
    out = subprocess.run([sys.executable, "-c", IMPORT_STEPS_CHILD, ",".join(IMPORT_STEPS),
                          ",".join(WATCHED_MODULES)], cwd=tree, capture_output=True, text=True,
                         check=True).stdout
    import json

    return json.loads(out)


def import_times(tree: Path, top: int = 8) -> list[tuple[str, int]]:
    err = subprocess.run([sys.executable, "-X", "importtime", "-c", "import agent.cli, agent._app"],
                         cwd=tree, capture_output=True, text=True, check=True).stderr
    rows = []
    for line in err.splitlines():
        m = re.match(r"import time:\s+(\d+) \|\s+(\d+) \| (\s*)(\S+)", line)
        if m and len(m.group(3)) <= 2:  # the agent's own imports and their direct imports
            rows.append((m.group(4), int(m.group(2))))
    return sorted(rows, key=lambda r: -r[1])[:top]


def tracemalloc_view(tree: Path, server_pid: int, workdir: Path) -> dict:
    import json

    sock = workdir / "tm.sock"
    proc = subprocess.run([sys.executable, "-c", TRACEMALLOC_CHILD, str(sock), str(server_pid)],
                          cwd=tree, capture_output=True, text=True, timeout=120)
    if proc.returncode != 0 or not proc.stdout:
        raise SystemExit(f"tracemalloc run failed: {proc.stderr[-2000:]}")
    return json.loads(proc.stdout.splitlines()[0])


# -- report ------------------------------------------------------------------

def row(label: str, m: dict[str, float], ref: dict[str, float]) -> str:
    cells = " ".join(f"{m[k]:>6.1f}" for k in ("rss", "pss", "uss", *CATEGORIES))
    return f"{label:<18} {cells} {m['rss'] / ref['rss']:>6.2f}"


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--seconds", type=float, default=10.0, help="load duration (default: %(default)s)")
    parser.add_argument("--rate", type=float, default=300.0, help="requests per second (default: %(default)s)")
    parser.add_argument("--tree", action="append", default=[], metavar="LABEL=DIR",
                        help="also measure the agent of this source tree (repeatable)")
    args = parser.parse_args()
    if os.geteuid() != 0:
        print("needs root (the agent loads BPF programs)")
        return 2
    trees = [(label, Path(path).resolve()) for label, _, path in (t.partition("=") for t in args.tree)]
    trees = trees or [("this tree", REPO)]

    bases = {"python": baseline(""), "python+trio": baseline("import trio")}
    results, imports, tracemallocs = {}, {}, {}
    with tempfile.TemporaryDirectory(prefix="sidetrace-mem-") as tmp:
        workdir = Path(tmp)
        server = subprocess.Popen([sys.executable, "-c", SERVER], stdout=subprocess.PIPE, text=True)
        try:
            port = int(server.stdout.readline())
            for label, tree in trees:
                results[label] = agent_run(tree, server.pid, port, workdir, args.seconds, args.rate)
                imports[label] = import_steps(tree)
                tracemallocs[label] = tracemalloc_view(tree, server.pid, workdir)
        finally:
            server.stdout.close()
            stop(server)

    ref = bases["python+trio"]
    print(f"MiB                   RSS    PSS    USS   heap   anon   perf python  libs  stack  other  x trio")
    for name, m in bases.items():
        print(row(name, m, ref))
    for label, r in results.items():
        for phase in ("idle", "load", "after"):
            print(row(f"{label[:12]} {phase}", r[phase], ref))
    for label, r in results.items():
        print(f"{label}: peak RSS {r['peak']:.1f} MiB; {r['requests']} requests "
              f"({r['requests'] / args.seconds:.0f}/s), {r['spans']} spans received; perf rings "
              f"{r['load']['perf_mapped']:.1f} MiB mapped, {r['load']['perf']:.1f} MiB of it in RSS")

    for label in results:
        steps, tm = imports[label], tracemallocs[label]
        print(f"\n[{label}] RSS after each import step (MiB, one process):")
        prev = None
        for name, kib in steps["steps"]:
            delta = "" if prev is None else f"+{(kib - prev) / 1024:.1f}"
            print(f"  {name:<18} {kib / 1024:>6.1f} {delta:>6}")
            prev = kib
        print(f"  {steps['modules']} modules; loaded among {', '.join(WATCHED_MODULES)}: "
              f"{', '.join(steps['loaded']) or 'none'}")
        print(f"[{label}] slowest imports (-X importtime, cumulative ms):")
        for name, us in import_times(tree_of(trees, label)):
            print(f"  {name:<32} {us / 1000:>7.1f}")
        print(f"[{label}] tracemalloc (MiB of Python allocations): imports {tm['imports'] / 2**20:.1f}, "
              f"peak while loading {tm['peak'] / 2**20:.1f}, after attach {tm['attached'] / 2**20:.1f}")
        print("  " + ", ".join(f"{g} {size / 2**20:.2f}" for g, size in tm["groups"][:10]))
    return 0


def tree_of(trees: list[tuple[str, Path]], label: str) -> Path:
    return dict(trees)[label]


if __name__ == "__main__":
    sys.exit(main())
