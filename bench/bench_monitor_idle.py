"""Agent CPU and memory spent on metrics while the traced processes are idle.

Runs ``sidetrace run`` tracing one idle process (``--pid`` of a sleeping
child, so the tracer has nothing to do) with one subscriber draining every
message, and measures the agent's CPU time (utime + stime from
/proc/PID/stat) over WINDOW seconds after a warm-up, and its resident
memory at the end.  Conditions, interleaved over REPS repetitions:

  no-metrics     --no-metrics: the tracer alone (the baseline)
  metrics        the monitor with every group, the default 5 s interval
  metrics-1s     the same with --metrics-interval 1 (five times the work)
  all-metrics    tracing every process (no --pid), default interval: a
                 metrics message then carries every active process of the host

The goal is under 0.5% of one core for metrics at idle (metrics minus
no-metrics).

Usage: python bench/bench_monitor_idle.py [--reps N] [--window S]
Needs root.
"""

from __future__ import annotations

import argparse
import os
import platform
import statistics
import subprocess
import sys
import tempfile
import threading
import time
from pathlib import Path

REPO = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(REPO))

from wire import BlockingSubscriber  # noqa: E402

CONDITIONS = {
    "no-metrics": ["--no-metrics"],
    "metrics": [],
    "metrics-1s": ["--metrics-interval", "1"],
    "all-metrics": None,  # no --pid at all
}
WARMUP = 8.0


def cpu_seconds(pid: int) -> float:
    with open(f"/proc/{pid}/stat") as f:
        fields = f.read().rsplit(")", 1)[1].split()
    return (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")


def rss_mib(pid: int) -> float:
    with open(f"/proc/{pid}/statm") as f:
        return int(f.read().split()[1]) * os.sysconf("SC_PAGE_SIZE") / (1 << 20)


class Drain:
    """A subscriber that reads and counts every message, in a thread."""

    def __init__(self, path: Path) -> None:
        self.sub = BlockingSubscriber(path, timeout=0.5)
        self.counts: dict[str, int] = {}
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, daemon=True)
        self._thread.start()

    def _run(self) -> None:
        while not self._stop.is_set():
            try:
                msg = self.sub.receive()
            except TimeoutError:
                continue
            if msg is None:
                return
            self.counts[msg["type"]] = self.counts.get(msg["type"], 0) + 1

    def close(self) -> None:
        self._stop.set()
        self._thread.join()
        self.sub.close()


def run(name: str, idle_pid: int, window: float, tmp: Path) -> tuple[float, float, dict[str, int]]:
    sock = tmp / f"{name}.sock"
    extra = CONDITIONS[name]
    argv = [sys.executable, "-m", "agent.cli", "run", "--socket", str(sock)]
    argv += ["--pid", str(idle_pid), *extra] if extra is not None else []
    agent = subprocess.Popen(argv, cwd=REPO, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, text=True)
    try:
        deadline = time.monotonic() + 30
        while not sock.exists():
            if agent.poll() is not None or time.monotonic() > deadline:
                raise SystemExit(f"agent did not start: {agent.stderr.read()}")
            time.sleep(0.05)
        drain = Drain(sock)
        try:
            time.sleep(WARMUP)  # start-up work (imports, first reads) is not idle cost
            c0, t0 = cpu_seconds(agent.pid), time.monotonic()
            time.sleep(window)
            c1, t1 = cpu_seconds(agent.pid), time.monotonic()
            rss = rss_mib(agent.pid)
        finally:
            drain.close()
        return (c1 - c0) / (t1 - t0) * 100, rss, drain.counts
    finally:
        agent.terminate()
        agent.wait(30)
        agent.stderr.close()


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--reps", type=int, default=3)
    ap.add_argument("--window", type=float, default=60.0)
    args = ap.parse_args()
    if os.geteuid() != 0:
        raise SystemExit("bench_monitor_idle: needs root")
    idle = subprocess.Popen(["sleep", "100000"])
    cpu: dict[str, list[float]] = {c: [] for c in CONDITIONS}
    rss: dict[str, list[float]] = {c: [] for c in CONDITIONS}
    counts: dict[str, dict[str, int]] = {}
    try:
        with tempfile.TemporaryDirectory(prefix="st-idle-", dir="/tmp") as tmp:
            for rep in range(args.reps):
                for name in CONDITIONS:
                    share, mib, seen = run(name, idle.pid, args.window, Path(tmp))
                    cpu[name].append(share)
                    rss[name].append(mib)
                    counts[name] = seen
                    print(f"rep {rep + 1}/{args.reps} {name}: {share:.3f}% of a core, {mib:.1f} MiB, {seen}",
                          file=sys.stderr)
    finally:
        idle.kill()
        idle.wait()
    base = statistics.median(cpu["no-metrics"])
    base_rss = statistics.median(rss["no-metrics"])
    print(f"# bench_monitor_idle: {platform.node()} Linux {platform.release()}, {os.cpu_count()} CPUs, "
          f"{time.strftime('%Y-%m-%d')}; {args.reps} reps x {args.window:.0f} s after {WARMUP:.0f} s warm-up")
    print(f"{'condition':<12} {'agent CPU %':>12} {'metrics %':>10} {'RSS MiB':>8} {'+MiB':>6}")
    for name in CONDITIONS:
        share, mib = statistics.median(cpu[name]), statistics.median(rss[name])
        print(f"{name:<12} {share:12.3f} {share - base:10.3f} {mib:8.1f} {mib - base_rss:6.1f}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
