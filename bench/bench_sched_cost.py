"""Added cost of the monitor's scheduler hooks on a context-switch benchmark.

bench/pingpong.c (compiled here with gcc): two processes pinned to one CPU
pass one byte back and forth over two pipes, so every round trip is two
context switches and two wake-ups; it reports the median ns per round trip
over ROUNDS rounds of BATCH round trips.  The same loop runs under:

  none             nothing attached
  empty-tp_btf     empty tp_btf programs on sched_switch, sched_wakeup,
                   sched_wakeup_new: the floor of the hooks the monitor uses
  empty-raw_tp     the same as raw tracepoints (for comparison)
  empty-tracepoint the same as classic tracepoints (for comparison)
  monitor          bpfobj/bpf/monitor.bpf.o, every group attached as the
                   agent attaches it; the ping-pong processes not traced
                   (what every other task on a host pays)
  monitor-traced   the same with both processes traced (in `pids`)

Conditions are interleaved over REPS repetitions.  On a shared machine a
run is slowed by whatever else runs on its CPU, never sped up, so the
fastest run of each condition is its least disturbed one: the added cost is
computed from the minima (medians are printed too), per round trip and as
a ratio to the empty tp_btf floor's added cost (the goal is at most 2x).  A
second pass with kernel.bpf_stats_enabled=1 reports the programs' own run
time (ns per run; the hook's dispatch is not included).

Usage: python bench/bench_sched_cost.py [--reps N] [--rounds N] [--batch N] [--cpu N]
Needs root, gcc, bpftool and a kernel with BTF.
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

REPO = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(REPO))

from agent._monitor import GROUPS, Monitor  # noqa: E402
from bpfobj import Collection  # noqa: E402
from _cloops import build, run_held  # noqa: E402

EMPTY_OBJ = REPO / "tests" / "bpf" / "empty_monitor_hooks.bpf.o"
HOOKS = ("sched_switch", "sched_wakeup", "sched_wakeup_new")
EMPTY = {
    "empty-tp_btf": [f"empty_{h}" for h in HOOKS],
    "empty-raw_tp": [f"empty_raw_{h}" for h in HOOKS],
    "empty-tracepoint": [f"empty_tp_{h}" for h in HOOKS],
}
CONDITIONS = ("none", *EMPTY, "monitor", "monitor-traced")
SCHED_PROGRAMS = ("on_sched_switch", "on_sched_wakeup")


def run_loop(exe: Path, args: argparse.Namespace, register=None) -> float:
    on_pids = None if register is None else (lambda line: register([int(p) for p in line.split("=")[1].split(",")]))
    out = run_held([str(exe), str(args.cpu), str(args.rounds), str(args.batch)], on_pids)
    if not out.startswith("rt_ns="):
        raise SystemExit(f"pingpong printed {out!r}")
    return float(out.split("=")[1])


def condition(name: str, exe: Path, args: argparse.Namespace, stats: dict | None = None) -> float:
    if name == "none":
        return run_loop(exe, args)
    if name in EMPTY:
        with Collection.load_file(EMPTY_OBJ) as coll:
            for prog in EMPTY[name]:
                coll.attach(prog)
            result = run_loop(exe, args)
            if stats is not None:
                stats.update(prog_stats(coll, EMPTY[name]))
            return result
    with Monitor(GROUPS) as monitor:
        monitor.attach()
        missing = [p for p in SCHED_PROGRAMS if p not in monitor.attached]
        if missing:
            raise SystemExit(f"bench_sched_cost: monitor programs not attached: {missing} {monitor.problems}")
        pids = monitor.map("pids")

        def register(tgids: list[int]) -> None:
            for tgid in tgids:
                pids.update(tgid, 1)
            # the programs decide per task once a second: make it now
            time.sleep(1.1)  # fixed pause: outlast the kernel's decision cache

        result = run_loop(exe, args, register if name == "monitor-traced" else None)
        if stats is not None:
            stats.update(prog_stats(monitor.collection, SCHED_PROGRAMS))
        return result


def prog_stats(coll: Collection, names) -> dict[str, float]:
    ids = {prog.info().id: name for name, prog in coll.programs.items() if name in names}
    out = json.loads(subprocess.run(["bpftool", "-j", "prog", "show"], capture_output=True,
                                    text=True, check=True).stdout)
    return {ids[p["id"]]: p["run_time_ns"] / p["run_cnt"] for p in out
            if p.get("id") in ids and p.get("run_cnt")}


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--reps", type=int, default=15)
    ap.add_argument("--rounds", type=int, default=100)
    ap.add_argument("--batch", type=int, default=500)
    ap.add_argument("--cpu", type=int, default=1)
    args = ap.parse_args()
    if os.geteuid() != 0:
        raise SystemExit("bench_sched_cost: needs root")
    with tempfile.TemporaryDirectory() as tmp:
        exe = build("pingpong.c", Path(tmp))
        results: dict[str, list[float]] = {c: [] for c in CONDITIONS}
        for rep in range(args.reps):
            for name in CONDITIONS:
                results[name].append(condition(name, exe, args))
            print(f"rep {rep + 1}/{args.reps}: " + " ".join(f"{c}={results[c][-1]:.0f}" for c in CONDITIONS),
                  file=sys.stderr)
        stats: dict[str, dict[str, float]] = {}
        with open("/proc/sys/kernel/bpf_stats_enabled") as f:
            old = f.read().strip()
        try:
            with open("/proc/sys/kernel/bpf_stats_enabled", "w") as f:
                f.write("1")
            for name in ("empty-tp_btf", "monitor", "monitor-traced"):
                stats[name] = {}
                condition(name, exe, args, stats[name])
        finally:
            with open("/proc/sys/kernel/bpf_stats_enabled", "w") as f:
                f.write(old)
    best = {c: min(v) for c, v in results.items()}
    med = {c: statistics.median(v) for c, v in results.items()}
    floor = best["empty-tp_btf"] - best["none"]
    print(f"# bench_sched_cost: {platform.node()} Linux {platform.release()}, "
          f"{os.cpu_count()} CPUs, {time.strftime('%Y-%m-%d')}; "
          f"{args.reps} reps x {args.rounds} rounds x {args.batch} round trips on CPU {args.cpu}")
    print(f"{'condition':<18} {'min ns/rt':>10} {'added ns':>9} {'x floor':>8} {'median ns/rt':>13}")
    for c in CONDITIONS:
        added = best[c] - best["none"]
        ratio = f"{added / floor:.2f}" if c != "none" and floor > 0 else "-"
        print(f"{c:<18} {best[c]:10.0f} {added:9.0f} {ratio:>8} {med[c]:13.0f}")
    print("\nprograms, ns per run (kernel.bpf_stats_enabled):")
    for name, per in stats.items():
        print(f"  {name:<16} " + "  ".join(f"{p} {v:.0f}" for p, v in sorted(per.items())))
    return 0


if __name__ == "__main__":
    sys.exit(main())
